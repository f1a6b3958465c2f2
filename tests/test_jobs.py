"""The background training job: lifecycle, stop, failure, the machine-wide queue and reattaching via the registry."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from core import jobs
from core.contracts import EpochEnd, StepEnd, TrainBegin, TrainEnd
from core.jobs import TrainingJob


@dataclass(frozen=True)
class _Config:
    backbone: str = "tiny_cnn"
    epochs: int = 3
    frozen_groups: int = 0


class _FakeFit:
    """Emits the engine's typed events like `core.training.fit` does, with an optional gate so tests control timing.

    Its steps carry `loss` but no `train_loss`, which the job fills in from it.
    """

    def __init__(self, steps_per_epoch: int = 4, delay: float = 0.0, gate: threading.Event | None = None,
                 fail_at_step: int | None = None) -> None:
        self.steps_per_epoch = steps_per_epoch
        self.delay = delay
        self.gate = gate
        self.fail_at_step = fail_at_step
        self.started = threading.Event()
        self.steps_after_stop = 0

    def __call__(self, dataset: Any, config: Any, run_dir: str, backbone: Any = None, callbacks: tuple = (),
                 stop_event: threading.Event | None = None) -> TrainEnd:
        Path(run_dir).mkdir(parents=True, exist_ok=True)
        total = config.epochs * self.steps_per_epoch
        begin = TrainBegin(
            run_id=Path(run_dir).name, run_dir=str(run_dir), device="cpu", precision="fp32", cache_mode="none",
            cache_note="Caching is off: augmentation changes inputs.", epochs=config.epochs, start_epoch=1,
            steps_per_epoch=self.steps_per_epoch, total_steps=total, num_train=len(dataset.split("train")[0]),
            num_val=len(dataset.split("val")[0]), num_test=len(dataset.split("test")[0]),
            classes=list(dataset.classes), frozen_groups=config.frozen_groups, num_groups=3, backbone=config.backbone,
            trainable_params=10, total_params=100, protocol="test split", protocol_reason="A fake engine.", folds=0,
            head="gradient", sentence_tuning=False, sentence_tuning_reason="", sentence_tuning_steps=0,
        )
        for cb in callbacks:
            cb.on_train_begin(begin)
        self.started.set()
        step, history = 0, []
        for epoch in range(1, config.epochs + 1):
            for _ in range(self.steps_per_epoch):
                if stop_event is not None and stop_event.is_set():
                    return self._result(run_dir, "stopped", max(1, epoch - 1), history)
                if self.gate is not None:
                    self.gate.wait(5)
                step += 1
                if self.fail_at_step == step:
                    raise ValueError("The class 'cat' has no training examples; add some or remove the class.")
                time.sleep(self.delay)
                for cb in callbacks:
                    cb.on_step_end(StepEnd(phase="train", step=step, total_steps=total, epoch=epoch, loss=1.0 / step))
            ended = EpochEnd(epoch=epoch, train_loss=1.0 / epoch, train_accuracy=0.5, val_loss=abs(epoch - 2) + 0.1,
                             val_accuracy=0.6, lr=1e-3, seconds=self.delay * self.steps_per_epoch,
                             best_epoch=min(epoch, 2), is_best=epoch <= 2, total_epochs=config.epochs)
            history.append(ended.to_dict())
            for cb in callbacks:
                cb.on_epoch_end(ended)
        result = self._result(run_dir, "completed", 2, history)
        for cb in callbacks:
            cb.on_train_end(result)
        return result

    @staticmethod
    def _result(run_dir: str, status: str, best_epoch: int, history: list[dict[str, Any]]) -> TrainEnd:
        return TrainEnd(run_id=Path(run_dir).name, run_dir=str(run_dir), status=status, best_epoch=best_epoch,
                        epochs_completed=len(history), val_accuracy=0.6, val_loss=0.1, test_accuracy=None,
                        history=history, cache_mode="none", cache_note="Caching is off: augmentation changes inputs.",
                        device="cpu", precision="fp32", seconds=0.0)


@pytest.fixture(autouse=True)
def _clean_registry(clean_jobs):
    """Every test here starts with no training jobs (see `clean_jobs` in conftest)."""


def _wait(predicate, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return False


def test_fake_job_runs_to_completion_with_metrics_progress_and_cache_note(colour_dataset, tmp_path):
    job = TrainingJob(colour_dataset, _Config(), run_dir=tmp_path / "run-a", fit_fn=_FakeFit()).start()
    assert job.join(10)
    snap = job.snapshot()
    assert snap.status == jobs.COMPLETED and not job.is_running
    assert [m["step"] for m in snap.steps] == list(range(1, 13))
    assert snap.steps[0]["train_loss"] == 1.0  # the engine's `loss` is shown as the training loss
    assert [m["epoch"] for m in snap.epochs] == [1, 2, 3]
    assert snap.progress == 1.0 and snap.best_epoch == 2
    assert snap.cache_mode == "none" and "augmentation" in snap.cache_note
    assert snap.job_id == "run-a" and snap.run_dir == str(tmp_path / "run-a")


def test_snapshot_is_a_copy_and_progress_and_eta_move_while_running(colour_dataset, tmp_path):
    gate = threading.Event()
    fake = _FakeFit(gate=gate)
    job = TrainingJob(colour_dataset, _Config(), run_dir=tmp_path / "run", fit_fn=fake).start()
    assert fake.started.wait(5)
    gate.set()
    assert _wait(lambda: len(job.snapshot().steps) >= 2)
    snap = job.snapshot()
    snap.steps.clear()
    assert job.snapshot().steps, "clearing a snapshot must not touch the job's log"
    assert job.join(10)
    assert job.snapshot().progress == 1.0


def test_stop_ends_the_run_within_one_batch(colour_dataset, tmp_path):
    fake = _FakeFit(steps_per_epoch=1000, delay=0.005)
    job = TrainingJob(colour_dataset, _Config(epochs=50), run_dir=tmp_path / "run", fit_fn=fake).start()
    assert _wait(lambda: len(job.snapshot().steps) >= 3)
    job.stop()
    assert job.join(5)
    steps_at_end = len(job.snapshot().steps)
    assert job.status == jobs.STOPPED
    assert steps_at_end < 1000, "the run should have stopped long before its end"
    assert job.error is None


def test_a_failing_run_is_marked_failed_with_its_message_and_the_registry_still_works(colour_dataset, tmp_path):
    bad = TrainingJob(colour_dataset, _Config(), run_dir=tmp_path / "bad", fit_fn=_FakeFit(fail_at_step=2)).start()
    assert bad.join(10)
    assert bad.status == jobs.FAILED
    assert "no training examples" in bad.error
    assert bad.snapshot().error == bad.error

    good = TrainingJob(colour_dataset, _Config(), run_dir=tmp_path / "good", fit_fn=_FakeFit()).start()
    assert good.join(10)
    assert good.status == jobs.COMPLETED, "a failed job must free the machine's training slot"
    assert jobs.get("bad") is bad and jobs.latest() is good


def test_a_second_job_queues_until_the_first_ends_then_runs(colour_dataset, tmp_path, monkeypatch):
    monkeypatch.setenv("TRANSFER_STUDIO_MAX_JOBS", "1")
    gate = threading.Event()
    first_fit = _FakeFit(gate=gate)
    first = TrainingJob(colour_dataset, _Config(), run_dir=tmp_path / "first", fit_fn=first_fit).start()
    assert first_fit.started.wait(5)
    second = TrainingJob(colour_dataset, _Config(), run_dir=tmp_path / "second", fit_fn=_FakeFit()).start()
    assert _wait(lambda: second.snapshot().queue_position == 1)
    assert second.status == jobs.QUEUED and second.is_running  # queued counts as active for the UI
    assert first.status == jobs.RUNNING and jobs.running_count() == 1 and jobs.queued_count() == 1
    assert jobs.latest() is second  # the newest active job is what a fresh page shows
    gate.set()
    assert first.join(10) and second.join(10)
    assert first.status == jobs.COMPLETED and second.status == jobs.COMPLETED
    assert second.started_at >= first.finished_at


def test_a_queued_job_that_is_stopped_never_starts(colour_dataset, tmp_path):
    gate = threading.Event()
    first_fit = _FakeFit(gate=gate)
    first = TrainingJob(colour_dataset, _Config(), run_dir=tmp_path / "first", fit_fn=first_fit).start()
    assert first_fit.started.wait(5)
    second_fit = _FakeFit()
    second = TrainingJob(colour_dataset, _Config(), run_dir=tmp_path / "second", fit_fn=second_fit).start()
    assert _wait(lambda: second.snapshot().queue_position == 1)
    second.stop()
    assert second.join(5)
    assert second.status == jobs.STOPPED and not second_fit.started.is_set()
    gate.set()
    assert first.join(10) and first.status == jobs.COMPLETED


def test_two_jobs_train_at_once_when_the_machine_allows_it(colour_dataset, tmp_path, monkeypatch):
    monkeypatch.setenv("TRANSFER_STUDIO_MAX_JOBS", "2")
    gate = threading.Event()
    fits = [_FakeFit(gate=gate), _FakeFit(gate=gate)]
    started = [TrainingJob(colour_dataset, _Config(), run_dir=tmp_path / f"r{i}", fit_fn=f).start()
               for i, f in enumerate(fits)]
    assert all(f.started.wait(5) for f in fits)
    assert jobs.running_count() == 2
    gate.set()
    assert all(job.join(10) and job.status == jobs.COMPLETED for job in started)


def test_latest_filters_by_data_set_and_owner(colour_dataset, tmp_path):
    mine = TrainingJob(colour_dataset, _Config(), run_dir=tmp_path / "mine", fit_fn=_FakeFit(), owner="a").start()
    assert mine.join(10)
    assert jobs.latest(fingerprint=colour_dataset.fingerprint) is mine
    assert jobs.latest(fingerprint="something-else") is None
    assert jobs.latest(owner="b") is None and jobs.latest(owner="a") is mine


def test_starting_twice_is_refused(colour_dataset, tmp_path):
    job = TrainingJob(colour_dataset, _Config(), run_dir=tmp_path / "run", fit_fn=_FakeFit()).start()
    with pytest.raises(RuntimeError, match="already started"):
        job.start()
    assert job.join(10)


# ------------------------------------------------------------------------------- with the real engine and TinyCNN
def _tiny_job(dataset, run_dir: Path, **settings: Any) -> TrainingJob:
    from core.training import TrainConfig
    from tests.tiny import TinyCNN

    values = {"backbone": "tiny_cnn", "frozen_groups": 1, "epochs": 2, "batch_size": 8, "pretrained": False,
              "precision": "fp32", "refit": "off", **settings}
    return TrainingJob(dataset, TrainConfig(**values), run_dir=run_dir, backbone=TinyCNN())


def test_tiny_model_trains_in_the_background_and_completes(colour_dataset, tmp_path):
    job = _tiny_job(colour_dataset, tmp_path / "tiny").start()
    assert job.join(120)
    snap = job.snapshot()
    assert snap.status == jobs.COMPLETED, snap.error
    assert len(snap.steps) == 2 * 3 and all(m["phase"] == "train" for m in snap.steps)  # 21 train images / 8
    assert [m["epoch"] for m in snap.epochs] == [1, 2] and snap.best_epoch in (1, 2)
    assert snap.progress == 1.0 and snap.cache_mode == "activations" and snap.info["num_groups"] == 3
    assert (tmp_path / "tiny" / "model.safetensors").exists() and job.result.status == "completed"


def test_stopping_the_real_engine_ends_within_one_batch(colour_dataset, tmp_path):
    job = _tiny_job(colour_dataset, tmp_path / "tiny", epochs=200, batch_size=2, cache="off")
    seen_at_stop: list[int] = []

    original = job.metrics_log.step

    def stop_after_second_step(metrics: dict[str, Any]) -> None:
        original(metrics)
        if metrics.get("phase") == "train" and metrics.get("step") == 2:
            seen_at_stop.append(len(job.metrics_log.steps))
            job.stop()

    job.metrics_log.step = stop_after_second_step  # stop from inside the loop: deterministic, no timing involved
    job.start()
    assert job.join(120)
    assert job.status == jobs.STOPPED and job.error is None
    assert len(job.snapshot().steps) == seen_at_stop[0] == 2, "no batch may run after the stop request"


def test_a_real_engine_error_fails_the_job_with_its_message(colour_dataset, tmp_path):
    colour_dataset.table["split"] = colour_dataset.table["split"].replace("train", "val")
    job = _tiny_job(colour_dataset, tmp_path / "tiny").start()
    assert job.join(120)
    assert job.status == jobs.FAILED and "no training examples" in job.error
    from core.store import RunStore

    record = RunStore().list_runs()[0]
    assert record["status"] == "failed" and "no training examples" in record["error"]
    again = TrainingJob(colour_dataset, _Config(), run_dir=tmp_path / "next", fit_fn=_FakeFit()).start()
    assert again.join(10) and again.status == jobs.COMPLETED


def test_every_start_says_at_once_whether_it_trains_or_waits_and_where(colour_dataset, tmp_path, monkeypatch):
    """Six people press Train at the same moment on a one-slot machine: one starts, five queue, none is lost."""
    monkeypatch.setenv("TRANSFER_STUDIO_MAX_JOBS", "1")
    gate = threading.Event()
    barrier = threading.Barrier(6)
    created = [TrainingJob(colour_dataset, _Config(), run_dir=tmp_path / f"r{i}", fit_fn=_FakeFit(gate=gate))
               for i in range(6)]

    def press(job: TrainingJob) -> None:
        barrier.wait()
        job.start()

    threads = [threading.Thread(target=press, args=(job,)) for job in created]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(5)
    started = [job for job in created if job.queued_at is None]
    assert len(started) == 1 and started[0].status == jobs.RUNNING  # decided by start(), not later by the worker
    queued = sorted(created, key=lambda job: job.queued_at or 0)[1:]
    assert [job.queued_at for job in queued] == [1, 2, 3, 4, 5]
    assert all(job.status == jobs.QUEUED for job in queued)
    gate.set()
    assert all(job.join(10) for job in created)
    assert all(job.status == jobs.COMPLETED for job in created)
    order = sorted(created, key=lambda job: job.started_at)
    assert order == [started[0], *queued]  # the queue is served in the order it was joined


def test_the_owner_is_recorded_with_the_run(colour_dataset, tmp_path):
    from core.store import RunStore
    from core.training import TrainConfig
    from tests.tiny import TinyCNN

    config = TrainConfig(backbone="tiny_cnn", frozen_groups=1, epochs=1, batch_size=8, pretrained=False,
                         precision="fp32")
    job = TrainingJob(colour_dataset, config, backbone=TinyCNN(), owner="alice").start()
    assert job.join(60) and job.status == jobs.COMPLETED, job.error
    runs = RunStore().list_runs(owner="alice")
    assert [run["run_dir"] for run in runs] == [job.run_dir]
    assert RunStore().list_runs(owner="bob") == []


def test_the_time_left_comes_from_the_measured_run_and_is_none_once_it_ends(colour_dataset, tmp_path):
    """The snapshot's estimate is `core.eta.TimeLeft` fed by the engine's events (see tests/test_eta.py)."""
    fake = _FakeFit(steps_per_epoch=10, delay=0.05)
    job = TrainingJob(colour_dataset, _Config(epochs=4), run_dir=tmp_path / "run", fit_fn=fake).start()
    assert _wait(lambda: len(job.snapshot().epochs) >= 1 and job.snapshot().eta_seconds is not None, timeout=20)
    left = job.snapshot().eta_seconds
    assert 0.0 < left < 20.0  # 3 epochs of about 0.5 s each are left; generous for a busy machine
    assert job.join(30)
    assert job.snapshot().eta_seconds is None


def test_fair_order_lets_owners_take_turns():
    from types import SimpleNamespace

    def queued(*owners: str) -> list[SimpleNamespace]:
        return [SimpleNamespace(owner=owner, name=f"{owner}{i}") for i, owner in enumerate(owners)]

    def names(order: list[SimpleNamespace]) -> list[str]:
        return [job.name for job in order]

    assert names(jobs.fair_order(queued("a", "a", "a", "b"), last_served={})) == ["a0", "b3", "a1", "a2"]
    # Alice got the last slot: Bob's and Carol's first runs go before her next one, then they take turns.
    assert names(jobs.fair_order(queued("a", "a", "b", "b", "c"), last_served={"a": 5})) == ["b2", "c4", "a0",
                                                                                           "b3", "a1"]
    assert names(jobs.fair_order(queued("b", "a"), last_served={"a": 1, "b": 2})) == ["a1", "b0"]
    assert jobs.fair_order([], last_served={"a": 1}) == []


def test_one_owner_queuing_many_runs_does_not_starve_another(colour_dataset, tmp_path, monkeypatch):
    """Alice queues four runs on a one-slot machine, then Bob one: Bob's starts second, not fifth."""
    monkeypatch.setenv("TRANSFER_STUDIO_MAX_JOBS", "1")
    gate = threading.Event()
    alice = [TrainingJob(colour_dataset, _Config(), run_dir=tmp_path / f"alice{i}", fit_fn=_FakeFit(gate=gate),
                         owner="alice").start() for i in range(4)]
    bob = TrainingJob(colour_dataset, _Config(), run_dir=tmp_path / "bob", fit_fn=_FakeFit(gate=gate),
                      owner="bob").start()
    assert [job.queued_at for job in alice] == [None, 1, 2, 3]
    assert bob.queued_at == 1 and bob.snapshot().queue_position == 1
    assert [job.snapshot().queue_position for job in alice[1:]] == [2, 3, 4]
    gate.set()
    assert all(job.join(20) for job in [*alice, bob])
    order = sorted([*alice, bob], key=lambda job: job.started_at)
    assert order == [alice[0], bob, *alice[1:]]


def test_a_queued_job_expects_its_start_when_the_running_one_says_its_time_left(colour_dataset, tmp_path,
                                                                                 monkeypatch):
    monkeypatch.setenv("TRANSFER_STUDIO_MAX_JOBS", "1")
    first = TrainingJob(colour_dataset, _Config(epochs=4), run_dir=tmp_path / "first",
                        fit_fn=_FakeFit(steps_per_epoch=10, delay=0.05)).start()
    second = TrainingJob(colour_dataset, _Config(), run_dir=tmp_path / "second", fit_fn=_FakeFit()).start()
    third = TrainingJob(colour_dataset, _Config(), run_dir=tmp_path / "third", fit_fn=_FakeFit()).start()
    assert _wait(lambda: first.snapshot().eta_seconds is not None, timeout=20)
    expected = second.snapshot().expected_start_seconds
    assert expected is not None and 0.0 < expected < 20.0
    assert third.snapshot().expected_start_seconds is None  # how long the second run takes is not known
    assert all(job.join(30) for job in (first, second, third))
