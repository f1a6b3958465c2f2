"""Step 1, Data: load what the user gives us, check it, split it, and say plainly what is wrong.

Inputs: a zip of one folder per class (any wrapping folders), a zip of images plus a `file,label` CSV, a folder on
disk (in the browser only under the operator's data root), a CSV/TSV of texts, and the two built-in samples.
Every loader returns `(Dataset, report)`; the report is a dict::

    {"ok": bool, "errors": [{"code", "message", "items"}], "warnings": [...], "info": {...}}

Input that cannot be read at all (a corrupt or unsafe zip, a binary file named `.csv`, a missing column) raises
`DataError`, whose message is meant to be shown to the user as is. Problems inside readable data (a damaged image,
a class with one example) go into the report instead, so the user sees all of them at once.

Images are checked by decoding them fully; anything that is not an RGB PNG/JPEG in upright orientation is
normalised once to an RGB PNG in the workspace (keyed by content hash), so `Dataset` items are always paths that
PIL opens. Uploaded zips are extracted to `workspace/datasets/<content hash>/`, so the same upload reuses the same
folder and item paths stay stable.

This module is the public face: it picks the loader for an input and names everything callers use. The work is
in private modules, lowest first: `_data_report` (`DataError`, the report), `_data_split` (train/val/test),
`_data_checks` (duplicates, leakage, small and unbalanced classes), `_data_tables` (reading a CSV/TSV),
`_data_text`, `_data_folders` (extracting a zip, reading a folder's layout), `_data_images` and `_data_audio`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import zipfile
from collections.abc import Sequence
from pathlib import Path, PurePosixPath
from typing import Any

import pandas as pd

from core import audio
from core._data_audio import LENGTH_RATIO, _clip_rows, inspect_clip
from core._data_checks import FEW_EXAMPLES, MAX_IMBALANCE, MIN_EXAMPLES, _finish
from core._data_folders import JUNK_NAMES, SPLIT_FOLDERS, _is_junk, _labelled_files, _scan, extract_zip
from core._data_images import _image_rows, inspect_image
from core._data_report import (
    DataError,
    _Report,
    check_upload_size,
    format_report,
    max_upload_bytes,
    per_split_counts,
    plural,
)
from core._data_split import DEFAULT_FRACTIONS, _check_fractions, random_split_source, split_examples
from core._data_tables import (
    FILE_COLUMNS,
    LABEL_COLUMNS,
    TABLE_EXTENSIONS,
    TEXT_COLUMNS,
    _column,
    guess_columns,
    read_table,
)
from core._data_text import LONG_TEXT_WORDS, load_text_table
from core._zipsafe import ZipLimits
from core.dataset import IMAGE_EXTENSIONS, SPLITS, Dataset, Modality
from core.paths import assets_dir, data_root

__all__ = [
    "DEFAULT_FRACTIONS",
    "FEW_EXAMPLES",
    "FILE_COLUMNS",
    "IMAGE_EXTENSIONS",
    "JUNK_NAMES",
    "LABEL_COLUMNS",
    "LENGTH_RATIO",
    "LONG_TEXT_WORDS",
    "MAX_IMBALANCE",
    "MIN_EXAMPLES",
    "SAMPLES",
    "SPLITS",
    "SPLIT_FOLDERS",
    "TABLE_EXTENSIONS",
    "TEXT_COLUMNS",
    "DataError",
    "Dataset",
    "Modality",
    "ZipLimits",
    "check_upload_size",
    "extract_zip",
    "format_report",
    "guess_columns",
    "clips_in_zip",
    "images_in_zip",
    "inspect_clip",
    "inspect_image",
    "list_server_entries",
    "lists_clips",
    "lists_images",
    "load_folder",
    "load_path",
    "load_sample",
    "load_server_path",
    "load_text_table",
    "load_zip",
    "main_check_data",
    "max_upload_bytes",
    "per_split_counts",
    "plural",
    "random_split_source",
    "read_table",
    "split_examples",
]


SAMPLES = {
    "images": ("digits.zip", "Sample: handwritten digits"),
    "texts": ("support_messages.csv", "Sample: customer-support messages"),
    "audio": ("spoken_words.zip", "Sample: spoken words"),
}

#: Per kind of file data set: which files are its examples, what messages call one, and what reads them into rows.
_FILE_KINDS = {
    "image": (IMAGE_EXTENSIONS, "image", _image_rows),
    "audio": (audio.AUDIO_EXTENSIONS, "clip", _clip_rows),
}


def _load_files(
    modality: Modality,
    root: Path,
    name: str,
    seed: int,
    fractions: Sequence[float],
    source: str,
    label_csv: Path | None = None,
) -> tuple[Dataset, dict[str, Any]]:
    """Images or sound clips in class folders or split folders (or listed in a `file,label` CSV), each checked."""
    fractions = _check_fractions(fractions)
    report = _Report(modality, source)
    extensions, noun, read_rows = _FILE_KINDS[modality]
    content_root, entries, split_given, others = _labelled_files(root, report, label_csv, extensions, noun)
    table = pd.DataFrame(read_rows(entries, others, report), columns=["item", "label", "split", "source", "hash"])
    return _finish(table, name, modality, report, split_given, seed, fractions, root=str(content_root))


def load_zip(
    source: bytes | str | os.PathLike[str],
    name: str | None = None,
    seed: int = 0,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    limits: ZipLimits | None = None,
) -> tuple[Dataset, dict[str, Any]]:
    """Load a zip of class folders, or of images plus a `file,label` CSV (a zip of a single text CSV works too).

    Raises:
        DataError: the archive cannot be used (see `extract_zip`).
    """
    name = name or (Path(source).name if not isinstance(source, bytes) else "upload.zip")
    folder = extract_zip(source, name, limits)
    files, _ = _scan(folder)
    if _holds_audio(files):
        return _load_files("audio", folder, name, seed, fractions, source=name)
    if files and not any(file.suffix.lower() in IMAGE_EXTENSIONS for file in files):
        tables = [file for file in files if file.suffix.lower() in TABLE_EXTENSIONS]
        if len(tables) == 1:
            return load_text_table(folder / tables[0], name=name, seed=seed, fractions=fractions)
    return _load_files("image", folder, name, seed, fractions, source=name)


def images_in_zip(source: bytes | str | os.PathLike[str], name: str | None = None) -> list[tuple[str, Path]]:
    """The images of a zip to classify, each as (its path inside the zip, the extracted file), sorted by path.

    The path inside the zip is how the user knows each file: `cats/0000.png` and `dogs/0000.png` stay apart, which
    their base names would not. Hidden junk (`__MACOSX`, dotfiles) is skipped; other non-images are ignored.

    Raises:
        DataError: the archive cannot be used (see `extract_zip`), or it holds no image.
    """
    return _files_in_zip(source, name, IMAGE_EXTENSIONS, "images")


def clips_in_zip(source: bytes | str | os.PathLike[str], name: str | None = None) -> list[tuple[str, Path]]:
    """The sound clips of a zip to classify, as `images_in_zip` gives images (named by their path inside it).

    Raises:
        DataError: the archive cannot be used (see `extract_zip`), or it holds no sound file.
    """
    return _files_in_zip(source, name, audio.AUDIO_EXTENSIONS, "sound clips")


def _files_in_zip(
    source: bytes | str | os.PathLike[str], name: str | None, extensions: frozenset[str], what: str
) -> list[tuple[str, Path]]:
    name = name or (Path(source).name if not isinstance(source, bytes) else "the archive")
    folder = extract_zip(source, name)
    files, _ = _scan(folder)
    found = [(file.as_posix(), folder / file) for file in files if file.suffix.lower() in extensions]
    if not found:
        raise DataError(f"`{name}` holds no {what} ({', '.join(sorted(extensions))}).")
    return found


def load_folder(
    path: str | os.PathLike[str], name: str | None = None, seed: int = 0, fractions: Sequence[float] = DEFAULT_FRACTIONS
) -> tuple[Dataset, dict[str, Any]]:
    """Load an image folder on disk in place (class folders, split folders, or images + a label CSV)."""
    folder = Path(path)
    if not folder.is_dir():
        raise DataError(f"`{folder}` is not a folder.")
    if _holds_audio(_scan(folder)[0]):
        return _load_files("audio", folder.resolve(), name or folder.name, seed, fractions, source=str(folder))
    return _load_files("image", folder.resolve(), name or folder.name, seed, fractions, source=str(folder))


def load_sample(kind: str, seed: int = 0, fractions: Sequence[float] = DEFAULT_FRACTIONS) -> tuple[Dataset, dict]:
    """A built-in sample: "images" (handwritten digits), "texts" (support messages) or "audio" (spoken words).

    Its report's `info["sample"]` is `kind`: the command line loads it as `--data sample-<kind>`.
    """
    if kind not in SAMPLES:
        raise DataError(f"Unknown sample `{kind}`; choose one of: {', '.join(SAMPLES)}.")
    filename, title = SAMPLES[kind]
    path = assets_dir() / "samples" / filename
    if kind in ("images", "audio"):
        dataset, report = load_zip(path, name=title, seed=seed, fractions=fractions)
    else:
        dataset, report = load_text_table(path, name=title, text_column="text", label_column="label", seed=seed,
                                          fractions=fractions)
    report["info"]["sample"] = kind
    return dataset, report


def _holds_audio(files: Sequence[PurePosixPath]) -> bool:
    """More sound files than images: the upload is an audio data set."""
    sounds = sum(file.suffix.lower() in audio.AUDIO_EXTENSIONS for file in files)
    return sounds > 0 and sounds >= sum(file.suffix.lower() in IMAGE_EXTENSIONS for file in files)


def _lists_files(frame: pd.DataFrame, extensions: frozenset[str]) -> bool:
    """Whether a table maps files to labels, most of the files having one of `extensions`."""
    file_column = _column(frame, FILE_COLUMNS)
    if file_column is None or _column(frame, LABEL_COLUMNS) is None or frame.empty:
        return False
    suffixes = frame[file_column].astype(str).map(lambda value: PurePosixPath(value.strip()).suffix.lower())
    return bool(suffixes.isin(extensions).mean() > 0.5)


def lists_images(frame: pd.DataFrame) -> bool:
    """Whether a table maps image files to labels (a `file,label` CSV) rather than holding texts."""
    return _lists_files(frame, IMAGE_EXTENSIONS)


def lists_clips(frame: pd.DataFrame) -> bool:
    """Whether a table maps sound files to labels (a `file,label` CSV of clips)."""
    return _lists_files(frame, audio.AUDIO_EXTENSIONS)


def load_path(
    path: str | os.PathLike[str],
    text_column: str | None = None,
    label_column: str | None = None,
    seed: int = 0,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
) -> tuple[Dataset, dict[str, Any]]:
    """Load anything the command line accepts: a zip, a folder, a CSV/TSV, or `sample-images` / `sample-texts`.

    A CSV whose rows name image files (a `file,label` table) loads those images relative to the CSV's folder.

    Raises:
        DataError: the input cannot be read; the message says why.
    """
    text = str(path)
    if text in ("sample-images", "sample-texts", "sample-audio"):
        return load_sample(text.removeprefix("sample-"), seed=seed, fractions=fractions)
    target = Path(text).expanduser()
    if not target.exists():
        raise DataError(f"`{text}` does not exist. Give a zip, a folder, a CSV/TSV, or `sample-images`.")
    if target.is_dir():
        return load_folder(target, seed=seed, fractions=fractions)
    if target.suffix.lower() == ".zip" or zipfile.is_zipfile(target):
        return load_zip(target, seed=seed, fractions=fractions)
    if text_column is None:
        frame = read_table(target)
        modality = "audio" if lists_clips(frame) else "image" if lists_images(frame) else None
        if modality is not None:
            return _load_files(
                modality, target.parent.resolve(), target.name, seed, fractions, str(target), target.resolve()
            )
    return load_text_table(target, text_column=text_column, label_column=label_column, seed=seed, fractions=fractions)


def list_server_entries() -> list[str]:
    """What the browser may load from the operator's data root: folders, zips and tables, one level deep."""
    root = data_root()
    if root is None or not root.is_dir():
        return []
    entries = []
    for child in sorted(root.iterdir()):
        if _is_junk([child.name]) or child.is_symlink():
            continue
        if child.is_dir() or child.suffix.lower() in {".zip"} | TABLE_EXTENSIONS:
            entries.append(child.name + ("/" if child.is_dir() else ""))
    return entries


def load_server_path(
    relative: str,
    text_column: str | None = None,
    label_column: str | None = None,
    seed: int = 0,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
) -> tuple[Dataset, dict[str, Any]]:
    """Load a folder/zip/table inside the data root; anything resolving outside it is refused.

    Raises:
        DataError: no data root configured, a path outside it, or unreadable input.
    """
    root = data_root()
    if root is None:
        raise DataError("Loading from the server is switched off: the operator has not set TRANSFER_STUDIO_DATA_ROOT.")
    target = (root / relative).resolve()
    if target != root and not target.is_relative_to(root):
        raise DataError(f"`{relative}` is outside the server's data folder; pick one of the listed entries.")
    if not target.exists():
        raise DataError(f"`{relative}` is not in the server's data folder (any more); pick one of the listed entries.")
    return load_path(target, text_column=text_column, label_column=label_column, seed=seed, fractions=fractions)


def main_check_data(args: argparse.Namespace) -> int:
    """`python -m core check-data PATH`: print the report; exit 0 ok, 1 when it has errors, 2 when unreadable."""
    try:
        _, report = load_path(args.path, text_column=args.text_column, label_column=args.label_column)
    except DataError as exc:
        if getattr(args, "json", False):
            sys.stdout.write(json.dumps({"ok": False, "fatal": str(exc)}, indent=2) + "\n")
        sys.stderr.write(f"error: {exc}\n")
        return 2
    if getattr(args, "json", False):
        sys.stdout.write(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    else:
        sys.stdout.write(format_report(report) + "\n")
    return 0 if report["ok"] else 1
