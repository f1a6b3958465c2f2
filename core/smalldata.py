"""Small data done right: which estimation protocol to use, and a linear head trained to its optimum.

Our users have tens to a few hundred examples per class. Holding 30 % of them out wastes labels the delivered
model needs and gives a test number from a handful of examples. So, for small data (fewer than
`SMALL_DATA_EXAMPLES` labelled examples, or any class under `SMALL_CLASS_EXAMPLES`) and no test folder from the
user, the estimate comes from stratified k-fold cross-validation (every example is predicted once by a model
that never saw it) and the delivered model is refitted on *all* labelled examples. Large data and user-given
splits keep a held-out test split.

With every layer group frozen the head is multinomial logistic regression on standardised features: a convex
problem, solved full-batch with L-BFGS, its L2 strength chosen by inner cross-validation over `L2_GRID`. It takes
seconds, and it is what a careful practitioner's linear probe does, with the standardisation and temperature
folded into the shipped `nn.Linear` so export and prediction need nothing new.

A sentence encoder also knows something before it sees a single example: the class names themselves, embedded by
the same encoder, make a zero-shot classifier (cosine similarity to each name). That gives the "0 examples" baseline
the user sees, and a prior for the head: its weights shrink towards the class-name classifier instead of towards
zero (`L2 * ||W - W_names||^2`, L2 chosen by the inner cross-validation from `NAMES_L2_GRID`). The class-name
classifier's sharpness is fitted to the labels, so names that say nothing about them give a prior near zero (the
plain head). On real tweets (5 draws, 1,000 held out) this added 1.8 points at 8 labelled per class, 1.7 at 20 and
none at 64; letting the inner cross-validation choose between the two anchors instead gained nothing (too few
examples to choose well).
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import threadpoolctl
import torch
import torch.nn.functional as F
from torch import nn

from core import stats
from core.metrics import evaluate_probabilities, expected_calibration_error

log = logging.getLogger(__name__)

SMALL_DATA_EXAMPLES = 2000
SMALL_CLASS_EXAMPLES = 50
DEFAULT_FOLDS = 5
INNER_FOLDS = 3
L2_GRID = (3.0, 1.0, 0.3, 0.1, 0.03, 0.01, 3e-3, 1e-3, 1e-4)  # strongest first: each fit warm-starts the next
# Shrinking towards the class names may be strong: at the strongest the head is the zero-shot classifier.
NAMES_L2_GRID = (100.0, 30.0, 10.0, *L2_GRID)
PROTOCOLS = ("auto", "cross-validation", "test split")
MAX_ITERATIONS = 300


@dataclass(frozen=True)
class Protocol:
    """How a run's accuracy is estimated, and why (one sentence the user reads).

    Attributes:
        name: "cross-validation" or "test split".
        folds: folds of the cross-validation (0 for a test split).
        refit_on_all: the delivered model is trained on every labelled example.
        reason: the rule that chose it, in plain words.
    """

    name: str
    folds: int
    refit_on_all: bool
    reason: str


def choose_protocol(
    labels: Sequence[str], split_given: bool, requested: str = "auto", folds: int = DEFAULT_FOLDS
) -> Protocol:
    """The protocol for a data set with these labels: the documented rule, or what the user asked for.

    Args:
        labels: the class of every labelled example.
        split_given: the user brought their own train / val / test folders (their test split is respected).
        requested: "auto", "cross-validation" or "test split".
        folds: the most folds to use (fewer when the smallest class has fewer examples).
    """
    if requested not in PROTOCOLS:
        raise ValueError(f"The protocol must be one of {', '.join(PROTOCOLS)}, not {requested!r}.")
    counts = {label: list(labels).count(label) for label in set(labels)}
    total, smallest = len(labels), min(counts.values()) if counts else 0
    usable_folds = min(folds, smallest)
    if requested == "test split" or (requested == "auto" and split_given):
        why = "you asked for it" if requested == "test split" else "your data came with its own test split"
        return Protocol("test split", 0, False, f"Scores come from the held-out test split, because {why}.")
    if usable_folds < 2:
        return Protocol(
            "test split", 0, False,
            f"Cross-validation needs at least 2 examples in every class (the smallest has {smallest}); "
            "scores come from the held-out test split.",
        )
    small = total < SMALL_DATA_EXAMPLES or smallest < SMALL_CLASS_EXAMPLES
    if requested == "auto" and not small:
        return Protocol(
            "test split", 0, False,
            f"With {total} examples and at least {smallest} per class a held-out test split is large enough.",
        )
    why = (
        "you asked for it" if requested == "cross-validation"
        else f"the data is small ({total} examples, smallest class {smallest}; the rule is under "
        f"{SMALL_DATA_EXAMPLES} examples or any class under {SMALL_CLASS_EXAMPLES})"
    )
    return Protocol(
        "cross-validation", usable_folds, True,
        f"Scores come from {usable_folds}-fold cross-validation and the delivered model is trained on all "
        f"{total} labelled examples, because {why}.",
    )


def stratified_folds(labels: Sequence[int], folds: int, seed: int) -> np.ndarray:
    """A fold number per example, each class spread evenly over the folds (deterministic for a seed)."""
    labels_array = np.asarray(labels, dtype=np.int64)
    fold_of = np.zeros(len(labels_array), dtype=np.int64)
    rng = np.random.default_rng(seed)
    offset = 0
    for label in np.unique(labels_array):
        members = np.flatnonzero(labels_array == label)
        members = members[rng.permutation(len(members))]
        fold_of[members] = (np.arange(len(members)) + offset) % folds
        offset += len(members)  # the next class starts where this one stopped, so fold sizes stay even
    return fold_of


# ------------------------------------------------------------------------------------------------ the head


@dataclass
class LinearHead:
    """A multinomial logistic regression on standardised features: `logits = ((x - mean) / scale) @ weight.T + bias`."""

    weight: torch.Tensor
    bias: torch.Tensor
    mean: torch.Tensor
    scale: torch.Tensor
    l2: float
    losses: list[float] = field(default_factory=list)
    toward_names: bool = False

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        standardised = (features.to(self.mean.dtype) - self.mean) / self.scale
        return standardised @ self.weight.T + self.bias

    def to_linear(self, linear: nn.Linear, temperature: float = 1.0) -> None:
        """Write this head into `linear` (standardisation and temperature folded in): same logits / temperature."""
        weight = self.weight / self.scale / temperature
        bias = (self.bias - (self.mean / self.scale) @ self.weight.T) / temperature
        with torch.no_grad():
            linear.weight.copy_(weight.to(linear.weight.dtype))
            linear.bias.copy_(bias.to(linear.bias.dtype))


def class_name_texts(classes: Sequence[str]) -> list[str]:
    """What a sentence encoder embeds for each class name: underscores and dashes read as spaces."""
    return [" ".join(str(name).replace("_", " ").replace("-", " ").split()) for name in classes]


def zero_shot_logits(features: torch.Tensor, class_embeddings: torch.Tensor) -> np.ndarray:
    """Cosine similarity of every example's features to every class name's embedding: a classifier from names alone."""
    examples = F.normalize(features.to(torch.float64), dim=1)
    names = F.normalize(class_embeddings.to(torch.float64), dim=1)
    return (examples @ names.T).numpy()


def zero_shot_score(features: torch.Tensor, labels: Sequence[int], class_embeddings: torch.Tensor) -> dict[str, Any]:
    """Accuracy of the class-name classifier on these examples, with its n and 95 % interval ("0 examples -> x %").

    It learns nothing from the examples, so scoring it on all of them is honest.
    """
    targets = np.asarray(labels, dtype=np.int64)
    correct = int((zero_shot_logits(features, class_embeddings).argmax(axis=1) == targets).sum())
    return {
        "accuracy": correct / max(len(targets), 1),
        "accuracy_interval95": list(stats.wilson_interval(correct, len(targets))),
        "n": int(len(targets)),
        "small_sample": len(targets) < stats.SMALL_SAMPLE,
    }


def class_name_prior(features: torch.Tensor, labels: torch.Tensor, class_embeddings: torch.Tensor) -> torch.Tensor:
    """The zero-shot classifier as weights on the raw features (`logits ~ features @ prior.T`), scaled to its data.

    Cosine similarity is linear in the features once divided by their typical length; its sharpness (1 / the
    temperature that fits these labels best) is the one number learned from the examples.
    """
    features = features.to(torch.float64)
    temperature = stats.fit_temperature(zero_shot_logits(features, class_embeddings), labels.numpy())
    names = F.normalize(class_embeddings.to(torch.float64), dim=1)
    return names / features.norm(dim=1).mean().clamp(min=1e-9) / temperature


def l2_grid(toward_names: bool) -> tuple[float, ...]:
    """The L2 strengths the inner cross-validation tries: stronger ones too when shrinking towards class names."""
    return NAMES_L2_GRID if toward_names else L2_GRID


def _standardiser(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    mean = features.mean(dim=0)
    scale = features.std(dim=0, unbiased=False)
    return mean, torch.where(scale > 1e-6, scale, torch.ones_like(scale))


@dataclass(frozen=True)
class _Standardised:
    """Features standardised with their own mean and scale, and, when they have more columns than rows, an
    orthonormal basis of their row space (`basis`: [rank, D]) with the features written in it (`projected`)."""

    mean: torch.Tensor
    scale: torch.Tensor
    values: torch.Tensor
    basis: torch.Tensor | None
    projected: torch.Tensor


def _standardise(features: torch.Tensor) -> _Standardised:
    """The fit's view of `features`. With fewer examples than features (the usual small-data case: 192 digits with
    1,904 features) the L2-penalised solution lies in the examples' row space, so the solver works on a rank x D
    basis of it (a thin SVD): the same problem turned onto its own axes, ten times fewer columns per step."""
    features = features.to(torch.float64)
    mean, scale = _standardiser(features)
    values = (features - mean) / scale
    if values.shape[1] <= values.shape[0]:
        return _Standardised(mean, scale, values, None, values)
    basis = torch.linalg.svd(values, full_matrices=False).Vh
    return _Standardised(mean, scale, values, basis, values @ basis.T)


def fit_logistic(
    features: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    l2: float,
    class_weight: torch.Tensor | None = None,
    start: LinearHead | None = None,
    on_iteration: Callable[[int, float], None] | None = None,
    prior: torch.Tensor | None = None,
    standardised: _Standardised | None = None,
) -> LinearHead:
    """Multinomial logistic regression, full batch, L-BFGS: mean cross-entropy + l2/2 * ||weight - anchor||^2.

    The features are standardised with their own mean and scale (kept in the head). `start` warm-starts the
    solver (the neighbouring L2 strength's solution), which makes a whole grid cost little more than one fit.
    The anchor is zero, or with `prior` (weights on the raw features, see `class_name_prior`) that classifier
    written in standardised coordinates. The gradient of the data term lies in the examples' row space, so
    `weight - anchor` is solved there (`_standardise`); `standardised` passes that view in when the caller fits the
    same features several times (the L2 grid).
    """
    view = standardised if standardised is not None else _standardise(features)
    dimension = view.values.shape[1]
    anchor = (prior.to(torch.float64) * view.scale if prior is not None
              else torch.zeros(num_classes, dimension, dtype=torch.float64))
    offset = view.values @ anchor.T  # the anchor's logits: fixed
    coefficients = torch.zeros(num_classes, view.projected.shape[1], dtype=torch.float64)
    bias = torch.zeros(num_classes, dtype=torch.float64)
    start_weight = start.weight if start is not None else torch.zeros_like(anchor)
    if start is not None:
        bias.copy_(start.bias)
    moved = start_weight - anchor
    coefficients.copy_(moved if view.basis is None else moved @ view.basis.T)
    coefficients.requires_grad_(True)
    bias.requires_grad_(True)
    weights = class_weight.to(torch.float64) if class_weight is not None else None
    optimizer = torch.optim.LBFGS(
        [coefficients, bias], lr=1.0, max_iter=MAX_ITERATIONS, history_size=20, tolerance_grad=1e-6,
        tolerance_change=1e-9, line_search_fn="strong_wolfe",
    )
    losses: list[float] = []

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        logits = offset + view.projected @ coefficients.T + bias
        loss = F.cross_entropy(logits, labels, weight=weights) + 0.5 * l2 * (coefficients**2).sum()
        loss.backward()
        losses.append(float(loss.detach()))
        if on_iteration is not None:
            on_iteration(len(losses), losses[-1])
        return loss

    optimizer.step(closure)
    solved = coefficients.detach()
    weight = anchor + (solved if view.basis is None else solved @ view.basis)
    return LinearHead(weight, bias.detach(), view.mean, view.scale, l2, losses, toward_names=prior is not None)


@dataclass
class GridPoint:
    """The inner cross-validation score of one L2 strength, shrinking towards zero or towards the class names."""

    l2: float
    log_loss: float
    accuracy: float
    train_loss: float
    toward_names: bool = False


@dataclass
class HeadFit:
    """A head fitted with its L2 strength chosen by cross-validation on the same examples.

    Attributes:
        head: refitted on all the examples at the chosen strength.
        grid: the cross-validation score of every strength tried (the validation curve).
        oof_logits: at the chosen strength, each example's logits from a model that did not see it.
    """

    head: LinearHead
    grid: list[GridPoint]
    oof_logits: np.ndarray


def _class_weight(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    counts = torch.bincount(labels, minlength=num_classes).clamp(min=1).to(torch.float64)
    return counts.sum() / (num_classes * counts)


def with_views(
    features: torch.Tensor, labels: torch.Tensor, views: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The examples a head learns from: each example's features, then its augmented views' (`views`: [N, V, D],
    row i holds the views of example i) with the same label. Views only ever join the fit of their own example:
    callers index `views` with the same mask as `features`, so a held-out example's views stay out of the fold."""
    if views is None or views.shape[1] == 0:
        return features, labels
    count = views.shape[1]
    return (torch.cat([features, views.reshape(-1, features.shape[1]).to(features.dtype)]),
            torch.cat([labels, labels.repeat_interleave(count)]))


@contextlib.contextmanager
def one_thread(rows: int) -> Iterator[None]:
    """Torch, and the BLAS under numpy and scipy, on one thread while a model of small data (`rows` examples) is
    fitted, then as before.

    Matrices this small gain nothing from threads, and on a busy machine a thread team waiting for a descheduled
    member made each L-BFGS fit far slower: a baseline's fit took 0.72 s against 0.01 s (load 5, two cores), and a
    run's whole head (digits, 20 per class, 1,904 features, inner 3-fold choice of L2) 27-65 s on 2 threads against
    5.7 s on one, on a machine running a benchmark beside it; the TF-IDF model's choice of recipe on the text sample
    (scikit-learn, 18 fits) took 3.2 s against 0.7 s. Under OpenMP torch's setting belongs to the calling thread, so
    a page's background thread changes only its own; the BLAS limit (threadpoolctl, which scikit-learn ships) holds
    for the process for those seconds. Large data keeps its threads.
    """
    if rows > SMALL_DATA_EXAMPLES:
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with threadpoolctl.threadpool_limits(1, user_api="blas"):
            yield
    finally:
        torch.set_num_threads(threads)


def select_and_fit(
    features: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    folds: int = INNER_FOLDS,
    seed: int = 0,
    balanced: bool = False,
    grid: Sequence[float] | None = None,
    on_iteration: Callable[[int, float], None] | None = None,
    stop_requested: Callable[[], bool] | None = None,
    class_embeddings: torch.Tensor | None = None,
    views: torch.Tensor | None = None,
) -> HeadFit:
    """Choose the L2 strength by `folds`-fold cross-validation (lowest log-loss), then fit on all examples.

    With `class_embeddings` (a sentence encoder's embedding of each class name) the head shrinks towards the
    class-name classifier rather than towards zero, over `NAMES_L2_GRID` (default grid: `L2_GRID`). With too few
    examples per class for the inner folds, the strength is not chosen but taken as a moderate 0.1. With `views`
    (augmented views of each example, [N, V, D]) every fit also learns from the views of the examples it learns
    from (`with_views`); the folds split examples, so a view never scores the example it was made from.
    Small data is fitted on one thread (`one_thread`).
    """
    with one_thread(len(labels)):
        return _select_and_fit(features, labels, num_classes, folds, seed, balanced, grid, on_iteration,
                               stop_requested, class_embeddings, views)


def _select_and_fit(
    features: torch.Tensor, labels: torch.Tensor, num_classes: int, folds: int, seed: int, balanced: bool,
    grid: Sequence[float] | None, on_iteration: Callable[[int, float], None] | None,
    stop_requested: Callable[[], bool] | None, class_embeddings: torch.Tensor | None, views: torch.Tensor | None,
) -> HeadFit:
    toward_names = class_embeddings is not None
    grid = grid if grid is not None else l2_grid(toward_names)
    labels_np = labels.numpy()
    smallest = int(np.bincount(labels_np, minlength=num_classes)[np.unique(labels_np)].min())
    inner = min(folds, smallest)
    weight = _class_weight(labels, num_classes) if balanced else None
    points: list[GridPoint] = []
    oof_by_l2: dict[float, np.ndarray] = {}
    if inner >= 2:
        fold_of = stratified_folds(labels_np, inner, seed)
        previous: list[LinearHead | None] = [None] * inner
        priors = [
            class_name_prior(features[fold_of != fold], labels[fold_of != fold], class_embeddings)
            if toward_names else None
            for fold in range(inner)
        ]
        learnt = [with_views(features[fold_of != fold], labels[fold_of != fold],
                             views[fold_of != fold] if views is not None else None) for fold in range(inner)]
        prepared = [_standardise(fold_features) for fold_features, _ in learnt]  # once per fold, not per strength
        for l2 in grid:
            oof = np.zeros((len(labels_np), num_classes))
            train_losses = []
            for fold in range(inner):
                if stop_requested is not None and stop_requested():
                    raise InterruptedError
                held = fold_of == fold
                head = fit_logistic(*learnt[fold], num_classes, l2, weight, previous[fold], prior=priors[fold],
                                    standardised=prepared[fold])
                previous[fold] = head
                oof[held] = head.logits(features[held].to(torch.float64)).numpy()
                train_losses.append(head.losses[-1] if head.losses else math.nan)
            oof_by_l2[float(l2)] = oof
            log_probabilities = torch.log_softmax(torch.as_tensor(oof), dim=1).numpy()
            points.append(GridPoint(
                l2=float(l2),
                log_loss=float(-log_probabilities[np.arange(len(labels_np)), labels_np].mean()),
                accuracy=float((oof.argmax(axis=1) == labels_np).mean()),
                train_loss=float(np.mean(train_losses)),
                toward_names=toward_names,
            ))
        chosen = min(points, key=lambda point: (point.log_loss, -point.l2)).l2
    else:
        chosen = 0.1
    prior = class_name_prior(features, labels, class_embeddings) if toward_names else None
    head = fit_logistic(*with_views(features, labels, views), num_classes, chosen, weight, on_iteration=on_iteration,
                        prior=prior)
    oof_logits = oof_by_l2.get(chosen)
    if oof_logits is None:
        oof_logits = head.logits(features.to(torch.float64)).numpy()
    return HeadFit(head, points, oof_logits)


#: Features learned from the labels: given which examples may be learned from (a boolean mask), every example's
#: features and the class-name embeddings (or None) from that learning.
Featurize = Callable[[np.ndarray], tuple[torch.Tensor, "torch.Tensor | None"]]


@dataclass
class CrossValidation:
    """What k-fold cross-validation of the whole recipe (choose L2, fit) tells about new data.

    Attributes:
        fold_of: the outer fold of each example.
        oof_logits: each example's logits from the outer model that did not see it (chosen L2 inside the fold).
        oof_probabilities: those logits calibrated by a temperature fitted on the *other* folds (honest).
        temperature: fitted on all out-of-fold logits; the delivered model ships with it.
        final: the delivered head, fitted on all examples with its L2 chosen by cross-validation on all.
    """

    fold_of: np.ndarray
    oof_logits: np.ndarray
    oof_probabilities: np.ndarray
    temperature: float
    final: HeadFit
    fold_l2: list[float]


def cross_validate_head(
    features: torch.Tensor | None,
    labels: torch.Tensor,
    num_classes: int,
    folds: int,
    seed: int = 0,
    balanced: bool = False,
    progress: Callable[[int, int], None] | None = None,
    on_iteration: Callable[[int, float], None] | None = None,
    stop_requested: Callable[[], bool] | None = None,
    class_embeddings: torch.Tensor | None = None,
    featurize: Featurize | None = None,
    views: torch.Tensor | None = None,
) -> CrossValidation:
    """Nested cross-validation of the head recipe, then the final refit on every example.

    Each outer fold chooses its own L2 strength by inner cross-validation on its training part only, so the
    out-of-fold predictions are an honest estimate of the delivered recipe (the choice of L2 included).

    With `featurize`, the features themselves are learned from the labels (an encoder tuned on them): each fold
    calls `featurize(its training mask)` for every example's features and the class-name embeddings from an
    encoder tuned on that fold's training part only, and the final call (every example) leaves the delivered
    encoder behind. `features` and `class_embeddings` are then unused. `views` (augmented views of each example,
    [N, V, D]) join the fits of the examples they were made from only, so each fold scores its examples unseen.
    """
    labels_np = labels.numpy()
    fold_of = stratified_folds(labels_np, folds, seed)
    oof_logits = np.zeros((len(labels_np), num_classes))
    fold_l2 = []
    for fold in range(folds):
        if progress is not None:
            progress(fold, folds + 1)
        train, held = fold_of != fold, fold_of == fold
        if featurize is not None:
            features, class_embeddings = featurize(train)
        fitted = select_and_fit(
            features[train], labels[train], num_classes, seed=seed + fold + 1, balanced=balanced,
            stop_requested=stop_requested, class_embeddings=class_embeddings,
            views=views[train] if views is not None else None,
        )
        oof_logits[held] = fitted.head.logits(features[held].to(torch.float64)).numpy()
        fold_l2.append(fitted.head.l2)
    if progress is not None:
        progress(folds, folds + 1)
    if featurize is not None:
        features, class_embeddings = featurize(np.ones(len(labels_np), dtype=bool))
    final = select_and_fit(
        features, labels, num_classes, seed=seed, balanced=balanced, on_iteration=on_iteration,
        stop_requested=stop_requested, class_embeddings=class_embeddings, views=views,
    )
    calibrated = np.zeros_like(oof_logits)
    for fold in range(folds):
        held = fold_of == fold
        temperature = stats.fit_temperature(oof_logits[~held], labels_np[~held])
        calibrated[held] = stats.softmax(oof_logits[held], temperature)
    if progress is not None:
        progress(folds + 1, folds + 1)
    return CrossValidation(
        fold_of=fold_of,
        oof_logits=oof_logits,
        oof_probabilities=calibrated,
        temperature=stats.fit_temperature(oof_logits, labels_np),
        final=final,
        fold_l2=fold_l2,
    )


def estimate(
    targets: Sequence[int],
    probabilities: np.ndarray,
    uncalibrated: np.ndarray,
    protocol: Protocol,
    classes: Sequence[str],
) -> dict[str, Any]:
    """The headline numbers of a run, each with its n and 95 % interval: the metrics.json contract.

    Keys: protocol, folds, n, accuracy, accuracy_interval95, macro_f1, macro_f1_interval95, per_class (recall with
    its interval, support), calibration_error (after temperature scaling), calibration_error_before,
    refit_on_all, small_sample, protocol_reason.
    """
    targets_array = np.asarray(targets, dtype=np.int64)
    metrics = evaluate_probabilities(probabilities, targets_array, classes, [""] * len(targets_array)).metrics
    return {
        "protocol": protocol.name,
        "folds": protocol.folds,
        "n": metrics["n"],
        "accuracy": metrics["accuracy"],
        "accuracy_interval95": metrics["accuracy_interval95"],
        "macro_f1": metrics["macro_f1"],
        "macro_f1_interval95": metrics["macro_f1_interval95"],
        "calibration_error": metrics["calibration_error"],
        "calibration_error_before": expected_calibration_error(uncalibrated, targets_array),
        "refit_on_all": protocol.refit_on_all,
        "small_sample": metrics["small_sample"],
        "protocol_reason": protocol.reason,
        "per_class": metrics["per_class"],
    }


__all__ = [
    "CrossValidation",
    "HeadFit",
    "LinearHead",
    "Protocol",
    "choose_protocol",
    "class_name_prior",
    "class_name_texts",
    "cross_validate_head",
    "estimate",
    "fit_logistic",
    "l2_grid",
    "select_and_fit",
    "stratified_folds",
    "zero_shot_logits",
    "zero_shot_score",
]
