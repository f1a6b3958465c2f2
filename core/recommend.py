"""Which backbone? Every available backbone of the data's kind, scored on the user's own data by the app's probe.

The probe is exactly what a feature-extraction run with the Train page's defaults estimates: the backbone's frozen
features (the same cache key, so a later run reuses them), the logistic head with its L2 strength chosen by inner
cross-validation, scored by the run's protocol (k-fold cross-validation on small data, else the held-out test
split), with the run's class weighting, seed and, for a sentence encoder, its class-name prior. So the accuracy a
row shows is the number a run with that backbone would report, with the same 95 % interval and n.

The best is the highest accuracy; a smaller backbone whose accuracy lies inside the top one's 95 % interval is
preferred to it, because the data cannot tell them apart and the smaller one is faster to train, export and run.
Feature-pass speed is measured while the features are computed (the first batch, which warms up, left out); when
they came from the cache, by a short timed pass of `SPEED_EXAMPLES` of the user's examples.
"""

from __future__ import annotations

import argparse
import json
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from core import devices, smalldata, stats
from core import features as feature_cache
from core.dataset import Dataset

log = logging.getLogger(__name__)

#: Examples timed (after a warm-up batch) when a backbone's features came from the cache.
SPEED_EXAMPLES = 32
WARM_UP_EXAMPLES = 4
#: The share of a backbone's progress bar the features take (the cross-validated head takes the rest: on a CPU
#: it is the longer part).
FEATURE_SHARE = 0.25
#: Progress is reported as (fraction of the whole ranking done, what is happening now).
Progress = Callable[[float, str], None]


@dataclass
class Candidate:
    """One backbone's probe on the data: the run's estimate, its feature-pass speed and its size."""

    name: str
    title: str
    accuracy: float
    interval95: tuple[float, float]
    n: int  # examples the accuracy rests on
    protocol: str  # "5-fold cross-validation" or "test split"
    examples_per_second: float
    speed_examples: int  # examples the speed was timed on
    speed_from: str  # "feature pass" (while computing the features) or "timed pass" (features were cached)
    params_millions: float
    gmacs: float
    feature_seconds: float  # computing (or fetching) the features


@dataclass
class Ranking:
    """The candidates best first, the pre-selected backbone and the sentence that says why."""

    dataset: str
    fingerprint: str
    modality: str
    candidates: list[Candidate]
    best: str | None
    sentence: str
    unavailable: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def candidate(self, name: str) -> Candidate:
        return next(candidate for candidate in self.candidates if candidate.name == name)


def available_names(modality: str) -> tuple[list[str], list[str]]:
    """(available, unavailable) catalogue names for `modality`, in catalogue order."""
    from core.backbones import availability, list_specs

    names = [spec.name for spec in list_specs(modality)]  # type: ignore[arg-type]
    available = [name for name in names if availability(name).available]
    return available, [name for name in names if name not in available]


def choose(candidates: Sequence[Candidate]) -> tuple[Candidate | None, str]:
    """The backbone to pre-select and the sentence that says why.

    The top accuracy wins unless a smaller backbone (fewer parameters, then faster) scores inside its 95 % interval:
    then the data cannot tell them apart, and the smaller one is chosen.
    """
    if not candidates:
        return None, "No backbone was scored."
    top = max(candidates, key=lambda candidate: (candidate.accuracy, -candidate.params_millions))
    if len(candidates) == 1:
        return top, (f"{top.title} is the only backbone of this kind available here: nothing to rank. Its probe "
                     f"estimates {stats.format_interval(top.accuracy, top.interval95)}, n = {top.n}.")
    tied = [candidate for candidate in candidates if candidate.accuracy >= top.interval95[0]]
    chosen = min(tied, key=lambda candidate: (candidate.params_millions, -candidate.examples_per_second))
    if chosen.name == top.name:
        others = [candidate for candidate in candidates if candidate is not top]
        return top, (f"{top.title} is best for your data: {top.accuracy:.1%} (95 % CI {top.interval95[0]:.1%}–"
                     f"{top.interval95[1]:.1%}), and no smaller backbone scores inside that interval "
                     f"(next: {max(others, key=lambda c: c.accuracy).title}, "
                     f"{max(c.accuracy for c in others):.1%}).")
    return chosen, (f"{chosen.title} is pre-selected: its {chosen.accuracy:.1%} lies inside the 95 % interval of the "
                    f"top score ({top.title}, {top.accuracy:.1%}, CI {top.interval95[0]:.1%}–"
                    f"{top.interval95[1]:.1%}), so your data cannot tell them apart, and it is the smaller and faster "
                    f"one ({chosen.params_millions:.1f} M against {top.params_millions:.1f} M parameters).")


class _Clock:
    """Hears the feature pass's progress events and times them, leaving out the first (warm-up) batch."""

    def __init__(self, on_progress: Callable[[int, int], None]) -> None:
        self.marks: list[tuple[float, int]] = []
        self.on_progress = on_progress

    def __call__(self, event: str, payload: dict[str, Any]) -> None:
        if event == "on_step_end" and "done" in payload:
            self.marks.append((time.perf_counter(), int(payload["done"])))
            self.on_progress(int(payload["done"]), int(payload["total"]))

    def speed(self, started: float) -> tuple[float, int] | None:
        """(examples per second, examples timed), or None when the features were not computed."""
        if not self.marks:
            return None
        if len(self.marks) == 1:  # a single batch: its time includes loading the backbone
            moment, done = self.marks[0]
            return done / max(moment - started, 1e-9), done
        (first_moment, first_done), (last_moment, last_done) = self.marks[0], self.marks[-1]
        return (last_done - first_done) / max(last_moment - first_moment, 1e-9), last_done - first_done


class _Encoder:
    """A backbone set up as the feature pass runs it (device, precision, memory format), for the few extra passes
    the probe needs: the class names of a sentence encoder, and timing when the features came from the cache."""

    def __init__(self, name: str, device: str) -> None:
        from core.backbones import load_backbone
        from core.preprocess import make_preprocessor
        from core.training import autocast_factory, resolve_precision, uses_channels_last

        self.backbone = load_backbone(name, pretrained=True)
        self.preprocessor = make_preprocessor(self.backbone.spec, "none")
        self.device = devices.pick(device)
        self.autocast = autocast_factory(self.device, resolve_precision("auto", self.device))
        self.channels_last = uses_channels_last(self.backbone.spec.modality, self.device)
        self.backbone.to(self.device)
        if self.channels_last:
            self.backbone.to(memory_format=torch.channels_last)

    def encode(self, items: list[str]) -> torch.Tensor:

        with torch.inference_mode(), self.autocast():
            batch = devices.to_device(self.preprocessor.batch(items), self.device, self.channels_last)
            features = self.backbone(batch).float().cpu()
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        return features

    def timed_speed(self, items: list[str]) -> tuple[float, int]:
        """(examples per second, examples timed) of preprocessing and a forward pass over `items`."""
        self.encode(items[:WARM_UP_EXAMPLES])
        started = time.perf_counter()
        self.encode(items)
        return len(items) / max(time.perf_counter() - started, 1e-9), len(items)


def _labelled(dataset: Dataset, names: Sequence[str]) -> list[str]:
    return [item for name in names for item in dataset.split(name)[0]]


def probe(
    dataset: Dataset,
    backbone_name: str,
    device: str = "auto",
    seed: int = 0,
    on_progress: Callable[[int, int], None] | None = None,
    stop_event: threading.Event | None = None,
    on_head: Callable[[int, int], None] | None = None,
) -> Candidate:
    """One backbone's estimate on `dataset`, as a feature-extraction run with the Train page's defaults makes it.

    `on_progress` hears (examples done, total) while the features are computed; `on_head` (folds done, total) while
    the head is cross-validated, which on a CPU takes longer than the features.

    Raises:
        ValueError: the backbone is for another kind of data, or the data has nothing to score.
        InterruptedError: `stop_event` was set.
    """
    from core.backbones import get_spec
    from core.training import frozen_features, suggested_settings

    spec = get_spec(backbone_name)
    if spec.modality != dataset.modality:
        raise ValueError(f"{spec.title} reads {spec.modality}s; the data set '{dataset.name}' holds "
                         f"{dataset.modality}s.")
    clock = _Clock(on_progress or (lambda done, total: None))
    started = time.perf_counter()
    states = frozen_features(dataset, backbone_name, device, stop_event, emit=clock)
    feature_seconds = time.perf_counter() - started
    if states is None:
        raise InterruptedError("The ranking was stopped.")
    protocol = smalldata.choose_protocol([str(label) for label in dataset.table["label"]], dataset.split_given)
    cross_validated = protocol.name == "cross-validation"
    fit_names = [name for name in ("train", "val", "test") if (cross_validated or name != "test")
                 and states.get(name) is not None and len(states[name])]
    if not fit_names or (not cross_validated and (states.get("test") is None or not len(states["test"]))):
        raise ValueError(f"The data set '{dataset.name}' has nothing to score a backbone on: its test split is empty "
                         "and cross-validation needs at least 2 examples in every class.")
    examples = feature_cache.concatenate([states[name] for name in fit_names])
    features, labels = examples.states.float().cpu(), examples.labels.long().cpu()
    # The Train page's default for this data (class weights when the largest class has > 3x the smallest).
    balanced = bool(suggested_settings(dataset, spec.num_groups, spec.num_groups)["class_weights"])
    encoder = _Encoder(backbone_name, device) if spec.sentence_encoder else None
    class_names = encoder.encode(smalldata.class_name_texts(dataset.classes)) if encoder is not None else None
    stop_requested = stop_event.is_set if stop_event is not None else None
    if cross_validated:
        result = smalldata.cross_validate_head(features, labels, dataset.num_classes, protocol.folds, seed=seed,
                                               balanced=balanced, stop_requested=stop_requested,
                                               class_embeddings=class_names, progress=on_head)
        targets, logits = labels.numpy(), result.oof_logits
        protocol_name = f"{protocol.folds}-fold cross-validation"
    else:
        fitted = smalldata.select_and_fit(features, labels, dataset.num_classes, seed=seed, balanced=balanced,
                                          stop_requested=stop_requested, class_embeddings=class_names)
        test = states["test"]
        targets = test.labels.long().numpy()
        logits = fitted.head.logits(test.batch(torch.arange(len(test))).float().cpu().to(torch.float64)).numpy()
        protocol_name = "test split"
    correct = int((np.asarray(logits).argmax(axis=1) == targets).sum())
    speed = clock.speed(started)
    speed_from = "feature pass"
    if speed is None:  # the features came from the cache: time a short pass instead
        speed = (encoder or _Encoder(backbone_name, device)).timed_speed(_labelled(dataset, fit_names)[:SPEED_EXAMPLES])
        speed_from = "timed pass"
    return Candidate(
        name=backbone_name, title=spec.title, accuracy=correct / len(targets),
        interval95=stats.wilson_interval(correct, len(targets)), n=len(targets), protocol=protocol_name,
        examples_per_second=float(speed[0]), speed_examples=int(speed[1]), speed_from=speed_from,
        params_millions=float(spec.params_millions), gmacs=float(spec.gmacs), feature_seconds=feature_seconds,
    )


def rank_backbones(
    dataset: Dataset,
    names: Sequence[str] | None = None,
    device: str = "auto",
    seed: int = 0,
    progress: Progress | None = None,
    stop_event: threading.Event | None = None,
) -> Ranking:
    """Probe every available backbone of the data's kind (or `names`), best first, with the one to pre-select.

    Args:
        dataset: the labelled data.
        names: catalogue names to rank (default: every backbone of the data's kind available here).
        device: where the features are computed ("auto", "cpu", "cuda", "mps").
        seed: the run's seed (folds and inner folds), so the numbers equal a run's.
        progress: called with (fraction of the ranking done, what is being computed).
        stop_event: set it to stop between batches and fits (raises InterruptedError).

    Raises:
        ValueError: a name is unknown, unavailable here, or for another kind of data; or nothing can be scored.
    """
    from core.backbones import availability, get_spec

    available, unavailable = available_names(dataset.modality)
    if names is None:
        names = available
    for name in names:
        spec = get_spec(name)  # raises for an unknown name
        if spec.modality != dataset.modality:
            raise ValueError(f"{spec.title} reads {spec.modality}s; the data set '{dataset.name}' holds "
                             f"{dataset.modality}s.")
        status = availability(name)
        if not status.available:
            raise ValueError(f"{spec.title} cannot be ranked: {status.detail}")
    if not names:
        raise ValueError(f"No {dataset.modality} backbone is available here: there is nothing to rank.")
    report = progress or (lambda fraction, note: None)
    candidates = []
    for index, name in enumerate(names):
        title = get_spec(name).title

        def on_progress(done: int, total: int, index: int = index, title: str = title) -> None:
            report((index + FEATURE_SHARE * done / max(total, 1)) / len(names),
                   f"{title}: features of {done} of {total} examples")

        def on_head(done: int, total: int, index: int = index, title: str = title) -> None:
            report((index + FEATURE_SHARE + (1 - FEATURE_SHARE) * done / max(total, 1)) / len(names),
                   f"{title}: the logistic head, cross-validation fit {min(done + 1, total)} of {total}")

        report(index / len(names), f"{title}: features ({index + 1} of {len(names)} backbones)")
        candidate = probe(dataset, name, device, seed, on_progress, stop_event, on_head)
        log.info("%s: %s, n = %d (%s); %.1f examples/s (%s of %d)", title,
                 stats.format_interval(candidate.accuracy, candidate.interval95), candidate.n, candidate.protocol,
                 candidate.examples_per_second, candidate.speed_from, candidate.speed_examples)
        candidates.append(candidate)
        report((index + 1) / len(names), f"{title}: {candidate.accuracy:.1%}")
    candidates.sort(key=lambda candidate: (-candidate.accuracy, candidate.params_millions))
    best, sentence = choose(candidates)
    return Ranking(dataset=dataset.name, fingerprint=dataset.fingerprint, modality=dataset.modality,
                   candidates=candidates, best=best.name if best else None, sentence=sentence,
                   unavailable=[name for name in unavailable if name not in names])


def main_recommend(args: argparse.Namespace) -> int:
    """`python -m core recommend --data DATA [--backbone-names a,b] [--json]`: which backbone for my data?"""
    from core import data as data_module

    names = [name.strip() for name in args.backbone_names.split(",") if name.strip()] if args.backbone_names else None
    try:
        dataset, _ = data_module.load_path(args.data)
        ranking = rank_backbones(dataset, names, args.device, args.seed)
    except (ValueError, OSError, KeyError, data_module.DataError) as error:
        log.error("%s", error)
        return 2
    if args.json:
        print(json.dumps(ranking.to_dict(), indent=2))  # noqa: T201 - the command's output
        return 0
    for place, candidate in enumerate(ranking.candidates, 1):
        log.info("%d. %s: %s, n = %d (%s) · %.1f examples/s · %.1f M parameters%s", place, candidate.title,
                 stats.format_interval(candidate.accuracy, candidate.interval95), candidate.n, candidate.protocol,
                 candidate.examples_per_second, candidate.params_millions,
                 "  <- pre-selected" if candidate.name == ranking.best else "")
    log.info("%s", ranking.sentence)
    return 0
