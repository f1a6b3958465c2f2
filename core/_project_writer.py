"""Saving a project: the data set (its texts, images or sound clips, or only their manifest), the settings and the
chosen runs, as one zip in the format `core._project_format.CONTRACT` declares.
"""

from __future__ import annotations

import json
import logging
import os
import re
import zipfile
from collections.abc import Iterable
from pathlib import Path
from typing import IO, Any

from core._project_format import (
    FINISHED,
    FORMAT,
    FORMAT_VERSION,
    LEXICAL_FILE,
    MODEL_FILE,
    PROJECT_SUFFIX,
    RUN_ID,
    STORE_RECORD_FILE,
    ProjectError,
    max_carried_data_bytes,
    read_json_file,
)
from core._run_folder import EXAMPLES, RUN_INFO
from core.dataset import IMAGE_EXTENSIONS, Dataset
from core.paths import check_in_workspace
from core.store import RunStore, new_run_id

log = logging.getLogger(__name__)



def project_runs(dataset: Dataset, owner: str | None, known_run_dirs: Iterable[str] = ()) -> list[str]:
    """The run folders a project of `dataset` carries, oldest first: every finished run of `owner` on this data
    set in the run store, plus the session's own runs (`known_run_dirs`) that were trained on it. A folder of
    another workspace is never carried (`core.paths.check_in_workspace`)."""
    found: list[str] = []
    if owner is not None:
        store = RunStore()
        try:
            records = store.list_runs(owner=owner, dataset_fingerprint=dataset.fingerprint)
        finally:
            store.close()
        found = [str(r["run_dir"]) for r in reversed(records) if r.get("run_dir") and r["status"] in FINISHED]
    for run_dir in known_run_dirs:
        try:
            check_in_workspace(run_dir, owner)
        except PermissionError as refused:
            log.warning("Not carried in the project: %s", refused)
            continue
        run_info = read_json_file(Path(run_dir) / RUN_INFO)
        if run_info and run_info["dataset_fingerprint"] == dataset.fingerprint and run_info["status"] in FINISHED:
            found.append(str(run_dir))
    return [run_dir for run_dir in dict.fromkeys(found) if (Path(run_dir) / RUN_INFO).is_file()]


def save_project(
    destination: str | os.PathLike[str] | IO[bytes],
    dataset: Dataset,
    report: dict[str, Any] | None,
    *,
    backbone_name: str | None,
    frozen_groups: int | None,
    protocol: str = "auto",
    run_dirs: Iterable[str] = (),
    chosen_run: str | None = None,
    carry_data: bool | None = None,
) -> dict[str, Any]:
    """Write a project zip to `destination` (a path or a writable binary file) and return its project.json.

    Args:
        dataset: the loaded data set.
        report: its check report (shown again when the project is opened).
        backbone_name, frozen_groups, protocol: the choices of steps 2, 3 and the Data page.
        run_dirs: the run folders to carry (see `project_runs`); a run's checkpoints stay behind, its model,
            metrics and recorded estimate travel.
        chosen_run: the run folder step 5 tests now.
        carry_data: carry the images or sound clips (True) or only their manifest (False); default: carry them
            when they add up to at most `max_carried_data_bytes()`. Texts always travel in the manifest.
    """
    run_dirs = [str(run_dir) for run_dir in run_dirs]
    rows, files = _manifest(dataset, carry_data)
    # an example's name in the project: its file in the zip, its text, or (manifest only) its path on disk
    item_names = {str(item): next(iter(row.values())) for item, row in zip(dataset.table["item"], rows, strict=True)}
    runs, run_entries = [], {}
    for run_dir in run_dirs:
        folder = Path(run_dir)
        run_info = read_json_file(folder / RUN_INFO)
        if not run_info:
            raise ProjectError(f"The run folder {folder} has no readable {RUN_INFO}, so it cannot be saved.")
        name = _run_name(str(run_info["run_id"]), {r["folder"] for r in runs})
        runs.append({"run_id": str(run_info["run_id"]), "folder": f"runs/{name}",
                     "has_model": (folder / MODEL_FILE).is_file(), "chosen": run_dir == chosen_run})
        run_entries[name] = (folder, run_info)
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "dataset": {
            "name": dataset.name, "modality": dataset.modality, "classes": list(dataset.classes),
            "split_given": bool(dataset.split_given), "examples": len(dataset.table),
            "fingerprint": dataset.fingerprint, "files_included": bool(files) or dataset.modality == "text",
        },
        "settings": {
            "backbone_name": backbone_name, "frozen_groups": frozen_groups, "protocol": protocol,
            "train_config": _chosen_config(run_entries, chosen_run),
        },
        "runs": runs,
    }
    with zipfile.ZipFile(destination, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("project.json", json.dumps(manifest, indent=2))
        archive.writestr("data/manifest.json", json.dumps(rows))
        archive.writestr("data/report.json", json.dumps(report or {}, default=str))
        # images barely compress; 16-bit wav clips shrink by about a quarter
        stored = zipfile.ZIP_STORED if dataset.modality == "image" else zipfile.ZIP_DEFLATED
        for name, path in files:
            archive.write(path, f"data/files/{name}", compress_type=stored)
        for name, (folder, run_info) in run_entries.items():
            archive.writestr(f"runs/{name}/{RUN_INFO}", json.dumps(run_info, indent=2, default=str))
            archive.writestr(f"runs/{name}/{STORE_RECORD_FILE}",
                             json.dumps(_store_record(run_info, folder), default=str))
            examples = read_json_file(folder / EXAMPLES)
            if examples:
                examples["items"] = [item_names.get(str(item), str(item)) for item in examples["items"]]
                archive.writestr(f"runs/{name}/{EXAMPLES}", json.dumps(examples))
            for weights in (MODEL_FILE, LEXICAL_FILE):
                if (folder / MODEL_FILE).is_file() and (folder / weights).is_file():
                    archive.write(folder / weights, f"runs/{name}/{weights}")
    log.info("Saved a project of %s with %d run(s)", dataset.name, len(runs))
    return manifest


def project_file_name(dataset: Dataset) -> str:
    """A file name for the download: the data set's name in safe characters, plus `.tsproject.zip`."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", dataset.name).strip("-.") or "project"
    return stem[:60] + PROJECT_SUFFIX


def _manifest(dataset: Dataset, carry_data: bool | None) -> tuple[list[dict[str, Any]], list[tuple[str, Path]]]:
    """The manifest rows, and (name in the zip, path) of every image or clip to carry (none for texts or manifest
    only). Clips are the data set's items as loading normalised them (16 kHz mono wav), so they travel as they are.

    A row's first key names the example: `text`, `file` (its entry in the zip) or `path` (manifest only); then
    `label`, `split` and, when the data set records it, `source` (the name the user's file had).
    """
    table = dataset.table
    extra = [{"source": str(source)} for source in table["source"]] if "source" in table else [{}] * len(table)
    labelled = [{"label": str(label), "split": str(split), **more}
                for label, split, more in zip(table["label"], table["split"], extra, strict=True)]
    if dataset.modality == "text":
        return [{"text": str(item), **row} for item, row in zip(table["item"], labelled, strict=True)], []
    paths = [Path(str(item)) for item in table["item"]]
    missing = [str(path) for path in paths if not path.is_file()]
    if missing:
        kind = "clip(s)" if dataset.modality == "audio" else "image(s)"
        raise ProjectError(f"{len(missing)} {kind} of {dataset.name} are no longer on disk (e.g. {missing[0]}); "
                           "load the data set again before saving the project.")
    if carry_data is None:
        carry_data = sum(path.stat().st_size for path in paths) <= max_carried_data_bytes()
    if not carry_data:
        return [{"path": str(path), **row} for path, row in zip(paths, labelled, strict=True)], []
    rows, files = [], []
    for index, (path, row) in enumerate(zip(paths, labelled, strict=True)):
        if dataset.modality == "audio":
            suffix = ".wav"
        else:
            suffix = path.suffix.lower() if path.suffix.lower() in IMAGE_EXTENSIONS else ".png"
        name = f"{index:06d}{suffix}"
        rows.append({"file": f"data/files/{name}", **row})
        files.append((name, path))
    return rows, files


def _run_name(run_id: str, taken: set[str]) -> str:
    """The run's folder name in the zip: its id when that is a plain name, else a fresh one."""
    name = run_id if re.fullmatch(RUN_ID, run_id) else new_run_id()
    while f"runs/{name}" in taken:
        name = new_run_id()
    return name


def _chosen_config(run_entries: dict[str, tuple[Path, dict[str, Any]]], chosen_run: str | None) -> dict[str, Any]:
    for folder, info in run_entries.values():
        if str(folder) == chosen_run:
            return dict(info["config"])
    newest = list(run_entries.values())[-1:]
    return dict(newest[0][1]["config"]) if newest else {}


def _store_record(info: dict[str, Any], folder: Path) -> dict[str, Any]:
    """The run store's record of a run (status, summary, epochs, steps), or what run.json says when it has none."""
    store = RunStore()
    try:
        record = next((r for r in store.list_runs() if str(r.get("run_dir")) == str(folder)), None)
        if record is None:
            metrics = info["metrics"]
            return {"status": info["status"], "error": info["error"], "created_at": info["updated_at"],
                    "summary": {"best_epoch": metrics["best_epoch"], "val_accuracy": metrics["val_accuracy"]},
                    "epochs": metrics["history"], "steps": []}
        return {"status": record["status"], "error": record.get("error"), "created_at": record.get("created_at"),
                "summary": record.get("summary") or {}, "epochs": store.history(record["run_id"]),
                "steps": store.steps(record["run_id"])}
    finally:
        store.close()
