"""`job.json`: what a run needs to start or resume anywhere, written before it trains and read by whoever runs it.

The contract between the server's jobs (`core.jobs`), `python -m core train` (`core._train_cli`) and a worker
process (`core.workers`, which re-exports every name here): the data set (its rows, so a resumed run trains on
exactly the same examples), the settings, the owner, the engine to run and the worker's pid and host. It sits below
both the training engine and the workers, so the command line can write the file the worker reads without
importing the worker, which imports the engine.
"""

from __future__ import annotations

import dataclasses
import json
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from core._run_folder import JOB as JOB_FILE
from core._run_folder import write_text_at_once
from core.dataset import Dataset

#: The engine the worker runs unless a job names another ('module:function'; tests name a tiny-model one).
DEFAULT_FIT = "core.training:fit"


@dataclass
class JobFile:
    """What `job.json` holds: everything a worker needs to start or resume the run."""

    dataset: Dataset
    config: dict[str, Any]
    owner: str | None = None
    label: str = ""
    fit: str = DEFAULT_FIT
    worker_pid: int | None = None
    host: str | None = None
    started_at: float | None = None

    def train_config(self) -> Any:
        from core._train_config import TrainConfig  # the engine's settings: imported when a worker starts

        return TrainConfig.from_dict(self.config)


def write_job_file(run_dir: str | Path, job: JobFile) -> None:
    """Write (or rewrite) `job.json` atomically: a reader never sees half a file."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    dataset = job.dataset
    body = {
        "dataset": {
            "name": dataset.name, "modality": dataset.modality, "classes": list(dataset.classes),
            "root": dataset.root, "split_given": dataset.split_given,
            "rows": [[str(item), str(label), str(split)]
                     for item, label, split in dataset.table[["item", "label", "split"]].itertuples(index=False)],
        },
        **{f.name: getattr(job, f.name) for f in dataclasses.fields(job) if f.name != "dataset"},
    }
    write_text_at_once(run_dir / JOB_FILE, json.dumps(body, default=str))


def read_job_file(run_dir: str | Path) -> JobFile:
    """Read `job.json`; a run folder without one was not started by the Train page or `python -m core train`."""
    path = Path(run_dir) / JOB_FILE
    if not path.exists():
        raise FileNotFoundError(
            f"{run_dir} holds no {JOB_FILE}: it is not a run folder of the Train page or of `python -m core train` "
            "(or was written by a version that recorded no data set to resume on). Train again with the same "
            "settings instead."
        )
    body = json.loads(path.read_text())
    data = body.pop("dataset")
    table = pd.DataFrame(data["rows"], columns=["item", "label", "split"])
    dataset = Dataset(name=data["name"], modality=data["modality"], table=table, classes=list(data["classes"]),
                      root=data.get("root"), split_given=bool(data.get("split_given")))
    known = {f.name for f in dataclasses.fields(JobFile)}
    return JobFile(dataset=dataset, **{k: v for k, v in body.items() if k in known})


def this_host() -> str:
    return socket.gethostname()
