"""Does transfer help here? The baselines: the same task without pretraining, scored on the run's own examples.

A run's accuracy means little alone: raw pixels, TF-IDF or MFCC statistics in a logistic regression, or the same
architecture from random weights, may do as well on some data (8x8 scans of handwriting are far from ImageNet
photos). Each baseline learns from and is scored on exactly what the run's own estimate was (its cross-validation
folds, or its test split), so `core.verdict` can pair the two models example by example.

Main entry points:
    `train_baselines(dataset, run_info, kinds=...)` -> trains and saves them (`workspace/baselines/<run id>/`).
    `load_baselines(run_info)` -> the saved `BaselineResult`s of a run.
    `pixels_baseline`, `tfidf_baseline`, `mfcc_baseline`, `scratch_baseline` -> one each.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from core import stats
from core.dataset import Dataset
from core.evaluation import Evaluation, evaluate, evaluate_probabilities, fit_tfidf, recorded_estimate
from core.paths import workspace_subdir

log = logging.getLogger(__name__)


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
        fitted = smalldata.select_and_fit(part[learn], torch.as_tensor(targets[learn]), dataset.num_classes,
                                          seed=seed if fold is None else seed + fold + 1, balanced=balanced)
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
    if "sentence_tuning" in config_fields:  # tuned on pairs only if the run was: "auto" decides on a frozen score,
        tuned = bool((run_info.get("sentence_tuning") or {}).get("on"))  # which random weights always fail
        settings["sentence_tuning"] = "on" if tuned else "off"
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
