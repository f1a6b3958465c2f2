"""Training in a worker process of its own: a crash, a native error or running out of memory ends one run, not the
server; Cancel can kill a run at once; a restarted server finds its runs again.

The server (`core.jobs`) and a worker talk only through files in the run folder, so that either side may restart:
`job.json` (the server before the worker starts, or CLI train; read by the worker and `resume_run`), `events.jsonl`
(the worker, one engine event a line; read by the server's job), `stop` (the server, when Stop is pressed; read by
the worker once per batch) and `worker.log` (the worker's output, for people). `core._run_folder` declares them
with the rest of the run folder.

`job.json` holds what a run needs to start or resume anywhere: the data set (its rows, so a resumed run trains on
exactly the same examples), the settings, the owner and the worker's pid; its contract is `core._job_file` (below
the engine, so `python -m core train` writes it too), re-exported here. Each line of `events.jsonl` is
`{"event": name, "data": {...}}` with the engine's callback events (`on_train_begin`, `on_step_end`,
`on_epoch_end`, `on_train_end`; `data` is the typed event's `to_dict()`, `core.contracts`) and one last line,
`result` (the `FitResult`) or `error` (`message`).

A worker is `python -m core.workers RUN_DIR [--resume]` in a new session (its own process group), started with
`subprocess` rather than `multiprocessing`: a `multiprocessing` child is joined or terminated when its parent
exits, and a worker must outlive a server restart.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from core._job_file import DEFAULT_FIT as DEFAULT_FIT  # job.json's contract sits below the engine and the workers
from core._job_file import JOB_FILE as JOB_FILE
from core._job_file import JobFile as JobFile
from core._job_file import read_job_file as read_job_file
from core._job_file import this_host as this_host
from core._job_file import write_job_file as write_job_file
from core._run_folder import CHECKPOINT_STATE, EVENTS, STOP, WORKER_LOG, write_metrics
from core.cpus import available_threads as available_threads  # `name as name`: re-exported
from core.store import pid_alive

log = logging.getLogger(__name__)

EVENTS_FILE, STOP_FILE, LOG_FILE = EVENTS, STOP, WORKER_LOG  # the run folder's contract: core._run_folder
#: How the server tells a worker how many CPU threads it may use.
THREADS_ENV = "TRANSFER_STUDIO_WORKER_THREADS"
#: How much lower than the server a worker's CPU priority is (POSIX nice value; 0 keeps them equal).
NICE_ENV = "TRANSFER_STUDIO_WORKER_NICE"
#: A worker yields the CPU to the server: in a class of 10 browsers on 2 cores at equal priority a click's page took
#: 1.4 s median and 27 s at the 95th percentile while runs trained, against 1.3 s alone (`core.bench_browser`).
DEFAULT_NICE = 10
_REPO_ROOT = Path(__file__).resolve().parent.parent


def default_worker_count() -> int:
    """Runs that may train at once when nobody says: one per CUDA GPU, else half the CPU cores (at most 8).

    Half the cores, because each CPU run uses several threads for its own matrix work; the worker divides the
    cores between the runs (`worker_threads`).
    """
    return len(gpu_ids()) or max(1, min(8, available_threads() // 2))


def gpu_ids() -> list[str]:
    """The CUDA devices this server may hand to workers, as `CUDA_VISIBLE_DEVICES` names them; [] without CUDA.

    Only asked where torch is loaded already (the server imports it for the pages), so the answer is cheap. Each
    worker is given one of these (`Worker.start(gpu=...)`), so N runs on N GPUs do not all land on the first.
    Written against the documented CUDA_VISIBLE_DEVICES behaviour; not run on a GPU machine here.
    """
    if "torch" not in sys.modules:
        return []
    import torch

    if not torch.cuda.is_available():
        return []
    count = torch.cuda.device_count()
    visible = [name.strip() for name in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if name.strip()]
    return visible[:count] if visible else [str(index) for index in range(count)]


def worker_threads(concurrent_runs: int) -> int:
    """CPU threads one worker uses, so that `concurrent_runs` workers share the cores instead of fighting."""
    return max(1, available_threads() // max(1, concurrent_runs))


# --------------------------------------------------------------------------------------------- checkpoints
def checkpoint_epoch(run_dir: str | Path) -> int | None:
    """The epoch of the run's last checkpoint (where a resume continues after), or None when it has none."""
    try:
        return int(json.loads((Path(run_dir) / CHECKPOINT_STATE).read_text())["epoch"])
    except (OSError, ValueError):
        return None


def checkpoint_history(run_dir: str | Path) -> list[dict[str, Any]]:
    """The per-epoch metrics up to the last checkpoint: what a resumed run starts from."""
    try:
        return list(json.loads((Path(run_dir) / CHECKPOINT_STATE).read_text())["history"])
    except (OSError, ValueError):
        return []


# --------------------------------------------------------------------------------------------- stop and events
def request_stop(run_dir: str | Path) -> None:
    """Ask the run's worker to stop after its current batch."""
    (Path(run_dir) / STOP_FILE).touch()


class StopFile:
    """The worker's stop flag (duck-types the `threading.Event` the engine reads): set when the `stop` file exists,
    or when the run folder itself is gone (deleted with its workspace: nobody is left to read what the run writes)."""

    def __init__(self, run_dir: str | Path) -> None:
        self.path = Path(run_dir) / STOP_FILE

    def is_set(self) -> bool:
        return self.path.exists() or not self.path.parent.is_dir()

    def set(self) -> None:
        self.path.touch()


class EventWriter:
    """The worker's engine callback: every event a line of `events.jsonl`, flushed, so the server sees it at once."""

    def __init__(self, run_dir: str | Path) -> None:
        self._file = open(Path(run_dir) / EVENTS_FILE, "a", encoding="utf-8")  # noqa: SIM115 - open for the run

    def write(self, event: str, data: Any) -> None:
        self._file.write(json.dumps({"event": event, "data": _plain(data)}, default=str) + "\n")
        self._file.flush()

    def on_train_begin(self, info: Any) -> None:
        self.write("on_train_begin", info)

    def on_step_end(self, metrics: Any) -> None:
        self.write("on_step_end", metrics)

    def on_epoch_end(self, metrics: Any) -> None:
        self.write("on_epoch_end", metrics)

    def on_train_end(self, result: Any) -> None:
        self.write("on_train_end", result)

    def close(self) -> None:
        self._file.close()


class EventReader:
    """The server's side of `events.jsonl`: each call returns the complete lines written since the last one."""

    def __init__(self, run_dir: str | Path) -> None:
        self.path = Path(run_dir) / EVENTS_FILE
        self.offset = 0

    def read_new(self) -> list[tuple[str, dict[str, Any]]]:
        try:
            with open(self.path, "rb") as handle:
                handle.seek(self.offset)
                chunk = handle.read()
        except FileNotFoundError:
            return []
        end = chunk.rfind(b"\n")
        if end < 0:
            return []  # half a line: the worker is still writing it
        self.offset += end + 1
        events = []
        for line in chunk[: end + 1].splitlines():
            try:
                entry = json.loads(line)
                events.append((str(entry["event"]), dict(entry.get("data") or {})))
            except (ValueError, KeyError, TypeError):
                log.warning("Skipping an unreadable line in %s", self.path)
        return events


def _plain(value: Any) -> dict[str, Any]:
    """An event's wire dict (`core.contracts`' `to_dict()`), another dataclass's or dict's fields, or {"value": ...}."""
    if callable(getattr(value, "to_dict", None)):
        return value.to_dict()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    return dict(value) if isinstance(value, dict) else {"value": value}


# ----------------------------------------------------------------------------------------------- the process
class Worker:
    """A running worker process, started here (`start`) or found again after a server restart (`adopt`)."""

    def __init__(self, pid: int, process: subprocess.Popen | None = None) -> None:
        self.pid = pid
        self._process = process

    @classmethod
    def start(cls, run_dir: str | Path, resume: bool = False, threads: int | None = None,
              gpu: str | None = None) -> Worker:
        """Start `python -m core.workers RUN_DIR` in a new session, so Cancel can kill it and its children at once.

        Args:
            run_dir: the run folder; its `job.json` must be written.
            resume: continue from the last epoch checkpoint.
            threads: CPU threads the worker's torch may use (`worker_threads`); default torch's own choice.
            gpu: the one CUDA device the worker sees (a `gpu_ids()` name); default all the server sees.
        """
        run_dir = Path(run_dir)
        env = dict(os.environ)
        if threads:
            env[THREADS_ENV] = str(threads)
        if gpu is not None:
            env["CUDA_VISIBLE_DEVICES"] = gpu
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(_REPO_ROOT), env.get("PYTHONPATH", "")) if p)
        command = [sys.executable, "-m", "core.workers", str(run_dir)] + (["--resume"] if resume else [])
        with open(run_dir / LOG_FILE, "ab") as output:
            process = subprocess.Popen(  # noqa: S603 - our own interpreter and module, no shell
                command, stdout=output, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                cwd=str(_REPO_ROOT), start_new_session=True,
            )
        return cls(process.pid, process)

    @classmethod
    def adopt(cls, pid: int) -> Worker:
        """A worker another (earlier) server started; it is not our child, so only its liveness can be watched."""
        return cls(pid)

    def exit_code(self) -> int | None:
        """None while it runs; its exit status once ended (negative: the signal that ended it; -999: unknown)."""
        if self._process is not None:
            return self._process.poll()
        return None if pid_alive(self.pid) else -999

    def kill(self) -> None:
        """End the worker and every process it started (data loaders, ...) at once: SIGKILL to its process group."""
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            return
        except PermissionError:
            os.kill(self.pid, signal.SIGKILL)
        if self._process is not None:
            self._process.wait(10)


def exit_message(code: int) -> str:
    """What to tell the user about a worker that ended without reporting a result or an error."""
    if code == -999:
        return "the training process ended unexpectedly (it was gone when checked)"
    if code < 0:
        return f"the training process ended unexpectedly (signal {-code})"
    return f"the training process ended unexpectedly (exit status {code})"


# -------------------------------------------------------------------------------------------- the worker side
def _import(target: str) -> Callable[..., Any]:
    module_name, _, name = target.partition(":")
    return getattr(importlib.import_module(module_name), name)


class _RecordOwner:
    """Writes the run's owner into its store record once the engine has made it, so the owner's Resume list finds
    the run even when the server that started it is gone."""

    def __init__(self, run_dir: Path, owner: str | None) -> None:
        self.run_dir, self.owner = run_dir, owner

    def on_train_begin(self, info: Any) -> None:
        if self.owner is None:
            return
        from core.store import RunStore

        store = RunStore()
        try:
            store.set_owner(self.run_dir, self.owner)
        finally:
            store.close()


def lower_priority() -> int:
    """Make this process yield the CPU to the server (`NICE_ENV`, default `DEFAULT_NICE`), so pages stay quick
    while runs train on the same cores; the new nice value (unchanged where the system has none, e.g. Windows)."""
    if not hasattr(os, "nice"):
        return 0
    value = os.environ.get(NICE_ENV, "").strip()
    try:
        step = int(value) if value else DEFAULT_NICE
    except ValueError:
        log.warning("%s=%r is not a whole number; the worker keeps its priority.", NICE_ENV, value)
        step = 0
    return os.nice(max(step, 0))


def run_worker(run_dir: str | Path, resume: bool = False) -> int:
    """The worker's body: train the run `job.json` describes, reporting through `events.jsonl`; the exit status."""
    run_dir = Path(run_dir)
    job = read_job_file(run_dir)
    threads = os.environ.get(THREADS_ENV)
    if threads:
        import torch

        torch.set_num_threads(int(threads))
    lower_priority()
    events = EventWriter(run_dir)
    try:
        fit = _import(job.fit)
        options = {"resume": True} if resume else {}
        callbacks = (_RecordOwner(run_dir, job.owner), events)
        result = fit(job.dataset, job.train_config(), run_dir, callbacks=callbacks, stop_event=StopFile(run_dir),
                     **options)
    except Exception as error:  # noqa: BLE001 - whatever ends the run reaches the user as its message
        log.exception("Run %s failed", run_dir.name)
        events.write("error", {"message": str(error).strip() or type(error).__name__})
        return 1
    else:
        events.write("result", result)
        return 0
    finally:
        events.close()


def resume_run(run_dir: str | Path, fit: Callable[..., Any] | None = None, callbacks: tuple = ()) -> Any:
    """Continue a stopped, failed or interrupted run from its last epoch checkpoint, in this process (the CLI).

    Args:
        run_dir: the run folder, with its `job.json` and its last epoch checkpoint.
        fit: the engine (default: the one `job.json` names, normally `core.training.fit`).
        callbacks: engine listeners (progress logging).
    """
    job = read_job_file(run_dir)
    if checkpoint_epoch(run_dir) is None:
        raise FileNotFoundError(
            f"Cannot resume {run_dir}: it has no epoch checkpoint (it ended before its first epoch). Train it anew."
        )
    (Path(run_dir) / STOP_FILE).unlink(missing_ok=True)
    engine = fit or _import(job.fit)
    return engine(job.dataset, job.train_config(), Path(run_dir), callbacks=callbacks, resume=True)


def main_resume(args: argparse.Namespace) -> int:
    """`python -m core train --resume RUN_DIR`: finish a run from its last epoch checkpoint; write metrics.json."""
    from core.training import _LogProgress

    try:
        result = resume_run(args.resume, callbacks=(_LogProgress(),))
    except (ValueError, FileNotFoundError, FloatingPointError) as error:
        log.error("%s", error)
        return 2
    path = write_metrics(args.resume, _plain(result))
    log.info("Resumed run %s: %s, best epoch %s, test accuracy %s -> %s", result.run_id, result.status,
             result.best_epoch, result.test_accuracy, path)
    return 0 if result.status == "completed" else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m core.workers", description="Train one run as a worker process.")
    parser.add_argument("run_dir")
    parser.add_argument("--resume", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return run_worker(args.run_dir, resume=args.resume)


if __name__ == "__main__":
    sys.exit(main())
