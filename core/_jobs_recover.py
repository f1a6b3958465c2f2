"""Continuing a run from its last epoch checkpoint (`resume`), and finding again, after a server restart, the
workers an earlier server started (`recover`): adopted while they live, marked "interrupted" when they are gone.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import Any

from core._jobs_job import TrainingJob, _record_owner
from core._jobs_queue import _SLOTS
from core._jobs_registry import _prune, _register, get
from core._jobs_snapshot import INTERRUPTED, RUNNING
from core.paths import check_in_workspace
from core.store import RunStore

log = logging.getLogger("core.jobs")  # the public module's name: what callers silence or watch (core.bench)


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
    job.isolation = "process"
    job.metrics_log.start_running(since=job_file.started_at)
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
