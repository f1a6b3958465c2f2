"""What a user gives a trained model to classify, checked before any prediction: image and sound files, pasted
texts or a CSV of them. Every bad input is named in one `PredictionInputError` a person can act on.

The Test page, the explainer and `python -m core predict` read their inputs through these; `core.evaluation`
re-exports them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import pandas as pd

from core.dataset import IMAGE_EXTENSIONS


class PredictionInputError(ValueError):
    """Inputs given to a prediction cannot be used (missing file, not an image, empty text)."""


def check_image_files(paths: Sequence[str | Path], names: Sequence[str] | None = None) -> list[str]:
    """The paths as strings, after checking each is an existing image file; raises with every bad one named.

    `names` are what the user calls the files (an upload's name, a path inside a zip); by default the file names.
    """
    from PIL import Image, UnidentifiedImageError

    def problem(file: Path) -> str | None:
        try:
            with Image.open(file) as image:
                image.verify()
        except (UnidentifiedImageError, OSError):
            return ""
        return None

    return _check_files(paths, names, problem, "images", "PNG, JPEG, BMP, GIF, WebP or TIFF")


def check_audio_files(paths: Sequence[str | Path], names: Sequence[str] | None = None) -> list[str]:
    """The paths as strings, after checking each is a sound file we can decode; raises with every bad one named."""
    from core import audio

    def problem(file: Path) -> str | None:
        try:
            audio.read_audio(str(file))
        except audio.AudioReadError as error:
            return str(error)
        return None

    return _check_files(paths, names, problem, "sound", "WAV, FLAC, OGG or MP3")


def _check_files(
    paths: Sequence[str | Path],
    names: Sequence[str] | None,
    problem: Callable[[Path], str | None],
    kind: str,
    formats: str,
) -> list[str]:
    """Every path checked by `problem` (None: fine; else what is wrong, may be empty); one error names every bad one."""
    missing, unreadable = [], []
    for position, path in enumerate(paths):
        file = Path(path)
        if not file.is_file():
            missing.append(str(path))
            continue
        found = problem(file)
        if found is not None:
            name = names[position] if names is not None else file.name
            unreadable.append(f"{name} ({found})" if found else name)
    problems = []
    if missing:
        problems.append(f"{len(missing)} file(s) not found: {', '.join(missing[:5])}")
    if unreadable:
        problems.append(f"{len(unreadable)} file(s) are not {kind} we can read: {', '.join(unreadable[:5])}")
    if problems:
        raise PredictionInputError("; ".join(problems) + f". Give {formats} files.")
    return [str(path) for path in paths]


def read_texts(lines_or_csv: str, is_csv: bool = False) -> list[str]:
    """Texts to classify from pasted text (one per line) or CSV contents (the `text` column, else the first).

    Blank lines are skipped; raises `PredictionInputError` when nothing is left.
    """
    if is_csv:
        import io

        try:
            frame = pd.read_csv(io.StringIO(lines_or_csv))
        except (pd.errors.ParserError, pd.errors.EmptyDataError) as error:
            raise PredictionInputError(f"The CSV could not be read ({error}); give one text per row.") from error
        lowered = {str(column).lower(): column for column in frame.columns}
        column = lowered.get("text") or next(
            (c for c in frame.columns if frame[c].dtype == object), frame.columns[0] if len(frame.columns) else None
        )
        if column is None:
            raise PredictionInputError("The CSV has no columns; give a column named 'text' with one text per row.")
        texts = [str(value).strip() for value in frame[column].dropna().tolist()]
    else:
        texts = [line.strip() for line in lines_or_csv.splitlines()]
    texts = [text for text in texts if text]
    if not texts:
        raise PredictionInputError(
            "No text to classify: paste one text per line, or upload a CSV with a 'text' column."
        )
    return texts


def texts_from_inputs(inputs: Sequence[str]) -> list[str]:
    """Texts to predict from the command line: each argument a text, or a .txt / .csv file of them."""
    texts: list[str] = []
    for value in inputs:
        file = Path(value)
        if file.suffix.lower() in (".txt", ".csv") and file.is_file():
            texts.extend(read_texts(file.read_text(encoding="utf-8"), is_csv=file.suffix.lower() == ".csv"))
        else:
            texts.append(value)
    return [text for text in texts if text.strip()]


def file_inputs(inputs: Sequence[str], modality: str) -> list[str]:
    """Image or sound files to predict: files as given, folders searched for files of the model's kind."""
    from core.audio import AUDIO_EXTENSIONS

    suffixes = AUDIO_EXTENSIONS if modality == "audio" else IMAGE_EXTENSIONS
    paths: list[str] = []
    for value in inputs:
        folder = Path(value)
        if folder.is_dir():
            paths.extend(sorted(str(p) for p in folder.rglob("*") if p.suffix.lower() in suffixes))
        else:
            paths.append(value)
    return check_audio_files(paths) if modality == "audio" else check_image_files(paths)
