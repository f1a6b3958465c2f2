"""The training loop's own listeners: early stopping, run recording and checkpointing.

Each hears the loop's events (`core._train_state.TrainListener`) with its state and control flags; the loop
(`core._train_loop`) tells them in this order: early stopping, recording, checkpointing. The user's callbacks hear
an epoch after them (recorded and checkpointed by then), a step before them (the stop flag a callback may set is
read after both). How a checkpoint is written and read back is `core._train_record`'s.
"""

from __future__ import annotations

import time
from typing import Any

from safetensors.torch import save_file

from core._run_folder import BEST_WEIGHTS
from core._train_record import STEP_FLUSH_SECONDS, _cpu_state, _RunRecording
from core._train_state import TrainControl, TrainListener, TrainState
from core.contracts import EpochEnd, StepEnd, TrainBegin
from core.store import RunStore


class _EarlyStopping(TrainListener):
    """Patience on the monitored loss (HF `EarlyStoppingCallback`): marks each better epoch as the best
    (`control.should_save`) and ends the loop after `patience` epochs without one (`control.should_stop`);
    without patience it only marks the best."""

    def __init__(self, patience: int | None) -> None:
        self.patience = patience

    def on_evaluate(self, state: TrainState, control: TrainControl, monitored_loss: float) -> None:
        control.should_save = monitored_loss < state.best_val_loss
        if control.should_save:
            state.best_val_loss, state.best_epoch, state.bad_epochs = monitored_loss, state.epoch, 0
        else:
            state.bad_epochs += 1
        control.should_stop = bool(self.patience) and state.bad_epochs >= self.patience


class _RunRecorder(TrainListener):
    """The run as it goes into the run store: its steps every few seconds (`STEP_FLUSH_SECONDS`), and each epoch
    into the state's history and the store, after the steps before it. Also heard by the logistic head's epochs."""

    def __init__(self, store: RunStore) -> None:
        self.store = store
        self.run_id = ""
        self.pending_steps: list[tuple[int, int, dict[str, Any]]] = []
        self.last_flush = time.monotonic()

    def on_train_begin(self, state: TrainState, control: TrainControl, info: TrainBegin) -> None:
        self.run_id = info.run_id

    def on_step_end(self, state: TrainState, control: TrainControl, step: StepEnd) -> None:
        self.pending_steps.append(
            (step.global_step, step.epoch, {"loss": step.loss, "train_accuracy": step.train_accuracy, "lr": step.lr})
        )
        self.flush()

    def on_epoch_end(self, state: TrainState, control: TrainControl, ended: EpochEnd) -> None:
        record = ended.to_dict()
        state.history.append(record)
        self.flush(force=True)
        self.store.log_epoch(self.run_id, ended.epoch, record)

    def flush(self, force: bool = False) -> None:
        """The steps not yet written, into the store: now with `force`, else once a few seconds have passed."""
        if self.pending_steps and (force or time.monotonic() - self.last_flush > STEP_FLUSH_SECONDS):
            self.store.log_steps(self.run_id, self.pending_steps)
            self.pending_steps = []
            self.last_flush = time.monotonic()


class _Checkpointing(TrainListener):
    """The gradient loop's files: the best epoch's weights as soon as early stopping marks one (kept in memory too,
    as the run's `best_state`, for the end, a stop or a failure), then after each epoch the checkpoint a resumed run
    continues from, and run.json. The logistic head, which cannot resume, has no checkpoints.

    Like a Hugging Face callback handed the model and optimizer, it writes through the run it checkpoints.
    """

    def __init__(self, run: _RunRecording) -> None:
        self.run = run

    def on_evaluate(self, state: TrainState, control: TrainControl, monitored_loss: float) -> None:
        if control.should_save:
            self.run.best_state = _cpu_state(self.run._trainable_state())
            save_file(self.run.best_state, self.run.checkpoint_path(BEST_WEIGHTS))

    def on_epoch_end(self, state: TrainState, control: TrainControl, ended: EpochEnd) -> None:
        self.run.save_checkpoint(ended.epoch)
        self.run.write_run_json()
