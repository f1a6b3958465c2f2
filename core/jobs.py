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

This module is the public face; the work is done one idea a module, lowest first: `core._jobs_snapshot` (a job's
states and the snapshot a page draws), `core._jobs_queue` (the machine-wide fair queue), `core._jobs_registry` (the
jobs of this server process), `core._jobs_job` (`TrainingJob` and its worker), `core._jobs_recover` (resume and
recovery after a restart) and `core._jobs_warmup` (the feature warm-up).
"""

from __future__ import annotations

from core._jobs_job import MAX_STEP_POINTS, WORKER_POLL_SECONDS, FitFunction, TrainingJob
from core._jobs_queue import _SLOTS as _SLOTS  # tests hold and free slots directly
from core._jobs_queue import fair_order, max_running_jobs, queued_count, running_count
from core._jobs_recover import can_resume, recover, recover_once, resume
from core._jobs_registry import JOBS, KEEP_FINISHED_JOBS, all_jobs, get, latest
from core._jobs_snapshot import (
    ACTIVE_STATUSES,
    CANCELLED,
    COMPLETED,
    FAILED,
    FINISHED_STATUSES,
    INTERRUPTED,
    QUEUED,
    RESUMABLE_STATUSES,
    RUNNING,
    STOPPED,
    JobSnapshot,
)
from core._jobs_warmup import _WARM_UPS as _WARM_UPS  # tests wait for a warm-up's thread
from core._jobs_warmup import WARM_UP_MAX_EXAMPLES, warm_up_features, warm_up_running

__all__ = [
    "ACTIVE_STATUSES", "CANCELLED", "COMPLETED", "FAILED", "FINISHED_STATUSES", "INTERRUPTED", "JOBS",
    "KEEP_FINISHED_JOBS", "MAX_STEP_POINTS", "QUEUED", "RESUMABLE_STATUSES", "RUNNING", "STOPPED",
    "WARM_UP_MAX_EXAMPLES", "WORKER_POLL_SECONDS", "FitFunction", "JobSnapshot", "TrainingJob", "all_jobs",
    "can_resume", "fair_order", "get", "latest", "max_running_jobs", "queued_count", "recover", "recover_once",
    "resume", "running_count", "warm_up_features", "warm_up_running",
]
