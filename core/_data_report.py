"""What the Data step tells the user: `DataError` for input that cannot be loaded at all, the check report for
problems inside readable data (its shape is in `core.data`), and the words both use.

The lowest of the `core._data_*` modules: every loader raises `DataError` and fills a `_Report`.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from typing import Any

import pandas as pd

from core.dataset import SPLITS, Dataset, Modality

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
    """Collects problems while loading; `to_dict` gives the report shape documented in `core.data`."""

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
