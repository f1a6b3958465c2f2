"""Testing a trained classifier: metrics on the held-out test split, predictions on new inputs, loading a model.

The test split is never seen by training or early stopping, so the numbers here are the honest estimate of how
the model does on new data. Everything is plain numpy / torch / sklearn so a script, a notebook, the Test page
and `python -m core predict` all get the same answers.

Main entry points:
    `evaluate(model, preprocessor, dataset)` -> `Evaluation` (probabilities, confusion matrix, metrics).
    `predict_proba(model, preprocessor, items)` -> class probabilities of new images / texts.
    `coverage_curve(probabilities, targets)` -> how accuracy and coverage trade off under a confidence threshold.
    `load_model(path)` -> a run folder's or a bundle's model, preprocessing and record.
    `fit_tfidf(texts, targets, seed)` -> the TF-IDF model a text run mixes in (and its baseline).
The baselines without pretraining are in `core.no_transfer`, the verdict on them in `core.transfer_verdict`; the
checks of what a user gives to classify (`check_image_files`, `read_texts`, ...) in `core._prediction_inputs`.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from core import devices, stats
from core._export_bundle import load_bundle  # the bundle reader sits below core.export, which builds on this module
from core._prediction_inputs import PredictionInputError, file_inputs, texts_from_inputs
from core._prediction_inputs import check_audio_files as check_audio_files
from core._prediction_inputs import check_image_files as check_image_files
from core._prediction_inputs import read_texts as read_texts
from core.dataset import Dataset
from core.tfidf import TFIDF_RECIPES as TFIDF_RECIPES
from core.tfidf import fit_tfidf as fit_tfidf

log = logging.getLogger(__name__)

NOT_SURE = "not sure"


class ModelLoadError(RuntimeError):
    """A folder given as a model is neither a run folder nor an exported bundle we can read."""


# --------------------------------------------------------------------------------------------------- metrics


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


# --------------------------------------------------------------------------------------------------- prediction


def predict_proba(
    model: nn.Module,
    preprocessor: Any,
    items: Sequence[str],
    device: str | torch.device | None = None,
    batch_size: int = 64,
    progress: Callable[[int, int], None] | None = None,
) -> np.ndarray:
    """Class probabilities of `items` (image file paths, or texts), as an array [len(items), num_classes].

    The model is put in eval mode (dropout off, BatchNorm statistics fixed) and moved to `device`
    ("auto"/None: the best one present). `progress(done, total)` is called after each batch. A text model that
    carries a lexical model (`model.lexical`, `core.ngrams`) delivers the mix of both, as it was estimated.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}.")
    target = devices.pick(device)
    model.to(target)
    model.eval()
    chunks: list[np.ndarray] = []
    total = len(items)
    lexical = getattr(model, "lexical", None)
    with torch.inference_mode():
        for start in range(0, total, batch_size):
            loaded = [preprocessor.load(item, train=False) for item in items[start : start + batch_size]]
            batch = devices.to_device(preprocessor.collate(loaded), target)
            logits = model(batch)
            probabilities = torch.softmax(logits.float(), dim=-1).cpu().numpy()
            if lexical is not None:
                probabilities = lexical.mix(probabilities, list(items[start : start + batch_size])).astype(np.float32)
            chunks.append(probabilities)
            if progress is not None:
                progress(min(start + batch_size, total), total)
    if not chunks:
        num_classes = _num_classes(model)
        return np.zeros((0, num_classes), dtype=np.float32)
    return np.concatenate(chunks, axis=0)


def _num_classes(model: nn.Module) -> int:
    head = getattr(model, "head", None)
    if head is not None:
        linears = [module for module in head.modules() if isinstance(module, nn.Linear)]
        if linears:
            return linears[-1].out_features
    return 0


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


def evaluate(
    model: nn.Module,
    preprocessor: Any,
    dataset: Dataset,
    split: str = "test",
    device: str | torch.device | None = None,
    batch_size: int = 64,
    progress: Callable[[int, int], None] | None = None,
) -> Evaluation:
    """Run the model on one split of the data set (the held-out test split by default) and score it."""
    items, targets = dataset.split(split)
    if not items:
        raise ValueError(
            f"The '{split}' split of '{dataset.name}' is empty: there is nothing to test on. "
            "Reload the data with a test share above 0 on the Data page."
        )
    probabilities = predict_proba(model, preprocessor, items, device=device, batch_size=batch_size, progress=progress)
    evaluation = evaluate_probabilities(probabilities, targets, dataset.classes, items, split)
    log.info(
        "Evaluated %d %s examples: accuracy %.3f, macro-F1 %.3f",
        len(items),
        split,
        evaluation.accuracy,
        evaluation.macro_f1,
    )
    return evaluation


def recorded_estimate(run_dir: str | Path) -> Evaluation | None:
    """The evaluation a run recorded of itself (`examples.json`): out-of-fold predictions under cross-validation,
    test-split predictions otherwise. None for a run that recorded none (trained before runs did).

    The estimate's own extras (protocol and its reason, calibration error before temperature scaling) are in
    `metrics`, read from run.json.
    """
    path = Path(run_dir) / "examples.json"
    if not path.exists():
        return None
    recorded = json.loads(path.read_text())
    result = evaluate_probabilities(
        np.asarray(recorded["probabilities"], dtype=np.float32), recorded["labels"], recorded["classes"],
        recorded["items"], split=recorded["protocol"],
    )
    result.where = list(recorded["where"])
    estimate = (read_run_info(run_dir).get("metrics") or {}).get("estimate") or {}
    for key in ("protocol", "protocol_reason", "folds", "refit_on_all", "calibration_error_before", "temperature",
                "zero_shot", "sentence_tuning", "lexical"):
        if key in estimate:
            result.metrics[key] = estimate[key]
    return result


def top_k_table(
    inputs: Sequence[str],
    probabilities: np.ndarray,
    classes: Sequence[str],
    top_k: int = 3,
    threshold: float = 0.0,
) -> pd.DataFrame:
    """One row per input: the answer ("not sure" below `threshold`), its confidence and the top-k classes.

    Columns: `input`, `prediction`, `confidence`, then `class_1`, `probability_1`, ... up to `top_k`. This is the
    table the Test page shows and offers as CSV, and what `python -m core predict` prints.
    """
    probabilities = np.asarray(probabilities, dtype=np.float64)
    top_k = max(1, min(top_k, len(classes)))
    order = np.argsort(-probabilities, axis=1, kind="stable")[:, :top_k] if len(probabilities) else np.zeros((0, 0))
    rows = []
    for row, name in enumerate(inputs):
        best = int(order[row, 0])
        confidence = float(probabilities[row, best])
        record: dict[str, Any] = {
            "input": name,
            "prediction": classes[best] if confidence >= threshold else NOT_SURE,
            "confidence": confidence,
        }
        for rank in range(top_k):
            index = int(order[row, rank])
            record[f"class_{rank + 1}"] = classes[index]
            record[f"probability_{rank + 1}"] = float(probabilities[row, index])
        rows.append(record)
    columns = ["input", "prediction", "confidence"]
    for rank in range(top_k):
        columns += [f"class_{rank + 1}", f"probability_{rank + 1}"]
    return pd.DataFrame(rows, columns=columns)


# --------------------------------------------------------------------------------------------------- loading


def load_model(path: str | Path) -> tuple[nn.Module, Any, dict[str, Any]]:
    """A trained classifier (eval mode), its preprocessor and its run record, from a run folder or a bundle.

    Exported bundles (a folder with `manifest.json`, written by `python -m core export`) are read by
    `core.export.load_bundle`, which checks every file against the manifest; run folders (`run.json` and
    `model.safetensors`) by `core.training.load_trained`.

    Raises:
        ModelLoadError: the path is neither.
    """
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise ModelLoadError(
            f"{folder} is not a folder. Give a run folder (workspace/runs/<run_id>) or an exported model bundle."
        )
    if (folder / "manifest.json").is_file():
        return load_bundle(folder)
    if (folder / "run.json").is_file():
        from core.training import load_trained  # the engine sits above this module: imported when a run is opened

        return load_trained(folder)
    raise ModelLoadError(
        f"{folder} holds no model: give a run folder with run.json and model.safetensors "
        "(workspace/runs/<run_id>), or a bundle written by `python -m core export`."
    )


def read_run_info(run_dir: str | Path) -> dict[str, Any]:
    """The run record (`run.json`) of a run folder, or an empty dict when it has none."""
    record = Path(run_dir) / "run.json"
    if not record.is_file():
        return {}
    try:
        return json.loads(record.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        log.warning("Could not read %s: %s", record, error)
        return {}


# --------------------------------------------------------------------------------------------------- command line


def main_predict(args: argparse.Namespace) -> int:
    """`python -m core predict --model DIR INPUT...`: top-k classes of images or clips (files or folders) or texts."""
    try:
        model, preprocessor, info = load_model(args.model)
        classes = list(info.get("classes") or [])
        spec = getattr(getattr(model, "backbone", None), "spec", None)
        modality = info.get("modality") or getattr(spec, "modality", "image")
        inputs = texts_from_inputs(args.inputs) if modality == "text" else file_inputs(args.inputs, modality)
        if not inputs:
            raise PredictionInputError("Nothing to predict: give image or sound files / folders, or texts.")
        probabilities = predict_proba(model, preprocessor, inputs, device=getattr(args, "device", None))
    except (ModelLoadError, PredictionInputError, OSError, ValueError, RuntimeError) as error:
        # Missing files, unreadable inputs, a backbone whose weights are not installed (BackboneUnavailable), a
        # changed bundle (BundleError): all carry a message that says what to do.
        sys.stderr.write(f"error: {error}\n")
        return 2
    if not classes:
        classes = [str(i) for i in range(probabilities.shape[1])]
    table = top_k_table(inputs, probabilities, classes, top_k=args.top_k)
    if getattr(args, "json", False):
        records = [
            {
                "input": row["input"],
                "prediction": row["prediction"],
                "top_k": [
                    {"class": row[f"class_{rank}"], "probability": round(float(row[f"probability_{rank}"]), 6)}
                    for rank in range(1, (len(table.columns) - 3) // 2 + 1)
                ],
            }
            for _, row in table.iterrows()
        ]
        sys.stdout.write(json.dumps(records, indent=2) + "\n")
    else:
        writer = csv.writer(sys.stdout, delimiter="\t", lineterminator="\n")
        writer.writerow(table.columns)
        for row in table.itertuples(index=False):
            writer.writerow([f"{value:.4f}" if isinstance(value, float) else value for value in row])
    return 0
