"""Opening a project: check the whole file first (`core._project_checks`), then bring its data set and runs into
this workspace. A file that fails any check leaves nothing behind; nothing the workspace already holds is changed.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
import shutil
import uuid
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path, PurePosixPath
from typing import Any

import pandas as pd

from core._project_checks import (
    check_clips,
    check_entries,
    check_format,
    check_images,
    check_safetensors,
    existing_paths,
    read_json,
    zip_limits,
)
from core._project_format import (
    DATA_FILES,
    FINISHED,
    LEXICAL_FILE,
    MB,
    MODEL_FILE,
    RUN_ID,
    STORE_RECORD_FILE,
    OpenedProject,
    ProjectError,
    max_project_bytes,
)
from core._run_folder import EXAMPLES, RUN_INFO
from core._zipsafe import UnsafeArchive, extract_archive
from core.dataset import SPLITS, Dataset
from core.paths import workspace_subdir
from core.store import RunNotFound, RunStore, new_run_id

log = logging.getLogger(__name__)


def open_project(
    source: str | os.PathLike[str] | bytes, owner: str | None, name: str = "the project file"
) -> OpenedProject:
    """Check a project file, then bring its data set and runs into this workspace for `owner`.

    Nothing the workspace already holds is changed: the data set gets its own folder, runs whose id is taken get
    a new one. A file that fails any check leaves nothing behind.

    Raises:
        ProjectError: not a project, a damaged or unsafe file, an entry the format does not name (a pickle, say),
            or a part that does not fit the rest; the message names it.
    """
    payload = Path(source).read_bytes() if isinstance(source, (str, os.PathLike)) else bytes(source)
    if len(payload) > max_project_bytes():
        raise ProjectError(f"`{name}` is {len(payload) / MB:,.0f} MB, more than the {max_project_bytes() / MB:,.0f} "
                           "MB limit for project files (env TRANSFER_STUDIO_MAX_PROJECT_MB).")
    staging = workspace_subdir("projects", owner) / f"opening-{uuid.uuid4().hex}"
    try:
        check_entries(payload, name)
        try:
            extract_archive(io.BytesIO(payload), staging, name, len(payload), zip_limits())
        except UnsafeArchive as error:
            raise ProjectError(str(error)) from error
        manifest = read_json(staging, "project.json", name)
        check_format(manifest, name)
        # every check first, so that a refused file leaves nothing behind ...
        dataset, report, item_of, place_files = _read_dataset(staging, manifest, name)
        opened = _settings(manifest, dataset, report)
        runs = _read_runs(staging, manifest, dataset, name)
        # ... then the data set's files and the runs move in
        place_files()
        for run in runs:
            run_dir, testable, note = _import_run(staging, run, dataset, item_of, owner)
            opened.run_dirs.append(run_dir)
            if testable:
                opened.testable.append(run_dir)
            if run.chosen and testable:
                opened.chosen_run = run_dir
            if note:
                opened.notes.append(note)
        if opened.chosen_run is None and opened.testable:
            opened.chosen_run = opened.testable[-1]
    except zipfile.BadZipFile as error:
        raise ProjectError(f"`{name}` is damaged: it is a zip, but it cannot be read ({error}). Save the project "
                           "again and re-send it.") from error
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.info("Opened project %s: %s with %d run(s)", name, dataset.name, len(opened.run_dirs))
    return opened


def _read_dataset(
    staging: Path, manifest: dict[str, Any], name: str
) -> tuple[Dataset, dict[str, Any], dict[str, str], Callable[[], None]]:
    """The data set, its report, a map from each example's name in the project to its item here, and the function
    that moves the images or clips to `workspace/datasets/project-<hash of the manifest and every file's content>/`
    (so the same data, from whichever project file, lands in one folder and keeps one fingerprint)."""
    described = manifest.get("dataset")
    rows = read_json(staging, "data/manifest.json", name)
    report = read_json(staging, "data/report.json", name)
    if not isinstance(described, dict) or described.get("modality") not in ("image", "audio", "text"):
        raise ProjectError(f"`{name}`: project.json does not describe an image, sound or text data set; it is "
                           "damaged.")
    classes = described.get("classes")
    if not isinstance(classes, list) or len(classes) < 2 or not all(isinstance(c, str) for c in classes):
        raise ProjectError(f"`{name}`: project.json's class list is missing or not a list of names; it is damaged.")
    if not isinstance(rows, list) or not rows or not all(isinstance(row, dict) for row in rows):
        raise ProjectError(f"`{name}`: data/manifest.json holds no examples; the file is damaged.")
    modality = described["modality"]
    key = "text" if modality == "text" else ("file" if described.get("files_included") else "path")
    bad = [i for i, row in enumerate(rows) if not isinstance(row.get(key), str) or row.get("label") not in classes
           or row.get("split") not in SPLITS]
    if bad:
        raise ProjectError(f"`{name}`: {len(bad)} row(s) of data/manifest.json lack a {key}, a known class or a "
                           f"split (train/val/test), e.g. row {bad[0] + 1}; the file is damaged.")
    names = [str(row[key]) for row in rows]
    kind = "clips" if modality == "audio" else "images"
    root = None
    place_files: Callable[[], None] = lambda: None  # noqa: E731 - texts and manifest-only data have no files
    if key == "file":
        foreign = [n for n in names if not re.fullmatch(DATA_FILES[modality].pattern, n)]
        if foreign:
            raise ProjectError(f"`{name}` was refused: its manifest names {len(foreign)} file(s) that are not "
                               f"{kind} inside the project (`{DATA_FILES[modality].name}`), e.g. `{foreign[0]}`. "
                               "Save the project again from Transfer Studio.")
        missing = [n for n in names if not (staging / n).is_file()]
        if missing:
            raise ProjectError(f"`{name}` lacks {len(missing)} of the {kind} its manifest lists, e.g. "
                               f"`{missing[0]}`; the file is incomplete.")
        content = hashlib.sha256((staging / "data" / "manifest.json").read_bytes())
        check_files = check_clips if modality == "audio" else check_images
        for file_digest in check_files([staging / n for n in names], name):
            content.update(file_digest.encode())
        root = workspace_subdir("datasets") / f"project-{content.hexdigest()[:24]}"
        items = [str(root / PurePosixPath(n).name) for n in names]
        place_files = partial(_place_files, staging / "data" / "files", root)
    elif key == "path":
        items = existing_paths(names, name, kind)
    else:
        items = names
    table = pd.DataFrame({"item": items, "label": [row["label"] for row in rows],
                          "split": [row["split"] for row in rows]})
    if any("source" in row for row in rows):
        table["source"] = [str(row.get("source", "")) for row in rows]
    dataset = Dataset(name=str(described.get("name") or "Project data"), modality=modality, table=table,
                      classes=list(classes), root=str(root) if root else None,
                      split_given=bool(described.get("split_given")))
    report = report if isinstance(report, dict) and isinstance(report.get("info"), dict) else {}
    report = {"ok": True, "errors": [], "warnings": list(report.get("warnings") or []),
              "info": {**(report.get("info") or {}), "source": f"project {name}"}}
    return dataset, report, dict(zip(names, items, strict=True)), place_files


def _place_files(files: Path, root: Path) -> None:
    """Move the project's images or clips into their data set folder, unless the same project was opened before."""
    if root.exists():
        return
    try:
        shutil.move(files, root)
    except OSError:
        if not root.exists():  # another session opening the same project at once is fine
            raise


def _settings(manifest: dict[str, Any], dataset: Dataset, report: dict[str, Any]) -> OpenedProject:
    settings = manifest.get("settings") if isinstance(manifest.get("settings"), dict) else {}
    backbone = settings.get("backbone_name")
    frozen = settings.get("frozen_groups")
    protocol = settings.get("protocol")
    config = settings.get("train_config")
    return OpenedProject(
        dataset=dataset, report=report,
        backbone_name=backbone if isinstance(backbone, str) and backbone else None,
        frozen_groups=frozen if isinstance(frozen, int) and not isinstance(frozen, bool) and frozen >= 0 else None,
        protocol=protocol if protocol in ("auto", "cross-validation", "test split") else "auto",
        train_config=config if isinstance(config, dict) else {},
    )


@dataclass
class _Run:
    """One run of the project, checked and read from the staging folder."""

    folder: str
    info: dict[str, Any]
    record: dict[str, Any]
    examples: dict[str, Any] | None
    has_model: bool
    chosen: bool


def _read_runs(staging: Path, manifest: dict[str, Any], dataset: Dataset, name: str) -> list[_Run]:
    """Every run project.json lists, checked: its files are records, its classes are the data set's, its weights
    are safetensors; and no run folder is in the file that project.json does not list."""
    entries = manifest.get("runs")
    if not isinstance(entries, list) or not all(isinstance(entry, dict) for entry in entries):
        raise ProjectError(f"`{name}`: project.json's `runs` is not a list of runs; the file is damaged.")
    listed = {str(entry.get("folder")) for entry in entries}
    present = {f"runs/{path.name}" for path in (staging / "runs").iterdir()} if (staging / "runs").is_dir() else set()
    if present - listed:
        raise ProjectError(f"`{name}`: the run folder `{sorted(present - listed)[0]}` is not listed in "
                           "project.json; the file was changed after it was saved.")
    runs = []
    for entry in entries:
        folder = str(entry.get("folder", ""))
        if not re.fullmatch(rf"runs/{RUN_ID}", folder) or not (staging / folder / RUN_INFO).is_file():
            raise ProjectError(f"`{name}`: the run `{folder}` that project.json lists is not in the file; it is "
                               "damaged.")
        info = read_json(staging, f"{folder}/{RUN_INFO}", name)
        record = read_json(staging, f"{folder}/{STORE_RECORD_FILE}", name)
        if not isinstance(info, dict) or not isinstance(record, dict):
            raise ProjectError(f"`{name}`: `{folder}` holds a {RUN_INFO} or {STORE_RECORD_FILE} that is not a record.")
        if info.get("classes") != dataset.classes:
            raise ProjectError(f"`{name}`: the run `{folder}` was trained on other classes than the project's data.")
        examples = None
        if (staging / folder / EXAMPLES).is_file():
            examples = read_json(staging, f"{folder}/{EXAMPLES}", name)
            if not isinstance(examples, dict) or not isinstance(examples.get("items"), list):
                raise ProjectError(f"`{name}`: `{folder}/{EXAMPLES}` is not a record of examples; it is damaged.")
        has_model = (staging / folder / MODEL_FILE).is_file()
        if has_model:
            check_safetensors(staging / folder / MODEL_FILE, f"{folder}/{MODEL_FILE}", name)
        if (staging / folder / LEXICAL_FILE).is_file():
            check_safetensors(staging / folder / LEXICAL_FILE, f"{folder}/{LEXICAL_FILE}", name)
        runs.append(_Run(folder, info, record, examples, has_model, bool(entry.get("chosen"))))
    return runs


def _import_run(
    staging: Path, run: _Run, dataset: Dataset, item_of: dict[str, str], owner: str | None
) -> tuple[str, bool, str | None]:
    """Bring one checked run into the workspace and the run store; returns (run folder, has a model, a note)."""
    info = dict(run.info)
    original_id = str(info.get("run_id") or PurePosixPath(run.folder).name)
    imported_from = f"{dataset.fingerprint}:{original_id}"  # the same run on the same data is brought in once
    store = RunStore()
    try:
        earlier = _earlier_import(store, owner, dataset.fingerprint, imported_from)
        if earlier is not None:
            return earlier, run.has_model and (Path(earlier) / MODEL_FILE).is_file(), None
        run_id = PurePosixPath(run.folder).name
        runs_root = workspace_subdir("runs", owner)
        while _taken(store, run_id) or (runs_root / run_id).exists():
            run_id = new_run_id()
        target = runs_root / run_id
        target.mkdir(parents=True)
        info.update(run_id=run_id, dataset_fingerprint=dataset.fingerprint, dataset_name=dataset.name,
                    imported_from=imported_from)
        (target / RUN_INFO).write_text(json.dumps(info, indent=2, default=str), encoding="utf-8")
        if run.examples is not None:
            examples = {**run.examples, "dataset_fingerprint": dataset.fingerprint,
                        "items": [item_of.get(str(item), str(item)) for item in run.examples["items"]]}
            (target / EXAMPLES).write_text(json.dumps(examples), encoding="utf-8")
        if run.has_model:
            shutil.move(staging / run.folder / MODEL_FILE, target / MODEL_FILE)
            if (staging / run.folder / LEXICAL_FILE).is_file():
                shutil.move(staging / run.folder / LEXICAL_FILE, target / LEXICAL_FILE)
        _record(store, run_id, target, info, run.record, dataset, owner, imported_from)
    finally:
        store.close()
    renamed = None if run_id == original_id else (
        f"Run {original_id} is {run_id} here: this workspace already had a run with that id.")
    return str(target), run.has_model, renamed


def _taken(store: RunStore, run_id: str) -> bool:
    try:
        store.get_run(run_id)
    except RunNotFound:
        return False
    return True


def _earlier_import(store: RunStore, owner: str | None, fingerprint: str, imported_from: str) -> str | None:
    if owner is None:
        return None
    for record in store.list_runs(owner=owner, dataset_fingerprint=fingerprint):
        if (record.get("summary") or {}).get("imported_from") == imported_from and record.get("run_dir"):
            if Path(record["run_dir"], RUN_INFO).is_file():
                return str(record["run_dir"])
    return None


def _record(
    store: RunStore, run_id: str, target: Path, info: dict[str, Any], record: dict[str, Any], dataset: Dataset,
    owner: str | None, imported_from: str,
) -> None:
    """The run store's record of an imported run: its settings, status, summary and metrics, under `owner`."""
    frozen = info.get("frozen_groups")
    store.create_run(
        run_id=run_id, backbone=str(info.get("backbone", "")), modality=dataset.modality, dataset_name=dataset.name,
        dataset_fingerprint=dataset.fingerprint, frozen_groups=frozen if isinstance(frozen, int) else None,
        config=info.get("config") if isinstance(info.get("config"), dict) else {}, classes=dataset.classes,
        run_dir=target,
    )
    epochs = record.get("epochs") if isinstance(record.get("epochs"), list) else []
    for metrics in epochs:
        if isinstance(metrics, dict) and isinstance(metrics.get("epoch"), int):
            store.log_epoch(run_id, metrics["epoch"], {k: v for k, v in metrics.items() if k != "epoch"})
    steps = record.get("steps") if isinstance(record.get("steps"), list) else []
    store.log_steps(run_id, [(m["step"], m.get("epoch", 0), {k: v for k, v in m.items() if k not in ("step", "epoch")})
                             for m in steps if isinstance(m, dict) and isinstance(m.get("step"), int)
                             and isinstance(m.get("epoch", 0), int)])
    status = record.get("status") if record.get("status") in FINISHED else "failed"
    summary = record.get("summary") if isinstance(record.get("summary"), dict) else {}
    error = record.get("error") if isinstance(record.get("error"), str) else None
    store.finish(run_id, status, error=error, **{**summary, "imported_from": imported_from})
    if owner is not None:
        store.set_owner(target, owner)
