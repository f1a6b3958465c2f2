"""A tiny image backbone and generated data for fast unit tests (timm's `test_resnet` idea).

TinyCNN is a real `Backbone` (three layer groups with BatchNorm), small enough that a test trains it in
well under a second on CPU.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch import nn

from core.backbones import Backbone, BackboneSpec
from core.dataset import Dataset

TINY_SPEC = BackboneSpec(
    name="tiny_cnn",
    modality="image",
    source="test",
    model_id="tiny_cnn",
    title="Tiny CNN (tests only)",
    input_size=(3, 32, 32),
    params_millions=0.01,
    gmacs=0.001,
    licence="Apache-2.0",
    pretrained_on="nothing (random weights)",
    description="A three-group CNN for unit tests.",
    mean=(0.5, 0.5, 0.5),
    std=(0.5, 0.5, 0.5),
    crop_pct=1.0,
)


class TinyCNN(Backbone):
    """stem -> stage -> pool, each a layer group."""

    def __init__(self) -> None:
        super().__init__()
        self.spec = TINY_SPEC
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.stage = nn.Sequential(nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.pool = nn.Sequential(nn.Conv2d(16, 16, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.num_features = 16
        self.group_names = ["stem", "stage", "pool"]

    def groups(self) -> list[nn.Module]:
        return [self.stem, self.stage, self.pool]

    def forward_groups(self, state: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        for group in self.groups()[start:stop]:
            state = group(state)
        return state


COLOURS = {"red": (220, 40, 40), "green": (40, 200, 60), "blue": (40, 60, 220)}


def make_colour_images(folder: Path, per_class: int = 12, size: int = 32, seed: int = 0) -> dict[str, list[Path]]:
    """Write PNGs of noisy coloured squares, one sub-folder per class; returns class -> files."""
    rng = np.random.default_rng(seed)
    files: dict[str, list[Path]] = {}
    for label, colour in COLOURS.items():
        (folder / label).mkdir(parents=True, exist_ok=True)
        files[label] = []
        for i in range(per_class):
            pixels = np.clip(np.array(colour) + rng.normal(0, 30, (size, size, 3)), 0, 255).astype(np.uint8)
            path = folder / label / f"{label}_{i:03d}.png"
            Image.fromarray(pixels).save(path)
            files[label].append(path)
    return files


def make_colour_dataset(folder: Path, per_class: int = 12, seed: int = 0) -> Dataset:
    """A split image Dataset of coloured squares (60 % train, 20 % val, 20 % test per class)."""
    files = make_colour_images(folder, per_class=per_class, seed=seed)
    rows = []
    for label, paths in files.items():
        for i, path in enumerate(paths):
            split = "train" if i < per_class * 0.6 else ("val" if i < per_class * 0.8 else "test")
            rows.append({"item": str(path), "label": label, "split": split})
    return Dataset(name="colours", modality="image", table=pd.DataFrame(rows), root=str(folder))
