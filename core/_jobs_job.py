"""`TrainingJob`: one training run off the script thread, with its supervising thread, stop and cancel flags.

The job either starts a worker process (`core.workers`) and follows its events file, or (a fake engine or an
in-memory backbone: tests) runs the engine on its own thread; either way the engine's events land in the job's
lock-protected log (`core._jobs_log.JobLog`), which `snapshot()` copies.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from core._jobs_log import MAX_STEP_POINTS as MAX_STEP_POINTS  # `name as name`: re-exported (core.jobs)
from core._jobs_log import JobLog
from core._jobs_queue import _SLOTS, _expected_start, max_running_jobs
from core._jobs_registry import _prune, _register
from core._jobs_snapshot import ACTIVE_STATUSES, CANCELLED, FAILED, FINISHED_STATUSES, RUNNING, STOPPED, JobSnapshot
from core.contracts import TrainEnd
from core.dataset import Dataset
from core.paths import workspace_subdir
from core.store import RunStore, new_run_id

log = logging.getLogger("core.jobs")  # the public module's name: what callers silence or watch (core.bench)

#: How often a job looks at its worker's events file and process.
WORKER_POLL_SECONDS = 0.2

FitFunction = Callable[..., Any]


class _JobCallback:
    """The engine-facing side of a job: HF `TrainerCallback`-style events written into the job's log."""

    def __init__(self, job: TrainingJob) -> None:
        self._job = job

    def on_train_begin(self, info: Any) -> None:
        _record_owner(self._job)  # the engine has created the run's record by now
        self._job.metrics_log.begin(info)

    def on_step_end(self, metrics: Any) -> None:
        self._job.metrics_log.step(metrics)

    def on_epoch_end(self, metrics: Any) -> None:
        self._job.metrics_log.epoch(metrics)

    def on_train_end(self, result: Any) -> None:
        self._job.metrics_log.end(result)


class TrainingJob:
    """One training run off the script thread: start it, poll `snapshot()`, `stop()` or `cancel()` it.

    Args:
        dataset: the split data set to train on.
        config: a `core.training.TrainConfig` (anything with the fields `fit` reads; `backbone` and `epochs` are
            used here for naming and progress).
        run_dir: the run folder; default `<owner's workspace>/runs/<job_id>/` (`core.paths.workspace_subdir`).
        backbone: an already-built `Backbone` to train (the job owns it; pass a copy of a shared one), or None so
            that the engine loads its own with `load_backbone`.
        fit_fn: the training function, `fit(dataset, config, run_dir, backbone=..., callbacks=..., stop_event=...)`;
            default `core.training.fit`. Tests inject fakes here.
        label: a short description for lists ("efficientnet_lite0, 3 frozen, lr 0.001").
        owner: the workspace that started it (`core.workspaces`), so a page can tell its own jobs apart; also
            recorded with the run in the run store, so its runs can be listed after the job is forgotten. None (the
            CLI) keeps the run at the top of the workspace folder.
        worker_fit: the engine a worker process runs, as 'module:function' (default `core.training:fit`); tests
            name a tiny-model engine here to train in a real worker process.
        resume: continue the run in `run_dir` from its last epoch checkpoint (see `resume`).

    Attributes:
        queued_at: after `start()`, None when the job took a free slot at once, else its place in the queue then.
        isolation: "process" when the engine trains in a worker process (the real engine, which loads its own
            backbone), "thread" when a fit function or a backbone object that lives only in this process was given.
    """

    def __init__(
        self,
        dataset: Dataset,
        config: Any,
        run_dir: str | Path | None = None,
        backbone: Any = None,
        fit_fn: FitFunction | None = None,
        label: str = "",
        owner: str | None = None,
        worker_fit: str | None = None,
        resume: bool = False,
    ) -> None:
        backbone_name = str(getattr(config, "backbone", "model"))
        self.job_id = Path(run_dir).name if run_dir is not None else new_run_id(backbone_name)
        self.run_dir = str(run_dir) if run_dir is not None else str(workspace_subdir("runs", owner) / self.job_id)
        self.dataset = dataset
        self.config = config
        self.label = label or backbone_name
        self.owner = owner
        self.queued_at: int | None = None
        self.created_at = time.time()
        self.result: Any = None
        self._backbone = backbone
        self._fit_fn = fit_fn
        self._worker_fit = worker_fit
        self.resume = resume
        self.isolation = "thread"
        self.gpu: str | None = None  # the CUDA device its worker was given, where there are GPUs
        self._worker: Any = None  # a core.workers.Worker while one trains this job
        self._cancel = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.metrics_log = JobLog(getattr(config, "epochs", None))  # status and events, behind their own lock

    # ----------------------------------------------------------------------------------------------- control
    def start(self) -> TrainingJob:
        """Register the job and start its worker; it trains as soon as a slot on this machine is free.

        Whether it started at once or was queued (and where) is decided here, before this returns: `queued_at`.
        """
        if self._thread is not None:
            raise RuntimeError(f"Job {self.job_id} was already started; create a new TrainingJob to train again.")
        self.isolation = "process" if self._worker_fit or self._runs_real_engine() else "thread"
        if self.resume:
            self.metrics_log.resume_from(_checkpoint_history(self.run_dir))
        _register(self)
        self.queued_at = _SLOTS.enqueue(self)
        if self.queued_at is None:
            self.metrics_log.start_running()
        self._thread = threading.Thread(target=self._work, name=f"train-{self.job_id}", daemon=True)
        self._thread.start()
        return self

    def _runs_real_engine(self) -> bool:
        """Whether the engine is `core.training.fit` loading its own backbone: what a worker process can run.

        Decided once, at start: an engine other than the real one (tests replace `_default_fit`) is kept here.
        """
        if self._fit_fn is not None or self._backbone is not None:
            return False
        from core import training

        engine = _default_fit()
        if engine is training.fit:
            return True
        self._fit_fn = engine
        return False

    def stop(self) -> None:
        """Ask the job to stop: the engine honours it within one batch; a queued job never starts."""
        self._stop.set()
        if self._worker is not None:
            from core.workers import request_stop

            request_stop(self.run_dir)
        _SLOTS.wake()

    def cancel(self) -> None:
        """End the run at once: its worker process and everything it started are killed (no model is kept).

        A job training on a thread (tests' fakes) cannot be killed; it stops within one batch instead.
        """
        self._cancel.set()
        worker = self._worker
        if worker is not None:
            worker.kill()
        self.stop()

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the worker to end (tests, the CLI); True when it has."""
        if self._thread is None:
            return True
        self._thread.join(timeout)
        return not self._thread.is_alive()

    @property
    def stop_requested(self) -> bool:
        return self._stop.is_set()

    @property
    def status(self) -> str:
        with self.metrics_log.lock:
            return self.metrics_log.status

    @property
    def error(self) -> str | None:
        with self.metrics_log.lock:
            return self.metrics_log.error

    @property
    def started_at(self) -> float | None:
        """When the job left the queue and began to train (time.time()); None while queued."""
        return self.metrics_log.started_at

    @property
    def finished_at(self) -> float | None:
        return self.metrics_log.finished_at

    @property
    def is_running(self) -> bool:
        """True while the job is queued or training (what the sidebar shows as "running")."""
        return self.status in ACTIVE_STATUSES

    @property
    def is_finished(self) -> bool:
        return self.status in FINISHED_STATUSES

    def snapshot(self) -> JobSnapshot:
        """A copy of everything a page draws; cheap, safe to call from any thread at any rate."""
        position = _SLOTS.position(self)
        return self.metrics_log.snapshot(self.job_id, self.run_dir, position, _expected_start(position), self.isolation)

    # ----------------------------------------------------------------------------------------------- worker
    def _work(self) -> None:
        if not _SLOTS.wait_turn(self):
            self.metrics_log.end_as(STOPPED, None)
            log.info("Job %s was stopped before it started", self.job_id)
            _prune()
            return
        try:
            self.metrics_log.start_running()
            log.info("Job %s starts training %s (%s)", self.job_id, self.label, self.isolation)
            if self.isolation == "process":
                self._train_in_worker()
            else:
                self._train_here()
        except Exception as exc:  # noqa: BLE001 - any failure of a run must reach the user, not kill the server
            log.exception("Job %s failed", self.job_id)
            self._fail(str(exc).strip() or type(exc).__name__)
        finally:
            _record_owner(self)
            _SLOTS.release(self)
            _prune()

    def _train_here(self) -> None:
        """The engine on this thread (fakes and in-memory backbones: tests)."""
        fit = self._fit_fn or _default_fit()
        options = {"resume": True} if self.resume else {}
        result = fit(
            self.dataset,
            self.config,
            self.run_dir,
            backbone=self._backbone,
            callbacks=(_JobCallback(self),),
            stop_event=self._stop,
            **options,
        )
        self._backbone = None  # the trained weights are in the run folder; free the memory
        self._finish(result)

    def _train_in_worker(self) -> None:
        """Write `job.json`, start a worker process and follow its events until it ends."""
        from core import workers

        Path(self.run_dir).mkdir(parents=True, exist_ok=True)
        (Path(self.run_dir) / workers.STOP_FILE).unlink(missing_ok=True)
        (Path(self.run_dir) / workers.EVENTS_FILE).unlink(missing_ok=True)  # a resumed run reports afresh
        job_file = workers.JobFile(
            dataset=self.dataset, config=self.config.to_dict(), owner=self.owner, label=self.label,
            fit=self._worker_fit or workers.DEFAULT_FIT, host=workers.this_host(), started_at=self.started_at,
        )
        workers.write_job_file(self.run_dir, job_file)
        if self._cancel.is_set():
            self._end_as(CANCELLED, None)
            return
        self.gpu = self._pick_gpu()
        worker = workers.Worker.start(self.run_dir, resume=self.resume, gpu=self.gpu,
                                      threads=workers.worker_threads(max_running_jobs()))
        job_file.worker_pid = worker.pid
        workers.write_job_file(self.run_dir, job_file)
        self._worker = worker
        if self._cancel.is_set():  # pressed while the worker was starting
            worker.kill()
        elif self._stop.is_set():
            workers.request_stop(self.run_dir)
        self._follow(worker)

    def _pick_gpu(self) -> str | None:
        """The GPU the fewest running jobs use (first in order on a tie); None on a machine without CUDA."""
        from core.workers import gpu_ids

        names = gpu_ids()
        if not names:
            return None
        in_use = [job.gpu for job in _SLOTS.running_jobs() if job is not self]
        return min(names, key=lambda name: (in_use.count(name), names.index(name)))

    def _follow(self, worker: Any) -> None:
        """Turn the worker's events into this job's log until the worker ends, then settle how the run ended."""
        from core import workers

        reader, callback, outcome = workers.EventReader(self.run_dir), _JobCallback(self), None
        handlers = {"on_train_begin": callback.on_train_begin, "on_step_end": callback.on_step_end,
                    "on_epoch_end": callback.on_epoch_end, "on_train_end": callback.on_train_end}
        while True:
            code = worker.exit_code()
            for event, data in reader.read_new():
                if event in handlers:
                    handlers[event](data)
                elif event in ("result", "error"):
                    outcome = (event, data)
            if code is not None:
                break
            time.sleep(WORKER_POLL_SECONDS)
        self._worker = None
        if outcome is not None and outcome[0] == "result":
            self._finish(_fit_result(outcome[1]))
        elif self._cancel.is_set():
            self._end_as(CANCELLED, None)
            _close_record(self.run_dir, CANCELLED, "Cancelled: the training process was ended at once.")
        elif outcome is not None:
            self._fail(str(outcome[1].get("message") or "Training failed; see worker.log in the run folder."))
        else:
            self._fail(workers.exit_message(code))
        log.info("Job %s: worker %s ended with %s", self.job_id, worker.pid, code)

    def _fail(self, message: str) -> None:
        self._end_as(FAILED, message)
        _close_record(self.run_dir, FAILED, message)

    def _end_as(self, status: str, error: str | None) -> None:
        self.metrics_log.end_as(status, error)

    def _finish(self, result: Any) -> None:
        self.result = result
        status = self.metrics_log.finish(result, stop_requested=self._stop.is_set())
        log.info("Job %s %s", self.job_id, status)


def _close_record(run_dir: str, status: str, message: str | None) -> None:
    """Make sure the run store does not keep an ended run as "running" (the engine closes it itself unless its
    process was killed)."""
    try:

        store = RunStore()
        try:
            wanted = str(Path(run_dir).resolve())
            for run in store.list_runs(limit=200, status=RUNNING):
                if run.get("run_dir") and str(Path(run["run_dir"]).resolve()) == wanted:
                    store.finish(run["run_id"], status, error=message)
        finally:
            store.close()
    except Exception:  # noqa: BLE001 - bookkeeping must never hide the original failure
        log.warning("Could not mark run %s as %s in the run store", run_dir, status, exc_info=True)


def _fit_result(data: dict[str, Any]) -> Any:
    """The worker's `result` event as the engine's `FitResult` (what a thread-run job keeps too)."""
    try:
        return TrainEnd.from_dict(data)
    except TypeError:  # a worker running another engine (tests) may report fewer fields
        return data


def _checkpoint_history(run_dir: str) -> list[dict[str, Any]]:
    from core.workers import checkpoint_history

    return checkpoint_history(run_dir)


def _record_owner(job: TrainingJob) -> None:
    """Write the job's owner into its run's record (the engine creates the record, and knows no owners)."""
    if job.owner is None:
        return
    try:

        store = RunStore()
        try:
            store.set_owner(job.run_dir, job.owner)
        finally:
            store.close()
    except Exception:  # noqa: BLE001 - bookkeeping must never stop a run; the job itself still knows its owner
        log.warning("Could not record the owner of run %s in the run store", job.run_dir, exc_info=True)


def _default_fit() -> FitFunction:
    from core.training import fit  # imported late: the engine pulls in torch models, the job module stays light

    return fit
