"""Uncertainty of the numbers a user reads: 95 % intervals, small-sample flags and probability calibration.

On small data a single accuracy hides how little it knows: 17 right out of 20 is "85 %", but the truth may well
be 64 % or 95 %. Every headline number therefore travels with its interval (Wilson for a proportion, a
stratified-free percentile bootstrap for macro-F1 and per-class recall) and with a flag when it rests on fewer
than `SMALL_SAMPLE` examples. Temperature scaling (Guo et al., 2017) makes the shown probabilities honest without
changing a single prediction.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

SMALL_SAMPLE = 30
Z_95 = 1.959963984540054
BOOTSTRAP_DRAWS = 1000


def wilson_interval(successes: int, total: int, z: float = Z_95) -> tuple[float, float]:
    """The Wilson score interval of a proportion: right at 0 and 1 and for small n, where the plain one is not."""
    if total <= 0:
        return 0.0, 1.0
    share = successes / total
    denominator = 1 + z * z / total
    centre = (share + z * z / (2 * total)) / denominator
    half = z * math.sqrt(share * (1 - share) / total + z * z / (4 * total * total)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def _macro_f1(targets: np.ndarray, predictions: np.ndarray, num_classes: int) -> float:
    confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(confusion, (targets, predictions), 1)
    true_positives = np.diag(confusion).astype(np.float64)
    support, predicted = confusion.sum(axis=1), confusion.sum(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(predicted > 0, true_positives / predicted, 0.0)
        recall = np.where(support > 0, true_positives / support, 0.0)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    present = support > 0
    return float(f1[present].mean()) if present.any() else 0.0


def bootstrap_intervals(
    targets: Sequence[int], predictions: Sequence[int], num_classes: int, draws: int = BOOTSTRAP_DRAWS, seed: int = 0
) -> dict[str, Any]:
    """95 % percentile-bootstrap intervals of macro-F1 and of each class's recall (resampling examples).

    Returns `{"macro_f1_interval95": [lo, hi], "recall_interval95": [[lo, hi] per class]}`; a class with no
    examples gets [0, 1] (nothing is known about it).
    """
    targets_array = np.asarray(targets, dtype=np.int64)
    predictions_array = np.asarray(predictions, dtype=np.int64)
    count = len(targets_array)
    if count == 0:
        return {"macro_f1_interval95": [0.0, 1.0], "recall_interval95": [[0.0, 1.0]] * num_classes}
    rng = np.random.default_rng(seed)
    f1_values = np.empty(draws)
    recalls = np.full((draws, num_classes), np.nan)
    for draw in range(draws):
        sample = rng.integers(0, count, count)
        sample_targets, sample_predictions = targets_array[sample], predictions_array[sample]
        f1_values[draw] = _macro_f1(sample_targets, sample_predictions, num_classes)
        support = np.bincount(sample_targets, minlength=num_classes)
        hits = np.bincount(sample_targets[sample_targets == sample_predictions], minlength=num_classes)
        with np.errstate(divide="ignore", invalid="ignore"):
            recalls[draw] = np.where(support > 0, hits / support, np.nan)
    recall_intervals = []
    for index in range(num_classes):
        values = recalls[:, index][~np.isnan(recalls[:, index])]
        if len(values) == 0:
            recall_intervals.append([0.0, 1.0])
        else:
            recall_intervals.append([float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))])
    return {
        "macro_f1_interval95": [float(np.percentile(f1_values, 2.5)), float(np.percentile(f1_values, 97.5))],
        "recall_interval95": recall_intervals,
    }


def fit_temperature(logits: np.ndarray, targets: Sequence[int]) -> float:
    """The temperature T > 0 that minimises the log-loss of softmax(logits / T): one number, fitted by L-BFGS.

    Dividing logits by T never changes which class wins, only how sure the model says it is.
    """
    logits_tensor = torch.as_tensor(np.asarray(logits, dtype=np.float64))
    targets_tensor = torch.as_tensor(np.asarray(targets, dtype=np.int64))
    if len(targets_tensor) == 0:
        return 1.0
    log_temperature = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_temperature], lr=0.5, max_iter=100, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(logits_tensor / log_temperature.exp(), targets_tensor)
        loss.backward()
        return loss

    optimizer.step(closure)
    temperature = float(log_temperature.detach().exp())
    return temperature if math.isfinite(temperature) and 0.01 < temperature < 100 else 1.0


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    scaled = np.asarray(logits, dtype=np.float64) / temperature
    scaled -= scaled.max(axis=1, keepdims=True)
    exp = np.exp(scaled)
    return exp / exp.sum(axis=1, keepdims=True)


def interval_summary(
    targets: Sequence[int], probabilities: np.ndarray, num_classes: int, seed: int = 0
) -> dict[str, Any]:
    """Accuracy with its Wilson interval, macro-F1 and per-class recall with bootstrap intervals, n and the flag."""
    targets_array = np.asarray(targets, dtype=np.int64)
    predictions = np.asarray(probabilities).argmax(axis=1) if len(targets_array) else np.zeros(0, dtype=np.int64)
    correct = int((predictions == targets_array).sum())
    low, high = wilson_interval(correct, len(targets_array))
    summary = {"n": int(len(targets_array)), "accuracy_interval95": [low, high],
               "small_sample": bool(len(targets_array) < SMALL_SAMPLE)}  # fmt: skip
    summary.update(bootstrap_intervals(targets_array, predictions, num_classes, seed=seed))
    return summary


def format_interval(value: float, interval: Sequence[float], percent: bool = True) -> str:
    """'77.7 % (95 % CI 71.2–83.1 %)' or '0.712 (95 % CI 0.650–0.770)'."""
    low, high = interval
    if percent:
        return f"{value:.1%} (95 % CI {low:.1%}–{high:.1%})"
    return f"{value:.3f} (95 % CI {low:.3f}–{high:.3f})"


__all__ = [
    "SMALL_SAMPLE",
    "bootstrap_intervals",
    "fit_temperature",
    "format_interval",
    "interval_summary",
    "softmax",
    "wilson_interval",
]
