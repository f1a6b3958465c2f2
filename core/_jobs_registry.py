"""The jobs of this server process (`JOBS`), kept in a module-level registry rather than in a browser session, so
that a refreshed or reopened page (a new Streamlit session) finds its job again with `latest()`.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from core._jobs_job import TrainingJob

#: The finished jobs kept in memory (their records stay in the run store and run folders regardless).
KEEP_FINISHED_JOBS = 20
_REGISTRY_LOCK = threading.Lock()
#: Every job of this server process, by job id, oldest first.
JOBS: dict[str, TrainingJob] = {}


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
