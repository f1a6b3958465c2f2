"""Classroom load benchmark: a class of N students on one server, each training the sample with the page's defaults.

`python -m core.bench --classroom N` plays one server (this process: the job registry and its fair queue) and N
students (owners `student-01` ..): each loads the sample digits the way the Data page's "Load sample images" button
does (`core.data.load_sample`) and presses Train with the Train page's defaults (every layer group frozen, the
logistic head), through the jobs API the page calls (`core.jobs.TrainingJob`), so every run trains in a worker
process of its own, `max_running_jobs()` at a time. The first student is eager and presses Train again at once,
before anyone else has clicked: the fair queue must start every other student's first run before that second run.

What a teacher wants to know, measured in a temporary workspace (`TRANSFER_STUDIO_HOME`):
- how long until every student has a finished model, and each student's wait (queue, and click to finished model);
- whether the feature cache was computed once and shared (each run reports whether it reused the cache);
- the peak memory of the server and its workers together (resident set size, sampled);
- failures (must be none), the fair order, and that each student's runs are listed for that student alone.

The baseline, in the same invocation and a fresh workspace: one student alone on the server. Ratios say how the
class compares with it, and with N students each training alone one after another (N times the single run).

This drives the jobs API, not browsers: the page response while others train (the issue's p95 click -> idle) is
not measured here. Nothing here is used by the app.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

#: Seconds between two memory samples of the server and its workers.
SAMPLE_SECONDS = 0.25
#: The longest a class may take before the benchmark gives up on the runs still going (they are cancelled).
CLASS_TIMEOUT_SECONDS = 4 * 3600


def owner_name(index: int) -> str:
    """The owner id of the `index`-th student (0-based): `student-01`, `student-02`, ..."""
    return f"student-{index + 1:02d}"


def load_sample_digits() -> Any:
    """What the Data page's "Load sample images" button loads (same function, default seed and split)."""
    from core.data import load_sample

    dataset, _report = load_sample("images")
    return dataset


def page_defaults(dataset: Any, backbone_name: str | None = None) -> Any:
    """The `TrainConfig` the Train page starts a run with when nobody changes a thing.

    The page's default backbone for the data, every group frozen (the Freezing page's default), its suggested
    settings (`suggested_settings`, which the page and the CLI share) and the head the page preselects (logistic).
    """
    from core.backbones import default_backbone, get_spec
    from core.training import TrainConfig, suggested_settings

    name = backbone_name or default_backbone(dataset.modality)
    groups = int(get_spec(name).num_groups)
    settings = suggested_settings(dataset, groups, groups)
    chosen = {key: settings[key] for key in ("epochs", "batch_size", "lr", "weight_decay", "label_smoothing",
                                             "class_weights", "backbone_lr_factor", "augmentation", "patience")}
    return TrainConfig(backbone=name, frozen_groups=groups, seed=0, device="auto", head="logistic", **chosen)


# ------------------------------------------------------------------------------------------------ memory
def _rss_bytes(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def _descendants(pid: int) -> list[int]:
    """Every process below `pid` (workers and whatever they start), from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(parent, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


class MemorySampler:
    """Samples the resident memory of the server (this process, or `pid`) and of every process it started (workers).

    psutil where it is installed (it comes with Accelerate), else /proc. Peaks are of the sums at one moment.
    """

    def __init__(self, interval: float = SAMPLE_SECONDS, pid: int | None = None) -> None:
        self.interval = interval
        self.pid = pid if pid is not None else os.getpid()  # the server: this process, or one started elsewhere
        self.peak_server = self.peak_workers = self.peak_total = self.peak_one_worker = 0
        self.peak_workers_at_once = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="memory-sampler", daemon=True)

    def _sample(self) -> tuple[int, list[int]]:
        try:
            import psutil
        except ImportError:
            return _rss_bytes(self.pid), [_rss_bytes(pid) for pid in _descendants(self.pid)]
        me = psutil.Process(self.pid)
        workers = []
        for child in me.children(recursive=True):
            with contextlib.suppress(psutil.Error):
                workers.append(child.memory_info().rss)
        return me.memory_info().rss, workers

    def sample(self) -> None:
        server, workers = self._sample()
        self.peak_server = max(self.peak_server, server)
        self.peak_workers = max(self.peak_workers, sum(workers))
        self.peak_total = max(self.peak_total, server + sum(workers))
        self.peak_one_worker = max([self.peak_one_worker, *workers])
        self.peak_workers_at_once = max(self.peak_workers_at_once, len(workers))

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def __enter__(self) -> MemorySampler:
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()

    def mib(self) -> dict[str, float]:
        return {name: round(getattr(self, f"peak_{name}") / 2**20, 1)
                for name in ("server", "workers", "total", "one_worker")}


# ------------------------------------------------------------------------------------------------ the class
@contextlib.contextmanager
def _workspace(home: str | Path | None) -> Iterator[Path]:
    """A fresh workspace (its own run store and feature cache), the previous one restored afterwards."""
    previous = os.environ.get("TRANSFER_STUDIO_HOME")
    with contextlib.ExitStack() as stack:
        path = Path(home) if home is not None else Path(stack.enter_context(
            tempfile.TemporaryDirectory(prefix="transfer-studio-classroom-")))
        path.mkdir(parents=True, exist_ok=True)
        os.environ["TRANSFER_STUDIO_HOME"] = str(path)
        try:
            yield path
        finally:
            if previous is None:
                os.environ.pop("TRANSFER_STUDIO_HOME", None)
            else:
                os.environ["TRANSFER_STUDIO_HOME"] = previous


def _percentile(values: list[float], fraction: float) -> float | None:
    """The nearest-rank percentile (no interpolation: with 10 students, p95 is the slowest)."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered), math.ceil(fraction * len(ordered))) - 1)]


def _run_row(job: Any, class_started: float, second: bool) -> dict[str, Any]:
    result = job.result
    reused = getattr(result, "cache_reused", None) if result is not None else None
    if reused is None and isinstance(result, dict):
        reused = result.get("cache_reused")
    return {
        "owner": job.owner, "job_id": job.job_id, "second_run": second, "status": job.status, "error": job.error,
        "clicked": job.created_at - class_started,
        "started": (job.started_at - class_started) if job.started_at else None,
        "finished": (job.finished_at - class_started) if job.finished_at else None,
        "queue_seconds": (job.started_at - job.created_at) if job.started_at else None,
        "click_to_model_seconds": (job.finished_at - job.created_at) if job.finished_at else None,
        "cache_reused": reused, "queued_at": job.queued_at, "isolation": job.isolation,
    }


def fair_order_held(rows: list[dict[str, Any]]) -> bool:
    """No student's first run started after another student's second run (the eager student's extra run)."""
    seconds = [row["started"] for row in rows if row["second_run"]]
    firsts = [row["started"] for row in rows if not row["second_run"]]
    if not seconds:
        return True
    if any(value is None for value in firsts):
        return False
    return max(firsts) <= min(value for value in seconds if value is not None)


def _visible_to_owner_only(rows: list[dict[str, Any]]) -> bool:
    """The run store lists each student's runs for that student, and nobody else's."""
    from core.store import RunStore

    store = RunStore()
    try:
        for owner in {row["owner"] for row in rows}:
            listed = {record["run_id"] for record in store.list_runs(owner=owner)}
            if listed != {row["job_id"] for row in rows if row["owner"] == owner}:
                return False
        return True
    finally:
        store.close()


def run_class(
    students: int,
    load_data: Callable[[], Any] = load_sample_digits,
    make_config: Callable[[Any], Any] = page_defaults,
    worker_fit: str | None = None,
    eager_second_run: bool = True,
    home: str | Path | None = None,
    timeout: float = CLASS_TIMEOUT_SECONDS,
) -> dict[str, Any]:
    """One class on one server: every student loads the data and presses Train; wait for every run to end.

    Args:
        students: how many students (distinct owners).
        load_data: what one student's "load the sample" does; called once per student.
        make_config: the settings a student trains with, from the loaded data (default: the Train page's).
        worker_fit: the engine the workers run ('module:function'; tests name a tiny one), default the real one.
        eager_second_run: the first student presses Train again (same settings) before anyone else clicks.
        home: the workspace folder (default: a temporary one, removed afterwards).
        timeout: seconds after which the runs still going are cancelled (and counted as failures).

    Returns:
        The per-run rows and the class's numbers (see `summarise`).
    """
    from core import jobs

    if students < 1:
        raise ValueError(f"A class needs at least one student, not {students}.")
    with _workspace(home) as workspace, MemorySampler() as memory:
        started = time.time()
        submitted: list[tuple[Any, bool]] = []
        for index in range(students):
            dataset = load_data()
            config = make_config(dataset)
            job = jobs.TrainingJob(dataset, config, owner=owner_name(index), worker_fit=worker_fit,
                                   label=f"{config.backbone}, {config.frozen_groups} frozen").start()
            submitted.append((job, False))
            if index == 0 and eager_second_run and students > 1:
                submitted.append((jobs.TrainingJob(dataset, config, owner=owner_name(0), worker_fit=worker_fit,
                                                   label="second run").start(), True))
        deadline = time.monotonic() + timeout
        for job, _ in submitted:
            if not job.join(max(0.0, deadline - time.monotonic())):
                log.error("Run %s of %s did not end in time; cancelling it", job.job_id, job.owner)
                job.cancel()
                job.join(30)
            log.info("%s's run %s: %s after %.0f s", job.owner, job.job_id, job.status, time.time() - started)
        ended = time.time()
        rows = [_run_row(job, started, second) for job, second in submitted]
        visible = _visible_to_owner_only(rows)
        log.info("Class of %d in %s: %.1f s", students, workspace, ended - started)
    return summarise(rows, students, ended - started, memory.mib(), memory.peak_workers_at_once, visible)


def summarise(rows: list[dict[str, Any]], students: int, seconds: float, memory_mib: dict[str, float],
              workers_at_once: int, visible_to_owner_only: bool) -> dict[str, Any]:
    """The class's numbers from its per-run rows."""
    from core.jobs import COMPLETED, max_running_jobs

    firsts = [row for row in rows if not row["second_run"]]
    to_model = [row["click_to_model_seconds"] for row in firsts if row["click_to_model_seconds"] is not None]
    waits = [row["queue_seconds"] for row in firsts if row["queue_seconds"] is not None]
    completed = [row for row in rows if row["status"] == COMPLETED]
    return {
        "students": students, "runs": len(rows), "slots": max_running_jobs(),
        "seconds_until_all_finished": seconds,
        "completed": len(completed), "failures": len(rows) - len(completed),
        "click_to_model_p50": _percentile(to_model, 0.5), "click_to_model_p95": _percentile(to_model, 0.95),
        "click_to_model_max": max(to_model, default=None),
        "queue_p50": statistics.median(waits) if waits else None, "queue_max": max(waits, default=None),
        "cache_computed": sum(1 for row in completed if row["cache_reused"] is False),
        "cache_reused": sum(1 for row in completed if row["cache_reused"] is True),
        "fair_order": fair_order_held(rows), "visible_to_owner_only": visible_to_owner_only,
        "peak_memory_mib": memory_mib, "workers_at_once": workers_at_once,
        "rows": rows,
    }


def run(students: int, worker_fit: str | None = None, load_data: Callable[[], Any] = load_sample_digits,
        make_config: Callable[[Any], Any] = page_defaults) -> dict[str, Any]:
    """The benchmark: one student alone (the baseline), then the class, each in a fresh workspace; with ratios.

    Args:
        students: the size of the class.
        worker_fit, load_data, make_config: as for `run_class` (tests train a tiny model on tiny data).
    """
    started = time.perf_counter()
    alone = run_class(1, load_data, make_config, worker_fit)
    log.info("One student alone: %.1f s", alone["seconds_until_all_finished"])
    whole = run_class(students, load_data, make_config, worker_fit)
    single = alone["seconds_until_all_finished"]
    whole["baseline_one_alone"] = {k: v for k, v in alone.items() if k != "rows"}
    whole["ratios"] = {
        "class_vs_one_alone": whole["seconds_until_all_finished"] / single,
        "class_vs_one_after_another": whole["seconds_until_all_finished"] / (students * single),
        "p50_wait_vs_one_alone": (whole["click_to_model_p50"] or 0.0) / single,
        "peak_memory_vs_one_alone": whole["peak_memory_mib"]["total"] / max(alone["peak_memory_mib"]["total"], 1e-9),
    }
    whole["bench_seconds"] = time.perf_counter() - started
    return whole


def markdown(results: dict[str, Any], machine: dict[str, Any] | None = None) -> str:
    """The README table: the class against one student alone."""
    alone, ratios, memory = results["baseline_one_alone"], results["ratios"], results["peak_memory_mib"]
    n = results["students"]

    def seconds(value: float | None) -> str:
        if value is None:
            return "-"
        return f"{value:.0f} s" if value < 120 else f"{value / 60:.1f} min"

    extra = results["runs"] - n
    again = f" (+{extra} second run)" if extra else ""
    lines = [
        f"| Class of {n}{again}, {results['slots']} run(s) at a time | One student alone | Class | Ratio |",
        "|---|---|---|---|",
        f"| Until every student has a finished model | {seconds(alone['seconds_until_all_finished'])} | "
        f"{seconds(results['seconds_until_all_finished'])} | {ratios['class_vs_one_alone']:.1f}x one alone; "
        f"{ratios['class_vs_one_after_another']:.2f}x {n} alone one after another |",
        f"| Click to finished model, p50 / p95 | {seconds(alone['click_to_model_p50'])} | "
        f"{seconds(results['click_to_model_p50'])} / {seconds(results['click_to_model_p95'])} | "
        f"p50 {ratios['p50_wait_vs_one_alone']:.1f}x |",
        f"| Wait in the queue, median / max | {seconds(alone['queue_p50'])} | {seconds(results['queue_p50'])} / "
        f"{seconds(results['queue_max'])} | - |",
        f"| Feature cache: computed / reused | {alone['cache_computed']} / {alone['cache_reused']} | "
        f"{results['cache_computed']} / {results['cache_reused']} | - |",
        f"| Peak memory, server + workers (RSS) | {alone['peak_memory_mib']['total']:.0f} MiB | "
        f"{memory['total']:.0f} MiB (server {memory['server']:.0f}, largest worker {memory['one_worker']:.0f}) | "
        f"{ratios['peak_memory_vs_one_alone']:.2f}x |",
        f"| Runs finished / failed | {alone['completed']} / {alone['failures']} | {results['completed']} / "
        f"{results['failures']} | - |",
        f"| Fair order (no first run after another's second); runs listed for their owner only | - | "
        f"{'yes' if results['fair_order'] else 'NO'}; {'yes' if results['visible_to_owner_only'] else 'NO'} | - |",
    ]
    if machine:
        lines.append(f"\nMachine: {machine.get('cpu')}, {machine.get('cores')} cores, device {machine.get('device')}, "
                     f"torch {machine.get('torch')}, load average at start {machine.get('load_average')}.")
    return "\n".join(lines)
