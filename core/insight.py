"""Would more data help? A learning curve of the small-data recipe, with a fitted trend and a plain sentence.

The head is refitted on 10 / 25 / 50 / 100 % of each cross-validation fold's training part (the same folds, the
same recipe: logistic regression with its L2 strength chosen by inner cross-validation) and scored on the held
fold, so every point is an out-of-fold accuracy over all n examples with its Wilson interval. On cached features
each point costs a few seconds.

The trend is a power law in the error, `error = a * examples ** -b`, the usual shape of learning curves (Cortes et
al. 1994; Hestness et al. 2017), fitted by least squares on log error vs log examples. Its forecast for twice the
examples is what the sentence reports; it is an extrapolation, and the sentence says "likely".
"""

from __future__ import annotations

import argparse
import json
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch

from core import features as feature_cache
from core import smalldata, stats

log = logging.getLogger(__name__)

#: Shares of each fold's training part the head learns from.
FRACTIONS = (0.1, 0.25, 0.5, 1.0)
#: A forecast gain below this (one point) reads as "unlikely to help".
WORTHWHILE_GAIN = 0.01


@dataclass
class CurvePoint:
    """The recipe's out-of-fold accuracy when each fold model learns from `fraction` of its training part."""

    fraction: float
    examples: float  # labelled examples per fold model (mean over folds)
    accuracy: float
    interval95: tuple[float, float]
    n: int  # examples scored (every example once)


@dataclass
class PowerLaw:
    """error = scale * examples ** -exponent."""

    scale: float
    exponent: float

    def accuracy(self, examples: float) -> float:
        return 1.0 - self.scale * examples ** (-self.exponent)


@dataclass
class LearningCurve:
    points: list[CurvePoint]
    trend: PowerLaw | None
    examples_now: int  # every labelled example: what the delivered model learns from
    accuracy_now: float | None  # the trend's accuracy at examples_now
    accuracy_doubled: float | None  # ... and at twice as many
    sentence: str

    def to_dict(self) -> dict:
        return asdict(self)


def _subsample(indices: np.ndarray, labels: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """A stratified share of `indices`: `fraction` of each class, at least one example of each."""
    kept = []
    for label in np.unique(labels[indices]):
        members = indices[labels[indices] == label]
        count = max(1, int(round(fraction * len(members))))
        kept.append(rng.choice(members, size=count, replace=False))
    return np.sort(np.concatenate(kept))


def fit_trend(points: Sequence[CurvePoint]) -> PowerLaw | None:
    """The power law through the points (least squares in log-log); None with fewer than two distinct sizes."""
    sizes = np.array([point.examples for point in points], dtype=np.float64)
    errors = np.clip(1.0 - np.array([point.accuracy for point in points]), 1e-3, None)
    if len(np.unique(sizes)) < 2:
        return None
    slope, intercept = np.polyfit(np.log(sizes), np.log(errors), 1)
    return PowerLaw(scale=float(math.exp(intercept)), exponent=float(-slope))


def _sentence(trend: PowerLaw | None, now: float | None, doubled: float | None) -> str:
    if trend is None or now is None or doubled is None:
        return "Too few points for a trend: the learning curve needs at least two data sizes."
    gain = doubled - now
    if trend.exponent <= 0 or gain < WORTHWHILE_GAIN:
        return ("More data of this kind is unlikely to help much: the trend adds "
                f"{max(gain, 0.0) * 100:.1f} points for twice the examples. Try a larger backbone, fine-tuning more "
                "layer groups, or cleaner labels.")
    return (f"Doubling your labelled examples would likely add about {gain * 100:.0f} points (from about "
            f"{now:.0%} to {doubled:.0%}), by the trend fitted to the points below; an extrapolation, not a promise.")


def learning_curve(
    features: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    folds: int = smalldata.DEFAULT_FOLDS,
    fractions: Sequence[float] = FRACTIONS,
    seed: int = 0,
    class_embeddings: torch.Tensor | None = None,
    progress: Callable[[int, int], None] | None = None,
    stop_requested: Callable[[], bool] | None = None,
    texts: Sequence[str] | None = None,
) -> LearningCurve:
    """The small-data recipe rerun on shares of the labels, each point an out-of-fold accuracy over all examples.

    Args:
        features: every labelled example's frozen features [N, F].
        labels: class indices [N].
        num_classes: number of classes.
        folds: outer folds (at most the smallest class).
        fractions: shares of each fold's training part to learn from (1.0 is the recipe itself).
        seed: fixes the folds and the shares.
        class_embeddings: a sentence encoder's class-name embeddings, as the app's head uses them.
        progress: called with (done, total) fold fits.
        stop_requested: checked between fits; raises InterruptedError when it turns true.
        texts: the examples' texts: each fit then mixes in a TF-IDF model learnt from the same share, as text
            runs deliver (`core.ngrams`).
    """
    labels_np = labels.numpy()
    smallest = int(np.bincount(labels_np, minlength=num_classes)[np.unique(labels_np)].min())
    folds = max(2, min(folds, smallest))
    fold_of = smalldata.stratified_folds(labels_np, folds, seed)
    rng = np.random.default_rng(seed)
    points, total, done = [], len(fractions) * folds, 0
    for fraction in sorted(fractions):
        predictions = np.zeros(len(labels_np), dtype=np.int64)
        sizes = []
        for fold in range(folds):
            if stop_requested is not None and stop_requested():
                raise InterruptedError
            train = _subsample(np.flatnonzero(fold_of != fold), labels_np, fraction, rng)
            held = fold_of == fold
            fitted = smalldata.select_and_fit(features[train], labels[train], num_classes, seed=seed + fold + 1,
                                              class_embeddings=class_embeddings)
            scores = torch.softmax(fitted.head.logits(features[held].to(torch.float64)), dim=1).numpy()
            if texts is not None:
                held_texts = [texts[i] for i in np.flatnonzero(held)]
                scores = _lexical(texts, labels_np, train, num_classes, seed).mix(scores, held_texts)
            predictions[held] = scores.argmax(axis=1)
            sizes.append(len(train))
            done += 1
            if progress is not None:
                progress(done, total)
        correct = int((predictions == labels_np).sum())
        points.append(CurvePoint(fraction=float(fraction), examples=float(np.mean(sizes)),
                                 accuracy=correct / len(labels_np),
                                 interval95=stats.wilson_interval(correct, len(labels_np)), n=len(labels_np)))
    trend = fit_trend(points)
    now = trend.accuracy(len(labels_np)) if trend is not None else None
    doubled = trend.accuracy(2 * len(labels_np)) if trend is not None else None
    return LearningCurve(points, trend, len(labels_np), now, doubled, _sentence(trend, now, doubled))


def _lexical(texts: Sequence[str], labels: np.ndarray, train: np.ndarray, num_classes: int, seed: int):
    """The TF-IDF model a text run mixes in (`core.ngrams`), learnt from the examples `train` indexes."""
    from core import ngrams
    from core.evaluation import fit_tfidf

    pipeline, recipe = fit_tfidf([str(texts[i]) for i in train], labels[train], seed)
    return ngrams.from_pipeline(pipeline, num_classes, recipe)


def dataset_curve(dataset, backbone_name: str, device: str = "auto", seed: int = 0,
                  progress: Callable[[int, int], None] | None = None, lexical: bool = True) -> LearningCurve:
    """The learning curve of feature extraction with `backbone_name` on every labelled example of `dataset`
    (texts: with the TF-IDF model mixed in, unless `lexical` is False, as the run's `--lexical off`)."""
    from core.training import frozen_features

    states = frozen_features(dataset, backbone_name, device)
    if states is None:
        raise ValueError(f"The backbone {backbone_name!r} does not take {dataset.modality} data.")
    examples = feature_cache.concatenate([states[name] for name in ("train", "val", "test")
                                          if states.get(name) is not None and len(states[name])])
    texts = None
    if dataset.modality == "text" and lexical:
        texts = [str(item) for name in ("train", "val", "test") if states.get(name) is not None and len(states[name])
                 for item in dataset.split(name)[0]]
    return learning_curve(examples.states.float().cpu(), examples.labels.long().cpu(), dataset.num_classes,
                          seed=seed, progress=progress, texts=texts)


def main_learning_curve(args: argparse.Namespace) -> int:
    """`python -m core learning-curve --data DATA [--backbone NAME] [--json]`: would more data help?"""
    from core import data as data_module
    from core.backbones import default_backbone

    try:
        if args.data.startswith("sample-"):
            dataset, _ = data_module.load_sample(args.data.removeprefix("sample-"))
        else:
            loaded = data_module.load_path(args.data)
            dataset = loaded[0] if isinstance(loaded, tuple) else loaded
        curve = dataset_curve(dataset, args.backbone or default_backbone(dataset.modality), args.device, args.seed)
    except (ValueError, OSError) as error:
        log.error("%s", error)
        return 2
    if args.json:
        print(json.dumps(curve.to_dict(), indent=2))  # noqa: T201 - the command's output
        return 0
    for point in curve.points:
        log.info("%3.0f %% of the labels (%.0f examples per model): %s, n = %d", point.fraction * 100,
                 point.examples, stats.format_interval(point.accuracy, point.interval95), point.n)
    log.info("%s", curve.sentence)
    return 0
