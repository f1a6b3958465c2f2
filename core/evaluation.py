"""Testing a trained classifier: metrics on the held-out test split, predictions on new inputs, baselines.

The test split is never seen by training or early stopping, so the numbers here are the honest estimate of how
the model does on new data. Everything is plain numpy / torch / sklearn so a script, a notebook, the Test page
and `python -m core predict` all get the same answers.

Main entry points:
    `evaluate(model, preprocessor, dataset)` -> `Evaluation` (probabilities, confusion matrix, metrics).
    `predict_proba(model, preprocessor, items)` -> class probabilities of new images / texts.
    `coverage_curve(probabilities, targets)` -> how accuracy and coverage trade off under a confidence threshold.
    `train_baselines(dataset, run_info)` -> what the same task gets without transfer learning.
    `judge_transfer(estimate, baselines)` -> does transfer beat them, with the interval of the difference?
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import csv
import dataclasses
import functools
import hashlib
import json
import logging
import sys
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from core import devices, stats
from core.dataset import Dataset
from core.paths import workspace_subdir

log = logging.getLogger(__name__)

NOT_SURE = "not sure"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


class ModelLoadError(RuntimeError):
    """A folder given as a model is neither a run folder nor an exported bundle we can read."""


class PredictionInputError(ValueError):
    """Inputs given to a prediction cannot be used (missing file, not an image, empty text)."""


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


def check_image_files(paths: Sequence[str | Path], names: Sequence[str] | None = None) -> list[str]:
    """The paths as strings, after checking each is an existing image file; raises with every bad one named.

    `names` are what the user calls the files (an upload's name, a path inside a zip); by default the file names.
    """
    from PIL import Image, UnidentifiedImageError

    def problem(file: Path) -> str | None:
        try:
            with Image.open(file) as image:
                image.verify()
        except (UnidentifiedImageError, OSError):
            return ""
        return None

    return _check_files(paths, names, problem, "images", "PNG, JPEG, BMP, GIF, WebP or TIFF")


def check_audio_files(paths: Sequence[str | Path], names: Sequence[str] | None = None) -> list[str]:
    """The paths as strings, after checking each is a sound file we can decode; raises with every bad one named."""
    from core import audio

    def problem(file: Path) -> str | None:
        try:
            audio.read_audio(str(file))
        except audio.AudioReadError as error:
            return str(error)
        return None

    return _check_files(paths, names, problem, "sound", "WAV, FLAC, OGG or MP3")


def _check_files(
    paths: Sequence[str | Path],
    names: Sequence[str] | None,
    problem: Callable[[Path], str | None],
    kind: str,
    formats: str,
) -> list[str]:
    """Every path checked by `problem` (None: fine; else what is wrong, may be empty); one error names every bad one."""
    missing, unreadable = [], []
    for position, path in enumerate(paths):
        file = Path(path)
        if not file.is_file():
            missing.append(str(path))
            continue
        found = problem(file)
        if found is not None:
            name = names[position] if names is not None else file.name
            unreadable.append(f"{name} ({found})" if found else name)
    problems = []
    if missing:
        problems.append(f"{len(missing)} file(s) not found: {', '.join(missing[:5])}")
    if unreadable:
        problems.append(f"{len(unreadable)} file(s) are not {kind} we can read: {', '.join(unreadable[:5])}")
    if problems:
        raise PredictionInputError("; ".join(problems) + f". Give {formats} files.")
    return [str(path) for path in paths]


def read_texts(lines_or_csv: str, is_csv: bool = False) -> list[str]:
    """Texts to classify from pasted text (one per line) or CSV contents (the `text` column, else the first).

    Blank lines are skipped; raises `PredictionInputError` when nothing is left.
    """
    if is_csv:
        import io

        try:
            frame = pd.read_csv(io.StringIO(lines_or_csv))
        except (pd.errors.ParserError, pd.errors.EmptyDataError) as error:
            raise PredictionInputError(f"The CSV could not be read ({error}); give one text per row.") from error
        lowered = {str(column).lower(): column for column in frame.columns}
        column = lowered.get("text") or next(
            (c for c in frame.columns if frame[c].dtype == object), frame.columns[0] if len(frame.columns) else None
        )
        if column is None:
            raise PredictionInputError("The CSV has no columns; give a column named 'text' with one text per row.")
        texts = [str(value).strip() for value in frame[column].dropna().tolist()]
    else:
        texts = [line.strip() for line in lines_or_csv.splitlines()]
    texts = [text for text in texts if text]
    if not texts:
        raise PredictionInputError(
            "No text to classify: paste one text per line, or upload a CSV with a 'text' column."
        )
    return texts


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
        from core.export import load_bundle  # export builds on this module: imported when a bundle is opened

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


# --------------------------------------------------------------------------------------------------- baselines


@dataclass
class BaselineResult:
    """A model trained without transfer learning, scored on the same test split.

    Attributes:
        name: "scratch" (same architecture, random weights), "pixels" (raw pixels + logistic regression), "tfidf"
            (TF-IDF + logistic regression) or "mfcc" (MFCC statistics + logistic regression).
        title: how the Test page names it.
        accuracy, macro_f1: on what the run's own estimate is scored on (`protocol`).
        detail: what was trained, in a sentence.
        correct: 1 / 0 per example the run's own estimate scored, in that estimate's order (`examples_digest` names
            those examples): what pairs the two models example by example. None in records written before (or for a
            run that recorded no examples); the verdict then compares the two accuracies unpaired.
        examples_digest: `examples_digest` of the estimate's items that `correct` follows.
    """

    name: str
    title: str
    accuracy: float
    macro_f1: float
    detail: str = ""
    n: int | None = None
    accuracy_interval95: list[float] | None = None
    protocol: str = "test split"
    correct: list[int] | None = None
    examples_digest: str | None = None


def examples_digest(items: Sequence[str]) -> str:
    """A short fingerprint of which examples, in which order, an estimate scored (what a paired comparison needs)."""
    digest = hashlib.sha256()
    for item in items:
        digest.update(str(item).encode("utf-8", "surrogatepass") + b"\0")
    return digest.hexdigest()[:16]


def _answers_on(estimate: Evaluation | None, scored: Evaluation) -> tuple[list[int] | None, str | None]:
    """A baseline's right / wrong answers put in the order of the run's estimate, and that estimate's digest.

    (None, None) when there is no estimate or the baseline did not score exactly the estimate's examples: then no
    pairing is claimed.
    """
    if estimate is None or len(scored.items) != len(estimate.items):
        return None, None
    positions: dict[str, list[int]] = collections.defaultdict(list)
    for position, item in enumerate(scored.items):
        positions[str(item)].append(position)
    right = np.asarray(scored.predictions) == np.asarray(scored.targets)
    answers = []
    for item in estimate.items:
        queue = positions.get(str(item))
        if not queue:
            return None, None
        answers.append(int(right[queue.pop(0)]))
    return answers, examples_digest(estimate.items)


def _baseline_dir(run_info: dict[str, Any]) -> Path:
    run_id = str(run_info.get("run_id") or "unnamed")
    folder = workspace_subdir("baselines") / run_id
    folder.mkdir(parents=True, exist_ok=True)
    return folder


#: The TF-IDF recipes the baseline chooses between (by inner cross-validation): words and word pairs suit longer
#: texts; character n-grams within words suit short, noisy ones (tweets, product codes, misspellings). On the
#: benchmark's tweets at 64 per class the character model scored 0.796 against 0.751 for words (5 draws).
TFIDF_RECIPES = {
    "word and bigram": {"analyzer": "word", "ngram_range": (1, 2)},
    "character 2-5-gram": {"analyzer": "char_wb", "ngram_range": (2, 5)},
}
_TFIDF_STRENGTHS = (0.3, 3.0, 30.0)


def fit_tfidf(texts: Sequence[str], targets: np.ndarray, seed: int) -> tuple[Any, str]:
    """The TF-IDF recipe and strength an inner cross-validation on these texts prefers (log-loss), refitted on all.

    With too few examples per class for inner folds the word recipe at a moderate strength is used as it is.
    """
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GridSearchCV, StratifiedKFold
    from sklearn.pipeline import Pipeline

    pipeline = Pipeline([
        ("tfidf", TfidfVectorizer(sublinear_tf=True, min_df=1)),
        ("logistic", LogisticRegression(C=3.0, max_iter=2000, random_state=seed)),
    ])
    smallest = int(np.bincount(targets)[np.unique(targets)].min())
    if smallest < 2:
        pipeline.set_params(tfidf__ngram_range=(1, 2)).fit(list(texts), targets)
        return pipeline, "word and bigram, C=3"
    grid = [{f"tfidf__{key}": [value] for key, value in recipe.items()} | {"logistic__C": list(_TFIDF_STRENGTHS)}
            for recipe in TFIDF_RECIPES.values()]
    search = GridSearchCV(pipeline, grid, scoring="neg_log_loss", error_score="raise",
                          cv=StratifiedKFold(min(3, smallest), shuffle=True, random_state=seed))
    search.fit(list(texts), targets)
    chosen = search.best_params_
    recipe = next(name for name, value in TFIDF_RECIPES.items() if value["analyzer"] == chosen["tfidf__analyzer"])
    return search.best_estimator_, f"{recipe}, C={chosen['logistic__C']:g}"


def _scored_parts(
    dataset: Dataset, estimate: Evaluation | None
) -> tuple[list[str], np.ndarray, list[tuple[int | None, np.ndarray, np.ndarray]], str]:
    """What a baseline learns from and is scored on, as the run's own estimate was: (items, targets, parts, protocol).

    Each part is (the run's fold index or None, learn mask, score mask) over the items. With `estimate` (the run's
    `recorded_estimate`) under cross-validation the parts are the run's own folds, so a baseline compares like with
    like and carries the same n; on a test split (or without `estimate`) one part learns from train + validation and
    scores the test split.
    """
    if estimate is not None and any(where.startswith("fold ") for where in estimate.where):
        groups = np.asarray(estimate.where)
        folds = sorted(set(estimate.where), key=lambda where: int(where.split()[-1]))
        parts = [(int(fold.split()[-1]) - 1, groups != fold, groups == fold) for fold in folds]
        return (list(estimate.items), np.asarray(estimate.targets, dtype=np.int64), parts,
                f"cross-validation ({len(parts)} folds, the run's own)")
    train_items, train_targets = dataset.split("train")
    val_items, val_targets = dataset.split("val")
    test_items, test_targets = dataset.split("test")
    if not test_items:
        raise ValueError(f"The test split of '{dataset.name}' is empty: there is nothing to score the baseline on.")
    items = [*train_items, *val_items, *test_items]
    scored = np.arange(len(items)) >= len(train_items) + len(val_items)
    targets = np.asarray([*train_targets, *val_targets, *test_targets], dtype=np.int64)
    return items, targets, [(None, ~scored, scored)], "test split"


def _baseline_on_parts(
    dataset: Dataset,
    estimate: Evaluation | None,
    fit_and_predict: Callable[[list[str], np.ndarray, int | None, np.ndarray, np.ndarray], tuple[np.ndarray, str]],
) -> tuple[Evaluation, list[str], str]:
    """Score a baseline on the run's own parts (`_scored_parts`): `fit_and_predict(items, targets, fold, learn,
    score)` fits on the learn mask and returns the probabilities of the scored examples [n, classes] and a few words
    on what it chose. Returns the scored evaluation, each part's words and the protocol."""
    items, targets, parts, protocol = _scored_parts(dataset, estimate)
    probabilities = np.zeros((len(items), dataset.num_classes), dtype=np.float32)
    chosen = []
    for fold, learn, score in parts:
        if len(np.unique(targets[learn])) < 2:
            raise ValueError("The examples to learn from need at least two classes to fit a baseline.")
        probabilities[score], words = fit_and_predict(items, targets, fold, learn, score)
        chosen.append(words)
    scored = np.logical_or.reduce([score for _, _, score in parts])
    result = evaluate_probabilities(probabilities[scored], targets[scored], dataset.classes,
                                    [items[i] for i in np.flatnonzero(scored)])
    return result, chosen, protocol


def _baseline_result(name: str, title: str, result: Evaluation, detail: str, protocol: str,
                     estimate: Evaluation | None) -> BaselineResult:
    correct, digest = _answers_on(estimate, result)
    return BaselineResult(name=name, title=title, accuracy=result.accuracy, macro_f1=result.macro_f1, detail=detail,
                          n=int(result.metrics["n"]), accuracy_interval95=list(result.metrics["accuracy_interval95"]),
                          protocol=protocol, correct=correct, examples_digest=digest)


def tfidf_baseline(dataset: Dataset, seed: int = 0, estimate: Evaluation | None = None) -> BaselineResult:
    """TF-IDF + logistic regression, scored on the very examples the run's own estimate rests on.

    With `estimate` (the run's `recorded_estimate`) under cross-validation, each fold is predicted by a baseline
    fitted on the other folds, so the two numbers compare like with like and carry the same n; on a test split
    (or without `estimate`) the baseline learns from the train and validation splits and is scored on the test
    split. Either way the recipe (words or characters) and strength are chosen by cross-validation inside the
    examples it learns from, never on what it is scored on.
    """
    if dataset.modality != "text":
        raise ValueError(f"The TF-IDF baseline is for text data; '{dataset.name}' holds {dataset.modality}s.")

    def fit_and_predict(texts: list[str], targets: np.ndarray, fold: int | None, learn: np.ndarray,
                        score: np.ndarray) -> tuple[np.ndarray, str]:
        model, recipe = fit_tfidf([texts[i] for i in np.flatnonzero(learn)], targets[learn], seed)
        probabilities = np.zeros((int(score.sum()), dataset.num_classes), dtype=np.float32)
        probabilities[:, model.classes_] = model.predict_proba([texts[i] for i in np.flatnonzero(score)])
        return probabilities, recipe

    result, recipes, protocol = _baseline_on_parts(dataset, estimate, fit_and_predict)
    chosen = ", ".join(f"{count}x {recipe}" if count > 1 else recipe
                       for recipe, count in collections.Counter(recipes).most_common())
    return _baseline_result("tfidf", "TF-IDF + logistic regression", result,
                            f"TF-IDF chosen by inner cross-validation ({chosen}); scored by {protocol}", protocol,
                            estimate)


@contextlib.contextmanager
def _one_torch_thread() -> Iterator[None]:
    """Torch on one thread while a few hundred examples' logistic heads are fitted, then as before.

    Matrices this small gain nothing from threads, and on a busy machine a thread team waiting for a descheduled
    member made each L-BFGS fit 50 times slower (0.72 s against 0.01 s for the same fit, measured at load 5 on two
    cores). Under OpenMP the setting belongs to the calling thread, so a page's background thread changes only its
    own.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _logistic_on_features(
    dataset: Dataset, run_info: dict[str, Any], estimate: Evaluation | None,
    featurise: Callable[[list[str]], torch.Tensor],
    reduce: Callable[[torch.Tensor, np.ndarray], torch.Tensor] | None = None,
) -> tuple[Evaluation, list[str], str, int]:
    """The run's own logistic head on features without pretraining, scored on the run's own parts.

    The head is the transfer run's (L2 chosen by inner cross-validation on what it learns from, the run's seed and
    class weights), so only the features differ. Under cross-validation each of the run's folds is predicted by a
    head fitted on the other folds (with the seed the run's own fold used); on a test split the head learns from
    train + validation and scores the test split. `reduce(features, learn)` maps every example's features to
    fewer, fitted on the learn mask alone (the pixels' principal components). Returns the scored evaluation, the L2
    strength each part chose, the protocol and the number of features per example.
    """
    from core import smalldata

    config = run_info.get("config") or {}
    seed, balanced = int(config.get("seed", 0)), bool(config.get("class_weights", False))
    features: dict[str, torch.Tensor] = {}

    def fit_and_predict(items: list[str], targets: np.ndarray, fold: int | None, learn: np.ndarray,
                        score: np.ndarray) -> tuple[np.ndarray, str]:
        if "all" not in features:  # once: every part uses the same examples
            features["all"] = featurise(items)
        part = features["all"] if reduce is None else reduce(features["all"], learn)
        with _one_torch_thread():
            fitted = smalldata.select_and_fit(part[learn], torch.as_tensor(targets[learn]),
                                              dataset.num_classes, seed=seed if fold is None else seed + fold + 1,
                                              balanced=balanced)
        logits = fitted.head.logits(part[score]).numpy()
        return stats.softmax(logits), f"{fitted.head.l2:g}"

    result, strengths, protocol = _baseline_on_parts(dataset, estimate, fit_and_predict)
    return result, strengths, protocol, int(features["all"].shape[1])


def mfcc_baseline(dataset: Dataset, run_info: dict[str, Any], estimate: Evaluation | None = None) -> BaselineResult:
    """MFCC statistics + the run's own logistic head, scored on the very clips the run's own estimate rests on.

    The features are `core.audio_baseline`'s (20 MFCCs and their deltas, mean and spread over time), computed with
    the run's spectrogram settings; the head and parts are the run's (`_logistic_on_features`), so the number equals
    the one `train` writes to metrics.json.
    """
    from core import audio_baseline

    if dataset.modality != "audio":
        raise ValueError(f"The MFCC baseline is for sound clips; '{dataset.name}' holds {dataset.modality}s.")
    result, strengths, protocol, width = _logistic_on_features(
        dataset, run_info, estimate, lambda items: audio_baseline.mfcc_features(items, _mel_settings(run_info)))
    return _baseline_result(
        "mfcc", audio_baseline.TITLE, result,
        f"{width} MFCC statistics per clip (20 coefficients and their deltas, mean and spread over "
        f"time), L2 chosen by inner cross-validation ({', '.join(strengths)}); scored by {protocol}", protocol,
        estimate)


#: The raw-pixels baseline's image side: small enough that a few thousand images fit a logistic head in seconds,
#: large enough that shapes survive (CIFAR's 32x32 is still recognisable to a person).
PIXELS_SIDE = 32
#: Principal components of the pixels the head sees (PCA + logistic regression, the classic MNIST baseline):
#: thousands of raw pixel values, many nearly constant (a plain background), made the logistic fit crawl (minutes
#: for 100 images), and the head standardises what it gets, so many small components would be amplified noise. On
#: the digits sample (3-fold, 10 per class) 16 / 32 / 48 components scored 0.89 / 0.86 / 0.79, 32 fitting fastest.
PIXELS_COMPONENTS = 32
PIXELS_TITLE = "Raw pixels + logistic regression (no pretraining)"


def pixel_features(paths: Sequence[str], side: int = PIXELS_SIDE) -> torch.Tensor:
    """Each image turned upright (EXIF), resized to `side` x `side` RGB and flattened, as values in [0, 1].

    Colour is kept: it can be what tells classes apart (ripe from unripe, one stain from another), and a grey
    image would hide it from the baseline, making transfer look better than it is. The head standardises each
    pixel, so no other normalisation is needed.
    """
    from PIL import Image, ImageOps

    rows = np.empty((len(paths), side * side * 3), dtype=np.float32)
    for row, path in enumerate(paths):
        with Image.open(path) as image:
            small = ImageOps.exif_transpose(image).convert("RGB").resize((side, side), Image.Resampling.BILINEAR)
        rows[row] = np.asarray(small, dtype=np.float32).reshape(-1) / 255.0
    return torch.from_numpy(rows)


def principal_components(features: torch.Tensor, learn: np.ndarray, components: int = PIXELS_COMPONENTS
                         ) -> torch.Tensor:
    """Every example projected on the first principal components of the examples it learns from (`learn`).

    Fitted on the learn mask alone, so the examples scored never shape the features (no labels are used either).
    """
    learned = features[torch.as_tensor(learn)].double()
    centre = learned.mean(dim=0)
    centred = learned - centre
    kept = min(components, max(1, len(learned) - 1), centred.shape[1])
    # From the smaller of the two Gram matrices: with fewer images than pixels (small data) an n x n eigenproblem,
    # milliseconds where a full SVD of n x 3072 took 2 s on a busy machine.
    if len(centred) < centred.shape[1]:
        values, vectors = torch.linalg.eigh(centred @ centred.T)
        top = torch.flip(vectors[:, -kept:], dims=[1]) / values[-kept:].flip(0).clamp(min=1e-12).sqrt()
        directions = (centred.T @ top).T
    else:
        directions = torch.flip(torch.linalg.eigh(centred.T @ centred)[1][:, -kept:], dims=[1]).T
    return ((features.double() - centre) @ directions.T).float()


def pixels_baseline(dataset: Dataset, run_info: dict[str, Any], estimate: Evaluation | None = None) -> BaselineResult:
    """Raw pixels + the run's own logistic head, scored on the very images the run's own estimate rests on.

    The simplest model that sees the images without anything learnt elsewhere: where it does as well as the
    pretrained features (small, centred, clean images such as 8x8 digits), transfer adds nothing and the user
    should know. Same head, seed, class weights and parts as the run (`_logistic_on_features`), on the pixels'
    `PIXELS_COMPONENTS` principal components (`principal_components`, fitted on what each part learns from).
    """
    if dataset.modality != "image":
        raise ValueError(f"The raw-pixels baseline is for images; '{dataset.name}' holds {dataset.modality}s.")
    result, strengths, protocol, width = _logistic_on_features(dataset, run_info, estimate, pixel_features,
                                                               principal_components)
    return _baseline_result(
        "pixels", PIXELS_TITLE, result,
        f"each image resized to {PIXELS_SIDE}x{PIXELS_SIDE} RGB ({width} pixel values), projected on its first "
        f"{PIXELS_COMPONENTS} principal components (fitted on the examples learnt from), L2 chosen by inner "
        f"cross-validation ({', '.join(strengths)}); scored by {protocol}", protocol, estimate)


def _mel_settings(run_info: dict[str, Any]) -> Any:
    """The spectrogram settings of the run's backbone (sample rate, clip length), or the defaults for one the
    catalogue does not know."""
    from core import audio
    from core.backbones import get_spec
    from core.preprocess import audio_settings

    try:
        return audio_settings(get_spec(str(run_info.get("backbone"))))
    except (KeyError, ValueError):
        return audio.MelSettings()


def scratch_baseline(
    dataset: Dataset,
    run_info: dict[str, Any],
    epochs: int | None = None,
    stop_event: threading.Event | None = None,
    callbacks: Sequence[Any] = (),
    backbone_factory: Callable[[], Any] | None = None,
    run_estimate: Evaluation | None = None,
) -> BaselineResult:
    """The run's own recipe (backbone architecture, frozen groups, head, split) but random initial weights.

    What is left of the model's accuracy without pretraining is what the data alone teaches; the gap to
    the trained model is what transfer learning bought. `backbone_factory` builds the (randomly initialised)
    backbone instead of the catalogue, for architectures the catalogue does not hold (tests' TinyCNN). With the
    run's `run_estimate` its answers are kept example by example, in the estimate's order, for the paired verdict.
    """
    from core.store import RunStore
    from core.training import TrainConfig, fit, load_trained

    config_fields = {f.name for f in dataclasses.fields(TrainConfig)}
    recorded = dict(run_info.get("config") or {})
    settings = {key: value for key, value in recorded.items() if key in config_fields}
    settings.setdefault("backbone", run_info.get("backbone"))
    settings.setdefault("frozen_groups", run_info.get("frozen_groups", 0))
    settings["pretrained"] = False
    if "lexical" in config_fields:  # random weights alone: a TF-IDF model mixed in would be a second baseline inside
        settings["lexical"] = "off"
    if epochs is not None:
        settings["epochs"] = int(epochs)
    config = TrainConfig(**settings)
    run_dir = _baseline_dir(run_info) / "scratch"
    run_dir.mkdir(parents=True, exist_ok=True)
    log.info("Training the from-scratch baseline of run %s in %s", run_info.get("run_id"), run_dir)
    fresh = backbone_factory() if backbone_factory is not None else None
    # A store of its own: a baseline is not one of the user's runs and must not appear in the Train page's table.
    store = RunStore(_baseline_dir(run_info) / "baseline_runs.sqlite")
    result = fit(dataset, config, run_dir, backbone=fresh, callbacks=callbacks, stop_event=stop_event, store=store)
    detail = (f"{config.backbone} without pretrained weights, {config.frozen_groups} group(s) frozen, "
              f"{config.epochs} epoch(s)")
    estimate = result.estimate or {}
    if estimate.get("protocol") == "cross-validation":
        # The same protocol and folds as the run: its out-of-fold estimate. (Its delivered model learned from every
        # example, the test split's too, so scoring that model on the test split would be scoring it on its training.)
        protocol = f"cross-validation ({estimate['folds']} folds)"
        detail += f"; scored by its {estimate['folds']}-fold cross-validation"
        scored = recorded_estimate(run_dir)
        metrics = estimate
    else:
        model, preprocessor, _ = load_trained(run_dir, backbone=backbone_factory() if backbone_factory else None)
        scored, protocol = evaluate(model, preprocessor, dataset, "test", device=config.device), "test split"
        metrics = scored.metrics
    correct, digest = _answers_on(run_estimate, scored) if scored is not None else (None, None)
    return BaselineResult(
        name="scratch", title="Same architecture, random weights", accuracy=float(metrics["accuracy"]),
        macro_f1=float(metrics["macro_f1"]), detail=detail, n=int(metrics["n"]),
        accuracy_interval95=list(metrics["accuracy_interval95"]), protocol=protocol, correct=correct,
        examples_digest=digest,
    )


def train_baselines(
    dataset: Dataset,
    run_info: dict[str, Any],
    kinds: Sequence[str] | None = None,
    epochs: int | None = None,
    stop_event: threading.Event | None = None,
    callbacks: Sequence[Any] = (),
    backbone_factory: Callable[[], Any] | None = None,
    estimate: Evaluation | None = None,
    progress: Callable[[float, str], None] | None = None,
) -> list[BaselineResult]:
    """Train the baselines of a run on the same split and save them next to the run's other baselines.

    Args:
        dataset: the data set the run was trained on (same split).
        run_info: the run's `run.json` record (backbone, frozen groups, config, run_id).
        kinds: which baselines (`BASELINE_KINDS`); default: "scratch" and the classic model of the data's kind
            ("pixels" for images, "tfidf" for texts, "mfcc" for sound).
        epochs: epochs for the from-scratch baseline (default: the run's own).
        stop_event: set it to stop the from-scratch training early.
        callbacks: training callbacks for the from-scratch run (progress).
        backbone_factory: builds the backbone for the from-scratch run instead of the catalogue (tests).
        estimate: the run's `recorded_estimate`; under cross-validation the classic baselines are scored on its
            folds, and every baseline keeps its answers on the estimate's examples for the paired verdict.
        progress: called with (share done, what is being trained) before each baseline and as the from-scratch
            model trains (a page's progress bar).

    Returns:
        The results of this call; `load_baselines(run_info)` returns every baseline saved for the run.
    """
    if kinds is None:
        kinds = [*DEFAULT_CLASSIC_BASELINE.get(dataset.modality, []), "scratch"]  # the quick one first
    unknown = [kind for kind in kinds if kind not in BASELINE_KINDS]
    if unknown:
        raise ValueError(f"Unknown baseline '{unknown[0]}'; choose from: "
                         + ", ".join(f"'{kind}' ({what})" for kind, what in BASELINE_KINDS.items()) + ".")
    report = progress or (lambda share, note: None)
    results = []
    for position, kind in enumerate(kinds):
        report(position / len(kinds), f"Training {BASELINE_KINDS[kind]} ({position + 1} of {len(kinds)})…")
        if kind == "tfidf":
            seed = int((run_info.get("config") or {}).get("seed", 0))
            results.append(tfidf_baseline(dataset, seed=seed, estimate=estimate))
        elif kind == "mfcc":
            results.append(mfcc_baseline(dataset, run_info, estimate=estimate))
        elif kind == "pixels":
            results.append(pixels_baseline(dataset, run_info, estimate=estimate))
        else:
            listener = _ScratchProgress(report, position, len(kinds), BASELINE_KINDS[kind])
            results.append(scratch_baseline(dataset, run_info, epochs, stop_event=stop_event,
                                            callbacks=[*callbacks, listener], backbone_factory=backbone_factory,
                                            run_estimate=estimate))
        _save_baseline(dataset, run_info, results[-1])  # each as it is done: a later failure keeps it
    report(1.0, "Done.")
    return results


def _save_baseline(dataset: Dataset, run_info: dict[str, Any], result: BaselineResult) -> None:
    """Add (or replace) one baseline in the run's baselines.json."""
    saved = {baseline.name: baseline for baseline in load_baselines(run_info)}
    saved[result.name] = result
    record = {
        "run_id": run_info.get("run_id"),
        "dataset_fingerprint": dataset.fingerprint,
        "baselines": [dataclasses.asdict(baseline) for baseline in saved.values()],
    }
    (_baseline_dir(run_info) / "baselines.json").write_text(json.dumps(record, indent=2), encoding="utf-8")


#: The baselines `train_baselines` knows, and what each is (the command line's choices).
BASELINE_KINDS = {
    "scratch": "the same network with random weights",
    "pixels": "raw pixels + logistic regression (images)",
    "tfidf": "TF-IDF + logistic regression (texts)",
    "mfcc": "MFCC statistics + logistic regression (sound)",
}
#: The classic model without pretraining that each kind of data is compared with by default.
DEFAULT_CLASSIC_BASELINE = {"image": ["pixels"], "text": ["tfidf"], "audio": ["mfcc"]}


class _ScratchProgress:
    """Turns the from-scratch training's step events into `train_baselines`' share of the whole work."""

    def __init__(self, report: Callable[[float, str], None], position: int, total: int, what: str) -> None:
        self.report, self.position, self.total, self.what = report, position, total, what

    def on_step_end(self, metrics: dict[str, Any]) -> None:
        if "progress" in metrics:
            share = min(max(float(metrics["progress"]), 0.0), 1.0)
            self.report((self.position + share) / self.total,
                        f"Training {self.what} ({self.position + 1} of {self.total}): {share:.0%}")


def load_baselines(run_info: dict[str, Any]) -> list[BaselineResult]:
    """The baselines saved for a run by `train_baselines` (empty when none were trained)."""
    if not run_info.get("run_id"):
        return []
    record_path = workspace_subdir("baselines") / str(run_info["run_id"]) / "baselines.json"
    if not record_path.is_file():
        return []
    try:
        record = json.loads(record_path.read_text(encoding="utf-8"))
        return [BaselineResult(**entry) for entry in record.get("baselines", [])]
    except (OSError, json.JSONDecodeError, TypeError) as error:
        log.warning("Could not read saved baselines %s: %s", record_path, error)
        return []


_SHORT_NAMES = {"scratch": "from scratch", "pixels": "raw pixels", "tfidf": "TF-IDF", "mfcc": "MFCC"}
_NEXT_STEPS = ("The pretrained features may not fit this domain: try unfreezing more layer groups, or another "
               "backbone closer to your data, or use the simpler model.")


@dataclass
class TransferVerdict:
    """Whether the pretrained model beats its baselines: what the Test page and `python -m core baselines` say.

    Attributes:
        level: "success" (better than every baseline, the whole 95 % interval of the difference above 0), "warning"
            (not clearly better than `baseline`), "worse" (`baseline` is better, the whole interval below 0) or
            "info" (no baseline yet).
        sentence: the verdict in words, with both accuracies, the difference, its interval and n.
        baseline: the name of the baseline the verdict is about (the hardest to beat), or None.
        model_accuracy, baseline_accuracy: the two accuracies compared.
        difference: model minus baseline accuracy (a share: 0.05 is 5 points).
        interval95: the 95 % interval of the difference, or None where only the old fixed margin could be used.
        n: examples compared.
        method: "paired bootstrap" (the same examples, answer by answer), "unpaired (Newcombe)" (per-example
            answers not kept) or "fixed margin" (a record without n, from before intervals).
        comparisons: the same numbers for every baseline, as dicts.
    """

    level: str
    sentence: str
    baseline: str | None = None
    model_accuracy: float | None = None
    baseline_accuracy: float | None = None
    difference: float | None = None
    interval95: list[float] | None = None
    n: int | None = None
    method: str | None = None
    comparisons: list[dict[str, Any]] = field(default_factory=list)


def _compare(model_accuracy: float, model_correct: list[int] | None, digest: str | None, n: int | None,
             baseline: BaselineResult) -> dict[str, Any]:
    """One baseline against the model: the difference with its interval, paired where the answers allow it."""
    row: dict[str, Any] = {"baseline": baseline.name, "title": baseline.title,
                           "short": _SHORT_NAMES.get(baseline.name, baseline.title), "model_accuracy": model_accuracy,
                           "baseline_accuracy": baseline.accuracy, "difference": model_accuracy - baseline.accuracy,
                           "interval95": None, "n": baseline.n or n, "method": "fixed margin"}
    if model_correct is not None and baseline.correct is not None and digest == baseline.examples_digest:
        row["difference"], row["interval95"] = stats.paired_difference_interval(model_correct, baseline.correct)
        row["n"], row["method"] = len(model_correct), "paired bootstrap"
    elif n and baseline.n:
        row["difference"], row["interval95"] = stats.unpaired_difference_interval(
            round(model_accuracy * n), n, round(baseline.accuracy * baseline.n), baseline.n)
        row["method"] = "unpaired (Newcombe)"
    return row


def format_points(share: float) -> str:
    """A difference in accuracy (a share) as signed points with a true minus sign: 0.046 -> '+4.6'."""
    return f"{share * 100:+.1f}".replace("-", "−")


def _difference_words(row: dict[str, Any]) -> str:
    """'(95 % interval −6.7 to +4.2 points; paired on the same 240 examples)'."""
    low, high = row["interval95"]
    how = (f"paired on the same {row['n']} examples" if row["method"] == "paired bootstrap"
           else f"n = {row['n']}, unpaired: the answers per example were not kept")
    return f"(95 % interval {format_points(low)} to {format_points(high)} points; {how})"


def judge_transfer(
    estimate: Evaluation | None,
    baselines: Sequence[BaselineResult],
    model_accuracy: float | None = None,
    subject: str = "Pretrained",
    margin: float = 0.02,
) -> TransferVerdict:
    """Whether the pretrained model beats its baselines, judged by the 95 % interval of the accuracy difference.

    With the run's `estimate` and baselines that kept their answers on its examples, the interval is a paired
    bootstrap over those examples (`stats.paired_difference_interval`): both models answered the same examples, so
    the comparison is much sharper than two separate intervals. Without per-example answers on either side it is
    Newcombe's unpaired interval; a record without n (written before intervals) falls back to a fixed `margin`.

    `model_accuracy` replaces the estimate's own accuracy (and its per-example answers, which are not its own then):
    a text run that mixes in a TF-IDF model is judged by its network alone (`subject` says so), since the mix would
    otherwise be compared with a baseline it partly is.
    """
    if not baselines:
        return TransferVerdict("info", "No baseline yet: train one to see what transfer learning adds.")
    accuracy = model_accuracy if model_accuracy is not None else (estimate.accuracy if estimate is not None else 0.0)
    paired = estimate is not None and model_accuracy is None
    model_correct = [int(right) for right in estimate.predictions == estimate.targets] if paired else None
    digest = examples_digest(estimate.items) if paired else None
    n = len(estimate.targets) if estimate is not None else None
    rows = [_compare(accuracy, model_correct, digest, n, baseline) for baseline in baselines]
    comparison = ", ".join(f"{_SHORT_NAMES.get(b.name, b.title)}: {b.accuracy:.1%}" for b in baselines)
    head = f"{subject}: {accuracy:.1%}; {comparison}."
    verdict = functools.partial(TransferVerdict, model_accuracy=accuracy, comparisons=rows)
    if any(row["interval95"] is None for row in rows):
        return _margin_verdict(accuracy, baselines, margin, head, verdict)
    below = [row for row in rows if row["interval95"][1] < 0]
    if below:
        row = min(below, key=lambda row: row["difference"])
        return verdict(
            "worse", f"{head} {row['title']} does better than the pretrained model: {row['baseline_accuracy']:.1%} "
            f"against {accuracy:.1%}, {-row['difference'] * 100:.1f} points more {_difference_words(row)}. Transfer "
            f"learning hurts here (negative transfer, a domain gap). {_NEXT_STEPS}", **_numbers(row))
    unsure = [row for row in rows if row["interval95"][0] <= 0]
    if unsure:
        row = min(unsure, key=lambda row: row["difference"])
        return verdict(
            "warning", f"{head} The pretrained model does not clearly beat {row['short']}: "
            f"{format_points(row['difference'])} points {_difference_words(row)}, so on new data of this kind it may "
            f"be no better. {_NEXT_STEPS}", **_numbers(row))
    row = min(rows, key=lambda row: row["interval95"][0])
    return verdict("success", f"{head} Transfer learning adds {row['difference'] * 100:.1f} points over "
                              f"{row['short']}, the hardest baseline to beat {_difference_words(row)}.",
                   **_numbers(row))


def _numbers(row: dict[str, Any]) -> dict[str, Any]:
    return {"baseline": row["baseline"], "baseline_accuracy": row["baseline_accuracy"],
            "difference": row["difference"], "interval95": row["interval95"], "n": row["n"], "method": row["method"]}


def _margin_verdict(accuracy: float, baselines: Sequence[BaselineResult], margin: float, head: str,
                    verdict: Callable[..., TransferVerdict]) -> TransferVerdict:
    """The verdict of records from before intervals (no n): better by `margin`, or not."""
    best = max(baselines, key=lambda b: b.accuracy)
    numbers = {"baseline": best.name, "baseline_accuracy": best.accuracy, "difference": accuracy - best.accuracy,
               "method": "fixed margin"}
    if accuracy >= best.accuracy + margin:
        return verdict("success", f"{head} Transfer learning adds {(accuracy - best.accuracy) * 100:.0f} points over "
                                  "the best baseline.", **numbers)
    short = _SHORT_NAMES.get(best.name, best.title)
    return verdict("warning", f"{head} The pretrained model does not clearly beat {short}: its features may not fit "
                              "this data (negative transfer, a domain gap). Try unfreezing more layer groups, training "
                              "longer, or another backbone closer to your data.", **numbers)


def judge_run(estimate: Evaluation, baselines: Sequence[BaselineResult]) -> TransferVerdict:
    """`judge_transfer` for a run's recorded estimate, as the Test page and the command line both judge it.

    A text run that mixes in TF-IDF is judged by its network alone (metrics.json's `lexical.network_accuracy`).
    """
    network_alone = (estimate.metrics.get("lexical") or {}).get("network_accuracy")
    if network_alone is None:
        return judge_transfer(estimate, baselines)
    return judge_transfer(estimate, baselines, model_accuracy=float(network_alone),
                          subject="Pretrained network alone (without the TF-IDF model)")


# --------------------------------------------------------------------------------------------------- command line


def _texts_from_inputs(inputs: Sequence[str]) -> list[str]:
    texts: list[str] = []
    for value in inputs:
        file = Path(value)
        if file.suffix.lower() in (".txt", ".csv") and file.is_file():
            texts.extend(read_texts(file.read_text(encoding="utf-8"), is_csv=file.suffix.lower() == ".csv"))
        else:
            texts.append(value)
    return [text for text in texts if text.strip()]


def _file_inputs(inputs: Sequence[str], modality: str) -> list[str]:
    """Image or sound files to predict: files as given, folders searched for files of the model's kind."""
    from core.audio import AUDIO_EXTENSIONS

    suffixes = AUDIO_EXTENSIONS if modality == "audio" else IMAGE_SUFFIXES
    paths: list[str] = []
    for value in inputs:
        folder = Path(value)
        if folder.is_dir():
            paths.extend(sorted(str(p) for p in folder.rglob("*") if p.suffix.lower() in suffixes))
        else:
            paths.append(value)
    return check_audio_files(paths) if modality == "audio" else check_image_files(paths)


def main_predict(args: argparse.Namespace) -> int:
    """`python -m core predict --model DIR INPUT...`: top-k classes of images or clips (files or folders) or texts."""
    try:
        model, preprocessor, info = load_model(args.model)
        classes = list(info.get("classes") or [])
        spec = getattr(getattr(model, "backbone", None), "spec", None)
        modality = info.get("modality") or getattr(spec, "modality", "image")
        inputs = _texts_from_inputs(args.inputs) if modality == "text" else _file_inputs(args.inputs, modality)
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


def main_baselines(args: argparse.Namespace) -> int:
    """`python -m core baselines --model RUN_DIR`: does transfer help? Train the baselines of a run on its own
    examples, print each with accuracy, interval and n, and the verdict with the interval of the difference."""
    from core.data import DataError, load_path
    from core.workers import read_job_file

    run_dir = Path(args.model).expanduser()
    run_info = read_run_info(run_dir)
    try:
        if not run_info:
            raise ModelLoadError(f"{run_dir} holds no run.json: give a run folder (workspace/runs/<run_id>, or the "
                                 "--out of `python -m core train`).")
        dataset = load_path(args.data)[0] if args.data else read_job_file(run_dir).dataset
        if [str(name) for name in run_info.get("classes") or dataset.classes] != list(dataset.classes):
            raise ValueError(f"The data set's classes {dataset.classes} differ from the run's {run_info['classes']}: "
                             "give the data the run was trained on.")
        estimate = recorded_estimate(run_dir)
        if estimate is None:
            log.warning("%s recorded no examples.json (trained before runs did): the baselines are scored on the test "
                        "split and compared without pairing.", run_dir)
        train_baselines(dataset, run_info, kinds=args.kinds, epochs=args.epochs, estimate=estimate,
                        progress=lambda share, note: log.info("%3.0f%% %s", 100 * share, note))
    except (ModelLoadError, DataError, FileNotFoundError, ValueError, RuntimeError, OSError) as error:
        sys.stderr.write(f"error: {error}\n")
        return 2
    baselines = load_baselines(run_info)
    if estimate is not None:
        verdict = judge_run(estimate, baselines)
    else:
        verdict = judge_transfer(None, baselines, model_accuracy=float((run_info.get("metrics") or {}).get(
            "test_accuracy") or 0.0))
    if getattr(args, "json", False):
        record = {"run": str(run_dir), "baselines": [
            {key: value for key, value in dataclasses.asdict(baseline).items() if key != "correct"}
            for baseline in baselines], "verdict": dataclasses.asdict(verdict)}  # fmt: skip
        sys.stdout.write(json.dumps(record, indent=2) + "\n")
        return 0
    rows = {row["baseline"]: row for row in verdict.comparisons}
    for baseline in baselines:
        interval = (stats.format_interval(baseline.accuracy, baseline.accuracy_interval95)
                    if baseline.accuracy_interval95 else f"{baseline.accuracy:.1%}")
        line = f"{baseline.title}: {interval}, n = {baseline.n}"
        row = rows.get(baseline.name)
        if row is not None and row["interval95"] is not None:
            line += f"; pretrained minus this: {format_points(row['difference'])} points {_difference_words(row)}"
        sys.stdout.write(line + "\n")
    sys.stdout.write(f"\n{verdict.level.upper()}: {verdict.sentence}\n")
    return 0
