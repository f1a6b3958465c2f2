"""The training loop's own listeners (`core._train_listeners`): early stopping on a loss sequence, run recording
into the store, the state a checkpoint saves and a resumed run reads back, and the order the loop tells them in."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from core import _train_listeners as listeners
from core._run_folder import CHECKPOINT_STATE, RUN_INFO
from core._train_state import TrainControl, TrainState
from core.contracts import EpochEnd, StepEnd, TrainBegin
from core.dataset import Dataset
from core.store import RunStore
from core.training import TrainConfig, fit
from tests.tiny import TinyCNN


def _evaluate(patience: int | None, losses: list[float]) -> tuple[TrainState, list[bool], int | None]:
    """Early stopping heard epoch by epoch as the loop tells it: each epoch's is_best, and the epoch it stops at."""
    stopping, state, control = listeners._EarlyStopping(patience), TrainState(), TrainControl()
    marked = []
    for epoch, loss in enumerate(losses, 1):
        state.epoch = epoch
        stopping.on_evaluate(state, control, loss)
        marked.append(control.should_save)
        if control.should_stop:
            return state, marked, epoch
    return state, marked, None


def test_early_stopping_stops_after_patience_epochs_without_a_better_loss_and_marks_the_best() -> None:
    state, marked, stopped_at = _evaluate(1, [1.0, 0.8, 0.9, 0.5])
    assert stopped_at == 3 and marked == [True, True, False]
    assert state.best_epoch == 2 and state.best_val_loss == 0.8 and state.bad_epochs == 1

    state, marked, stopped_at = _evaluate(2, [1.0, 0.8, 0.9, 0.7, 0.75, 0.8, 0.1])
    assert stopped_at == 6, "a better epoch (4) starts the patience again"
    assert marked == [True, True, False, True, False, False] and state.best_epoch == 4


@pytest.mark.parametrize("patience", [None, 0])
def test_without_patience_early_stopping_only_marks_the_best(patience: int | None) -> None:
    state, marked, stopped_at = _evaluate(patience, [1.0, 2.0, 3.0, 0.5, 4.0, math.nan])
    assert stopped_at is None and marked == [True, False, False, True, False, False]
    assert state.best_epoch == 4 and state.bad_epochs == 2, "a loss of NaN is never the best"


def test_the_state_a_checkpoint_saves_is_the_state_a_resumed_run_continues_from() -> None:
    state = TrainState(epoch=2, global_step=6, best_val_loss=0.4, best_epoch=1, bad_epochs=1,
                       history=[{"epoch": 1}, {"epoch": 2}])
    saved = json.loads(json.dumps({"epoch": 2, **state.counters()}))  # as the checkpoint file holds it
    assert TrainState.resumed(saved) == TrainState(**{**vars(state), "start_epoch": 3})
    assert TrainState.resumed(json.loads(json.dumps({"epoch": 1, **TrainState().counters()}))).best_val_loss == math.inf


def _epoch(epoch: int) -> EpochEnd:
    return EpochEnd(epoch=epoch, train_loss=1.0, train_accuracy=0.5, val_loss=None, val_accuracy=None, lr=0.1,
                    seconds=0.0, best_epoch=epoch, is_best=True, total_epochs=3)


def test_the_recorder_writes_steps_every_few_seconds_and_each_epoch_after_its_steps(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = RunStore(tmp_path / "runs.sqlite")
    run_id = store.create_run(backbone="tiny_cnn", modality="image", dataset_name="d", dataset_fingerprint="f",
                              frozen_groups=0, config={}, classes=["a", "b"])
    clock = {"now": 100.0}
    monkeypatch.setattr(listeners.time, "monotonic", lambda: clock["now"])
    recorder, state, control = listeners._RunRecorder(store), TrainState(), TrainControl()
    begin = {name: 0 for name in TrainBegin.__dataclass_fields__}
    recorder.on_train_begin(state, control, TrainBegin(**{**begin, "run_id": run_id}))
    for step in (1, 2):
        recorder.on_step_end(state, control, StepEnd(phase="train", step=step, global_step=step, epoch=1, loss=0.5))
    assert store.steps(run_id) == [], "held until a few seconds have passed"
    clock["now"] += listeners.STEP_FLUSH_SECONDS + 0.1
    recorder.on_step_end(state, control, StepEnd(phase="train", step=3, global_step=3, epoch=1, loss=0.5))
    assert [step["step"] for step in store.steps(run_id)] == [1, 2, 3]
    recorder.on_step_end(state, control, StepEnd(phase="train", step=4, global_step=4, epoch=1, loss=0.5))
    recorder.on_epoch_end(state, control, _epoch(1))
    assert [step["step"] for step in store.steps(run_id)] == [1, 2, 3, 4], "an epoch writes the steps before it"
    assert [entry["epoch"] for entry in state.history] == [1] and store.history(run_id)[0]["train_loss"] == 1.0


def test_the_loop_tells_its_listeners_before_the_callbacks_and_stops_early_with_patience(
    colour_dataset: Dataset, tmp_path: Path
) -> None:
    """When a user's callback hears an epoch, the epoch is already in the store and its checkpoint on disk; with
    patience 1 the run ends at its first epoch without a better validation loss, that epoch not the best."""
    store, run_dir = RunStore(), tmp_path / "run"
    heard: list[dict[str, Any]] = []

    class Watcher:
        def on_epoch_end(self, ended: EpochEnd) -> None:
            run_info = json.loads((run_dir / RUN_INFO).read_text())
            heard.append({"epoch": ended.epoch, "is_best": ended.is_best,
                          "checkpoint": json.loads((run_dir / CHECKPOINT_STATE).read_text())["epoch"],
                          "run_json": len(run_info["metrics"]["history"]),
                          "recorded": [entry["epoch"] for entry in store.history(run_info["run_id"])]})

    config = TrainConfig(backbone="tiny_cnn", frozen_groups=0, epochs=8, batch_size=8, lr=0.5, pretrained=False,
                         precision="fp32", patience=1, warmup_fraction=0.0, refit="off")
    result = fit(colour_dataset, config, run_dir, backbone=TinyCNN(), callbacks=[Watcher()], store=store)
    for entry in heard:  # recorded and checkpointed before the callbacks hear it
        assert entry["recorded"][-1] == entry["checkpoint"] == entry["run_json"] == entry["epoch"], entry
    marks = [entry["is_best"] for entry in heard]
    assert marks[:-1] == [True] * (len(marks) - 1), "patience 1: every epoch before the last was better"
    assert len(heard) < config.epochs and marks[-1] is False, "this seed's run stops early"
    assert result.best_epoch == len(heard) - 1
    assert result.status == "completed" and result.epochs_completed == len(heard)
