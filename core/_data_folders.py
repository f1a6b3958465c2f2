"""Folders of example files, whatever they hold: an uploaded zip extracted safely into the workspace, and a
folder's layout read into labelled files.

A layout is one folder per class, `train/`, `val/`, `test/` folders of class folders, or files listed in a
`file,label` table. Hidden junk (`__MACOSX`, dotfiles) is skipped and wrapping folders are looked through. Images
(`core._data_images`) and sound clips (`core._data_audio`) share all of this; each decodes its own files.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import shutil
import uuid
import zipfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import pandas as pd

from core._data_report import DataError, _names, _Report, check_upload_size, plural
from core._data_tables import FILE_COLUMNS, LABEL_COLUMNS, TABLE_EXTENSIONS, _column, read_table
from core._zipsafe import UnsafeArchive, ZipLimits, extract_archive
from core.paths import file_sha256, workspace_subdir

logger = logging.getLogger("core.data")  # the public module's name: what callers silence or watch (core.bench)


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


def _report_problems(
    report: _Report, problems: dict[tuple[str, str], list[str]], texts: dict[str, tuple[str, str, str]]
) -> None:
    """One warning per problem and folder, naming the files skipped.

    Args:
        problems: the files (relative paths) of each (problem code, folder).
        texts: per problem code, a message template (fields `count`, `folder`, `verb`, `was`, `names`) and the
            verb for one file and for several.
    """
    for (problem, folder), relatives in sorted(problems.items()):
        template, one, many = texts[problem]
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


def _layout_entries(
    root: Path,
    files: Sequence[PurePosixPath],
    report: _Report,
    label_csv: Path | None,
    extensions: frozenset[str],
    noun: str,
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
    extensions: frozenset[str],
    noun: str,
) -> tuple[Path, list[_Entry], bool, list[str]]:
    """The folder the data starts in (wrapping folders skipped), its labelled entries, whether the folders gave the
    split, and the files that are not examples (see `_layout_entries`)."""
    files, junk = _scan(root)
    report.info["skipped_junk"] = junk
    prefix = _content_prefix(files) if label_csv is None else PurePosixPath()
    content_root = root / prefix
    files = [file.relative_to(prefix) for file in files] if str(prefix) != "." else files
    entries, split_given, others = _layout_entries(content_root, files, report, label_csv, extensions, noun)
    return content_root, entries, split_given, others


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
