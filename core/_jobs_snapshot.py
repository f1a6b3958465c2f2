"""A job's states and the snapshot a page draws, with the helpers that read an engine's events as plain values.

The lowest of the `core.jobs` modules: it knows no queue, no worker and no registry.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

QUEUED, RUNNING, COMPLETED, STOPPED, FAILED = "queued", "running", "completed", "stopped", "failed"
#: Cancelled: its worker was killed at once (no model kept); interrupted: its worker was gone after a restart.
CANCELLED, INTERRUPTED = "cancelled", "interrupted"
ACTIVE_STATUSES = (QUEUED, RUNNING)
FINISHED_STATUSES = (COMPLETED, STOPPED, FAILED, CANCELLED, INTERRUPTED)
#: Runs that can continue from their last epoch checkpoint (`resume`).
RESUMABLE_STATUSES = (STOPPED, FAILED, CANCELLED, INTERRUPTED)


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


def _whole(value: Any) -> int | None:
    number = _number(value)
    return int(number) if number is not None else None


def _is_plain(value: Any) -> bool:
    return value is None or isinstance(value, (bool, int, float, str, list, tuple, dict))
