"""The bundle's manifest that vouches for its files, the zip, and the reader (`load_bundle`); the files' names and
what each holds are declared in `core._bundle_folder`.

The lowest of the export modules: `core.evaluation.load_model` opens a bundle through `load_bundle`, and
`core.export` (which builds on `core.evaluation`) writes what this module reads, so neither imports the other
to open one. The check of every file against the manifest is the bundle's own (`core.bundle_predict.verify`).
"""

from __future__ import annotations

import hashlib
import json
import types
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from core import bundle_predict, ngrams
from core._bundle_folder import (
    LABELS_FILE,
    MANIFEST_FILE,
    PARITY_FILE,
    PREPROCESSING_FILE,
    RUN_FILE,
    TORCHSCRIPT_FILE,
)
from core.paths import file_sha256


class ExportError(RuntimeError):
    """The model could not be exported (an unsupported model, no examples to check parity on, a failed tracer)."""


class BundleError(RuntimeError):
    """A bundle is incomplete or was changed after export; the message names the file."""


def as_inputs(batch: Any, modality: str) -> tuple[torch.Tensor, ...]:
    """A collated batch as the exported models' positional inputs (a sound batch is spectrogram pixels)."""
    if modality in ("image", "audio"):
        if not isinstance(batch, torch.Tensor):
            raise ExportError(f"An image batch must be a tensor [B, 3, H, W], the preprocessor gave {type(batch)}.")
        return (batch.float(),)
    if not isinstance(batch, dict) or "input_ids" not in batch or "attention_mask" not in batch:
        raise ExportError("A text batch must be a dict with input_ids and attention_mask; the preprocessor gave other.")
    return (batch["input_ids"].long(), batch["attention_mask"].long())


# -------------------------------------------------------------------------------------------------- manifest


def write_manifest(bundle_dir: str | Path, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Record the SHA-256 and size of every file in the bundle (except the manifest) in manifest.json."""
    folder = Path(bundle_dir)
    files = {
        path.relative_to(folder).as_posix(): {"sha256": file_sha256(path), "bytes": path.stat().st_size}
        for path in sorted(folder.rglob("*"))
        if path.is_file() and path.name != MANIFEST_FILE
    }
    manifest = {"format": "transfer-studio-bundle/1", "files": files, **(extra or {})}
    (folder / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    return manifest


def verify_manifest(bundle_dir: str | Path) -> dict[str, Any]:
    """Check every file against manifest.json; raise `BundleError` naming the first missing or changed file.

    The check is the bundle's own (`bundle_predict.verify`, what `predict.py` runs), so both refuse the same files.
    """
    folder = Path(bundle_dir)
    if not folder.is_dir():
        raise BundleError(f"{folder} is not a folder; give the unzipped bundle folder.")
    try:
        return bundle_predict.verify(folder)
    except bundle_predict.BundleFileError as error:
        raise BundleError(str(error)) from error


def zip_bundle(bundle_dir: str | Path, zip_path: str | Path | None = None) -> Path:
    """Zip a bundle folder (files under a top folder of the bundle's name) for download."""
    folder = Path(bundle_dir)
    target = Path(zip_path) if zip_path is not None else folder.with_suffix(".zip")
    with zipfile.ZipFile(target, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                archive.write(path, f"{folder.name}/{path.relative_to(folder).as_posix()}")
    return target


# ----------------------------------------------------------------------------------------- predict.py + load


def _script_module() -> types.ModuleType:
    """The bundle's predict.py as a module: `core/bundle_predict.py`, the file every bundle gets a copy of.

    The app imports the same code it ships, so `load_bundle` predicts exactly as the bundle's own script does.
    """
    return bundle_predict


def jit_load(path: Path) -> nn.Module:
    """torch.jit.load on CPU, without its deprecation warning (TorchScript is what torch-only users can run)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return torch.jit.load(str(path), map_location="cpu").eval()


class BundleModel(nn.Module):
    """A bundle's TorchScript classifier with the app's calling convention: `model(batch)` -> logits."""

    def __init__(self, scripted: nn.Module, classes: list[str], modality: str) -> None:
        super().__init__()
        self.scripted = scripted
        self.classes = classes
        self.modality = modality

    def forward(self, batch: Any) -> torch.Tensor:
        return self.scripted(*as_inputs(batch, self.modality))


class BundlePreprocessor:
    """A bundle's preprocessing with the app's Preprocessor interface (`load`, `collate`, `cache_key`)."""

    def __init__(self, bundle_dir: Path, config: dict[str, Any]) -> None:
        script = _script_module()
        self.config = config
        self.modality = config["modality"]
        self.cache_key = "bundle:" + hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]
        if self.modality == "image":
            self._image = script.ImagePreprocessor(config)
        elif self.modality == "audio":
            self._image = script.AudioPreprocessor(config, bundle_dir)
        else:
            self._text = script.TextPreprocessor(config, bundle_dir)
            self.tokenizer = self._text.tokenizer

    def load(self, item: str, train: bool = False) -> Any:
        """One example ready for `collate`: an image or spectrogram tensor [3, H, W], or the text (no augmentation)."""
        return str(item) if self.modality == "text" else self._image.load(item)

    def collate(self, loaded: list[Any]) -> Any:
        if self.modality != "text":
            return torch.stack(loaded)
        input_ids, attention_mask = self._text.batch(loaded)
        return {"input_ids": input_ids, "attention_mask": attention_mask}


def load_bundle(path: str | Path) -> tuple[BundleModel, BundlePreprocessor, dict[str, Any]]:
    """A bundle's model, preprocessing and record, after verifying every file against its manifest.

    Returns the same triple as `core.training.load_trained` so that `core.evaluation` can test and predict
    with a bundle: the model (TorchScript, eval mode, `model(batch)` -> logits, `model.classes`), the
    preprocessing (`load`/`collate`; `.config` holds preprocessing.json) and the run record (with `classes`,
    `modality` and the bundle's `parity` report).

    Raises:
        BundleError: a file is missing or changed (the message names it), or the bundle is not one of ours.
    """
    folder = Path(path).expanduser()
    if folder.is_file() and zipfile.is_zipfile(folder):
        raise BundleError(f"{folder} is a zip: unzip it first and give the bundle folder.")
    manifest = verify_manifest(folder)
    try:
        classes = list(json.loads((folder / LABELS_FILE).read_text(encoding="utf-8"))["classes"])
        config = json.loads((folder / PREPROCESSING_FILE).read_text(encoding="utf-8"))
        info = json.loads((folder / RUN_FILE).read_text(encoding="utf-8"))
        parity = json.loads((folder / PARITY_FILE).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, KeyError) as error:
        raise BundleError(f"The bundle {folder} has an unreadable metadata file ({error}).") from error
    scripted = jit_load(folder / TORCHSCRIPT_FILE)
    model = BundleModel(scripted, classes, config["modality"]).eval()
    if config.get("lexical"):  # `core.evaluation.predict_proba` mixes it in, as the app and predict.py do
        model.lexical = ngrams.load(folder / config["lexical"]["model"])
    info = {**info, "classes": classes, "modality": config["modality"], "parity": parity, "bundle": str(folder)}
    info["bundle_format"] = manifest["format"]
    return model, BundlePreprocessor(folder, config), info

