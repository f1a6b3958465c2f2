"""The loaded data set: what every step after Data reads.

One row per example: `item` (an image or sound file path on disk, or the text itself), `label` (the class name as the
user wrote it) and `split` ("train", "val" or "test"). Loading, checking and splitting live in `core.data`;
this module is only the shape they produce, so the other steps do not depend on how data arrived.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Literal

import pandas as pd

Modality = Literal["image", "text", "audio"]
SPLITS = ("train", "val", "test")
#: The file kinds an image example may be (sound clips: `core.audio.AUDIO_EXTENSIONS`).
IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"})


@dataclass
class Dataset:
    """A labelled data set, split into train / val / test.

    Attributes:
        name: what the user calls it ("Sample: flowers", the uploaded file's name).
        modality: "image" or "audio" (items are file paths: images, or 16 kHz mono wav clips) or "text" (items
            are the texts).
        table: columns `item`, `label`, `split`; images are already extracted to a folder we own.
        classes: class names in a fixed, sorted order; a class's index is its position here.
        root: for images and clips, the folder the files live in (inside the workspace); None for text.
        split_given: the user brought their own train / val / test split (it is respected, and its test split
            is what scores come from).
    """

    name: str
    modality: Modality
    table: pd.DataFrame
    classes: list[str] = field(default_factory=list)
    root: str | None = None
    split_given: bool = False

    def __post_init__(self) -> None:
        if not self.classes:
            self.classes = sorted(self.table["label"].astype(str).unique().tolist())

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def split(self, name: str) -> tuple[list[str], list[int]]:
        """The items and class indices of one split, in table order."""
        rows = self.table[self.table["split"] == name]
        index = {label: i for i, label in enumerate(self.classes)}
        return rows["item"].tolist(), [index[str(label)] for label in rows["label"]]

    def counts(self) -> pd.DataFrame:
        """Examples per class and split (classes as rows, splits as columns, plus a total)."""
        counts = pd.crosstab(self.table["label"], self.table["split"]).reindex(index=self.classes, fill_value=0)
        counts = counts.reindex(columns=[s for s in SPLITS], fill_value=0)
        counts["total"] = counts.sum(axis=1)
        return counts

    @property
    def fingerprint(self) -> str:
        """A short hash of items, labels and split; caches and run records key on it."""
        digest = hashlib.sha256()
        digest.update(self.modality.encode())
        for item, label, split in self.table[["item", "label", "split"]].itertuples(index=False):
            digest.update(f"{item}\x1f{label}\x1f{split}\x1e".encode())
        return digest.hexdigest()[:16]
