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
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import hashlib
import io
import json
import logging
import os
import shutil
import struct
import sys
import uuid
import zipfile
import zlib
from collections import defaultdict
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image, ImageOps, UnidentifiedImageError

from core import audio
from core._zipsafe import UnsafeArchive, ZipLimits, extract_archive
from core.dataset import SPLITS, Dataset, Modality
from core.paths import assets_dir, data_root, file_sha256, workspace_subdir

logger = logging.getLogger(__name__)

DEFAULT_FRACTIONS: tuple[float, float, float] = (0.7, 0.15, 0.15)
IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
TABLE_EXTENSIONS = frozenset({".csv", ".tsv", ".tab", ".txt"})
JUNK_NAMES = frozenset({"__MACOSX", "Thumbs.db", "desktop.ini", "__pycache__"})
SPLIT_FOLDERS = {
    "train": "train",
    "training": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "test": "test",
    "testing": "test",
}
FILE_COLUMNS = ("file", "filename", "file_name", "path", "filepath", "file_path", "image", "image_path", "item")
LABEL_COLUMNS = ("label", "labels", "class", "class_name", "category", "target", "y")
TEXT_COLUMNS = ("text", "texts", "message", "sentence", "review", "content", "body", "comment", "description")
LONG_TEXT_WORDS = 256
MIN_EXAMPLES = 2
FEW_EXAMPLES = 5
MAX_IMBALANCE = 10.0
SAMPLES = {
    "images": ("digits.zip", "Sample: handwritten digits"),
    "texts": ("support_messages.csv", "Sample: customer-support messages"),
    "audio": ("spoken_words.zip", "Sample: spoken words"),
}
_SHOWN_NAMES = 10


class DataError(Exception):
    """Input that cannot be loaded at all; `str(exc)` says what is wrong and what to do, for the user."""


def max_upload_bytes() -> int:
    """The largest upload accepted (default 500 MB; env `TRANSFER_STUDIO_MAX_UPLOAD_MB` changes it)."""
    return int(float(os.environ.get("TRANSFER_STUDIO_MAX_UPLOAD_MB", "500")) * 1024**2)


def check_upload_size(size_bytes: int, name: str) -> None:
    """Raise DataError when an upload is over the size limit (the browser widget checks too; this is the backstop)."""
    limit = max_upload_bytes()
    if size_bytes > limit:
        raise DataError(
            f"`{name}` is {size_bytes / 1024**2:,.0f} MB, more than the {limit / 1024**2:,.0f} MB upload limit. "
            "Use fewer or smaller images (resize photos to ~512 px), or ask the operator to put the data in the "
            "server's data folder."
        )


def _names(items: Sequence[str]) -> str:
    shown = ", ".join(str(item) for item in items[:_SHOWN_NAMES])
    return shown + (f" and {len(items) - _SHOWN_NAMES} more" if len(items) > _SHOWN_NAMES else "")


def plural(count: int, singular: str, plural_form: str | None = None) -> str:
    """`1 mistake`, `3 mistakes`: a count with its noun agreeing (pages use it too)."""
    return f"{count} {singular if count == 1 else (plural_form or singular + 's')}"


def per_split_counts(table: pd.DataFrame, split: str, classes: Sequence[str]) -> dict[str, int]:
    """Examples per class in one split of a Dataset table (0 for classes absent from it)."""
    in_split = table.loc[table["split"] == split, "label"].astype(str).value_counts()
    return {label: int(in_split.get(label, 0)) for label in classes}


class _Report:
    """Collects problems while loading; `to_dict` gives the report shape documented in the module docstring."""

    def __init__(self, modality: Modality, source: str) -> None:
        self.errors: list[dict[str, Any]] = []
        self.warnings: list[dict[str, Any]] = []
        self.info: dict[str, Any] = {"modality": modality, "source": source, "skipped_junk": 0}

    def error(self, code: str, message: str, items: Iterable[str] = ()) -> None:
        self.errors.append({"code": code, "message": message, "items": [str(item) for item in items]})

    def warning(self, code: str, message: str, items: Iterable[str] = ()) -> None:
        self.warnings.append({"code": code, "message": message, "items": [str(item) for item in items]})

    def to_dict(self, dataset: Dataset) -> dict[str, Any]:
        table = dataset.table
        per_class = {label: int((table["label"] == label).sum()) for label in dataset.classes}
        per_split = {
            split: {label: int(count) for label, count in per_split_counts(table, split, dataset.classes).items()}
            for split in SPLITS
        }
        info = {
            **self.info,
            "name": dataset.name,
            "examples": len(table),
            "num_classes": len(dataset.classes),
            "classes": list(dataset.classes),
            "per_class": per_class,
            "per_split": per_split,
            "split_sizes": {split: int((table["split"] == split).sum()) for split in SPLITS},
        }
        return {"ok": not self.errors, "errors": self.errors, "warnings": self.warnings, "info": info}


# --------------------------------------------------------------------------------------------------------- split


def _check_fractions(fractions: Sequence[float]) -> tuple[float, float, float]:
    if len(fractions) != 3 or any(f < 0 for f in fractions) or abs(sum(fractions) - 1.0) > 1e-6:
        raise DataError(
            f"The split fractions {tuple(fractions)} must be three non-negative numbers (train, validation, test) "
            "that add up to 1, e.g. 0.7, 0.15, 0.15."
        )
    if fractions[0] <= 0:
        raise DataError("The training fraction must be above 0: a model cannot learn from no examples.")
    return float(fractions[0]), float(fractions[1]), float(fractions[2])


def _targets(count: int, fractions: tuple[float, float, float]) -> dict[str, int]:
    """How many examples of one class go to each split; at least 1 train, and 1 val/test from 3 examples up."""
    _, val_fraction, test_fraction = fractions
    val = int(round(count * val_fraction))
    test = int(round(count * test_fraction))
    if count >= 3:
        val = max(val, 1) if val_fraction > 0 else 0
        test = max(test, 1) if test_fraction > 0 else 0
    while count - val - test < 1 and (val or test):
        if val >= test:
            val -= 1
        else:
            test -= 1
    return {"train": count - val - test, "val": val, "test": test}


def split_examples(
    labels: Sequence[str],
    groups: Sequence[str] | None = None,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    seed: int = 0,
) -> list[str]:
    """Stratified train/val/test assignment that keeps each group (e.g. exact duplicates) in one split.

    Every class gets its share of each split (rounded; tiny classes keep at least one training example). Groups
    are placed whole, largest first, into the split that still needs most of their classes' examples, so
    identical files never end up on both sides of the train/test line. Deterministic for a given seed.

    Args:
        labels: the class of each example.
        groups: a key per example; examples with the same key stay together (default: every example alone).
        fractions: train, validation and test shares, summing to 1.
        seed: the random seed of the shuffle.

    Returns:
        "train", "val" or "test" for each example, in input order.
    """
    fractions = _check_fractions(fractions)
    labels = [str(label) for label in labels]
    keys = [str(key) for key in groups] if groups is not None else [str(i) for i in range(len(labels))]
    need: dict[str, dict[str, int]] = {}
    for label in set(labels):
        need[label] = _targets(labels.count(label), fractions)
    members: dict[str, list[int]] = defaultdict(list)
    for index, key in enumerate(keys):
        members[key].append(index)
    order = list(members)
    rng = np.random.default_rng(seed)
    order = [order[i] for i in rng.permutation(len(order))]
    order.sort(key=lambda key: -len(members[key]))  # stable: shuffled within equal sizes
    assigned = [""] * len(labels)
    for key in order:
        rows = members[key]
        scores = {split: sum(need[labels[row]][split] for row in rows) for split in SPLITS}
        best = max(SPLITS, key=lambda split: (scores[split], split == "train"))
        if scores[best] <= 0:
            best = "train"
        for row in rows:
            assigned[row] = best
            need[labels[row]][best] -= 1
    return assigned


# ---------------------------------------------------------------------------------------------------- images


@dataclass
class _Entry:
    """One image file found in the input: where it is, its class and (when the folders say so) its split."""

    relative: str
    path: Path
    label: str
    split: str | None = None


def _is_junk(parts: Sequence[str]) -> bool:
    return any(part.startswith(".") or part in JUNK_NAMES for part in parts)


def _scan(root: Path) -> tuple[list[PurePosixPath], int]:
    """All regular files under root (relative), and how many junk files were skipped. Symlinks are skipped."""
    files: list[PurePosixPath] = []
    junk = 0
    for folder, dirnames, filenames in os.walk(root, followlinks=False):
        relative_folder = PurePosixPath(Path(folder).relative_to(root).as_posix())
        kept = []
        for dirname in dirnames:
            if _is_junk([dirname]):
                junk += sum(len(names) for _, _, names in os.walk(Path(folder) / dirname))
            else:
                kept.append(dirname)
        dirnames[:] = sorted(kept)
        for filename in sorted(filenames):
            full = Path(folder) / filename
            if _is_junk([filename]) or full.is_symlink() or not full.is_file():
                junk += 1
                continue
            files.append(relative_folder / filename if str(relative_folder) != "." else PurePosixPath(filename))
    return files, junk


def _content_prefix(files: Sequence[PurePosixPath]) -> PurePosixPath:
    """Strip wrapping folders: descend while everything sits in one folder that itself has sub-folders or a table."""
    prefix = PurePosixPath()
    while True:
        below = [file.relative_to(prefix) for file in files if file.is_relative_to(prefix)]
        if not below or any(len(file.parts) == 1 for file in below):
            return prefix
        children = {file.parts[0] for file in below}
        if len(children) != 1:
            return prefix
        child = next(iter(children))
        if child.lower() in SPLIT_FOLDERS:
            return prefix
        deeper = any(len(file.parts) > 2 or file.suffix.lower() in TABLE_EXTENSIONS for file in below)
        if not deeper:
            return prefix
        prefix = prefix / child


def _column(frame: pd.DataFrame, candidates: Sequence[str]) -> str | None:
    lower = {str(column).strip().lower(): column for column in frame.columns}
    for candidate in candidates:
        if candidate in lower:
            return lower[candidate]
    return None


def _label_table(root: Path, tables: Sequence[PurePosixPath]) -> tuple[PurePosixPath, pd.DataFrame] | None:
    """The first table file that maps image files to labels (columns like `file,label`), if any."""
    for table in tables:
        try:
            frame = read_table(root / table)
        except DataError:
            continue
        if _column(frame, FILE_COLUMNS) is not None and _column(frame, LABEL_COLUMNS) is not None:
            return table, frame
    return None


def _normalised_dir() -> Path:
    folder = workspace_subdir("datasets") / "normalised"
    folder.mkdir(exist_ok=True)
    return folder


def _to_rgb(image: Image.Image) -> Image.Image:
    """RGB, with transparency composited on white (a black background would change what the picture shows)."""
    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return image.convert("RGB")


def inspect_image(path: Path) -> tuple[str, Path | None, str | None]:
    """Decode one file fully and make sure a loadable RGB copy exists.

    Returns:
        (sha256 of the file's bytes, the path to use as the Dataset item or None, the problem or None). The
        problem is "not_image", "damaged" or "too_large" (over PIL's decompression-bomb limit).
    """
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    try:
        image = Image.open(io.BytesIO(data))  # reads the header only; PIL raises above twice its pixel limit
        width, height = image.size
        if Image.MAX_IMAGE_PIXELS and width * height > Image.MAX_IMAGE_PIXELS:
            return digest, None, "too_large"
        image.load()
    except Image.DecompressionBombError:
        return digest, None, "too_large"
    except UnidentifiedImageError:
        return digest, None, "not_image"
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError, struct.error):
        return digest, None, "damaged"
    try:
        orientation = image.getexif().get(0x0112, 1)
    except (OSError, ValueError, SyntaxError):
        orientation = 1
    if image.format in ("PNG", "JPEG") and image.mode == "RGB" and orientation in (1, None):
        return digest, path, None
    target = _normalised_dir() / f"{digest[:32]}.png"
    if not target.exists():
        try:
            upright = ImageOps.exif_transpose(image) or image
            rgb = _to_rgb(upright)
        except (OSError, ValueError, SyntaxError):
            return digest, None, "damaged"
        partial = target.with_name(f".{target.name}.{uuid.uuid4().hex}")
        rgb.save(partial, format="PNG")
        os.replace(partial, target)
    return digest, target, None


_INSPECTED: dict[tuple[str, int, int, int | None, str], tuple[str, Path | None, str | None]] = {}
_INSPECTED_MAX = 200_000


def _inspect_cached(path: Path, workspace: str) -> tuple[str, Path | None, str | None]:
    """`inspect_image`, remembered per file version so loading the same data again (another seed) is quick."""
    try:
        status = path.stat()
    except OSError:
        return "", None, "damaged"
    key = (str(path), status.st_size, status.st_mtime_ns, Image.MAX_IMAGE_PIXELS, workspace)
    known = _INSPECTED.get(key)
    if known is not None and (known[1] is None or known[1].exists()):
        return known
    result = inspect_image(path)
    if len(_INSPECTED) >= _INSPECTED_MAX:
        _INSPECTED.clear()
    _INSPECTED[key] = result
    return result


_PROBLEM_TEXT = {
    "not_image": ("{count} in `{folder}` {verb} and {was} skipped: {names}", "is not an image", "are not images"),
    "damaged": (
        "{count} in `{folder}` could not be read as images (damaged or truncated) and {was} skipped: {names}",
        "is",
        "are",
    ),
    "too_large": (
        "{count} in `{folder}` {verb} larger than the image-size safety limit "
        f"({Image.MAX_IMAGE_PIXELS / 1e6:.0f} million pixels) and {{was}} skipped: {{names}}",
        "is",
        "are",
    ),
}


def _report_file_problems(report: _Report, problems: dict[tuple[str, str], list[str]]) -> None:
    for (problem, folder), relatives in sorted(problems.items()):
        template, one, many = _PROBLEM_TEXT[problem]
        count = len(relatives)
        message = template.format(
            count=plural(count, "file"),
            folder=folder,
            verb=one if count == 1 else many,
            was="was" if count == 1 else "were",
            names=_names([PurePosixPath(item).name for item in relatives]),
        )
        them = "it" if count == 1 else "them"
        report.warning(problem, message[0].upper() + message[1:] + f". Remove or replace {them}.", relatives)


def _folder_of(relative: str) -> str:
    parent = PurePosixPath(relative).parent
    return "(top level)" if str(parent) == "." else f"{parent}/"


def _image_entries(
    root: Path,
    files: Sequence[PurePosixPath],
    report: _Report,
    label_csv: Path | None,
    extensions: frozenset[str] = IMAGE_EXTENSIONS,
    noun: str = "image",
) -> tuple[list[_Entry], bool, list[str]]:
    """Turn a file list into labelled entries: from a label CSV, split folders, or class folders.

    `extensions` and `noun` say which files are examples ("image" files, or "clip" files for audio).
    Returns the entries, whether the folders gave the split, and the other files to report.
    """
    entries: list[_Entry] = []
    non_images: list[str] = []
    images = [file for file in files if file.suffix.lower() in extensions]
    others = [file for file in files if file.suffix.lower() not in extensions]
    tables = [file for file in others if file.suffix.lower() in TABLE_EXTENSIONS and len(file.parts) == 1]

    found = None
    if label_csv is not None:
        found = (PurePosixPath(label_csv.relative_to(root).as_posix()), read_table(label_csv))
    elif tables:
        found = _label_table(root, tables)
    if found is not None:
        table_path, frame = found
        file_column, label_column = _column(frame, FILE_COLUMNS), _column(frame, LABEL_COLUMNS)
        if file_column is None or label_column is None:
            raise DataError(
                f"`{table_path}` needs a column of file names and a column of labels (e.g. `file,label`); it has "
                f"columns: {', '.join(map(str, frame.columns))}."
            )
        base = table_path.parent
        known = {str(file): file for file in files}
        missing, unlabelled = [], []
        listed = set()
        for row_number, (name, label) in enumerate(zip(frame[file_column], frame[label_column], strict=True), 2):
            name, label = str(name).strip().replace("\\", "/"), str(label).strip()
            relative = str(base / name) if str(base) != "." else str(PurePosixPath(name))
            if not label:
                unlabelled.append(f"row {row_number}: {name}")
                continue
            if relative not in known:
                missing.append(name)
                continue
            listed.add(relative)
            entries.append(_Entry(relative, root / relative, label))
        if missing:
            report.warning(
                "missing_files",
                f"{plural(len(missing), 'file')} listed in `{table_path}` {'is' if len(missing) == 1 else 'are'} "
                f"not in the data: {_names(missing)}. Check the names (they are case-sensitive) or add the files.",
                missing,
            )
        if unlabelled:
            report.warning(
                "missing_labels",
                f"{plural(len(unlabelled), 'row')} of `{table_path}` {'has' if len(unlabelled) == 1 else 'have'} "
                f"no label and {'was' if len(unlabelled) == 1 else 'were'} skipped: {_names(unlabelled)}.",
                unlabelled,
            )
        unlisted = [str(file) for file in images if str(file) not in listed]
        if unlisted:
            report.warning(
                "unlisted_images",
                f"{plural(len(unlisted), noun)} {'is' if len(unlisted) == 1 else 'are'} not listed in "
                f"`{table_path}` and {'was' if len(unlisted) == 1 else 'were'} ignored: {_names(unlisted)}.",
                unlisted,
            )
        non_images = [str(file) for file in others if file != table_path]
        report.info["layout"] = f"{noun}s + {table_path}"
        return entries, False, non_images

    top = {file.parts[0] for file in files if len(file.parts) > 1}
    split_named = {name for name in top if name.lower() in SPLIT_FOLDERS}
    split_layout = (
        any(SPLIT_FOLDERS[name.lower()] == "train" for name in split_named)
        and len({SPLIT_FOLDERS[name.lower()] for name in split_named}) > 1
    )
    depth = 3 if split_layout else 2
    outside: list[str] = []
    ignored_folders = sorted(top - split_named) if split_layout else []
    for file in images:
        if split_layout and file.parts[0] not in split_named:
            continue
        if len(file.parts) < depth:
            outside.append(str(file))
            continue
        split = SPLIT_FOLDERS[file.parts[0].lower()] if split_layout else None
        label = file.parts[1] if split_layout else file.parts[0]
        entries.append(_Entry(str(file), root / file, label, split))
    non_images = [str(file) for file in others]
    if outside:
        where = "directly in the split folders" if split_layout else "at the top level, outside any class folder"
        report.warning(
            "outside_class_folders",
            f"{plural(len(outside), noun)} {'is' if len(outside) == 1 else 'are'} {where} and "
            f"{'was' if len(outside) == 1 else 'were'} ignored (the class comes from the folder name): "
            f"{_names(outside)}.",
            outside,
        )
    if ignored_folders:
        report.warning(
            "ignored_folders",
            f"Folders next to the split folders were ignored: {_names([f + '/' for f in ignored_folders])}. "
            "With `train/`, `val/`, `test/` at the top, every class folder must be inside one of them.",
            ignored_folders,
        )
    report.info["layout"] = "split folders / class folders" if split_layout else "class folders"
    return entries, split_layout, non_images


def _labelled_files(
    root: Path,
    report: _Report,
    label_csv: Path | None,
    extensions: frozenset[str] = IMAGE_EXTENSIONS,
    noun: str = "image",
) -> tuple[Path, list[_Entry], bool, list[str]]:
    """The folder the data starts in (wrapping folders skipped), its labelled entries, whether the folders gave the
    split, and the files that are not examples (see `_image_entries`)."""
    files, junk = _scan(root)
    report.info["skipped_junk"] = junk
    prefix = _content_prefix(files) if label_csv is None else PurePosixPath()
    content_root = root / prefix
    files = [file.relative_to(prefix) for file in files] if str(prefix) != "." else files
    entries, split_given, others = _image_entries(content_root, files, report, label_csv, extensions, noun)
    return content_root, entries, split_given, others


def _load_image_folder(
    root: Path,
    name: str,
    seed: int,
    fractions: Sequence[float],
    source: str,
    label_csv: Path | None = None,
) -> tuple[Dataset, dict[str, Any]]:
    fractions = _check_fractions(fractions)
    report = _Report("image", source)
    content_root, entries, split_given, non_images = _labelled_files(root, report, label_csv)

    problems: dict[tuple[str, str], list[str]] = defaultdict(list)
    for relative in non_images:
        if PurePosixPath(relative).suffix.lower() in TABLE_EXTENSIONS | {".md", ".json", ".yaml", ".yml"} and (
            len(PurePosixPath(relative).parts) == 1
        ):
            continue  # a README or metadata file next to the class folders is not a problem
        problems[("not_image", _folder_of(relative))].append(relative)
    rows = []
    normalised = 0
    workers = max(1, min(8, os.cpu_count() or 1))
    with ThreadPoolExecutor(max_workers=workers) as pool:  # PIL decodes without the GIL: threads speed this up
        workspace = str(_normalised_dir())
        inspected = list(pool.map(lambda entry: _inspect_cached(entry.path, workspace), entries))
    for entry, (digest, item, problem) in zip(entries, inspected, strict=True):
        if problem is not None:
            problems[(problem, _folder_of(entry.relative))].append(entry.relative)
            continue
        normalised += int(item != entry.path)
        rows.append(
            {
                "item": str(item),
                "label": entry.label,
                "split": entry.split or "",
                "source": entry.relative,
                "hash": digest,
            }
        )
    _report_file_problems(report, problems)
    report.info["normalised_images"] = normalised
    table = pd.DataFrame(rows, columns=["item", "label", "split", "source", "hash"])
    return _finish(table, name, "image", report, split_given, seed, fractions, root=str(content_root))


# ------------------------------------------------------------------------------------------------------ audio


@dataclass(frozen=True)
class _Clip:
    """What inspecting one sound file found: its content hash, the item to use, its problem, and its format."""

    digest: str
    item: Path | None
    problem: str | None
    sample_rate: int = 0
    channels: int = 0
    seconds: float = 0.0
    detail: str = ""


def inspect_clip(path: Path) -> _Clip:
    """Decode one sound file fully and make sure a 16 kHz mono wav copy of it exists.

    The content hash is taken over the normalised samples, so the same sound saved as wav and as flac (or at two
    rates) counts as a duplicate. A file that is already a 16 kHz mono wav is used in place; any other is
    converted once into the workspace (keyed by that hash), so Dataset items are always files `soundfile` reads.
    The problem is "not_audio" (no decoder recognises it), "damaged_audio" (cut off or corrupt) or "silent".
    """
    import soundfile

    try:
        samples, info = audio.read_audio(str(path))
    except audio.AudioReadError as error:
        text = str(error)
        problem = "damaged_audio" if ("truncated" in text or "no sound" in text or "invalid" in text) else "not_audio"
        if problem == "not_audio" and path.suffix.lower() in audio.AUDIO_EXTENSIONS:
            problem = "damaged_audio"  # a .wav that no decoder reads is a damaged sound file, not some other file
        return _Clip("", None, problem, detail=text)
    mono = audio.resample(audio.to_mono(samples), info.sample_rate, audio.MelSettings.sample_rate)
    pcm = np.clip(np.round(mono * 32767.0), -32768, 32767).astype(np.int16)
    digest = hashlib.sha256(pcm.tobytes()).hexdigest()
    if float(np.abs(mono).max()) < audio.SILENCE_PEAK:
        return _Clip(digest, None, "silent", info.sample_rate, info.channels, info.seconds)
    if path.suffix.lower() == ".wav" and info.sample_rate == audio.MelSettings.sample_rate and info.channels == 1:
        return _Clip(digest, path, None, info.sample_rate, info.channels, info.seconds)
    target = _normalised_dir() / f"{digest[:32]}.wav"
    if not target.exists():
        partial = target.with_name(f".{target.stem}.{uuid.uuid4().hex}.wav")
        soundfile.write(str(partial), pcm, audio.MelSettings.sample_rate, subtype="PCM_16")
        os.replace(partial, target)
    return _Clip(digest, target, None, info.sample_rate, info.channels, info.seconds)


_AUDIO_PROBLEM_TEXT = {
    "not_audio": "{count} in `{folder}` {verb} not sound files and {was} skipped: {names}",
    "damaged_audio": "{count} in `{folder}` could not be read as sound (damaged or truncated) and {was} skipped: "
    "{names}",
    "silent": "{count} in `{folder}` {verb} silent (no sample louder than -60 dB) and {was} skipped: {names}",
}
#: A clip more than this many times shorter or longer than the median clip is pointed out.
LENGTH_RATIO = 3.0


def _report_clip_problems(report: _Report, problems: dict[tuple[str, str], list[str]]) -> None:
    for (problem, folder), relatives in sorted(problems.items()):
        count = len(relatives)
        message = _AUDIO_PROBLEM_TEXT[problem].format(
            count=plural(count, "file"),
            folder=folder,
            verb="is" if count == 1 else "are",
            was="was" if count == 1 else "were",
            names=_names([PurePosixPath(item).name for item in relatives]),
        )
        them = "it" if count == 1 else "them"
        report.warning(problem, message[0].upper() + message[1:] + f". Remove or replace {them}.", relatives)


def _check_clip_formats(report: _Report, relatives: Sequence[str], clips: Sequence[_Clip]) -> None:
    """Mixed rates or channels (normalised, said once) and clips far shorter or longer than the rest."""
    rates = pd.Series([clip.sample_rate for clip in clips]).value_counts().sort_index()
    channels = pd.Series([clip.channels for clip in clips]).value_counts().sort_index()
    target = audio.MelSettings.sample_rate
    report.info["sample_rates"] = {int(rate): int(count) for rate, count in rates.items()}
    report.info["channels"] = {int(channel): int(count) for channel, count in channels.items()}
    if len(rates) > 1 or len(channels) > 1:
        described = []
        if len(rates) > 1:
            described.append("sample rates " + ", ".join(f"{rate} Hz ({count})" for rate, count in rates.items()))
        if len(channels) > 1:
            described.append("channels " + ", ".join(
                f"{'mono' if channel == 1 else 'stereo' if channel == 2 else f'{channel} channels'} ({count})"
                for channel, count in channels.items()))
        report.warning(
            "mixed_formats",
            f"The clips were recorded differently ({'; '.join(described)}). All were converted to {target // 1000} "
            "kHz mono, which is what the models use; if one class was recorded with another device, the model may "
            "learn the device instead of the sound.",
        )
    seconds = np.asarray([clip.seconds for clip in clips], dtype=np.float64)
    if not len(seconds):
        return
    median = float(np.median(seconds))
    report.info["clip_seconds"] = {"median": round(median, 3), "min": round(float(seconds.min()), 3),
                                   "max": round(float(seconds.max()), 3)}
    short = [f"{relative} ({length:.2f} s)" for relative, length in zip(relatives, seconds, strict=True)
             if length < median / LENGTH_RATIO]
    long = [f"{relative} ({length:.2f} s)" for relative, length in zip(relatives, seconds, strict=True)
            if length > median * LENGTH_RATIO]
    if short:
        report.warning(
            "short_clips",
            f"{plural(len(short), 'clip')} {'is' if len(short) == 1 else 'are'} far shorter than the median clip "
            f"({median:.2f} s) and will be padded with silence: {_names(short)}. Check that they were not cut off.",
            short,
        )
    if long:
        report.warning(
            "long_clips",
            f"{plural(len(long), 'clip')} {'is' if len(long) == 1 else 'are'} far longer than the median clip "
            f"({median:.2f} s); the model hears only their loudest stretch of the clip length: {_names(long)}. "
            "Cut long recordings into one clip per example.",
            long,
        )


def _load_audio_folder(
    root: Path,
    name: str,
    seed: int,
    fractions: Sequence[float],
    source: str,
    label_csv: Path | None = None,
) -> tuple[Dataset, dict[str, Any]]:
    """Sound files in class folders (or listed in a `file,label` CSV): checked, normalised to 16 kHz mono."""
    fractions = _check_fractions(fractions)
    report = _Report("audio", source)
    content_root, entries, split_given, others = _labelled_files(
        root, report, label_csv, extensions=audio.AUDIO_EXTENSIONS, noun="clip"
    )
    problems: dict[tuple[str, str], list[str]] = defaultdict(list)
    for relative in others:
        suffix = PurePosixPath(relative).suffix.lower()
        if len(PurePosixPath(relative).parts) == 1 and suffix in TABLE_EXTENSIONS | {".md", ".json", ".yaml", ".yml"}:
            continue
        if len(PurePosixPath(relative).parts) <= 2 and PurePosixPath(relative).stem.upper() in ("LICENSE", "README"):
            continue  # a licence or readme file next to the class folders is not a problem
        problems[("not_audio", _folder_of(relative))].append(relative)
    workers = max(1, min(4, os.cpu_count() or 1))
    with ThreadPoolExecutor(max_workers=workers) as pool:  # libsndfile and scipy release the GIL
        inspected = list(pool.map(lambda entry: inspect_clip(entry.path), entries))
    rows, kept_relatives, kept_clips = [], [], []
    normalised = 0
    for entry, clip in zip(entries, inspected, strict=True):
        if clip.problem is not None:
            problems[(clip.problem, _folder_of(entry.relative))].append(entry.relative)
            continue
        normalised += int(clip.item != entry.path)
        kept_relatives.append(entry.relative)
        kept_clips.append(clip)
        rows.append({"item": str(clip.item), "label": entry.label, "split": entry.split or "",
                     "source": entry.relative, "hash": clip.digest})
    _report_clip_problems(report, problems)
    _check_clip_formats(report, kept_relatives, kept_clips)
    report.info["normalised_clips"] = normalised
    table = pd.DataFrame(rows, columns=["item", "label", "split", "source", "hash"])
    return _finish(table, name, "audio", report, split_given, seed, fractions, root=str(content_root))


def _holds_audio(files: Sequence[PurePosixPath]) -> bool:
    """More sound files than images: the upload is an audio data set."""
    sounds = sum(file.suffix.lower() in audio.AUDIO_EXTENSIONS for file in files)
    return sounds > 0 and sounds >= sum(file.suffix.lower() in IMAGE_EXTENSIONS for file in files)


# ------------------------------------------------------------------------------------------------ common end


def _finish(
    table: pd.DataFrame,
    name: str,
    modality: Modality,
    report: _Report,
    split_given: bool,
    seed: int,
    fractions: tuple[float, float, float],
    root: str | None,
) -> tuple[Dataset, dict[str, Any]]:
    """Split (or complete a given split), run the checks every modality shares, and build Dataset + report."""
    table = table.reset_index(drop=True)
    table["label"] = table["label"].astype(str)
    test_given = split_given and bool((table["split"] == "test").any())
    if split_given:
        report.info["split_source"] = "given by the folders"
        for missing in ("val", "test"):
            if len(table) and not (table["split"] == missing).any():
                share = fractions[1] if missing == "val" else fractions[2]
                train_rows = table.index[table["split"] == "train"]
                carved = split_examples(
                    table.loc[train_rows, "label"].tolist(),
                    table.loc[train_rows, "hash"].tolist(),
                    (1.0 - share, share, 0.0) if missing == "val" else (1.0 - share, 0.0, share),
                    seed,
                )
                table.loc[train_rows, "split"] = [missing if split != "train" else "train" for split in carved]
                report.info["split_source"] += f"; {missing} carved from train ({share:.0%}, seed {seed})"
    else:
        table["split"] = split_examples(table["label"].tolist(), table["hash"].tolist(), fractions, seed)
        report.info["split_source"] = random_split_source(fractions, seed)
    _check_duplicates(table, modality, report, split_given)
    _check_classes(table, modality, report, split_given)
    dataset = Dataset(
        name=name, modality=modality, table=table.drop(columns=["hash"]), root=root, split_given=test_given
    )
    result = report.to_dict(dataset)
    logger.info(
        "loaded %s: %d examples, %d classes, %d errors, %d warnings",
        name,
        len(table),
        dataset.num_classes,
        len(result["errors"]),
        len(result["warnings"]),
    )
    return dataset, result


def _check_duplicates(table: pd.DataFrame, modality: Modality, report: _Report, split_given: bool) -> None:
    what = "texts" if modality == "text" else "files"
    names = table["source"]
    duplicated = table[table["hash"].duplicated(keep=False)]
    report.info["duplicates"] = int(table["hash"].duplicated().sum())
    if duplicated.empty:
        return
    conflicting, same, leaking = [], [], []
    for _, group in duplicated.groupby("hash", sort=False):
        described = " = ".join(names[group.index].tolist())
        if group["label"].nunique() > 1:
            labels = ", ".join(f"`{label}`" for label in sorted(group["label"].unique()))
            conflicting.append(f"{described} ({labels})")
        else:
            same.append(described)
        if group["split"].nunique() > 1:
            leaking.append(f"{described} ({', '.join(sorted(group['split'].unique()))})")
    if conflicting:
        report.warning(
            "conflicting_duplicates",
            f"{plural(len(conflicting), 'set')} of identical {what} carry different labels, so the model is "
            f"taught two answers for the same input: {_names(conflicting)}. Keep each in its right class only.",
            conflicting,
        )
    if same:
        kept = "were kept in the same split" if not split_given else "are in the data more than once"
        report.warning(
            "duplicates",
            f"{plural(len(same), 'set')} of exact duplicate {what} found ({kept}); duplicates add no information: "
            f"{_names(same)}.",
            same,
        )
    if leaking:
        report.warning(
            "duplicates_across_splits",
            f"{plural(len(leaking), 'set')} of identical {what} sit in more than one split, so the validation/test "
            f"score will look better than it is (leakage): {_names(leaking)}. Remove the copies from val/test.",
            leaking,
        )


def _check_classes(table: pd.DataFrame, modality: Modality, report: _Report, split_given: bool) -> None:
    what = {"image": "images", "text": "texts", "audio": "clips"}[modality]
    counts = table["label"].value_counts()
    if counts.empty:
        how = {
            "image": "Put one folder per class with images in it (e.g. `cats/1.jpg`, `dogs/2.jpg`) and zip those "
            "folders.",
            "audio": "Put one folder per class with sound files in it (e.g. `yes/1.wav`, `no/2.flac`) and zip those "
            "folders.",
            "text": "Check that the chosen text and label columns hold values.",
        }[modality]
        report.error("no_examples", f"No usable {what} were found. {how}")
        return
    if len(counts) == 1:
        only = counts.index[0]
        report.error(
            "one_class",
            f"Only one class was found (`{only}`): classification needs at least two. Add a second class "
            f"({'rows with another label' if modality == 'text' else f'another folder of {what}'}).",
            [only],
        )
    tiny = sorted(label for label, count in counts.items() if count < MIN_EXAMPLES)
    if tiny:
        report.error(
            "too_few_examples",
            f"{plural(len(tiny), 'class', 'classes')} {'has' if len(tiny) == 1 else 'have'} fewer than "
            f"{MIN_EXAMPLES} examples: {_names([f'`{t}`' for t in tiny])}. Add examples (20+ per class works well) "
            "or remove the class.",
            tiny,
        )
    few = sorted(label for label, count in counts.items() if MIN_EXAMPLES <= count < FEW_EXAMPLES)
    if few:
        report.warning(
            "few_examples",
            f"{plural(len(few), 'class', 'classes')} {'has' if len(few) == 1 else 'have'} fewer than {FEW_EXAMPLES} "
            f"examples: {_names([f'`{c}` ({counts[c]})' for c in few])}. Results for them will be unreliable.",
            few,
        )
    if len(counts) > 1 and counts.min() > 0 and counts.max() / counts.min() > MAX_IMBALANCE:
        report.warning(
            "imbalance",
            f"The classes are very unbalanced: `{counts.idxmax()}` has {counts.max()} examples, `{counts.idxmin()}` "
            f"only {counts.min()} ({counts.max() / counts.min():.0f}x). Consider class weights in training or "
            "more examples of the small classes.",
            [str(counts.idxmax()), str(counts.idxmin())],
        )
    if len(counts) > 1:
        empty = [name for name in ("val", "test") if not (table["split"] == name).any()]
        if empty:
            titles = " and ".join("validation" if name == "val" else "test" for name in empty)
            report.warning(
                "empty_split",
                f"The {titles} split {'is' if len(empty) == 1 else 'are'} empty, so "
                + ("early stopping and the best-epoch choice cannot use held-out data" if "val" in empty else "")
                + (" and " if len(empty) == 2 else "")
                + ("step 5 has nothing held out to test on" if "test" in empty else "")
                + ". Add examples, or check for many identical files (identical files stay in one split).",
                empty,
            )
    if split_given:
        train_labels = set(table.loc[table["split"] == "train", "label"])
        absent = sorted(set(counts.index) - train_labels)
        if absent:
            report.error(
                "missing_from_train",
                f"{plural(len(absent), 'class', 'classes')} {'has' if len(absent) == 1 else 'have'} no examples "
                f"in the training folder: {_names([f'`{a}`' for a in absent])}. Put some of them in `train/`.",
                absent,
            )


# ------------------------------------------------------------------------------------------------------ text


def _decode(data: bytes, name: str) -> tuple[str, str]:
    """Text and encoding name: UTF-16 or UTF-8 (with or without BOM), else Windows-1252 / Latin-1."""
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        try:
            return data.decode("utf-16"), "utf-16"
        except UnicodeDecodeError as exc:
            raise DataError(
                f"`{name}` starts like UTF-16 text but is damaged ({exc.reason}). Save it as UTF-8 CSV."
            ) from exc
    head = data[:65536]
    signatures = {
        b"PK\x03\x04": "a zip archive",
        b"\x89PNG": "a PNG image",
        b"\xff\xd8\xff": "a JPEG image",
        b"%PDF": "a PDF document",
        b"\xd0\xcf\x11\xe0": "an old Excel/Word file",
        b"GIF8": "a GIF image",
    }
    for magic, kind in signatures.items():
        if head.startswith(magic):
            hint = " (save the sheet as CSV UTF-8 from Excel)" if "Excel" in kind or "zip" in kind else ""
            raise DataError(f"`{name}` is not a text table: it is {kind}{hint}. Upload a CSV or TSV file.")
    if b"\x00" in head:
        raise DataError(
            f"`{name}` is not a text table: it contains binary data. Upload a CSV or TSV file saved as text (UTF-8)."
        )
    if data.startswith(b"\xef\xbb\xbf"):
        return data[3:].decode("utf-8", errors="replace"), "utf-8-sig"
    with contextlib.suppress(UnicodeDecodeError):  # not UTF-8: try the Windows / Latin-1 code pages below
        return data.decode("utf-8"), "utf-8"
    try:
        return data.decode("cp1252"), "windows-1252"
    except UnicodeDecodeError:
        return data.decode("latin-1"), "latin-1"


def _guess_delimiter(head: str) -> str:
    """The separator that splits the header row into the most columns (comma wins ties; quotes respected)."""
    header = head.splitlines()[0] if head else ""
    best, best_fields = ",", 1
    for delimiter in (",", "\t", ";", "|"):
        fields = len(next(csv.reader([header], delimiter=delimiter), []))
        if fields > best_fields:
            best, best_fields = delimiter, fields
    return best


def read_table(source: bytes | str | os.PathLike[str], name: str | None = None) -> pd.DataFrame:
    """Read a CSV/TSV into a frame of strings (encoding and delimiter detected); `frame.attrs` notes both.

    Args:
        source: the file's bytes (an upload) or a path.
        name: what to call the file in messages (default: the path's name).

    Raises:
        DataError: binary content, no columns, or a table that cannot be parsed.
    """
    if isinstance(source, bytes):
        data, name = source, name or "the file"
    else:
        path = Path(source)
        name = name or path.name
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise DataError(f"`{name}` cannot be read: {exc.strerror or exc}.") from exc
    check_upload_size(len(data), name)
    text, encoding = _decode(data, name)
    if not text.strip():
        raise DataError(f"`{name}` is empty. Upload a CSV with a header row, e.g. `text,label`.")
    first_lines = "\n".join(text.splitlines()[:20])
    if name.lower().endswith((".tsv", ".tab")):
        delimiter = "\t"
    else:
        delimiter = _guess_delimiter(first_lines)
    try:
        frame = pd.read_csv(io.StringIO(text), sep=delimiter, dtype=str, keep_default_na=False, skipinitialspace=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, ValueError, csv.Error) as exc:
        raise DataError(
            f"`{name}` could not be read as a table ({str(exc).splitlines()[0]}). Check that it is a CSV/TSV with a "
            "header row and that texts containing commas are in double quotes."
        ) from exc
    frame.columns = [str(column).strip() for column in frame.columns]
    frame.attrs.update({"encoding": encoding, "delimiter": delimiter, "name": name})
    return frame


def guess_columns(frame: pd.DataFrame) -> tuple[str | None, str | None]:
    """A sensible default (text column, label column) for a preview: by name first, else by content."""
    text_column = _column(frame, TEXT_COLUMNS)
    label_column = _column(frame, LABEL_COLUMNS)
    columns = list(frame.columns)
    if text_column is None and columns:
        lengths = {column: frame[column].astype(str).str.len().mean() for column in columns if column != label_column}
        text_column = max(lengths, key=lengths.get) if lengths else None
    if label_column is None:
        rest = [column for column in columns if column != text_column]
        varied = [column for column in rest if frame[column].nunique() >= 2] or rest
        if varied:  # a label column repeats few values; a constant column cannot be the label
            label_column = min(varied, key=lambda column: (frame[column].nunique(), columns.index(column)))
    return text_column, label_column


def load_text_table(
    source: bytes | str | os.PathLike[str],
    name: str | None = None,
    text_column: str | None = None,
    label_column: str | None = None,
    seed: int = 0,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
) -> tuple[Dataset, dict[str, Any]]:
    """Load a CSV/TSV of texts and labels; columns default to `guess_columns`.

    Raises:
        DataError: unreadable file, or a named column that is not in the file.
    """
    fractions = _check_fractions(fractions)
    frame = read_table(source, name)
    name = frame.attrs["name"]
    guessed_text, guessed_label = guess_columns(frame)
    text_column = text_column or guessed_text
    label_column = label_column or guessed_label
    columns = ", ".join(f"`{column}`" for column in frame.columns)
    for role, column in (("text", text_column), ("label", label_column)):
        if column is None or column not in frame.columns:
            raise DataError(
                f"`{name}` has no {role} column{f' `{column}`' if column else ''}; its columns are: {columns}. "
                f"Pick the column that holds the {role}s (a CSV needs at least two columns: text and label)."
            )
    if text_column == label_column:
        raise DataError(f"The text column and the label column are both `{text_column}`: pick two different columns.")
    report = _Report("text", name)
    report.info.update(
        {
            "encoding": frame.attrs["encoding"],
            "rows_read": len(frame),
            "text_column": text_column,
            "label_column": label_column,
        }
    )
    texts = frame[text_column].astype(str).str.strip()
    labels = frame[label_column].astype(str).str.strip()
    row_numbers = pd.Series(range(2, len(frame) + 2), index=frame.index)
    no_label = labels == ""
    empty = (texts == "") & ~no_label
    if no_label.any():
        items = [f"row {n}" for n in row_numbers[no_label]]
        report.warning(
            "missing_labels", f"{plural(len(items), 'row')} without a label skipped: {_names(items)}.", items
        )
    if empty.any():
        items = [f"row {n}" for n in row_numbers[empty]]
        report.warning("empty_texts", f"{plural(len(items), 'empty text')} skipped: {_names(items)}.", items)
    keep = ~(no_label | empty)
    texts, labels, row_numbers = texts[keep], labels[keep], row_numbers[keep]
    words = texts.str.split().str.len()
    long = words > LONG_TEXT_WORDS
    if long.any():
        items = [f"row {n} ({w} words)" for n, w in zip(row_numbers[long], words[long], strict=True)]
        report.warning(
            "long_texts",
            f"{plural(len(items), 'text')} {'is' if len(items) == 1 else 'are'} longer than {LONG_TEXT_WORDS} words; "
            f"the model reads only the beginning (they are truncated): {_names(items)}.",
            items,
        )
    report.info["rows_skipped"] = int((~keep).sum())
    table = pd.DataFrame(
        {
            "item": texts.tolist(),
            "label": labels.tolist(),
            "split": "",
            "source": [f"row {n}" for n in row_numbers],
            "hash": [" ".join(text.casefold().split()) for text in texts],
        }
    )
    return _finish(table, name, "text", report, False, seed, fractions, root=None)


# --------------------------------------------------------------------------------------------------- entries


def extract_zip(
    source: bytes | str | os.PathLike[str], name: str | None = None, limits: ZipLimits | None = None
) -> Path:
    """Safely extract a zip into `workspace/datasets/<content hash>/files` (reused when already there).

    Raises:
        DataError: over the upload limit, damaged, encrypted, unsafe (zip-slip) or a zip bomb.
    """
    if isinstance(source, bytes):
        name = name or "the archive"
        size = len(source)
        check_upload_size(size, name)
        digest = hashlib.sha256(source).hexdigest()
        opened: Any = io.BytesIO(source)
    else:
        path = Path(source)
        name = name or path.name
        try:
            size = path.stat().st_size
        except OSError as exc:
            raise DataError(f"`{name}` cannot be read: {exc.strerror or exc}.") from exc
        check_upload_size(size, name)
        digest = file_sha256(path)
        opened = path
    datasets = workspace_subdir("datasets")
    final = datasets / digest[:24]
    if (final / ".complete").exists():
        logger.info("reusing extracted %s at %s", name, final)
        return final / "files"
    partial = datasets / f".{digest[:24]}.partial-{uuid.uuid4().hex}"
    try:
        extract_archive(opened, partial / "files", name, size, limits)
    except UnsafeArchive as exc:
        shutil.rmtree(partial, ignore_errors=True)
        raise DataError(str(exc)) from exc
    except RuntimeError as exc:  # zipfile: "File ... is encrypted, password required"
        shutil.rmtree(partial, ignore_errors=True)
        raise DataError(f"`{name}` is password-protected; zip it again without a password.") from exc
    except NotImplementedError as exc:
        shutil.rmtree(partial, ignore_errors=True)
        raise DataError(
            f"`{name}` uses a compression method we cannot read ({exc}); re-zip it with the standard "
            "'deflate' method (the default of every zip tool)."
        ) from exc
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as exc:
        shutil.rmtree(partial, ignore_errors=True)
        raise DataError(
            f"`{name}` is not a readable zip archive (it may be damaged, cut off during upload, or not a "
            f"zip at all: {exc}). Create the zip again and re-upload it."
        ) from exc
    (partial / ".complete").write_text(name, encoding="utf-8")
    if final.exists():
        shutil.rmtree(final, ignore_errors=True)
    try:
        os.replace(partial, final)
    except OSError:  # another session extracted the same upload meanwhile
        shutil.rmtree(partial, ignore_errors=True)
    return final / "files"


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
        return _load_audio_folder(folder, name, seed, fractions, source=name)
    if files and not any(file.suffix.lower() in IMAGE_EXTENSIONS for file in files):
        tables = [file for file in files if file.suffix.lower() in TABLE_EXTENSIONS]
        if len(tables) == 1:
            return load_text_table(folder / tables[0], name=name, seed=seed, fractions=fractions)
    return _load_image_folder(folder, name, seed, fractions, source=name)


def images_in_zip(source: bytes | str | os.PathLike[str], name: str | None = None) -> list[tuple[str, Path]]:
    """The images of a zip to classify, each as (its path inside the zip, the extracted file), sorted by path.

    The path inside the zip is how the user knows each file: `cats/0000.png` and `dogs/0000.png` stay apart, which
    their base names would not. Hidden junk (`__MACOSX`, dotfiles) is skipped; other non-images are ignored.

    Raises:
        DataError: the archive cannot be used (see `extract_zip`), or it holds no image.
    """
    name = name or (Path(source).name if not isinstance(source, bytes) else "the archive")
    folder = extract_zip(source, name)
    files, _ = _scan(folder)
    images = [(file.as_posix(), folder / file) for file in files if file.suffix.lower() in IMAGE_EXTENSIONS]
    if not images:
        raise DataError(f"`{name}` holds no images ({', '.join(sorted(IMAGE_EXTENSIONS))}).")
    return images


def load_folder(
    path: str | os.PathLike[str], name: str | None = None, seed: int = 0, fractions: Sequence[float] = DEFAULT_FRACTIONS
) -> tuple[Dataset, dict[str, Any]]:
    """Load an image folder on disk in place (class folders, split folders, or images + a label CSV)."""
    folder = Path(path)
    if not folder.is_dir():
        raise DataError(f"`{folder}` is not a folder.")
    if _holds_audio(_scan(folder)[0]):
        return _load_audio_folder(folder.resolve(), name or folder.name, seed, fractions, source=str(folder))
    return _load_image_folder(folder.resolve(), name or folder.name, seed, fractions, source=str(folder))


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


def random_split_source(fractions: Sequence[float] = DEFAULT_FRACTIONS, seed: int = 0) -> str:
    """How a report names a random split: "random, stratified (train/val/test 70%/15%/15%, seed 0)"."""
    return f"random, stratified (train/val/test {fractions[0]:.0%}/{fractions[1]:.0%}/{fractions[2]:.0%}, seed {seed})"


def lists_images(frame: pd.DataFrame) -> bool:
    """Whether a table maps image files to labels (a `file,label` CSV) rather than holding texts."""
    file_column = _column(frame, FILE_COLUMNS)
    if file_column is None or _column(frame, LABEL_COLUMNS) is None or frame.empty:
        return False
    suffixes = frame[file_column].astype(str).map(lambda value: PurePosixPath(value.strip()).suffix.lower())
    return bool(suffixes.isin(IMAGE_EXTENSIONS).mean() > 0.5)


def lists_clips(frame: pd.DataFrame) -> bool:
    """Whether a table maps sound files to labels (a `file,label` CSV of clips)."""
    file_column = _column(frame, FILE_COLUMNS)
    if file_column is None or _column(frame, LABEL_COLUMNS) is None or frame.empty:
        return False
    suffixes = frame[file_column].astype(str).map(lambda value: PurePosixPath(value.strip()).suffix.lower())
    return bool(suffixes.isin(audio.AUDIO_EXTENSIONS).mean() > 0.5)


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
        if lists_clips(frame):
            return _load_audio_folder(
                target.parent.resolve(), target.name, seed, fractions, source=str(target), label_csv=target.resolve()
            )
        if lists_images(frame):
            return _load_image_folder(
                target.parent.resolve(), target.name, seed, fractions, source=str(target), label_csv=target.resolve()
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


# -------------------------------------------------------------------------------------------------------- CLI


def format_report(report: dict[str, Any]) -> str:
    """The report as readable text (what `check-data` prints)."""
    info = report["info"]
    lines = [
        f"Data set: {info.get('name', info.get('source'))} ({info['modality']})",
        f"  {info['examples']} examples in {info['num_classes']} classes; split: {info.get('split_source', '-')}",
        "  train/val/test: " + " / ".join(str(info["split_sizes"][split]) for split in SPLITS),
    ]
    for label, count in info["per_class"].items():
        per_split = " / ".join(str(info["per_split"][split][label]) for split in SPLITS)
        lines.append(f"    {label}: {count} ({per_split})")
    if info.get("skipped_junk"):
        lines.append(f"  skipped {info['skipped_junk']} hidden/system files (__MACOSX, .DS_Store, dotfiles)")
    for kind, problems in (("ERROR", report["errors"]), ("warning", report["warnings"])):
        for problem in problems:
            lines.append(f"{kind} [{problem['code']}]: {problem['message']}")
    lines.append("OK: ready to train." if report["ok"] else "NOT OK: fix the errors above before training.")
    return "\n".join(lines)


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
