"""Scoring a classifier's class probabilities: the confusion matrix, accuracy and F1 per class, calibration, the
coverage curve, and the `Evaluation` that carries them.

Plain numpy / pandas on probabilities already computed (by `core.evaluation.predict_proba`, out-of-fold, or another
runtime such as ONNX), so that a run's own estimate (`core.smalldata.estimate`), the Test page and the export score
the same way. It sits below both the training engine and `core.evaluation` (which re-exports every name here), so
the engine never has to reach up into the module that tests what it trained.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from core import stats


def confusion_matrix(targets: Sequence[int], predictions: Sequence[int], num_classes: int) -> np.ndarray:
    """Counts of (true class, predicted class) pairs: rows are the true class, columns the prediction."""
    targets_array = np.asarray(targets, dtype=np.int64)
    predictions_array = np.asarray(predictions, dtype=np.int64)
    if targets_array.shape != predictions_array.shape:
        raise ValueError(f"{len(targets_array)} targets but {len(predictions_array)} predictions: they must pair up.")
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (targets_array, predictions_array), 1)
    return matrix


def metrics_from_confusion(confusion: np.ndarray, classes: Sequence[str]) -> dict[str, Any]:
    """Accuracy, macro / weighted F1 and per-class precision, recall, F1 and support of a confusion matrix.

    A class with no predictions has precision 0 and a class with no examples recall 0 (sklearn's
    `zero_division=0`); macro averages are over classes that have test examples, so an empty class does
    not drag the average down for a reason the user cannot see.
    """
    confusion = np.asarray(confusion, dtype=np.float64)
    true_positives = np.diag(confusion)
    support = confusion.sum(axis=1)
    predicted = confusion.sum(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(predicted > 0, true_positives / predicted, 0.0)
        recall = np.where(support > 0, true_positives / support, 0.0)
        denominator = precision + recall
        f1 = np.where(denominator > 0, 2 * precision * recall / denominator, 0.0)
    total = confusion.sum()
    present = support > 0
    per_class = [
        {
            "class": str(name),
            "precision": float(precision[i]),
            "recall": float(recall[i]),
            "f1": float(f1[i]),
            "support": int(support[i]),
        }
        for i, name in enumerate(classes)
    ]
    return {
        "accuracy": float(true_positives.sum() / total) if total else 0.0,
        "macro_f1": float(f1[present].mean()) if present.any() else 0.0,
        "macro_precision": float(precision[present].mean()) if present.any() else 0.0,
        "macro_recall": float(recall[present].mean()) if present.any() else 0.0,
        "weighted_f1": float((f1 * support).sum() / total) if total else 0.0,
        "examples": int(total),
        "per_class": per_class,
    }


def expected_calibration_error(probabilities: np.ndarray, targets: Sequence[int], bins: int = 10) -> float:
    """How far the model's confidence is from its accuracy, averaged over confidence bins (0 = calibrated).

    A model that says "90 %" should be right 9 times in 10; the gap, weighted by how many answers fall in
    each bin, tells the user how much to trust the probabilities it shows.
    """
    probabilities = np.asarray(probabilities, dtype=np.float64)
    if len(probabilities) == 0:
        return 0.0
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == np.asarray(targets)
    bin_of = np.minimum((confidence * bins).astype(np.int64), bins - 1)
    error = 0.0
    for index in range(bins):
        in_bin = bin_of == index
        if in_bin.any():
            error += in_bin.mean() * abs(correct[in_bin].mean() - confidence[in_bin].mean())
    return float(error)


def coverage_curve(
    probabilities: np.ndarray, targets: Sequence[int], thresholds: Iterable[float] | None = None
) -> pd.DataFrame:
    """Accuracy on the answered examples and coverage, for each confidence threshold.

    Below the threshold the model answers "not sure"; raising it answers fewer examples (coverage falls)
    and, when the confidence means something, gets more of the answered ones right.

    Returns:
        One row per threshold: `threshold`, `coverage` (fraction answered), `accuracy` (on answered; NaN when
        nothing is answered), `answered` and `not_sure` (counts).
    """
    probabilities = np.asarray(probabilities, dtype=np.float64)
    targets_array = np.asarray(targets, dtype=np.int64)
    grid = np.linspace(0.0, 1.0, 101) if thresholds is None else np.asarray(list(thresholds), dtype=np.float64)
    confidence = probabilities.max(axis=1) if len(probabilities) else np.zeros(0)
    correct = probabilities.argmax(axis=1) == targets_array if len(probabilities) else np.zeros(0, dtype=bool)
    rows = []
    for threshold in grid:
        answered = confidence >= threshold
        count = int(answered.sum())
        rows.append(
            {
                "threshold": float(threshold),
                "coverage": count / len(confidence) if len(confidence) else 0.0,
                "accuracy": float(correct[answered].mean()) if count else float("nan"),
                "answered": count,
                "not_sure": int(len(confidence) - count),
            }
        )
    return pd.DataFrame(rows, columns=["threshold", "coverage", "accuracy", "answered", "not_sure"])


def confidence_at(probabilities: np.ndarray, targets: Sequence[int], threshold: float) -> dict[str, float]:
    """The coverage-curve numbers at one threshold (what the Test page shows under its slider)."""
    row = coverage_curve(probabilities, targets, [threshold]).iloc[0]
    return {key: float(row[key]) for key in ("threshold", "coverage", "accuracy", "answered", "not_sure")}


@dataclass
class Evaluation:
    """A model's results on one split: what the Test page draws and caches.

    Attributes:
        split: the split evaluated ("test" unless asked otherwise).
        classes: class names; index i of every array below refers to `classes[i]`.
        items: the examples (image paths or texts), in dataset order.
        targets: true class index per example.
        probabilities: predicted class probabilities per example [N, C].
        predictions: predicted class index per example (argmax of probabilities).
        confusion: counts, rows = true class, columns = predicted class.
        metrics: accuracy, macro_f1, weighted_f1, calibration_error, per_class [...], examples.
    """

    split: str
    classes: list[str]
    items: list[str]
    targets: np.ndarray
    probabilities: np.ndarray
    predictions: np.ndarray
    confusion: np.ndarray
    metrics: dict[str, Any] = field(default_factory=dict)
    where: list[str] = field(default_factory=list)

    @property
    def accuracy(self) -> float:
        return float(self.metrics["accuracy"])

    @property
    def macro_f1(self) -> float:
        return float(self.metrics["macro_f1"])

    def confusion_normalised(self) -> np.ndarray:
        """Each row divided by its total: the share of a true class given each prediction (recall on the diagonal)."""
        totals = self.confusion.sum(axis=1, keepdims=True)
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(totals > 0, self.confusion / np.maximum(totals, 1), 0.0)

    def per_class_table(self) -> pd.DataFrame:
        """Precision, recall, F1 and support per class, one row per class."""
        return pd.DataFrame(self.metrics["per_class"]).set_index("class")

    def examples(self, true_class: int, predicted_class: int) -> pd.DataFrame:
        """The examples of one confusion-matrix cell, most confident first (so the worst mistakes lead).

        Columns: `index` (position in this evaluation), `item`, `true`, `predicted`, `confidence` (probability of
        the predicted class) and `true_probability`.
        """
        mask = (self.targets == true_class) & (self.predictions == predicted_class)
        indices = np.flatnonzero(mask)
        table = pd.DataFrame(
            {
                "index": indices,
                "item": [self.items[i] for i in indices],
                "true": self.classes[true_class],
                "predicted": self.classes[predicted_class],
                "confidence": self.probabilities[indices, predicted_class] if len(indices) else [],
                "true_probability": self.probabilities[indices, true_class] if len(indices) else [],
            }
        )
        return table.sort_values("confidence", ascending=False, kind="stable").reset_index(drop=True)

    def mistakes(self) -> pd.DataFrame:
        """All wrong answers, most confident first."""
        tables = [
            self.examples(true, predicted)
            for true in range(len(self.classes))
            for predicted in range(len(self.classes))
            if true != predicted and self.confusion[true, predicted] > 0
        ]
        if not tables:
            return self.examples(0, 1 if len(self.classes) > 1 else 0).iloc[0:0]
        return pd.concat(tables).sort_values("confidence", ascending=False, kind="stable").reset_index(drop=True)

    def coverage(self, thresholds: Iterable[float] | None = None) -> pd.DataFrame:
        """`coverage_curve` on this evaluation's probabilities."""
        return coverage_curve(self.probabilities, self.targets, thresholds)


def evaluate_probabilities(
    probabilities: np.ndarray, targets: Sequence[int], classes: Sequence[str], items: Sequence[str], split: str = "test"
) -> Evaluation:
    """An `Evaluation` from probabilities already computed (by `predict_proba`, or another runtime such as ONNX)."""
    probabilities = np.asarray(probabilities, dtype=np.float32)
    targets_array = np.asarray(targets, dtype=np.int64)
    predictions = probabilities.argmax(axis=1) if len(probabilities) else np.zeros(0, dtype=np.int64)
    confusion = confusion_matrix(targets_array, predictions, len(classes))
    metrics = metrics_from_confusion(confusion, classes)
    metrics["calibration_error"] = expected_calibration_error(probabilities, targets_array)
    summary = stats.interval_summary(targets_array, probabilities, len(classes))
    for row, interval in zip(metrics["per_class"], summary["recall_interval95"], strict=True):
        row["recall_interval95"] = interval
    metrics.update({key: summary[key] for key in ("n", "accuracy_interval95", "macro_f1_interval95", "small_sample")})
    return Evaluation(
        split=split,
        classes=list(classes),
        items=list(items),
        targets=targets_array,
        probabilities=probabilities,
        predictions=predictions.astype(np.int64),
        confusion=confusion,
        metrics=metrics,
    )
