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
    # At 0 or all successes the bound is exactly 0 or 1; in floating point it came out as 0.9999999999999999.
    low = 0.0 if successes <= 0 else max(0.0, centre - half)
    high = 1.0 if successes >= total else min(1.0, centre + half)
    return low, high


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


def paired_difference_interval(
    correct_a: Sequence[int | bool], correct_b: Sequence[int | bool], draws: int = BOOTSTRAP_DRAWS, seed: int = 0
) -> tuple[float, list[float]]:
    """Accuracy of A minus accuracy of B on the same examples, with its 95 % paired percentile-bootstrap interval.

    Both models answered the very same examples, so each draw resamples examples and keeps the two answers to an
    example together: the interval is about the difference, not about two accuracies that each wobble (which would
    make it much wider when both get the same examples right or wrong). Seeded, so a page and the command line show
    the same interval.

    Raises:
        ValueError: the two answer lists are not the same length (they are not paired) or are empty.
    """
    a = np.asarray(correct_a, dtype=np.float64)
    b = np.asarray(correct_b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"{len(a)} answers against {len(b)}: a paired comparison needs both on the same examples.")
    if len(a) == 0:
        raise ValueError("No examples to compare the two models on.")
    per_example = a - b
    rng = np.random.default_rng(seed)
    means = per_example[rng.integers(0, len(per_example), (draws, len(per_example)))].mean(axis=1)
    return float(per_example.mean()), [float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))]


def unpaired_difference_interval(
    successes_a: int, total_a: int, successes_b: int, total_b: int, z: float = Z_95
) -> tuple[float, list[float]]:
    """Difference of two proportions with Newcombe's hybrid score interval (his method 10, built on Wilson's).

    For two accuracies whose per-example answers were not kept: it treats them as independent, so on the same
    examples it is wider than the paired interval (cautious, never falsely sure).
    """
    share_a, share_b = successes_a / max(total_a, 1), successes_b / max(total_b, 1)
    low_a, high_a = wilson_interval(successes_a, total_a, z)
    low_b, high_b = wilson_interval(successes_b, total_b, z)
    difference = share_a - share_b
    low = difference - math.sqrt((share_a - low_a) ** 2 + (high_b - share_b) ** 2)
    high = difference + math.sqrt((high_a - share_a) ** 2 + (share_b - low_b) ** 2)
    return difference, [max(-1.0, low), min(1.0, high)]


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
    "paired_difference_interval",
    "softmax",
    "unpaired_difference_interval",
    "wilson_interval",
]
