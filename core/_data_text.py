"""Texts as data: a table of texts and labels, with rows that cannot be used (no label, no text) named and
skipped, and texts longer than the model reads pointed out."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import pandas as pd

from core._data_checks import _finish
from core._data_report import DataError, _names, _Report, plural
from core._data_split import DEFAULT_FRACTIONS, _check_fractions
from core._data_tables import guess_columns, read_table
from core.dataset import Dataset

LONG_TEXT_WORDS = 256


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
