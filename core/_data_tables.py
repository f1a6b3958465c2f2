"""Reading a table a person made: a CSV/TSV in whatever encoding and separator their spreadsheet saved, and
guessing which column holds what. Text data sets, `file,label` lists of images or clips and the command line all
read tables here."""

from __future__ import annotations

import contextlib
import csv
import io
import os
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from core._data_report import DataError, check_upload_size

TABLE_EXTENSIONS = frozenset({".csv", ".tsv", ".tab", ".txt"})
FILE_COLUMNS = ("file", "filename", "file_name", "path", "filepath", "file_path", "image", "image_path", "item")
LABEL_COLUMNS = ("label", "labels", "class", "class_name", "category", "target", "y")
TEXT_COLUMNS = ("text", "texts", "message", "sentence", "review", "content", "body", "comment", "description")


def _column(frame: pd.DataFrame, candidates: Sequence[str]) -> str | None:
    lower = {str(column).strip().lower(): column for column in frame.columns}
    for candidate in candidates:
        if candidate in lower:
            return lower[candidate]
    return None


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
