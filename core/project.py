"""Projects that travel: one file with the data (or its manifest), the settings, every run and the chosen model.

`save_project` writes a zip that `open_project` reads back, here or on another machine, offline, into a fresh
workspace and for another browser: the same data set, backbone, freezing and accuracy protocol, the same runs
with their metrics in the run store, and models that give the same predictions. The file is as safe to open as
an upload: only JSON and safetensors are read (nothing that can run code when loaded), every entry name and size
is checked before anything is written (`core._zipsafe`), and any entry the format does not name is refused.

The format is declared once, in `CONTRACT`: each file, who writes it and who reads it. Readers read what the
writer wrote, nothing else. Run folders keep their run id unless this workspace already has that id; imported
runs get the new data set's fingerprint (file paths differ between machines) and the opening workspace
(`core.workspaces`) as owner, in that workspace's runs folder. Opening the same data and runs again in the same
workspace (the same file, or a later save with more runs) reuses what the first opening brought in.

This module is the public face of the project modules below it and re-exports what they offer:
`core._project_format` (the contract, the error, the limits), `core._project_writer` (`save_project`),
`core._project_reader` (`open_project`) and `core._project_checks` (what an untrusted file is checked for). It keeps
what the session does with an opened project: take it over (`apply_to_state`) and bring it back after a refresh
(`last_opened`).
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from core._project_format import (
    CONTRACT,
    FORMAT,
    FORMAT_VERSION,
    LEXICAL_FILE,
    MODEL_FILE,
    PROJECT_SUFFIX,
    OpenedProject,
    ProjectError,
    ProjectFile,
    max_carried_data_bytes,
    max_project_bytes,
    read_json_file,
)
from core._project_reader import open_project
from core._project_writer import project_file_name, project_runs, save_project
from core._run_folder import RUN_INFO
from core.dataset import Dataset
from core.paths import workspace_subdir

if TYPE_CHECKING:
    from core.session import StudioState

log = logging.getLogger(__name__)


def apply_to_state(state: StudioState, opened: OpenedProject, remember: bool = True) -> None:
    """The session takes the project over: its data set and report, backbone, freezing, protocol and chosen model.
    The project's runs join the session's own in the Train page's table and the Test page's picker (none is
    dropped); a job this session runs is left alone. With `remember`, this browser's latest opened project is
    remembered, so that a refresh brings it back (`last_opened`)."""
    state.set_dataset(opened.dataset, opened.report)
    state.backbone_name = opened.backbone_name
    state.frozen_groups = opened.frozen_groups
    state.runs = list(dict.fromkeys([*state.runs, *opened.testable]))
    state.run_dir = opened.chosen_run
    started = state.scratch.get("train_run_dirs", [])
    state.scratch["train_run_dirs"] = list(dict.fromkeys([*started, *opened.run_dirs]))
    state.scratch["protocol"] = opened.protocol
    state.scratch["project_train_config"] = dict(opened.train_config)
    if remember and state.owner is not None:
        _remember_opened(state.owner, opened)


def _opened_path(owner: str) -> Path | None:
    """Where the latest project a browser opened is remembered; None for an id that is not a plain name."""
    if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", owner):
        return None
    return workspace_subdir("projects") / "opened" / f"{owner}.json"


def _remember_opened(owner: str, opened: OpenedProject) -> None:
    path = _opened_path(owner)
    if path is None:
        return
    dataset = opened.dataset
    record = {
        "opened_at": time.time(),
        "dataset": {"name": dataset.name, "modality": dataset.modality, "classes": list(dataset.classes),
                    "root": dataset.root, "split_given": dataset.split_given,
                    "table": dataset.table.astype(str).to_dict(orient="list")},
        "report": opened.report, "backbone_name": opened.backbone_name, "frozen_groups": opened.frozen_groups,
        "protocol": opened.protocol, "train_config": opened.train_config, "run_dirs": opened.run_dirs,
        "testable": opened.testable, "chosen_run": opened.chosen_run,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(record, default=str), encoding="utf-8")
    temporary.replace(path)


def last_opened(owner: str) -> tuple[float, OpenedProject] | None:
    """The latest project this browser opened, and when (seconds since the epoch); None when there is none or its
    images or clips are gone. Only this workspace's own record is read (`apply_to_state` wrote it)."""
    path = _opened_path(owner)
    record = read_json_file(path) if path is not None else {}
    if not record:
        return None
    try:
        described = record["dataset"]
        dataset = Dataset(name=described["name"], modality=described["modality"],
                          table=pd.DataFrame(described["table"]), classes=list(described["classes"]),
                          root=described["root"], split_given=bool(described["split_given"]))
        if dataset.modality != "text" and not all(Path(item).is_file() for item in dataset.table["item"]):
            return None
        exists = [run_dir for run_dir in record["run_dirs"] if (Path(run_dir) / RUN_INFO).is_file()]
        opened = OpenedProject(
            dataset=dataset, report=record["report"], backbone_name=record["backbone_name"],
            frozen_groups=record["frozen_groups"], protocol=record["protocol"], train_config=record["train_config"],
            run_dirs=exists, testable=[run_dir for run_dir in record["testable"] if run_dir in exists],
            chosen_run=record["chosen_run"] if record["chosen_run"] in exists else None,
        )
        return float(record["opened_at"]), opened
    except (KeyError, TypeError, ValueError) as error:
        log.warning("Could not read the project %s opened last (%s)", owner, error)
        return None


# -------------------------------------------------------------------------------------------------------- CLI


def main_project(args: argparse.Namespace) -> int:
    """`python -m core project open FILE`: bring a project's data set and runs into this workspace."""
    try:
        opened = open_project(args.file, owner=args.owner, name=Path(args.file).name)
    except ProjectError as error:
        sys.stderr.write(f"error: {error}\n")
        return 2
    lines = [f"Opened {opened.dataset.name}: {len(opened.dataset.table)} examples, {opened.dataset.num_classes} "
             f"classes; {len(opened.run_dirs)} run(s)."]
    lines += [f"  run {Path(run_dir).name}: {run_dir}" for run_dir in opened.run_dirs]
    if opened.chosen_run:
        lines.append(f"Chosen model: {opened.chosen_run}")
    lines += opened.notes
    sys.stdout.write("\n".join(lines) + "\n")
    return 0


__all__ = [
    "CONTRACT",
    "FORMAT",
    "FORMAT_VERSION",
    "LEXICAL_FILE",
    "MODEL_FILE",
    "PROJECT_SUFFIX",
    "OpenedProject",
    "ProjectError",
    "ProjectFile",
    "apply_to_state",
    "last_opened",
    "main_project",
    "max_carried_data_bytes",
    "max_project_bytes",
    "open_project",
    "project_file_name",
    "project_runs",
    "save_project",
]
