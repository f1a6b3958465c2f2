"""The no-transfer baseline for sound: hand-made MFCC statistics + the same logistic head, scored the same way.

What does a pretrained network add on these clips? The answer needs a baseline that learns from the same labels
without any pretraining: the classic speech features (mean and spread over time of 20 MFCCs and their deltas,
`core.audio.mfcc_statistics`) into the very head the transfer run uses (multinomial logistic regression on
standardised features, L2 chosen by inner cross-validation, `core.smalldata`). It is scored under the run's own
protocol: the same k folds in the same order when the run cross-validates (so every clip is predicted by a model
that never heard it, in both), or the same held-out test split. Only the features differ.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from core import audio, smalldata, stats
from core.dataset import Dataset

log = logging.getLogger(__name__)

TITLE = "MFCC statistics + logistic regression (no transfer)"


def mfcc_features(items: Sequence[str], settings: audio.MelSettings | None = None) -> torch.Tensor:
    """The MFCC statistics of each clip file, [len(items), 80] float64.

    Raises:
        ValueError: a clip cannot be read (the message names it).
    """
    settings = settings or audio.MelSettings()
    rows = []
    for item in items:
        try:
            samples = audio.load_clip(str(item), settings.sample_rate)
        except audio.AudioReadError as error:
            raise ValueError(f"Cannot read the sound file {item}: {error}") from error
        rows.append(audio.mfcc_statistics(samples, settings))
    return torch.as_tensor(np.stack(rows), dtype=torch.float64)


def mfcc_baseline(
    dataset: Dataset,
    protocol: smalldata.Protocol,
    seed: int = 0,
    balanced: bool = False,
    settings: audio.MelSettings | None = None,
) -> dict[str, Any]:
    """The baseline's estimate under `protocol`, in the metrics.json contract (accuracy with its 95 % interval, ...).

    Cross-validation takes the examples in the order the transfer run does (train, val, test) with its seed, so
    both are scored on the same folds; a test split fits on train + val and scores the test split.

    Raises:
        ValueError: the data is not sound, or a split the protocol needs is empty.
    """
    if dataset.modality != "audio":
        raise ValueError(f"The MFCC baseline is for sound clips; '{dataset.name}' holds {dataset.modality}s.")
    if protocol.name == "cross-validation":
        fit_names, score_names = ("train", "val", "test"), ()
    else:
        fit_names, score_names = ("train", "val"), ("test",)
    fit_items, fit_labels = _joined(dataset, fit_names)
    features = mfcc_features(fit_items, settings)
    labels = torch.as_tensor(fit_labels, dtype=torch.long)
    if protocol.name == "cross-validation":
        result = smalldata.cross_validate_head(features, labels, dataset.num_classes, protocol.folds, seed=seed,
                                               balanced=balanced)
        targets, logits, calibrated = fit_labels, result.oof_logits, result.oof_probabilities
        chosen = f"L2 chosen inside each of {protocol.folds} folds"
    else:
        score_items, targets = _joined(dataset, score_names)
        if not score_items:
            raise ValueError(f"The test split of '{dataset.name}' is empty: there is nothing to score the baseline on.")
        fitted = smalldata.select_and_fit(features, labels, dataset.num_classes, seed=seed, balanced=balanced)
        temperature = stats.fit_temperature(fitted.oof_logits, labels.numpy())
        logits = fitted.head.logits(mfcc_features(score_items, settings)).numpy()
        calibrated = stats.softmax(logits, temperature)
        chosen = f"L2 {fitted.head.l2:g} chosen by inner cross-validation"
    estimate = smalldata.estimate(targets, calibrated, stats.softmax(logits), protocol, dataset.classes)
    estimate.update({"name": "mfcc", "title": TITLE,
                     "detail": f"{features.shape[1]} MFCC statistics per clip (20 coefficients and their deltas, "
                     f"mean and spread over time), {chosen}"})
    log.info("MFCC baseline on %s: accuracy %s", dataset.name,
             stats.format_interval(estimate["accuracy"], estimate["accuracy_interval95"]))
    return estimate


def _joined(dataset: Dataset, names: Sequence[str]) -> tuple[list[str], list[int]]:
    items: list[str] = []
    labels: list[int] = []
    for name in names:
        split_items, split_labels = dataset.split(name)
        items += split_items
        labels += split_labels
    return items, labels


def comparison(transfer: dict[str, Any], baseline: dict[str, Any]) -> str:
    """One sentence: both accuracies with their intervals, and whether the intervals keep them apart."""
    low, high = transfer["accuracy_interval95"]
    base_low, base_high = baseline["accuracy_interval95"]
    if low > base_high:
        verdict = "the pretrained network is better by a margin outside both intervals"
    elif high < base_low:
        verdict = "the baseline is better by a margin outside both intervals: the pretrained features do not fit"
    else:
        verdict = "the intervals overlap: these clips cannot tell the two apart"
    return (f"Transfer {stats.format_interval(transfer['accuracy'], transfer['accuracy_interval95'])} vs "
            f"{TITLE} {stats.format_interval(baseline['accuracy'], baseline['accuracy_interval95'])}, "
            f"n = {transfer['n']}: {verdict}.")


__all__ = ["TITLE", "comparison", "mfcc_baseline", "mfcc_features"]
