"""What the training engine says to its listeners: four typed events, the listener base class and the stop signal.

The engine (`core.training.fit`) calls each listener's `on_train_begin(TrainBegin)`, `on_step_end(StepEnd)`,
`on_epoch_end(EpochEnd)` and `on_train_end(TrainEnd)`, the way Hugging Face's `TrainerCallback` hears its
trainer. The events are frozen dataclasses, so a listener reads `event.total_steps`; each also reads like the dict
the engine sent before it had types (a read-only mapping: `event["loss"]`, `event.get("phase")`), so listeners
written for dicts keep working.

`to_dict()` is the wire format, the same dict as ever: a worker process writes it to `events.jsonl`, the server's
job keeps it in its log and the run store, and `from_dict` reads it back. A field that an event of its kind leaves
out (None by default) is not in its dict; see each class for which fields every event has.

This module is the bottom of the engine: it imports nothing from `core`, so any module may import it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

_E = TypeVar("_E", bound="_Event")


class TrainingStopped(Exception):
    """Internal: the stop flag was set (raised where the engine looks at it, caught by `fit`)."""


def _known_fields(cls: type, values: Mapping[str, Any]) -> dict[str, Any]:
    """The entries of `values` that name a field of the dataclass `cls` (a newer writer may send more)."""
    names = {f.name for f in dataclasses.fields(cls)}
    return {key: value for key, value in values.items() if key in names}


class _Event(Mapping[str, Any]):
    """A typed event that also reads as its wire dict. Fields without a default are in every event's dict; fields
    with one (None) only when set."""

    def _sent(self, field: dataclasses.Field) -> bool:
        required = field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING
        return required or getattr(self, field.name) is not None

    def to_dict(self) -> dict[str, Any]:
        """The event as the engine has always sent it (the `events.jsonl` line's `data`), in field order."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if self._sent(f)}

    @classmethod
    def from_dict(cls: type[_E], values: Mapping[str, Any]) -> _E:
        """Read an event back from `to_dict()` output, ignoring keys this version does not know."""
        return cls(**_known_fields(cls, values))

    def __getitem__(self, key: str) -> Any:
        wire = self.to_dict()
        return wire[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.to_dict())

    def __len__(self) -> int:
        return len(self.to_dict())


@dataclass(frozen=True, kw_only=True)
class TrainBegin(_Event):
    """`on_train_begin`: once the run is set up, before any example is seen.

    Attributes:
        epochs: the epochs planned (with the logistic head: the L2 strengths it tries, one "epoch" each).
        start_epoch: the first epoch this process trains (above 1 when a run resumes).
        steps_per_epoch, total_steps: optimisation steps (0 with the logistic head, which has none).
        trainable_params, total_params: parameters the run changes, and all of them.
        head: "logistic" (L-BFGS on cached features) or "gradient" (the loop).
        sentence_tuning, sentence_tuning_reason, sentence_tuning_steps: whether the sentence encoder is tuned on the
            labels first, why, and in how many steps.
    """

    run_id: str
    run_dir: str
    device: str
    precision: str
    cache_mode: str
    cache_note: str
    epochs: int
    start_epoch: int
    steps_per_epoch: int
    total_steps: int
    num_train: int
    num_val: int
    num_test: int
    classes: list[str]
    frozen_groups: int
    num_groups: int
    backbone: str
    trainable_params: int
    total_params: int
    protocol: str
    protocol_reason: str
    folds: int
    head: str
    sentence_tuning: bool
    sentence_tuning_reason: str
    sentence_tuning_steps: int


@dataclass(frozen=True, kw_only=True)
class StepEnd(_Event):
    """`on_step_end`: after each optimisation step, and as progress in the phases that have no steps.

    Every event has `phase`; which other fields it has depends on it:
    - "train" / "refit", a step of the loop: step, global_step, total_steps, epoch, batch, batches, loss,
      train_loss, train_accuracy, lr, examples_per_second (and a refit's `note`). A refit also begins with one
      event of step, global_step, total_steps and note.
    - "train", the logistic head: each L-BFGS iteration (step, global_step, epoch, loss, train_loss, lr, progress),
      and the cross-validation folds and n-gram models as they start (step, global_step, epoch, progress, note).
    - "tuning", a step of tuning the sentence encoder: step, global_step, epoch, tuning_loss (None before the first
      loss is known, and sent all the same), lr, progress, note.
    - "features", the feature / activation cache pass: progress, done, total (examples) and split.
    """

    phase: str
    step: int | None = None
    global_step: int | None = None
    total_steps: int | None = None
    epoch: int | None = None
    batch: int | None = None
    batches: int | None = None
    loss: float | None = None
    train_loss: float | None = None
    train_accuracy: float | None = None
    tuning_loss: float | None = None
    lr: float | None = None
    examples_per_second: float | None = None
    progress: float | None = None
    done: int | None = None
    total: int | None = None
    split: str | None = None
    note: str | None = None

    def _sent(self, field: dataclasses.Field) -> bool:
        return super()._sent(field) or (field.name == "tuning_loss" and self.phase == "tuning")


@dataclass(frozen=True, kw_only=True)
class EpochEnd(_Event):
    """`on_epoch_end`: after each epoch's validation; also the run's history entry (run.json, the run store).

    With the logistic head each "epoch" is one L2 strength tried: its cross-validated loss and accuracy as the
    validation numbers, `l2` and `toward_names` (whether it shrinks towards the class names); `train_accuracy` is
    None there. `val_loss` and `val_accuracy` are None without a validation split.
    """

    epoch: int
    train_loss: float | None
    train_accuracy: float | None
    val_loss: float | None
    val_accuracy: float | None
    lr: float
    l2: float | None = None
    toward_names: bool | None = None
    seconds: float
    best_epoch: int | None
    is_best: bool
    total_epochs: int


@dataclass(frozen=True, kw_only=True)
class TrainEnd:
    """`on_train_end`, and what `fit` returns (`core.training.FitResult`): a finished, stopped or failed run.

    Attributes:
        status: "completed", "stopped" or "failed".
        best_epoch: the 1-based epoch whose weights were kept (lowest validation loss); None before any epoch.
        history: per-epoch metrics (`epoch`, `train_loss`, `train_accuracy`, `val_loss`, `val_accuracy`, ...).
        cache_mode: "features", "activations" or "none"; `cache_note` says why, for the UI.
        seconds: wall time of the whole run; `cache_seconds` of it went into computing the cache.
    """

    run_id: str
    run_dir: str
    status: str
    best_epoch: int | None
    epochs_completed: int
    val_accuracy: float | None
    val_loss: float | None
    test_accuracy: float | None
    history: list[dict[str, Any]]
    cache_mode: str
    cache_note: str
    device: str
    precision: str
    seconds: float
    cache_seconds: float = 0.0
    cache_reused: bool = False
    error: str | None = None
    estimate: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        """The result as a worker process reports it (`events.jsonl`'s `on_train_end` and `result` lines)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> TrainEnd:
        """Read a result back from `to_dict()` output; TypeError when a field without a default is missing."""
        return cls(**_known_fields(cls, values))


class TrainCallback:
    """Base class for listeners (subclassing is optional: any object with some of these methods works)."""

    def on_train_begin(self, info: TrainBegin) -> None:
        """Run id, device, precision, cache mode and note, steps per epoch, total steps, split sizes."""

    def on_step_end(self, step_metrics: StepEnd) -> None:
        """After each optimisation step (`phase="train"`), and during caching (`phase="features"`, `progress`)."""

    def on_epoch_end(self, epoch_metrics: EpochEnd) -> None:
        """After each epoch's validation: losses, accuracies, learning rate, best epoch so far."""

    def on_train_end(self, result: TrainEnd) -> None:
        """Once, with the final result (also for stopped runs)."""
