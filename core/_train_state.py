"""What the training loop keeps and whom it tells: its state, its control flags and its listeners' base.

The Hugging Face shape (`TrainerState`, `TrainerControl`, `TrainerCallback`): the loop (`core._train_loop`) owns
one `TrainState` (its counters, which an epoch checkpoint saves and a resumed run reads back) and one
`TrainControl` (flags its listeners set and it acts on). Its own listeners (`core._train_listeners`: early
stopping, run recording, checkpointing) hear each event with both, in a fixed order; the user's callbacks
(`fit(callbacks=...)`) hear the typed events of `core.contracts` through `_Events`: an epoch after the listeners,
a step before them.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

from core.contracts import EpochEnd, StepEnd, TrainBegin, TrainEnd


@dataclasses.dataclass
class TrainState:
    """The loop's counters: where the run is and the best epoch it has seen."""

    epoch: int = 0  # the epoch being trained (the last one trained once the loop has ended)
    start_epoch: int = 1  # the first epoch this process trains: a resumed run's follows its checkpoint's
    global_step: int = 0  # optimisation steps so far, over every epoch (a refit's included)
    best_val_loss: float = math.inf  # the best epoch's monitored loss: validation, or training without a val split
    best_epoch: int | None = None
    bad_epochs: int = 0  # epochs since the best one, for patience
    history: list[dict[str, Any]] = dataclasses.field(default_factory=list)  # each epoch's `EpochEnd` record

    def counters(self) -> dict[str, Any]:
        """What an epoch checkpoint saves of the state (`core._train_record.save_checkpoint`), after its epoch."""
        return {"global_step": self.global_step, "best_val_loss": self.best_val_loss, "best_epoch": self.best_epoch,
                "bad_epochs": self.bad_epochs, "history": self.history}

    @classmethod
    def resumed(cls, checkpoint: Mapping[str, Any]) -> TrainState:
        """The state a run continues from, read from an epoch checkpoint's plain part."""
        return cls(
            epoch=int(checkpoint["epoch"]), start_epoch=int(checkpoint["epoch"]) + 1,
            global_step=int(checkpoint["global_step"]), best_val_loss=float(checkpoint["best_val_loss"]),
            best_epoch=checkpoint["best_epoch"], bad_epochs=int(checkpoint["bad_epochs"]),
            history=list(checkpoint["history"]),
        )


@dataclasses.dataclass
class TrainControl:
    """Flags the listeners set for the loop, each for the epoch just evaluated (early stopping sets both)."""

    should_save: bool = False  # the epoch is the best yet: its weights are kept (and it is `is_best` in EpochEnd)
    should_stop: bool = False  # patience ran out: the loop ends after this epoch, as a completed run


class TrainListener:
    """Base of the loop's own listeners: each hears an event with the state and the flags (all methods optional)."""

    def on_train_begin(self, state: TrainState, control: TrainControl, info: TrainBegin) -> None:
        """Once, after set-up, before the cache pass and the loop (or the logistic head)."""

    def on_step_end(self, state: TrainState, control: TrainControl, step: StepEnd) -> None:
        """After each optimisation step of the gradient loop, once the user's callbacks have heard it."""

    def on_evaluate(self, state: TrainState, control: TrainControl, monitored_loss: float) -> None:
        """After epoch `state.epoch` is scored: its validation loss, or its training loss without a val split."""

    def on_epoch_end(self, state: TrainState, control: TrainControl, ended: EpochEnd) -> None:
        """After each epoch's record is built, before the user's callbacks hear it."""


class _Events:
    """Sends each event to every listener that has its method (`core.contracts.TrainCallback`'s, all optional)."""

    def __init__(self, callbacks: Sequence[Any]) -> None:
        self.callbacks = list(callbacks)

    def emit(self, name: str, payload: TrainBegin | StepEnd | EpochEnd | TrainEnd) -> None:
        for callback in self.callbacks:
            method = getattr(callback, name, None)
            if callable(method):
                method(payload)
