"""The project file's format, declared once (`CONTRACT`): each file, who writes it and who reads it.

Also the pieces both sides share: the error the user sees (`ProjectError`), the size limits, and what
`open_project` gives back (`OpenedProject`). The writer is `core._project_writer`, the reader
`core._project_reader`, the checks an untrusted file gets `core._project_checks`; `core.project` is their face.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core._run_folder import EXAMPLES, LEXICAL, MODEL, RUN_INFO
from core.dataset import Dataset

FORMAT = "transfer-studio-project"
FORMAT_VERSION = 1
PROJECT_SUFFIX = ".tsproject.zip"
MODEL_FILE = MODEL  # a run's files keep their run folder's names (core._run_folder) inside the project
LEXICAL_FILE = LEXICAL  # a text run's TF-IDF model, part of its delivered model
#: The run store's record of a run (status, summary, epochs, steps): a project's own file, not the run folder's
#: metrics.json of the command line, though it has its name.
STORE_RECORD_FILE = "metrics.json"
MB = 1024**2
_JSON_MAX_BYTES = 256 * MB
_DATA_FILE_MAX_BYTES = 64 * MB
_MODEL_MAX_BYTES = 4 * 1024 * MB
RUN_ID = r"[A-Za-z0-9][A-Za-z0-9._-]{0,79}"
FINISHED = ("completed", "stopped", "failed")


class ProjectError(Exception):
    """A project file that cannot be saved or opened; `str(exc)` says what is wrong and what to do, for the user."""


@dataclass(frozen=True)
class ProjectFile:
    """One kind of file inside a project zip.

    Attributes:
        name: the entry name, or its pattern in words (`runs/<run id>/run.json`).
        pattern: the regular expression every entry of this kind matches in full.
        max_bytes: the most one such entry may unpack to.
        written_by: the function that writes it.
        read_by: the function that reads it.
        holds: what is in it.
    """

    name: str
    pattern: str
    max_bytes: int
    written_by: str
    read_by: str
    holds: str


#: The files a data set carries, by modality: a manifest row's `file` must name an entry of its data set's kind.
DATA_FILES = {
    "image": ProjectFile("data/files/<n>.<image type>", r"data/files/\d{6,9}\.(png|jpe?g|bmp|gif|webp|tiff?)",
                         _DATA_FILE_MAX_BYTES, "save_project", "_read_dataset",
                         "the images of the data set, when it is small enough to carry"),
    "audio": ProjectFile("data/files/<n>.wav", r"data/files/\d{6,9}\.wav", _DATA_FILE_MAX_BYTES, "save_project",
                         "_read_dataset", "the sound clips of the data set (16 kHz mono wav, as loading normalised "
                         "them), when it is small enough to carry"),
}

#: The whole format: an entry matching none of these refuses the file.
CONTRACT = (
    ProjectFile("project.json", r"project\.json", _JSON_MAX_BYTES, "save_project", "open_project",
                "format and version, the data set's description, the settings, the runs and the chosen one"),
    ProjectFile("data/manifest.json", r"data/manifest\.json", _JSON_MAX_BYTES, "save_project", "_read_dataset",
                "one row per example: file (or text), label, split, source"),
    ProjectFile("data/report.json", r"data/report\.json", _JSON_MAX_BYTES, "save_project", "_read_dataset",
                "the data check report the Data page shows"),
    *DATA_FILES.values(),
    ProjectFile(f"runs/<run id>/{RUN_INFO}", rf"runs/{RUN_ID}/{re.escape(RUN_INFO)}", _JSON_MAX_BYTES,
                "core.training", "_import_run / load_trained", "the run's description: backbone, classes, settings, "
                "metrics"),
    ProjectFile(f"runs/<run id>/{STORE_RECORD_FILE}", rf"runs/{RUN_ID}/{re.escape(STORE_RECORD_FILE)}",
                _JSON_MAX_BYTES, "save_project", "_import_run",
                "the run store's record: status, summary, per-epoch and per-step metrics"),
    ProjectFile(f"runs/<run id>/{EXAMPLES}", rf"runs/{RUN_ID}/{re.escape(EXAMPLES)}", _JSON_MAX_BYTES,
                "core.training", "core.evaluation.recorded_estimate", "the examples the run's estimate rests on"),
    ProjectFile(f"runs/<run id>/{MODEL}", rf"runs/{RUN_ID}/{re.escape(MODEL)}", _MODEL_MAX_BYTES,
                "core.training", "core.training.load_trained", "the trained weights (safetensors only)"),
    ProjectFile(f"runs/<run id>/{LEXICAL}", rf"runs/{RUN_ID}/{re.escape(LEXICAL)}", _MODEL_MAX_BYTES,
                "core.training", "core.ngrams.load", "a text run's TF-IDF model mixed into its probabilities"),
)


def max_project_bytes() -> int:
    """The largest project file opened (default 2000 MB; env `TRANSFER_STUDIO_MAX_PROJECT_MB` changes it)."""
    return int(float(os.environ.get("TRANSFER_STUDIO_MAX_PROJECT_MB", "2000")) * MB)


def max_carried_data_bytes() -> int:
    """Data sets up to this size travel inside the project; larger ones travel as their manifest only
    (default 200 MB; env `TRANSFER_STUDIO_PROJECT_DATA_MB`)."""
    return int(float(os.environ.get("TRANSFER_STUDIO_PROJECT_DATA_MB", "200")) * MB)


@dataclass
class OpenedProject:
    """What `open_project` gives back, for the session to take over.

    Attributes:
        dataset: the data set, with its files in this workspace.
        report: its check report.
        backbone_name: the chosen backbone, or None.
        frozen_groups: the chosen freezing, or None.
        protocol: how accuracy is estimated ("auto", "cross-validation", "test split").
        train_config: the training settings of the chosen run (or the newest one), as a dict.
        run_dirs: every imported run folder, oldest first (failed ones too: the Train page lists them).
        testable: the run folders with a model, oldest first.
        chosen_run: the run folder of the model step 5 tests, or None.
        notes: what the user should know (renamed runs, runs reused from an earlier opening).
    """

    dataset: Dataset
    report: dict[str, Any]
    backbone_name: str | None
    frozen_groups: int | None
    protocol: str
    train_config: dict[str, Any]
    run_dirs: list[str] = field(default_factory=list)
    testable: list[str] = field(default_factory=list)
    chosen_run: str | None = None
    notes: list[str] = field(default_factory=list)


def read_json_file(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}
