"""Splitting a data set into train / validation / test: stratified by class, with groups (exact duplicates) kept
whole so that identical files never sit on both sides of the train/test line."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import numpy as np

from core._data_report import DataError
from core.dataset import SPLITS

DEFAULT_FRACTIONS: tuple[float, float, float] = (0.7, 0.15, 0.15)


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


def random_split_source(fractions: Sequence[float] = DEFAULT_FRACTIONS, seed: int = 0) -> str:
    """How a report names a random split: "random, stratified (train/val/test 70%/15%/15%, seed 0)"."""
    return f"random, stratified (train/val/test {fractions[0]:.0%}/{fractions[1]:.0%}/{fractions[2]:.0%}, seed {seed})"
