"""Training jobs that run off the script thread, so the Train page stays responsive and survives a refresh.

A `TrainingJob` owns a supervising thread, a stop `threading.Event` and a lock-protected log of the metrics the
engine (`core.training.fit`) reports through its callback events. The engine itself trains in a worker process of
its own (`core.workers`): a crash ends that run, not the server, Cancel kills it at once, and its events reach the
job through the run folder, so a restarted server finds running workers again (`recover`). A fake engine or an
in-memory backbone (tests) trains on the supervising thread instead. Pages never touch the worker: they call
`snapshot()` (a copy) from a polling fragment.

Jobs live in a module-level registry (`JOBS`), not in a browser session, so that a refreshed or reopened page (a
new Streamlit session) finds the job again with `latest()`. Training is heavy, so at most `max_running_jobs()`
jobs train at once on this machine (env `TRANSFER_STUDIO_MAX_JOBS`, default one per GPU or half the cores); a
later job waits as "queued" and starts when a running one ends, taking turns across owners (`fair_order`), so one
person queuing five runs does not make everyone else wait for all five.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.contracts import TrainEnd
from core.dataset import Dataset
from core.eta import TimeLeft
from core.paths import check_in_workspace, workspace_subdir
from core.store import RunStore, new_run_id

log = logging.getLogger(__name__)

QUEUED, RUNNING, COMPLETED, STOPPED, FAILED = "queued", "running", "completed", "stopped", "failed"
#: Cancelled: its worker was killed at once (no model kept); interrupted: its worker was gone after a restart.
CANCELLED, INTERRUPTED = "cancelled", "interrupted"
ACTIVE_STATUSES = (QUEUED, RUNNING)
FINISHED_STATUSES = (COMPLETED, STOPPED, FAILED, CANCELLED, INTERRUPTED)
#: Runs that can continue from their last epoch checkpoint (`resume`).
RESUMABLE_STATUSES = (STOPPED, FAILED, CANCELLED, INTERRUPTED)
#: How often a job looks at its worker's events file and process.
WORKER_POLL_SECONDS = 0.2

#: The finished jobs kept in memory (their records stay in the run store and run folders regardless).
KEEP_FINISHED_JOBS = 20
#: Step metrics kept per job for the live chart; older points are thinned, never the epoch metrics.
MAX_STEP_POINTS = 5000

FitFunction = Callable[..., Any]


def max_running_jobs() -> int:
    """How many jobs may train at the same time on this machine.

    Env `TRANSFER_STUDIO_MAX_JOBS`, else `core.workers.default_worker_count()` (one per GPU, or half the cores).
    """
    from core.workers import default_worker_count

    value = os.environ.get("TRANSFER_STUDIO_MAX_JOBS")
    if value is None:
        return default_worker_count()
    try:
        return max(1, int(value))
    except ValueError:
        log.warning("TRANSFER_STUDIO_MAX_JOBS=%r is not a whole number; using 1", value)
        return 1


@dataclass(frozen=True)
class JobSnapshot:
    """A consistent copy of a job's state at one moment, for a page to draw.

    Attributes:
        job_id: the job's id (also its run id, the name of its run folder).
        status: queued, running, completed, stopped or failed.
        phase: what the job is doing: "queued", "starting", "features" (the feature / activation cache pass),
            "training", or "done".
        error: the failure message when status is failed, else None.
        steps: per-step metrics in order (each a dict with at least `step` and `train_loss` when training).
        epochs: per-epoch metrics in order (`epoch`, `train_loss`, `train_accuracy`, `val_loss`, `val_accuracy`).
        progress: fraction of the whole run done, 0..1.
        eta_seconds: estimated seconds left (`core.eta.TimeLeft`: measured epochs with their validation,
            smoothed); while the feature cache pass runs, the seconds left of that pass; None until known.
        elapsed_seconds: seconds since the job started training (0 while queued).
        cache_mode: "features", "activations" or "none" once the engine has said; None before.
        cache_note: the engine's sentence about caching (why it is off, or what is reused).
        best_epoch: the epoch whose checkpoint is kept, once known.
        run_dir: the run folder.
        queue_position: 1-based place in the queue while queued, else None.
        info: what the engine said at the start of training (steps per epoch, device, ...).
        expected_start_seconds: while queued, about how many seconds until it starts, where that can be said: its
            place is no further back than the runs training now, and their time left is known. Else None.
        isolation: "process" (a worker process of its own) or "thread" (in the server; fakes in tests).
    """

    job_id: str
    status: str
    phase: str
    error: str | None
    steps: list[dict[str, Any]]
    epochs: list[dict[str, Any]]
    progress: float
    eta_seconds: float | None
    elapsed_seconds: float
    cache_mode: str | None
    cache_note: str | None
    best_epoch: int | None
    run_dir: str
    queue_position: int | None
    info: dict[str, Any] = field(default_factory=dict)
    expected_start_seconds: float | None = None
    isolation: str = "thread"

    @property
    def is_active(self) -> bool:
        return self.status in ACTIVE_STATUSES


def _as_dict(value: Any) -> dict[str, Any]:
    """An engine event or a run's result (`core.contracts`: their `to_dict()`, the wire format), or the dict a worker
    process sends (or a test's fake engine), as a dict."""
    if value is None:
        return {}
    if callable(getattr(value, "to_dict", None)):
        return value.to_dict()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    return dict(value)


def _number(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if number == number else None  # NaN is no number for progress purposes


def _is_cache_phase(metrics: dict[str, Any]) -> bool:
    return metrics.get("phase") == "features"  # the engine's one name for the feature / activation cache pass


def fair_order(waiting: Sequence[Any], last_served: Mapping[str | None, int]) -> list[Any]:
    """The order in which waiting jobs start: owners take turns (round-robin), each owner's own jobs in order.

    The next slot goes to the owner served longest ago (never served comes first; a tie goes to whoever has
    waited longest), who then goes to the back of the line. So Alice queuing four runs and Bob one after her:
    Alice's first, Bob's, then Alice's other three; never Bob's after all of Alice's.

    Args:
        waiting: jobs (anything with an `owner`) in the order they joined the queue.
        last_served: for each owner, a number that grows with each slot handed out: when that owner last got one.
    """
    by_owner: dict[str | None, list[tuple[int, Any]]] = {}
    for joined, job in enumerate(waiting):
        by_owner.setdefault(job.owner, []).append((joined, job))
    turn = {owner: last_served.get(owner, -1) for owner in by_owner}
    clock = max(last_served.values(), default=0)
    order = []
    while by_owner:
        owner = min(by_owner, key=lambda name: (turn[name], by_owner[name][0][0]))
        order.append(by_owner[owner].pop(0)[1])
        if not by_owner[owner]:
            del by_owner[owner]
        clock += 1
        turn[owner] = clock
    return order


class _Slots:
    """The machine-wide queue: at most `max_running_jobs()` jobs training at once, owners served in turn.

    A job joins with `enqueue` on the caller's thread, so whoever pressed Train learns at once whether the job took
    a free slot or waits, and at which place; its worker then waits its turn with `wait_turn`.
    """

    def __init__(self) -> None:
        self.condition = threading.Condition()
        self.waiting: list[TrainingJob] = []
        self.running: dict[str, TrainingJob] = {}
        self.last_served: dict[str | None, int] = {}
        self.served = 0

    def _order(self) -> list[TrainingJob]:
        return fair_order(self.waiting, self.last_served)

    def _take_if_first(self, job: TrainingJob) -> bool:
        """Move `job` from the head of the queue to a free slot (the caller holds the condition)."""
        if self.waiting and len(self.running) < max_running_jobs() and self._order()[0] is job:
            self.waiting.remove(job)
            self.running[job.job_id] = job
            self.served += 1
            self.last_served[job.owner] = self.served
            self.condition.notify_all()
            return True
        return False

    def enqueue(self, job: TrainingJob) -> int | None:
        """Join the queue; None when `job` took a free slot at once, else its 1-based place in the queue."""
        with self.condition:
            self.waiting.append(job)
            if self._take_if_first(job):
                return None
            return self._order().index(job) + 1

    def adopt(self, job: TrainingJob) -> None:
        """A job whose worker already trains (found again after a restart) holds a slot without queuing."""
        with self.condition:
            self.running[job.job_id] = job

    def wait_turn(self, job: TrainingJob) -> bool:
        """Block until `job` holds a slot (True) or was stopped while waiting (False)."""
        with self.condition:
            try:
                while job.job_id not in self.running:
                    if job.stop_requested:
                        return False
                    if not self._take_if_first(job):
                        self.condition.wait(timeout=0.5)
                return True
            finally:
                if job in self.waiting:
                    self.waiting.remove(job)
                    self.condition.notify_all()

    def release(self, job: TrainingJob) -> None:
        with self.condition:
            self.running.pop(job.job_id, None)
            self.condition.notify_all()

    def position(self, job: TrainingJob) -> int | None:
        with self.condition:
            return self._order().index(job) + 1 if job in self.waiting else None

    def running_jobs(self) -> list[TrainingJob]:
        with self.condition:
            return list(self.running.values())

    def wake(self) -> None:
        with self.condition:
            self.condition.notify_all()


_SLOTS = _Slots()
_REGISTRY_LOCK = threading.Lock()
#: Every job of this server process, by job id, oldest first.
JOBS: dict[str, TrainingJob] = {}


class _JobCallback:
    """The engine-facing side of a job: HF `TrainerCallback`-style events written into the job's log."""

    def __init__(self, job: TrainingJob) -> None:
        self._job = job

    def on_train_begin(self, info: Any) -> None:
        self._job._record_begin(_as_dict(info))

    def on_step_end(self, metrics: Any) -> None:
        self._job._record_step(_as_dict(metrics))

    def on_epoch_end(self, metrics: Any) -> None:
        self._job._record_epoch(_as_dict(metrics))

    def on_train_end(self, result: Any) -> None:
        self._job._record_end(result)


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
        self.started_at: float | None = None
        self.finished_at: float | None = None
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
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._status = QUEUED
        self._phase = "queued"
        self._error: str | None = None
        self._steps: list[dict[str, Any]] = []
        self._epochs: list[dict[str, Any]] = []
        self._info: dict[str, Any] = {}
        self._progress = 0.0
        self._time_left = TimeLeft(epochs=_whole(getattr(config, "epochs", None)))
        self._best_epoch: int | None = None

    # ----------------------------------------------------------------------------------------------- control
    def start(self) -> TrainingJob:
        """Register the job and start its worker; it trains as soon as a slot on this machine is free.

        Whether it started at once or was queued (and where) is decided here, before this returns: `queued_at`.
        """
        if self._thread is not None:
            raise RuntimeError(f"Job {self.job_id} was already started; create a new TrainingJob to train again.")
        self.isolation = "process" if self._worker_fit or self._runs_real_engine() else "thread"
        if self.resume:
            self._epochs = [dict(m) for m in _checkpoint_history(self.run_dir)]
            kept = [m["best_epoch"] for m in self._epochs if m.get("best_epoch") is not None]
            self._best_epoch = int(kept[-1]) if kept else None  # every epoch record says which epoch is kept
        _register(self)
        self.queued_at = _SLOTS.enqueue(self)
        if self.queued_at is None:
            with self._lock:
                self._status, self._phase = RUNNING, "starting"
                self.started_at = time.time()
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
        with self._lock:
            return self._status

    @property
    def error(self) -> str | None:
        with self._lock:
            return self._error

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
        expected_start = _expected_start(position)
        with self._lock:
            now = self.finished_at or time.time()
            elapsed = now - self.started_at if self.started_at else 0.0
            return JobSnapshot(
                job_id=self.job_id,
                status=self._status,
                phase=self._phase,
                error=self._error,
                steps=[dict(m) for m in self._steps],
                epochs=[dict(m) for m in self._epochs],
                progress=self._progress,
                eta_seconds=self._eta(),
                elapsed_seconds=elapsed,
                cache_mode=self._info.get("cache_mode"),
                cache_note=self._info.get("cache_note"),
                best_epoch=self._best_epoch,
                run_dir=self.run_dir,
                queue_position=position,
                info=dict(self._info),
                expected_start_seconds=expected_start,
                isolation=self.isolation,
            )

    # ----------------------------------------------------------------------------------------------- worker
    def _work(self) -> None:
        if not _SLOTS.wait_turn(self):
            with self._lock:
                self._status, self._phase = STOPPED, "done"
                self.finished_at = time.time()
            log.info("Job %s was stopped before it started", self.job_id)
            _prune()
            return
        try:
            with self._lock:
                if self._status == QUEUED:
                    self._status, self._phase = RUNNING, "starting"
                    self.started_at = time.time()
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
        with self._lock:
            self._status, self._phase, self._error = status, "done", error
            self.finished_at = time.time()

    def _finish(self, result: Any) -> None:
        summary = _as_dict(result)
        engine_status = str(summary.get("status") or "").lower()
        with self._lock:
            self.result = result
            if engine_status == FAILED:
                self._status = FAILED
                self._error = str(summary.get("error") or "Training failed; see the server log.")
            elif engine_status == STOPPED or (self._stop.is_set() and engine_status != COMPLETED):
                self._status = STOPPED
            else:
                self._status = COMPLETED
                self._progress = 1.0
            best = summary.get("best_epoch")
            if best is not None:
                self._best_epoch = int(best)
            for key in ("cache_mode", "cache_note"):
                if summary.get(key) is not None and self._info.get(key) is None:
                    self._info[key] = summary[key]
            self._phase = "done"
            self.finished_at = time.time()
        log.info("Job %s %s", self.job_id, self.status)

    # -------------------------------------------------------------------------------------- engine events
    def _record_begin(self, info: dict[str, Any]) -> None:
        _record_owner(self)  # the engine has created the run's record by now
        with self._lock:
            self._info.update({k: v for k, v in info.items() if _is_plain(v)})
            if self._phase == "starting":
                self._phase = "features" if info.get("cache_mode") in {"features", "activations"} else "training"
            self._time_left.begin(
                _whole(info.get("epochs")) or self._time_left.epochs, num_train=_whole(info.get("num_train")) or 0,
                num_val=_whole(info.get("num_val")) or 0, gradient=info.get("head", "gradient") != "logistic",
                now=time.monotonic(),
            )

    def _record_step(self, metrics: dict[str, Any]) -> None:
        now = time.time()
        with self._lock:
            if _is_cache_phase(metrics):
                self._phase = "features"
            else:
                self._phase = "training"
                entry = {k: v for k, v in metrics.items() if _is_plain(v)}
                entry.setdefault("step", len(self._steps) + 1)
                if "train_loss" not in entry and "loss" in entry:
                    entry["train_loss"] = entry["loss"]
                entry["time"] = now - (self.started_at or now)
                self._steps.append(entry)
                if len(self._steps) > MAX_STEP_POINTS:
                    self._steps = self._steps[::2]
            self._update_progress(metrics)
            if _is_cache_phase(metrics):
                self._time_left.cache(float(self._info.get("cache_progress") or 0.0), time.monotonic())
            else:
                self._time_left.step(self._progress, time.monotonic())

    def _record_epoch(self, metrics: dict[str, Any]) -> None:
        with self._lock:
            entry = {k: v for k, v in metrics.items() if _is_plain(v)}
            entry.setdefault("epoch", len(self._epochs) + 1)
            self._epochs.append(entry)
            if entry.get("best_epoch") is not None:  # the engine sends the epoch it keeps; never recomputed here
                self._best_epoch = int(entry["best_epoch"])
            self._phase = "training"
            epochs = _number(getattr(self.config, "epochs", None))
            if epochs:
                self._progress = max(self._progress, min(1.0, float(entry["epoch"]) / epochs))
            self._update_progress(metrics)
            self._time_left.epoch_end(time.monotonic(), epochs_done=_whole(entry.get("epoch")))

    def _record_end(self, result: Any) -> None:
        summary = _as_dict(result)
        with self._lock:
            if summary.get("best_epoch") is not None:
                self._best_epoch = int(summary["best_epoch"])

    def _update_progress(self, metrics: dict[str, Any]) -> None:
        """Progress as the engine reports it: `progress`, else `step` of `total_steps`; never goes back."""
        progress = _number(metrics.get("progress"))
        if progress is None:
            step, total = _number(metrics.get("step")), _number(metrics.get("total_steps"))
            if step is not None and total:
                progress = step / total
        if progress is not None and not _is_cache_phase(metrics):
            self._progress = max(self._progress, min(1.0, progress))
        elif progress is not None:
            self._info["cache_progress"] = min(1.0, progress)

    def _eta(self) -> float | None:
        if self._status != RUNNING:
            return None
        return self._time_left.seconds_left(time.monotonic())


def _whole(value: Any) -> int | None:
    number = _number(value)
    return int(number) if number is not None else None


def _is_plain(value: Any) -> bool:
    return value is None or isinstance(value, (bool, int, float, str, list, tuple, dict))


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


def _expected_start(position: int | None) -> float | None:
    """Seconds until a job at `position` starts, where that can be said honestly: the runs ahead of it are all
    training now (position <= running jobs) and each has a time left; the position-th soonest end frees its slot."""
    if position is None:
        return None
    running = _SLOTS.running_jobs()
    if position > len(running) or len(running) < max_running_jobs():
        return None
    left = [job.snapshot().eta_seconds for job in running]
    if any(seconds is None for seconds in left):
        return None
    return sorted(left)[position - 1]


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


def _register(job: TrainingJob) -> None:
    with _REGISTRY_LOCK:
        known = JOBS.get(job.job_id)
        if known is not None and not (job.resume and known.is_finished):
            raise ValueError(f"A job with id {job.job_id} exists already; use a new run folder.")
        JOBS.pop(job.job_id, None)  # a resumed run takes the place of its ended job
        JOBS[job.job_id] = job


def _prune() -> None:
    """Forget the oldest finished jobs beyond `KEEP_FINISHED_JOBS` (their runs stay on disk and in the store)."""
    with _REGISTRY_LOCK:
        finished = [job_id for job_id, job in JOBS.items() if job.is_finished]
        for job_id in finished[: max(0, len(finished) - KEEP_FINISHED_JOBS)]:
            del JOBS[job_id]


def get(job_id: str) -> TrainingJob | None:
    """The job with this id, if this server process still knows it."""
    with _REGISTRY_LOCK:
        return JOBS.get(job_id)


def all_jobs() -> list[TrainingJob]:
    """Every known job, oldest first."""
    with _REGISTRY_LOCK:
        return list(JOBS.values())


def latest(fingerprint: str | None = None, owner: str | None = None) -> TrainingJob | None:
    """The job a page should show when its session has none: the newest running or queued one, else the newest.

    Args:
        fingerprint: only jobs on the data set with this fingerprint.
        owner: only jobs started by this owner.
    """
    candidates = [
        job
        for job in all_jobs()
        if (fingerprint is None or job.dataset.fingerprint == fingerprint) and (owner is None or job.owner == owner)
    ]
    if not candidates:
        return None
    active = [job for job in candidates if job.is_running]
    return (active or candidates)[-1]


def running_count() -> int:
    """How many jobs are training right now (not counting the queued ones)."""
    with _SLOTS.condition:
        return len(_SLOTS.running)


def queued_count() -> int:
    """How many jobs are waiting for a free slot."""
    with _SLOTS.condition:
        return len(_SLOTS.waiting)


# ------------------------------------------------------------------------------------------ resume and recover
def can_resume(run_dir: str | Path | None) -> bool:
    """Whether a run folder can continue from a checkpoint: it has `job.json` and an epoch checkpoint."""
    from core import workers

    if not run_dir:
        return False
    return (Path(run_dir) / workers.JOB_FILE).exists() and workers.checkpoint_epoch(run_dir) is not None


def resume(run_dir: str | Path, owner: str | None = None, worker_fit: str | None = None) -> TrainingJob:
    """Start a job that continues a stopped, failed, cancelled or interrupted run from its last epoch checkpoint.

    It queues like any new run and trains in a worker process, on the data set and settings `job.json` recorded.

    Args:
        run_dir: the run folder.
        owner: the workspace that asks; a run of another workspace (its record or its folder) is refused.
        worker_fit: the engine, as `TrainingJob` takes it (tests); default the one `job.json` names.
    """
    from core import workers

    run_dir = str(run_dir)
    check_in_workspace(run_dir, owner)  # first: another workspace's folder is refused before anything is read
    known = get(Path(run_dir).name)
    if known is not None and known.is_running:
        raise ValueError(f"Run {Path(run_dir).name} is still training; stop it before resuming it.")
    if not can_resume(run_dir):
        raise ValueError(
            f"Run {Path(run_dir).name} cannot be resumed: it has no epoch checkpoint (it ended before its first "
            "epoch) or was not started from this app. Train it anew."
        )
    job_file = workers.read_job_file(run_dir)
    if owner is not None and job_file.owner is not None and job_file.owner != owner:
        raise PermissionError(f"Run {Path(run_dir).name} belongs to another workspace; only that workspace resumes it.")
    job = TrainingJob(job_file.dataset, job_file.train_config(), run_dir=run_dir, label=job_file.label,
                      owner=job_file.owner or owner, worker_fit=worker_fit or job_file.fit, resume=True)
    return job.start()


def recover(store: Any = None) -> dict[str, list[str]]:
    """After a server (re)start: find the runs the store says are running but no job of this server trains.

    A run whose worker process still lives on this machine is adopted (its job follows the worker's events from
    the start of its events file); one whose worker is gone is marked "interrupted", resumable from its last
    epoch checkpoint. Runs of other machines and of this very process are left alone.

    Returns:
        {"adopted": [run ids], "interrupted": [run ids]}.
    """
    from core import workers

    own_store = store is None
    store = store or RunStore()
    found: dict[str, list[str]] = {"adopted": [], "interrupted": []}
    try:
        for run in store.list_runs(status=RUNNING):
            run_dir = run.get("run_dir")
            if not run_dir or get(Path(run_dir).name) is not None or run.get("host") != workers.this_host():
                continue
            if run.get("pid") == os.getpid():
                continue  # a thread of this process trains it
            if workers.pid_alive(run.get("pid")) and _adopt(run_dir, int(run["pid"])):
                found["adopted"].append(run["run_id"])
                continue
            epoch = workers.checkpoint_epoch(run_dir)
            message = "Interrupted: its training process was gone when the server started" + (
                f"; Resume continues it after epoch {epoch}." if epoch
                else ", before its first epoch ended, so there is nothing to resume: train it again.")
            store.finish(run["run_id"], INTERRUPTED, error=message)
            found["interrupted"].append(run["run_id"])
            log.warning("Run %s: %s", run["run_id"], message)
    finally:
        if own_store:
            store.close()
    return found


def _adopt(run_dir: str, pid: int) -> bool:
    """Follow a worker an earlier server started (`recover`); False when its `job.json` does not name it."""
    from core import workers

    try:
        job_file = workers.read_job_file(run_dir)
    except (OSError, ValueError):
        return False
    if job_file.worker_pid != pid:
        return False
    job = TrainingJob(job_file.dataset, job_file.train_config(), run_dir=run_dir, label=job_file.label,
                      owner=job_file.owner, worker_fit=job_file.fit)
    job.isolation, job._status, job._phase = "process", RUNNING, "starting"
    job.started_at = job_file.started_at or time.time()
    job._worker = workers.Worker.adopt(pid)
    _register(job)
    _SLOTS.adopt(job)

    def follow() -> None:
        try:
            job._follow(job._worker)
        finally:
            _record_owner(job)
            _SLOTS.release(job)
            _prune()

    job._thread = threading.Thread(target=follow, name=f"follow-{job.job_id}", daemon=True)
    job._thread.start()
    log.info("Adopted the running worker %d of run %s", pid, job.job_id)
    return True


_RECOVERED = threading.Event()


def recover_once() -> None:
    """`recover()` the first time a page asks in this server process (pages call this; it is cheap after)."""
    if _RECOVERED.is_set():
        return
    _RECOVERED.set()
    try:
        recover()
    except Exception:  # noqa: BLE001 - finding old runs must never stop the page
        log.warning("Could not look for runs a previous server left running", exc_info=True)


# ----------------------------------------------------------------------------------------- feature warm-up
#: Data sets larger than this are not warmed up unasked: the user may well choose to fine-tune instead.
WARM_UP_MAX_EXAMPLES = 5000
_WARM_UPS: dict[tuple[str, str], threading.Thread] = {}
_WARM_UP_LOCK = threading.Lock()


def warm_up_features(dataset: Any, backbone_name: str) -> bool:
    """Start computing the backbone's features for `dataset` in the background, once per (data, backbone).

    Feature extraction is the default for small data, and the backbone pass over the data is most of its cost;
    doing it while the user reads the Freezing page means Train shows its first point within seconds. `fit`
    finds the result in the feature cache (or waits for a warm-up still in progress rather than computing twice).
    Nothing starts while a training job is running (it would slow that run), for large data sets, or with
    `TRANSFER_STUDIO_WARM_UP=0` (the unit tests set it, to keep their CPU use predictable). Returns True
    when a warm-up is running or has run for this pair.
    """
    if len(dataset.table) > WARM_UP_MAX_EXAMPLES or os.environ.get("TRANSFER_STUDIO_WARM_UP", "1") == "0":
        return False
    key = (dataset.fingerprint, backbone_name)
    with _WARM_UP_LOCK:
        if key in _WARM_UPS:
            return True
        if running_count() > 0:
            return False

        def work() -> None:
            from core.training import prepare_features

            try:
                prepare_features(dataset, backbone_name)
                log.info("Features of %s with %s are ready", dataset.name, backbone_name)
            except Exception:  # a warm-up is only a head start: training computes what is missing
                log.warning("Feature warm-up for %s failed; training will compute them", backbone_name, exc_info=True)

        thread = threading.Thread(target=work, name=f"warm-up-{backbone_name}", daemon=True)
        _WARM_UPS[key] = thread
        thread.start()
    return True


def warm_up_running(dataset: Any, backbone_name: str) -> bool:
    """Whether a background warm-up for this data and backbone is still computing."""
    thread = _WARM_UPS.get((dataset.fingerprint, backbone_name))
    return thread is not None and thread.is_alive()
