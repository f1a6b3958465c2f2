"""The machine-wide queue of `core.jobs`: how many jobs train at once, and the order in which waiting jobs start.

At most `max_running_jobs()` jobs train at the same time; a later one waits as "queued", owners taking turns
(`fair_order`). `_SLOTS` is the one queue of this server process.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from core._jobs_job import TrainingJob

log = logging.getLogger("core.jobs")  # the public module's name: what callers silence or watch (core.bench)


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


def _expected_start(position: int | None) -> float | None:
    """Seconds until a job at `position` starts, where that can be said honestly: the runs ahead of it are all
    training now (position <= running jobs) and each has a time left; the position-th soonest end frees its slot."""
    if position is None:
        return None
    running = _SLOTS.running_jobs()
    if position > len(running) or len(running) < max_running_jobs():
        return None
    left = [job.metrics_log.seconds_left() for job in running]  # not snapshot(): no copy of the step log
    if any(seconds is None for seconds in left):
        return None
    return sorted(left)[position - 1]


def running_count() -> int:
    """How many jobs are training right now (not counting the queued ones)."""
    with _SLOTS.condition:
        return len(_SLOTS.running)


def queued_count() -> int:
    """How many jobs are waiting for a free slot."""
    with _SLOTS.condition:
        return len(_SLOTS.waiting)
