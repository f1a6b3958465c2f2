"""The run folder (`workspace/runs/<run id>/`, or `--out` of `python -m core train`), declared once (`CONTRACT`).

Each file's name, who writes it, who reads it, what it holds and when it is there; and the keys of `run.json`,
`metrics.json` and `examples.json` that readers use. Every writer and reader takes the names from here (a test
walks `core/` and `pages/` for any other spelling) and reads only what a writer writes: a file that only some runs
have says so in `when`, and its readers handle its absence for exactly that reason.

This module sits at the bottom (the standard library and `core.contracts` only), below the engine, the workers and
the project format, so each of them can import it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.contracts import TrainEnd

#: The run's record: backbone, classes, settings, status, metrics and estimate.
RUN_INFO = "run.json"
#: The kept weights (best epoch, or the retrained model), what the Test page, export and projects load.
MODEL = "model.safetensors"
#: A text run's TF-IDF model, mixed into the probabilities (also `core.ngrams.FILE`, which must stay standalone).
LEXICAL = "lexical.safetensors"
#: The examples the estimate rests on, with their predicted probabilities.
EXAMPLES = "examples.json"
#: The command line's summary of a finished run.
METRICS = "metrics.json"
#: What a worker or `train --resume` needs to (re)start the run (`core._job_file`).
JOB = "job.json"
#: The worker's engine events, one a line (`core.workers`).
EVENTS = "events.jsonl"
#: Present while a stop is asked for (`core.workers`).
STOP = "stop"
#: The worker's stdout and stderr.
WORKER_LOG = "worker.log"
#: The epoch checkpoints' folder.
CHECKPOINT_DIR = "checkpoint"
#: The last epoch's trainable weights, optimizer state and random generators' states (tensors).
CHECKPOINT_WEIGHTS = f"{CHECKPOINT_DIR}/last.safetensors"
#: The last epoch's counters, history, optimizer settings and random generators' states (the rest).
CHECKPOINT_STATE = f"{CHECKPOINT_DIR}/last.json"
#: The frozen layer groups' weights, written once at the start.
FROZEN_WEIGHTS = f"{CHECKPOINT_DIR}/frozen.safetensors"
#: The best epoch's trainable weights so far.
BEST_WEIGHTS = f"{CHECKPOINT_DIR}/best.safetensors"

#: What a file is written to before it replaces its name at once, so a reader never sees half a file.
TEMPORARY_SUFFIX = ".tmp"

#: When a file is there (`RunFile.when`):
WHEN = {
    "every run": "every run of the engine (`core.training.fit`) that got past its set-up, stopped and failed too",
    "estimate": "a run that finished with an estimate (a test split or cross-validation)",
    "epochs": "the gradient loop, after its first epoch (the logistic head has no epochs to resume)",
    "frozen": "a run with frozen layer groups",
    "lexical": "a text run that mixes in its TF-IDF model",
    "command line": "a run of `python -m core train --out` (or `train --resume`) that finished",
    "job": "a run the server's job or `python -m core train` started",
    "worker": "a run in a worker process (the Train page's real engine)",
    "stop asked": "from Stop until the worker ends (Resume removes it)",
}


@dataclass(frozen=True)
class RunFile:
    """One file of the run folder.

    Attributes:
        name: its path inside the run folder.
        written_by: the functions that write it.
        read_by: the functions that read it.
        holds: what is in it.
        when: when it is there (a `WHEN` key).
        keys: the top-level keys its readers use (JSON records only); the writer writes each of them.
    """

    name: str
    written_by: str
    read_by: str
    holds: str
    when: str
    keys: tuple[str, ...] = ()


#: run.json's keys that readers use: the Test and Train pages, export and its report, projects, baselines, resume.
RUN_INFO_KEYS = (
    "run_id", "backbone", "modality", "classes", "frozen_groups", "num_groups", "feature_taps", "config",
    "dataset_name", "dataset_fingerprint", "status", "error", "metrics", "sentence_tuning", "updated_at",
)
#: metrics.json's keys, as the README shows them: the run's numbers and its estimate (`core.smalldata.estimate`).
METRICS_KEYS = (
    "run_id", "status", "history", "best_epoch", "val_accuracy", "val_loss", "test_accuracy", "cache_mode", "device",
    "precision", "seconds", "protocol", "folds", "n", "accuracy", "accuracy_interval95", "macro_f1",
    "macro_f1_interval95", "calibration_error", "calibration_error_before", "refit_on_all", "small_sample",
    "protocol_reason", "per_class", "temperature",
)
#: examples.json's keys that readers use (`core.evaluation.recorded_estimate`, export, projects).
EXAMPLES_KEYS = ("protocol", "classes", "items", "labels", "where", "probabilities", "dataset_fingerprint")

#: The whole folder: a file not named here is not the run's.
CONTRACT = (
    RunFile(RUN_INFO, "core._train_record.write_run_json (set-up, each epoch, the end); "
            "core._project_reader._import_run (an opened project's run, plus `imported_from`)",
            "core.training.load_trained, core.evaluation.read_run_info / load_model, core._project_writer, "
            "core._train_record._read_run_json (resume), core.project.last_opened, pages/_train_panels",
            "the run's description: backbone, classes, settings, status, per-epoch metrics and estimate",
            "every run", RUN_INFO_KEYS),
    RunFile(MODEL, "core._train_record.save_model (the end); core._project_reader._import_run",
            "core.training.load_trained, core.session, core._project_writer, pages/_train_panels",
            "the trained classifier's weights (safetensors)", "every run"),
    RunFile(LEXICAL, "core._train_record.save_model (core.ngrams.NgramModel.save); core._project_reader._import_run",
            "core.training.load_trained (core.ngrams.load), core._project_writer",
            "the TF-IDF vocabulary, IDF and logistic weights", "lexical"),
    RunFile(EXAMPLES, "core._train_head.record_estimate; core._project_reader._import_run",
            "core.evaluation.recorded_estimate, core.export._run_test_items, core._project_writer.save_project",
            "each example the estimate rests on: item, label, fold or split, calibrated probabilities",
            "estimate", EXAMPLES_KEYS),
    RunFile(METRICS, "core._run_folder.write_metrics (core._train_cli, core.workers.main_resume)",
            "people and scripts (the README shows it)",
            "the run's numbers and its estimate, each with its n and 95 % interval", "command line", METRICS_KEYS),
    RunFile(JOB, "core._job_file.write_job_file (the server's job, core._train_cli)", "core._job_file.read_job_file "
            "(the worker, core.workers.resume_run), core._jobs_recover",
            "the data set's rows, the settings, the owner, the engine and the worker's pid", "job"),
    RunFile(EVENTS, "core.workers.EventWriter", "core.workers.EventReader (the server's job)",
            "one engine event a line, then the result or the error", "worker"),
    RunFile(WORKER_LOG, "core.workers.Worker.start (the worker's output)", "people", "the worker's log", "worker"),
    RunFile(STOP, "core.workers.request_stop", "core.workers.StopFile (the worker, once per batch)",
            "nothing: its presence asks the worker to stop", "stop asked"),
    RunFile(CHECKPOINT_WEIGHTS, "core._train_record.save_checkpoint", "core._train_record._load_checkpoint",
            "the trainable weights, optimizer tensors and random generators' states after the last epoch", "epochs"),
    RunFile(CHECKPOINT_STATE, "core._train_record.save_checkpoint", "core._train_record._load_checkpoint, "
            "core.workers.checkpoint_epoch / checkpoint_history",
            "the loop's counters, the history, the optimizer's settings and the generators' states", "epochs"),
    RunFile(FROZEN_WEIGHTS, "core._train_record.open_checkpoints (set-up)", "core._train_record._load_checkpoint",
            "the frozen layer groups' weights", "frozen"),
    RunFile(BEST_WEIGHTS, "core._train_listeners._Checkpointing.on_evaluate (each better epoch)",
            "core._train_record._load_checkpoint", "the best epoch's trainable weights", "epochs"),
)
NAMES = tuple(run_file.name for run_file in CONTRACT)


def temporary(path: Path) -> Path:
    """Where `path` is written first; `temporary(path).replace(path)` then swaps it in at once."""
    return path.with_name(path.name + TEMPORARY_SUFFIX)


def write_text_at_once(path: Path, text: str) -> None:
    """Write a text file so that a reader sees the old file or the new one, never half of it."""
    written = temporary(path)
    written.write_text(text, encoding="utf-8")
    written.replace(path)


def metrics_record(
    result: TrainEnd | Mapping[str, Any], processes: int | None = None, baseline: dict[str, Any] | None = None
) -> dict[str, Any]:
    """metrics.json's content: the finished run's numbers (`result`: the engine's `TrainEnd`, or its dict as a worker
    reports it) and its estimate; `processes` (a run of several processes counts them) and a sound run's MFCC
    `baseline` when given."""
    summary = result.to_dict() if isinstance(result, TrainEnd) else result
    metrics = {key: summary.get(key) for key in METRICS_KEYS[: METRICS_KEYS.index("seconds")]}
    metrics["seconds"] = round(float(summary.get("seconds") or 0.0), 2)
    if processes is not None:
        metrics["processes"] = processes
    metrics.update(summary.get("estimate") or {})
    if baseline is not None:
        metrics["baseline"] = baseline
    return metrics


def write_metrics(run_dir: str | Path, result: TrainEnd | Mapping[str, Any], processes: int | None = None,
                  baseline: dict[str, Any] | None = None) -> Path:
    """Write metrics.json (`metrics_record`) into the run folder; its path."""
    path = Path(run_dir) / METRICS
    path.write_text(json.dumps(metrics_record(result, processes, baseline), indent=2, default=str))
    return path
