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
The scoring of probabilities (`Evaluation`, `evaluate_probabilities`, the metrics) lives in `core.metrics`, below the
training engine that scores its own runs with it; every name is importable from here as before.
The baselines without pretraining are in `core.no_transfer`, the verdict on them in `core.transfer_verdict`; the
checks of what a user gives to classify (`check_image_files`, `read_texts`, ...) in `core._prediction_inputs`.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from core import devices
from core._bundle_folder import MANIFEST_FILE
from core._export_bundle import load_bundle  # the bundle reader sits below core.export (built on this)
from core._prediction_inputs import PredictionInputError, file_inputs, texts_from_inputs
from core._prediction_inputs import check_audio_files as check_audio_files
from core._prediction_inputs import check_image_files as check_image_files
from core._prediction_inputs import read_texts as read_texts
from core._run_folder import EXAMPLES, MODEL, RUN_INFO
from core.dataset import Dataset
from core.metrics import Evaluation as Evaluation  # the scoring sits below the training engine, which uses it too
from core.metrics import confidence_at as confidence_at
from core.metrics import confusion_matrix as confusion_matrix
from core.metrics import coverage_curve as coverage_curve
from core.metrics import evaluate_probabilities as evaluate_probabilities
from core.metrics import expected_calibration_error as expected_calibration_error
from core.metrics import metrics_from_confusion as metrics_from_confusion
from core.tfidf import TFIDF_RECIPES as TFIDF_RECIPES
from core.tfidf import fit_tfidf as fit_tfidf

log = logging.getLogger(__name__)

NOT_SURE = "not sure"


class ModelLoadError(RuntimeError):
    """A folder given as a model is neither a run folder nor an exported bundle we can read."""


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
    test-split predictions otherwise. None for a run that recorded none (it stopped or failed before its estimate,
    or had no test examples).

    The estimate's own extras (protocol and its reason, calibration error before temperature scaling) are in
    `metrics`, read from run.json.
    """
    path = Path(run_dir) / EXAMPLES
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
    if (folder / MANIFEST_FILE).is_file():
        return load_bundle(folder)
    if (folder / RUN_INFO).is_file():
        from core.training import load_trained  # the engine sits above this module: imported when a run is opened

        return load_trained(folder)
    raise ModelLoadError(
        f"{folder} holds no model: give a run folder with {RUN_INFO} and {MODEL} "
        "(workspace/runs/<run_id>), or a bundle written by `python -m core export`."
    )


def has_model(run_dir: str | Path) -> bool:
    """Whether the run folder holds a trained model (`model.safetensors`, written when the run ends)."""
    return (Path(run_dir) / MODEL).is_file()


def read_run_info(run_dir: str | Path) -> dict[str, Any]:
    """The run record (`run.json`) of a run folder, or an empty dict when it has none."""
    record = Path(run_dir) / RUN_INFO
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
        model, preprocessor, run_info = load_model(args.model)
        classes, modality = list(run_info["classes"]), run_info["modality"]  # a run's run.json or a bundle's record
        inputs = texts_from_inputs(args.inputs) if modality == "text" else file_inputs(args.inputs, modality)
        if not inputs:
            raise PredictionInputError("Nothing to predict: give image or sound files / folders, or texts.")
        probabilities = predict_proba(model, preprocessor, inputs, device=getattr(args, "device", None))
    except (ModelLoadError, PredictionInputError, OSError, ValueError, RuntimeError) as error:
        # Missing files, unreadable inputs, a backbone whose weights are not installed (BackboneUnavailable), a
        # changed bundle (BundleError): all carry a message that says what to do.
        sys.stderr.write(f"error: {error}\n")
        return 2
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
