"""Projects that travel: one file with the data (or its manifest), the settings, every run and the chosen model.

`save_project` writes a zip that `open_project` reads back, here or on another machine, offline, into a fresh
workspace and for another browser: the same data set, backbone, freezing and accuracy protocol, the same runs
with their metrics in the run store, and models that give the same predictions. The file is as safe to open as
an upload: only JSON and safetensors are read (nothing that can run code when loaded), every entry name and size
is checked before anything is written (`core._zipsafe`), and any entry the format does not name is refused.

The format is declared once, in `CONTRACT`: each file, who writes it and who reads it. Readers read what the
writer wrote, nothing else. Run folders keep their run id unless this workspace already has that id; imported
runs get the new data set's fingerprint (image paths differ between machines) and the opening workspace
(`core.workspaces`) as owner, in that workspace's runs folder. Opening the same data and runs again in the same
workspace (the same file, or a later save with more runs) reuses what the first opening brought in.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import logging
import os
import re
import shutil
import struct
import sys
import time
import uuid
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path, PurePosixPath
from typing import IO, TYPE_CHECKING, Any

import pandas as pd

from core._zipsafe import UnsafeArchive, ZipLimits, check_archive, extract_archive
from core.dataset import SPLITS, Dataset
from core.paths import check_in_workspace, data_root, workspace_subdir
from core.store import RunNotFound, RunStore, new_run_id

if TYPE_CHECKING:
    from core.session import StudioState

log = logging.getLogger(__name__)

FORMAT = "transfer-studio-project"
FORMAT_VERSION = 1
PROJECT_SUFFIX = ".tsproject.zip"
MODEL_FILE = "model.safetensors"
LEXICAL_FILE = "lexical.safetensors"  # core.ngrams.FILE: a text run's TF-IDF model, part of its delivered model
_MB = 1024**2
_JSON_MAX_BYTES = 256 * _MB
_IMAGE_MAX_BYTES = 64 * _MB
_MODEL_MAX_BYTES = 4 * 1024 * _MB
_RUN_ID = r"[A-Za-z0-9][A-Za-z0-9._-]{0,79}"
_CODE_SUFFIXES = (".pkl", ".pickle", ".pt", ".pth", ".bin", ".ckpt", ".joblib", ".npy", ".npz", ".py", ".pyc")
_FINISHED = ("completed", "stopped", "failed")


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


#: The whole format: an entry matching none of these refuses the file.
CONTRACT = (
    ProjectFile("project.json", r"project\.json", _JSON_MAX_BYTES, "save_project", "open_project",
                "format and version, the data set's description, the settings, the runs and the chosen one"),
    ProjectFile("data/manifest.json", r"data/manifest\.json", _JSON_MAX_BYTES, "save_project", "_read_dataset",
                "one row per example: file (or text), label, split, source"),
    ProjectFile("data/report.json", r"data/report\.json", _JSON_MAX_BYTES, "save_project", "_read_dataset",
                "the data check report the Data page shows"),
    ProjectFile("data/files/<n>.<image type>", r"data/files/\d{6,9}\.(png|jpe?g|bmp|gif|webp|tiff?)", _IMAGE_MAX_BYTES,
                "save_project", "_read_dataset", "the images of the data set, when it is small enough to carry"),
    ProjectFile("runs/<run id>/run.json", rf"runs/{_RUN_ID}/run\.json", _JSON_MAX_BYTES, "core.training",
                "_import_run / load_trained", "the run's description: backbone, classes, settings, metrics"),
    ProjectFile("runs/<run id>/metrics.json", rf"runs/{_RUN_ID}/metrics\.json", _JSON_MAX_BYTES, "save_project",
                "_import_run", "the run store's record: status, summary, per-epoch and per-step metrics"),
    ProjectFile("runs/<run id>/examples.json", rf"runs/{_RUN_ID}/examples\.json", _JSON_MAX_BYTES, "core.training",
                "core.evaluation.recorded_estimate", "the examples the run's estimate rests on"),
    ProjectFile("runs/<run id>/model.safetensors", rf"runs/{_RUN_ID}/model\.safetensors", _MODEL_MAX_BYTES,
                "core.training", "core.training.load_trained", "the trained weights (safetensors only)"),
    ProjectFile("runs/<run id>/lexical.safetensors", rf"runs/{_RUN_ID}/lexical\.safetensors", _MODEL_MAX_BYTES,
                "core.training", "core.ngrams.load", "a text run's TF-IDF model mixed into its probabilities"),
)
_RUN_FILES = ("run.json", "metrics.json", "examples.json", MODEL_FILE)


def max_project_bytes() -> int:
    """The largest project file opened (default 2000 MB; env `TRANSFER_STUDIO_MAX_PROJECT_MB` changes it)."""
    return int(float(os.environ.get("TRANSFER_STUDIO_MAX_PROJECT_MB", "2000")) * _MB)


def max_carried_data_bytes() -> int:
    """Data sets up to this size travel inside the project; larger ones travel as their manifest only
    (default 200 MB; env `TRANSFER_STUDIO_PROJECT_DATA_MB`)."""
    return int(float(os.environ.get("TRANSFER_STUDIO_PROJECT_DATA_MB", "200")) * _MB)


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


# ------------------------------------------------------------------------------------------------------- save


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
        found = [str(r["run_dir"]) for r in reversed(records) if r.get("run_dir") and r["status"] in _FINISHED]
    for run_dir in known_run_dirs:
        try:
            check_in_workspace(run_dir, owner)
        except PermissionError as refused:
            log.warning("Not carried in the project: %s", refused)
            continue
        info = _read_json_file(Path(run_dir) / "run.json")
        if info.get("dataset_fingerprint") == dataset.fingerprint and info.get("status") in _FINISHED:
            found.append(str(run_dir))
    return [run_dir for run_dir in dict.fromkeys(found) if (Path(run_dir) / "run.json").is_file()]


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
        carry_data: carry the images (True) or only their manifest (False); default: carry them when they add up
            to at most `max_carried_data_bytes()`. Texts always travel in the manifest.
    """
    run_dirs = [str(run_dir) for run_dir in run_dirs]
    rows, files = _manifest(dataset, carry_data)
    # an example's name in the project: its file in the zip, its text, or (manifest only) its path on disk
    item_names = {str(item): next(iter(row.values())) for item, row in zip(dataset.table["item"], rows, strict=True)}
    runs, run_entries = [], {}
    for run_dir in run_dirs:
        folder = Path(run_dir)
        info = _read_json_file(folder / "run.json")
        if not info:
            raise ProjectError(f"The run folder {folder} has no readable run.json, so it cannot be saved.")
        name = _run_name(str(info.get("run_id") or folder.name), {r["folder"] for r in runs})
        runs.append({"run_id": str(info.get("run_id") or folder.name), "folder": f"runs/{name}",
                     "has_model": (folder / MODEL_FILE).is_file(), "chosen": run_dir == chosen_run})
        run_entries[name] = (folder, info)
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
        for name, path in files:
            archive.write(path, f"data/files/{name}", compress_type=zipfile.ZIP_STORED)  # images barely compress
        for name, (folder, info) in run_entries.items():
            archive.writestr(f"runs/{name}/run.json", json.dumps(info, indent=2, default=str))
            archive.writestr(f"runs/{name}/metrics.json", json.dumps(_store_record(info, folder), default=str))
            examples = _read_json_file(folder / "examples.json")
            if examples:
                examples["items"] = [item_names.get(str(item), str(item)) for item in examples.get("items", [])]
                archive.writestr(f"runs/{name}/examples.json", json.dumps(examples))
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
    """The manifest rows, and (name in the zip, path) of every image to carry (none for texts or manifest only).

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
        raise ProjectError(f"{len(missing)} image(s) of {dataset.name} are no longer on disk (e.g. {missing[0]}); "
                           "load the data set again before saving the project.")
    if carry_data is None:
        carry_data = sum(path.stat().st_size for path in paths) <= max_carried_data_bytes()
    if not carry_data:
        return [{"path": str(path), **row} for path, row in zip(paths, labelled, strict=True)], []
    rows, files = [], []
    for index, (path, row) in enumerate(zip(paths, labelled, strict=True)):
        suffix = path.suffix.lower() if path.suffix.lower() in _IMAGE_SUFFIXES else ".png"
        name = f"{index:06d}{suffix}"
        rows.append({"file": f"data/files/{name}", **row})
        files.append((name, path))
    return rows, files


_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


def _run_name(run_id: str, taken: set[str]) -> str:
    """The run's folder name in the zip: its id when that is a plain name, else a fresh one."""
    name = run_id if re.fullmatch(_RUN_ID, run_id) else new_run_id()
    while f"runs/{name}" in taken:
        name = new_run_id()
    return name


def _chosen_config(run_entries: dict[str, tuple[Path, dict[str, Any]]], chosen_run: str | None) -> dict[str, Any]:
    for folder, info in run_entries.values():
        if str(folder) == chosen_run:
            return dict(info.get("config") or {})
    newest = list(run_entries.values())[-1:] or [(None, {})]
    return dict(newest[0][1].get("config") or {})


def _store_record(info: dict[str, Any], folder: Path) -> dict[str, Any]:
    """The run store's record of a run (status, summary, epochs, steps), or what run.json says when it has none."""
    store = RunStore()
    try:
        record = next((r for r in store.list_runs() if str(r.get("run_dir")) == str(folder)), None)
        if record is None:
            metrics = info.get("metrics") or {}
            return {"status": info.get("status"), "error": info.get("error"), "created_at": info.get("updated_at"),
                    "summary": {"best_epoch": metrics.get("best_epoch"), "val_accuracy": metrics.get("val_accuracy")},
                    "epochs": metrics.get("history") or [], "steps": []}
        return {"status": record["status"], "error": record.get("error"), "created_at": record.get("created_at"),
                "summary": record.get("summary") or {}, "epochs": store.history(record["run_id"]),
                "steps": store.steps(record["run_id"])}
    finally:
        store.close()


def _read_json_file(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


# ------------------------------------------------------------------------------------------------------- open


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
        raise ProjectError(f"`{name}` is {len(payload) / _MB:,.0f} MB, more than the {max_project_bytes() / _MB:,.0f} "
                           "MB limit for project files (env TRANSFER_STUDIO_MAX_PROJECT_MB).")
    staging = workspace_subdir("projects", owner) / f"opening-{uuid.uuid4().hex}"
    try:
        _check_entries(payload, name)
        try:
            extract_archive(io.BytesIO(payload), staging, name, len(payload), _limits())
        except UnsafeArchive as error:
            raise ProjectError(str(error)) from error
        manifest = _read_json(staging, "project.json", name)
        _check_format(manifest, name)
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


def _limits() -> ZipLimits:
    return ZipLimits(max_total_bytes=2 * max_project_bytes() + 64 * _MB, max_ratio=1000.0)


def _check_entries(payload: bytes, name: str) -> None:
    """Refuse the file before anything is written: not a zip, an unsafe name, an entry outside the format, or an
    entry larger than its kind allows."""
    if not zipfile.is_zipfile(io.BytesIO(payload)):
        kind = "a text file" if payload[:1] in (b"{", b"[") or payload[:64].isascii() else "some other file"
        raise ProjectError(f"`{name}` is not a Transfer Studio project: it is {kind}, not a zip. Choose the "
                           f"`{PROJECT_SUFFIX}` file that 'Save project' downloaded.")
    with zipfile.ZipFile(io.BytesIO(payload)) as archive:
        try:
            check_archive(archive, name, len(payload), _limits())
        except UnsafeArchive as error:
            raise ProjectError(str(error)) from error
        names = {info.filename for info in archive.infolist() if not info.is_dir()}
        if "project.json" not in names:
            raise ProjectError(f"`{name}` is a zip but not a Transfer Studio project (it has no project.json). To "
                               "load a zip of images or sound clips, choose 'Upload a zip of class folders' instead.")
        for info in archive.infolist():
            if info.is_dir():
                continue
            kind = next((k for k in CONTRACT if re.fullmatch(k.pattern, info.filename)), None)
            if kind is None:
                if info.filename.lower().endswith(_CODE_SUFFIXES):
                    raise ProjectError(
                        f"`{name}` was refused: it holds `{info.filename}`, a pickle or code file. Such files can "
                        "run programs when opened, so Transfer Studio never opens them; projects carry weights as "
                        "safetensors only. Save the project again from Transfer Studio.")
                raise ProjectError(f"`{name}` was refused: `{info.filename}` is not part of a Transfer Studio "
                                   "project. Save the project again from Transfer Studio, and do not add files to it.")
            if info.file_size > kind.max_bytes:
                raise ProjectError(f"`{name}` was refused: `{info.filename}` would unpack to "
                                   f"{info.file_size / _MB:,.0f} MB, more than the {kind.max_bytes / _MB:,.0f} MB a "
                                   f"{kind.name} may hold.")


def _read_json(folder: Path, member: str, name: str) -> Any:
    path = folder / member
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as error:
        raise ProjectError(f"`{name}` lacks `{member}`, which the project needs; the file is incomplete.") from error
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise ProjectError(f"`{name}`: `{member}` is not valid JSON ({error}); the file is damaged.") from error


def _check_format(manifest: Any, name: str) -> None:
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ProjectError(f"`{name}` is not a Transfer Studio project: its project.json does not say "
                           f"`\"format\": \"{FORMAT}\"`.")
    version = manifest.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ProjectError(f"`{name}` was saved by a newer Transfer Studio (project format {version}); this one "
                           f"reads format {FORMAT_VERSION} and older. Update Transfer Studio to open it.")


def _read_dataset(
    staging: Path, manifest: dict[str, Any], name: str
) -> tuple[Dataset, dict[str, Any], dict[str, str], Callable[[], None]]:
    """The data set, its report, a map from each example's name in the project to its item here, and the function
    that moves the images to `workspace/datasets/project-<hash of the manifest and every image's bytes>/` (so the
    same data, from whichever project file, lands in one folder and keeps one fingerprint)."""
    described = manifest.get("dataset")
    rows = _read_json(staging, "data/manifest.json", name)
    report = _read_json(staging, "data/report.json", name)
    if not isinstance(described, dict) or described.get("modality") not in ("image", "text"):
        raise ProjectError(f"`{name}`: project.json does not describe an image or text data set; it is damaged.")
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
    root = None
    place_files: Callable[[], None] = lambda: None  # noqa: E731 - texts and manifest-only data have no files
    if key == "file":
        missing = [n for n in names if not (staging / n).is_file()]
        if missing:
            raise ProjectError(f"`{name}` lacks {len(missing)} image(s) its manifest lists, e.g. `{missing[0]}`; "
                               "the file is incomplete.")
        content = hashlib.sha256((staging / "data" / "manifest.json").read_bytes())
        for image_digest in _check_images([staging / n for n in names], name):
            content.update(image_digest.encode())
        root = workspace_subdir("datasets") / f"project-{content.hexdigest()[:24]}"
        items = [str(root / PurePosixPath(n).name) for n in names]
        place_files = partial(_place_files, staging / "data" / "files", root)
    elif key == "path":
        items = _existing_paths(names, name)
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


def _check_images(paths: list[Path], name: str) -> list[str]:
    """Each image decodes fully, within Pillow's decompression-bomb limit, as the RGB PNG or JPEG that a loaded data
    set holds (the same check an uploaded image gets, `core.data.inspect_image`); returns their SHA-256."""
    from core.data import inspect_image

    inspected = [(path, inspect_image(path)) for path in paths]
    bad = [path for path, (_, usable, problem) in inspected if usable != path or problem is not None]
    if bad:
        raise ProjectError(f"`{name}` was refused: {len(bad)} of its images are not images, are damaged, are over "
                           f"the image-size safety limit or are not stored as Transfer Studio saves them (e.g. "
                           f"`data/files/{bad[0].name}`). Save the project again from Transfer Studio.")
    return [digest for _, (digest, _, _) in inspected]


def _place_files(files: Path, root: Path) -> None:
    """Move the project's images into their data set folder, unless the same project was opened before."""
    if root.exists():
        return
    try:
        shutil.move(files, root)
    except OSError:
        if not root.exists():  # another session opening the same project at once is fine
            raise


def _existing_paths(paths: list[str], name: str) -> list[str]:
    """A manifest-only project names image files on disk: allowed only inside this workspace's data sets or the
    operator's data root (an untrusted file must not make the server read anything else), and all must exist."""
    allowed = [workspace_subdir("datasets").resolve()] + ([data_root()] if data_root() else [])
    resolved = [Path(p).resolve() for p in paths]
    outside = [str(p) for p in resolved if not any(p.is_relative_to(folder) for folder in allowed)]
    if outside:
        raise ProjectError(f"`{name}` carries only the list of its images, and {len(outside)} of them lie outside "
                           f"this server's data folders (e.g. `{outside[0]}`). Open it on the machine it was saved "
                           "on, or save it again with the data included.")
    missing = [str(p) for p in resolved if not p.is_file()]
    if missing:
        raise ProjectError(f"`{name}` carries only the list of its images, and {len(missing)} of them are not on "
                           f"this machine (e.g. `{missing[0]}`). Open it where the data is, or save it again with "
                           "the data included.")
    return [str(p) for p in resolved]


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
        if not re.fullmatch(rf"runs/{_RUN_ID}", folder) or not (staging / folder / "run.json").is_file():
            raise ProjectError(f"`{name}`: the run `{folder}` that project.json lists is not in the file; it is "
                               "damaged.")
        info = _read_json(staging, f"{folder}/run.json", name)
        record = _read_json(staging, f"{folder}/metrics.json", name)
        if not isinstance(info, dict) or not isinstance(record, dict):
            raise ProjectError(f"`{name}`: `{folder}` holds a run.json or metrics.json that is not a record.")
        if info.get("classes") != dataset.classes:
            raise ProjectError(f"`{name}`: the run `{folder}` was trained on other classes than the project's data.")
        examples = None
        if (staging / folder / "examples.json").is_file():
            examples = _read_json(staging, f"{folder}/examples.json", name)
            if not isinstance(examples, dict) or not isinstance(examples.get("items"), list):
                raise ProjectError(f"`{name}`: `{folder}/examples.json` is not a record of examples; it is damaged.")
        has_model = (staging / folder / MODEL_FILE).is_file()
        if has_model:
            _check_safetensors(staging / folder / MODEL_FILE, f"{folder}/{MODEL_FILE}", name)
        if (staging / folder / LEXICAL_FILE).is_file():
            _check_safetensors(staging / folder / LEXICAL_FILE, f"{folder}/{LEXICAL_FILE}", name)
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
        (target / "run.json").write_text(json.dumps(info, indent=2, default=str), encoding="utf-8")
        if run.examples is not None:
            examples = {**run.examples, "dataset_fingerprint": dataset.fingerprint,
                        "items": [item_of.get(str(item), str(item)) for item in run.examples["items"]]}
            (target / "examples.json").write_text(json.dumps(examples), encoding="utf-8")
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
            if Path(record["run_dir"], "run.json").is_file():
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
    status = record.get("status") if record.get("status") in _FINISHED else "failed"
    summary = record.get("summary") if isinstance(record.get("summary"), dict) else {}
    error = record.get("error") if isinstance(record.get("error"), str) else None
    store.finish(run_id, status, error=error, **{**summary, "imported_from": imported_from})
    if owner is not None:
        store.set_owner(target, owner)


def _check_safetensors(path: Path, member: str, name: str) -> None:
    """A weights file must be safetensors (a JSON header, then raw tensor bytes), never a pickle in disguise."""
    size = path.stat().st_size
    with open(path, "rb") as file:
        head = file.read(8)
        length = struct.unpack("<Q", head)[0] if len(head) == 8 else -1
        header = file.read(length) if 0 < length <= min(size - 8, 100 * _MB) else b""
    try:
        tensors = json.loads(header)
    except ValueError:
        tensors = None
    if not isinstance(tensors, dict) or not tensors:
        raise ProjectError(f"`{name}` was refused: `{member}` is not a safetensors file (projects carry weights as "
                           "safetensors only). Save the project again from Transfer Studio.")


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
    images are gone. Only this workspace's own record is read (`apply_to_state` wrote it)."""
    path = _opened_path(owner)
    record = _read_json_file(path) if path is not None else {}
    if not record:
        return None
    try:
        described = record["dataset"]
        dataset = Dataset(name=described["name"], modality=described["modality"],
                          table=pd.DataFrame(described["table"]), classes=list(described["classes"]),
                          root=described["root"], split_given=bool(described["split_given"]))
        if dataset.modality == "image" and not all(Path(item).is_file() for item in dataset.table["item"]):
            return None
        exists = [run_dir for run_dir in record["run_dirs"] if (Path(run_dir) / "run.json").is_file()]
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
