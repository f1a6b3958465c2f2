"""Export: a trained classifier as a self-contained bundle that runs without Transfer Studio.

A bundle folder (and a zip of it) holds the weights (`model.safetensors`), the same model as TorchScript and ONNX,
the label names, the preprocessing, the training record and test metrics, a Markdown model report, a standalone
`predict.py` and a `manifest.json` with the SHA-256 of every file. Export is only trusted after a parity check:
the ONNX model (onnxruntime), the TorchScript model and the bundle's own `predict.py` (in a fresh process) must
give the app's top-1 class on the test examples and probabilities within `PARITY_TOLERANCE`.

Main entry points:
    `export_bundle(model, preprocessor, run_info, out_dir, items)` -> `ExportResult` (bundle, zip, `ParityReport`).
    `export_run(run_dir, out_dir, ...)` -> the same, from a run folder.
    `load_bundle(path)` -> (model, preprocessor, info), after checking the manifest (`BundleError` names the file).
    `model_report(run_info, evaluation=None, baseline=None)` -> the Markdown report.
    `main_export(args)` -> `python -m core export --model RUN --out BUNDLE`.

The ONNX file is written by the TorchScript-based exporter (`torch.onnx.export(..., dynamo=False)`): it handles
both timm CNNs and Hugging Face encoders with a dynamic batch (and token) axis and needs no `onnxscript`.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import logging
import math
import os
import shutil
import subprocess
import sys
import tempfile
import types
import warnings
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from core import bundle_predict
from core.evaluation import evaluate_probabilities, predict_proba
from core.model_report import model_report
from core.paths import file_sha256
from core.training import load_trained

log = logging.getLogger(__name__)

PARITY_TOLERANCE = 1e-4
DEFAULT_PARITY_EXAMPLES = 256
ONNX_OPSET = 17
MANIFEST_FILE = "manifest.json"
WEIGHTS_FILE = "model.safetensors"
TORCHSCRIPT_FILE = "model.torchscript.pt"
ONNX_FILE = "model.onnx"
PREDICT_FILE = "predict.py"
REPORT_FILE = "MODEL_REPORT.md"
LABELS_FILE = "labels.json"
PREPROCESSING_FILE = "preprocessing.json"
ARCHITECTURE_FILE = "architecture.json"
RUN_FILE = "run.json"
PARITY_FILE = "parity.json"
README_FILE = "README.md"
TOKENIZER_DIR = "tokenizer"
AUDIO_FEATURES_FILE = "audio_features.py"  # core/audio.py, copied: predict.py makes spectrograms with the same code
LEXICAL_MODULE_FILE = "lexical_model.py"  # core/ngrams.py, copied: predict.py mixes in the text run's TF-IDF model
BACKBONE_CONFIG_DIR = "backbone_config"


class ExportError(RuntimeError):
    """The model could not be exported (an unsupported model, no examples to check parity on, a failed tracer)."""


class BundleError(RuntimeError):
    """A bundle is incomplete or was changed after export; the message names the file."""


# ------------------------------------------------------------------------------------------------- parity report


@dataclass(frozen=True)
class ParityRow:
    """How one exported artefact compares with the app on the parity examples.

    Attributes:
        artefact: key of the artefact ("onnx", "torchscript", "predict.py", "predict.py:safetensors").
        title: what the UI calls it.
        examples: how many examples were compared.
        top1_agreement: share of examples whose top-1 class equals the app's (1.0 = all).
        max_abs_diff: the largest |p_export - p_app| over all examples and classes.
        passed: top-1 agreement is 1.0 and max_abs_diff <= the tolerance, and the artefact ran.
        files: bundle files this row vouches for (offered for download only when it passed).
        error: why the artefact could not be run, when it could not.
    """

    artefact: str
    title: str
    examples: int
    top1_agreement: float
    max_abs_diff: float
    passed: bool
    files: tuple[str, ...] = ()
    error: str | None = None


@dataclass
class ParityReport:
    """The parity check of one export: every artefact against the app's own predictions.

    Attributes:
        rows: one `ParityRow` per artefact checked.
        examples: number of examples compared (the run's test split, up to a cap).
        tolerance: the largest probability difference accepted.
        reference: what the artefacts were compared with.
        skipped: artefacts not checked, with the reason (e.g. a backbone no public library can rebuild).
    """

    rows: list[ParityRow]
    examples: int
    tolerance: float = PARITY_TOLERANCE
    reference: str = "the app's PyTorch model on CPU (core.evaluation.predict_proba)"
    skipped: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """True when every artefact checked matches the app."""
        return bool(self.rows) and all(row.passed for row in self.rows)

    @property
    def max_abs_diff(self) -> float:
        """The largest probability difference of any artefact that ran."""
        diffs = [row.max_abs_diff for row in self.rows if row.error is None]
        return max(diffs) if diffs else float("nan")

    def row(self, artefact: str) -> ParityRow | None:
        """The row of one artefact, or None when it was not checked."""
        return next((row for row in self.rows if row.artefact == artefact), None)

    def passed_files(self) -> set[str]:
        """Bundle files whose artefact passed (and no failed row also vouches for)."""
        failed = {name for row in self.rows if not row.passed for name in row.files}
        return {name for row in self.rows if row.passed for name in row.files} - failed

    def table(self) -> list[dict[str, Any]]:
        """One plain dict per artefact, for a data frame in the UI or a Markdown table."""
        return [
            {
                "artefact": row.title,
                "examples": row.examples,
                "top-1 agreement": f"{row.top1_agreement:.1%}" if row.error is None else "—",
                "max |Δp|": f"{row.max_abs_diff:.2e}" if row.error is None else "—",
                "result": "pass" if row.passed else f"FAIL{': ' + row.error if row.error else ''}",
            }
            for row in self.rows
        ]

    def to_markdown(self) -> str:
        lines = ["| Artefact | Examples | Top-1 agreement | max \\|Δp\\| | Result |", "|---|---:|---:|---:|---|"]
        for entry in self.table():
            lines.append(
                f"| {entry['artefact']} | {entry['examples']} | {entry['top-1 agreement']} | {entry['max |Δp|']} "
                f"| {entry['result']} |"
            )
        for artefact, reason in self.skipped.items():
            lines.append(f"| {artefact} | — | — | — | not checked: {reason} |")
        return "\n".join(lines)

    def __str__(self) -> str:
        verdict = "PASSED" if self.ok else "FAILED"
        head = (
            f"Parity {verdict} on {self.examples} examples against {self.reference}; tolerance {self.tolerance:g}, "
            f"largest difference {self.max_abs_diff:.2e}."
        )
        rows = [
            f"  {row.title:<40} top-1 {row.top1_agreement:7.1%}  max|dp| {row.max_abs_diff:.2e}  "
            f"{'pass' if row.passed else 'FAIL'}{'  (' + row.error + ')' if row.error else ''}"
            for row in self.rows
        ]
        rows += [f"  {artefact:<40} not checked: {reason}" for artefact, reason in self.skipped.items()]
        return "\n".join([head, *rows])

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "examples": self.examples,
            "tolerance": self.tolerance,
            "reference": self.reference,
            "max_abs_diff": None if math.isnan(self.max_abs_diff) else self.max_abs_diff,
            "rows": [asdict(row) for row in self.rows],
            "skipped": dict(self.skipped),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ParityReport:
        rows = [ParityRow(**{**row, "files": tuple(row.get("files", ()))}) for row in data.get("rows", [])]
        return cls(
            rows=rows,
            examples=int(data.get("examples", 0)),
            tolerance=float(data.get("tolerance", PARITY_TOLERANCE)),
            reference=str(data.get("reference", "")),
            skipped=dict(data.get("skipped", {})),
        )


def compare_probabilities(
    artefact: str,
    title: str,
    reference: np.ndarray,
    candidate: np.ndarray,
    tolerance: float = PARITY_TOLERANCE,
    files: Sequence[str] = (),
) -> ParityRow:
    """A `ParityRow` from the app's probabilities and an artefact's, both [examples, classes]."""
    reference = np.asarray(reference, dtype=np.float64)
    candidate = np.asarray(candidate, dtype=np.float64)
    if candidate.shape != reference.shape:
        return ParityRow(
            artefact,
            title,
            len(reference),
            0.0,
            float("inf"),
            False,
            tuple(files),
            f"output shape {candidate.shape} differs from the app's {reference.shape}",
        )
    if reference.size == 0:
        return ParityRow(artefact, title, 0, 0.0, float("inf"), False, tuple(files), "no examples to compare")
    agreement = float((reference.argmax(axis=1) == candidate.argmax(axis=1)).mean())
    max_diff = float(np.abs(reference - candidate).max())
    passed = agreement == 1.0 and max_diff <= tolerance
    return ParityRow(artefact, title, len(reference), agreement, max_diff, passed, tuple(files))


# ------------------------------------------------------------------------------------------ export wrappers


class _ImageExport(nn.Module):
    """The classifier with a tensor signature: pixels [B, 3, H, W] -> logits [B, classes]."""

    def __init__(self, classifier: nn.Module) -> None:
        super().__init__()
        self.classifier = classifier

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.classifier(pixels)


class _TextExport(nn.Module):
    """The classifier with a tensor signature: (input_ids, attention_mask) [B, T] -> logits [B, classes]."""

    def __init__(self, classifier: nn.Module) -> None:
        super().__init__()
        self.classifier = classifier

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.classifier({"input_ids": input_ids, "attention_mask": attention_mask})


def _export_module(model: nn.Module, modality: str) -> nn.Module:
    return (_TextExport(model) if modality == "text" else _ImageExport(model)).eval()  # sound: spectrogram pixels


def _as_inputs(batch: Any, modality: str) -> tuple[torch.Tensor, ...]:
    """A collated batch as the exported models' positional inputs (a sound batch is spectrogram pixels)."""
    if modality in ("image", "audio"):
        if not isinstance(batch, torch.Tensor):
            raise ExportError(f"An image batch must be a tensor [B, 3, H, W], the preprocessor gave {type(batch)}.")
        return (batch.float(),)
    if not isinstance(batch, dict) or "input_ids" not in batch or "attention_mask" not in batch:
        raise ExportError("A text batch must be a dict with input_ids and attention_mask; the preprocessor gave other.")
    return (batch["input_ids"].long(), batch["attention_mask"].long())


def _batches(preprocessor: Any, items: Sequence[str], batch_size: int) -> list[Any]:
    return [
        preprocessor.collate([preprocessor.load(item, train=False) for item in items[start : start + batch_size]])
        for start in range(0, len(items), batch_size)
    ]


def export_torchscript(module: nn.Module, example: tuple[torch.Tensor, ...], path: Path) -> Path:
    """Trace `module` on `example` inputs (CPU) and save it; the saved model needs only torch to run."""
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(module, example, check_trace=False, strict=False)
        torch.jit.save(traced, str(path))
    return path


def export_onnx(module: nn.Module, example: tuple[torch.Tensor, ...], path: Path, modality: str) -> Path:
    """Write `module` as ONNX with a dynamic batch axis (and token axis for text); output `logits`."""
    if modality in ("image", "audio"):
        names = ["pixels"]
        axes: dict[str, dict[int, str]] = {"pixels": {0: "batch"}, "logits": {0: "batch"}}
    else:
        names = ["input_ids", "attention_mask"]
        axes = {"input_ids": {0: "batch", 1: "tokens"}, "attention_mask": {0: "batch", 1: "tokens"}}
        axes["logits"] = {0: "batch"}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            example,
            str(path),
            input_names=names,
            output_names=["logits"],
            dynamic_axes=axes,
            opset_version=ONNX_OPSET,
            do_constant_folding=True,
            dynamo=False,
        )
    return path


# ------------------------------------------------------------------------------ weights and rebuild recipe


def _source_module(backbone: nn.Module) -> tuple[str, nn.Module] | None:
    """The library model inside our Backbone wrapper (timm model / HF PreTrainedModel) and its qualified name."""
    spec = getattr(backbone, "spec", None)
    source = getattr(spec, "source", "")
    for name, module in backbone.named_modules():
        if source == "timm" and type(module).__module__.startswith("timm.") and hasattr(module, "forward_features"):
            return name, module
        if source == "transformers":
            try:
                from transformers import PreTrainedModel
            except ImportError:
                return None
            if isinstance(module, PreTrainedModel):
                return name, module
    return None


def _rebuild_recipe(model: nn.Module, example: tuple[torch.Tensor, ...], bundle_dir: Path) -> dict[str, Any]:
    """How predict.py rebuilds the architecture from its library, verified here on the example batch.

    The recipe is only written when a freshly built library model with our weights reproduces the
    backbone's features; otherwise `rebuild` is None and `rebuild_detail` says why (predict.py then uses
    TorchScript only).
    """
    backbone = model.backbone
    spec = backbone.spec
    found = _source_module(backbone)
    if found is None:
        return {"rebuild": None, "rebuild_detail": f"backbone source '{spec.source}' is not timm or transformers"}
    _, source = found
    with torch.no_grad():
        features = backbone(
            example[0] if spec.modality != "text" else dict(zip(("input_ids", "attention_mask"), example, strict=True))
        )
        try:
            if spec.source == "timm":
                import timm

                rebuilt = timm.create_model(spec.model_id, pretrained=False, num_classes=0).eval()
                rebuilt.load_state_dict(source.state_dict(), strict=True)
                candidates = {"model": lambda: rebuilt(example[0])}
                recipe: dict[str, Any] = {"source": "timm", "model_id": spec.model_id}
            else:
                from transformers import AutoModel

                config_dir = bundle_dir / BACKBONE_CONFIG_DIR
                source.config.save_pretrained(str(config_dir))
                rebuilt = AutoModel.from_config(source.config).eval()
                drop_pooler = getattr(source, "pooler", "absent") is None
                if drop_pooler:
                    rebuilt.pooler = None
                rebuilt.load_state_dict(source.state_dict(), strict=True)
                output = rebuilt(input_ids=example[0], attention_mask=example[1])
                candidates = {
                    pooling: (lambda pooling=pooling: bundle_predict.pool_text(output, example[1], pooling))
                    for pooling in ("mean", "mean+normalize", "cls", "cls+normalize", "pooler")
                }
                recipe = {"source": "transformers", "model_id": spec.model_id, "config_dir": BACKBONE_CONFIG_DIR}
                recipe["drop_pooler"] = drop_pooler
        except (RuntimeError, ValueError, KeyError, ImportError, OSError) as error:
            return {"rebuild": None, "rebuild_detail": f"rebuilding {spec.model_id} failed: {error}"}
        for pooling, compute in candidates.items():
            try:
                candidate = compute()
            except (AttributeError, RuntimeError, TypeError):
                continue
            if (
                candidate is not None
                and candidate.shape == features.shape
                and torch.allclose(candidate, features, atol=1e-5, rtol=1e-4)
            ):
                return {"rebuild": {**recipe, "pooling": pooling}, "rebuild_detail": "verified at export"}
    return {"rebuild": None, "rebuild_detail": "no standard pooling of the library model reproduces the backbone"}


def _bundle_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """Weights in the bundle's documented layout: `backbone.<library model key>` and `head.weight`/`head.bias`."""
    found = _source_module(model.backbone)
    source = found[1] if found is not None else model.backbone
    linears = [module for module in model.head.modules() if isinstance(module, nn.Linear)]
    if len(linears) != 1:
        raise ExportError(f"The classifier head must hold exactly one Linear layer, it holds {len(linears)}.")
    weights = {f"backbone.{key}": value for key, value in source.state_dict().items()}
    weights["head.weight"] = linears[0].weight
    weights["head.bias"] = linears[0].bias
    return {key: value.detach().cpu().contiguous().clone() for key, value in weights.items()}


def preprocessing_config(spec: Any, preprocessor: Any = None) -> dict[str, Any]:
    """The evaluation-time preprocessing in plain numbers, as predict.py applies it (derived from the spec)."""
    if spec.modality == "image":
        _, height, width = spec.input_size
        crop_pct = float(spec.crop_pct or 1.0)
        return {
            "modality": "image",
            "input_size": list(spec.input_size),
            "resize": math.floor(height / crop_pct),
            "crop": [height, width],
            "crop_pct": crop_pct,
            "interpolation": spec.interpolation,
            "mean": list(spec.mean),
            "std": list(spec.std),
            "channel_order": "RGB",
            "scale": "pixels / 255, then (x - mean) / std",
            "steps": [
                f"resize the shorter side to {math.floor(height / crop_pct)} px ({spec.interpolation})",
                f"centre-crop {height}x{width}",
                "scale to [0, 1]",
                "normalise with mean and std",
            ],
            "cache_key": str(getattr(preprocessor, "cache_key", "")),
        }
    if spec.modality == "audio":
        from core.preprocess import audio_settings

        settings = audio_settings(spec)
        return {
            "modality": "audio",
            **settings.to_dict(),
            "input_size": list(spec.input_size),
            "features_module": AUDIO_FEATURES_FILE,
            "steps": [
                f"decode, average the channels, resample to {settings.sample_rate} Hz",
                f"cut the loudest {settings.clip_seconds:g} s (or centre a shorter clip in silence)",
                f"log-mel spectrogram ({settings.n_mels} bands, {settings.fmin:g}-{settings.fmax:g} Hz, window "
                f"{settings.win_length}, hop {settings.hop_length}), dB below the clip's peak floored at "
                f"-{settings.top_db:g}, scaled to [0, 1]",
                f"bilinear resize to {settings.image_size[0]}x{settings.image_size[1]}, normalise with mean and std, "
                "the same picture in 3 channels",
            ],
            "cache_key": str(getattr(preprocessor, "cache_key", "")),
        }
    max_tokens = int(getattr(spec, "max_tokens", 0) or (spec.input_size[0] if spec.input_size else 128))
    return {
        "modality": "text",
        "max_tokens": max_tokens,
        "tokenizer_dir": TOKENIZER_DIR,
        "padding": "longest in batch",
        "whitespace": "runs of whitespace collapsed to one space",
        "truncation": True,
        "steps": [f"tokenize with the backbone's tokenizer, truncate to {max_tokens} tokens, pad to the longest"],
        "cache_key": str(getattr(preprocessor, "cache_key", "")),
    }


def _save_tokenizer(preprocessor: Any, model: nn.Module, folder: Path) -> None:
    for owner in (preprocessor, model.backbone, getattr(preprocessor, "backbone", None)):
        tokenizer = getattr(owner, "tokenizer", None) if owner is not None else None
        if tokenizer is not None and hasattr(tokenizer, "save_pretrained"):
            tokenizer.save_pretrained(str(folder))
            return
    raise ExportError(
        "The text preprocessor exposes no tokenizer (expected `preprocessor.tokenizer` with save_pretrained), "
        "so the bundle could not include it."
    )


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


def _jit_load(path: Path) -> nn.Module:
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
        return self.scripted(*_as_inputs(batch, self.modality))


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
    scripted = _jit_load(folder / TORCHSCRIPT_FILE)
    model = BundleModel(scripted, classes, config["modality"]).eval()
    if config.get("lexical"):  # `core.evaluation.predict_proba` mixes it in, as the app and predict.py do
        from core import ngrams

        model.lexical = ngrams.load(folder / config["lexical"]["model"])
    info = {**info, "classes": classes, "modality": config["modality"], "parity": parity, "bundle": str(folder)}
    info["bundle_format"] = manifest.get("format")
    return model, BundlePreprocessor(folder, config), info


# ------------------------------------------------------------------------------------------------ parity run


def _reference_probabilities(model: nn.Module, preprocessor: Any, items: Sequence[str], batch_size: int) -> np.ndarray:
    return predict_proba(model, preprocessor, list(items), device="cpu", batch_size=batch_size)


def _run_predict_script(bundle_dir: Path, items: Sequence[str], engine: str, timeout: float) -> np.ndarray:
    """Run the bundle's predict.py in a fresh Python process and read its probabilities."""
    with tempfile.TemporaryDirectory(prefix="ts-parity-") as scratch:
        inputs = Path(scratch) / "inputs.json"
        inputs.write_text(json.dumps([str(item) for item in items]), encoding="utf-8")
        command = [sys.executable, str(bundle_dir / PREDICT_FILE), "--json", "--inputs-file", str(inputs)]
        command += ["--engine", engine]
        env = {**os.environ, "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1")}
        env["PYTHONPATH"] = ""  # the bundle must not lean on our own code
        done = subprocess.run(command, cwd=scratch, env=env, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        raise RuntimeError(f"predict.py exited with {done.returncode}: {' | '.join(tail)}")
    records = json.loads(done.stdout)["predictions"]
    return np.asarray([record["probabilities"] for record in records], dtype=np.float64)


def check_parity(
    bundle_dir: str | Path,
    model: nn.Module,
    preprocessor: Any,
    items: Sequence[str],
    reference: np.ndarray | None = None,
    batch_size: int = 32,
    tolerance: float = PARITY_TOLERANCE,
    script_timeout: float = 600.0,
) -> ParityReport:
    """Compare every artefact in a bundle with the app's model on `items`.

    ONNX (onnxruntime) and TorchScript get the app preprocessor's batches; predict.py runs in a fresh process
    with its own preprocessing, both through TorchScript and (when the bundle has a rebuild recipe) through the
    rebuilt architecture with model.safetensors.
    """
    folder = Path(bundle_dir)
    modality = json.loads((folder / PREPROCESSING_FILE).read_text(encoding="utf-8"))["modality"]
    items = list(items)
    if reference is None:
        reference = _reference_probabilities(model, preprocessor, items, batch_size)
    batches = [_as_inputs(batch, modality) for batch in _batches(preprocessor, items, batch_size)]
    lexical = getattr(model, "lexical", None)

    def delivered(logits: torch.Tensor) -> np.ndarray:
        """The network's probabilities, mixed with the bundle's lexical model for a text run that has one."""
        probabilities = torch.softmax(logits.float(), dim=-1).numpy()
        return lexical.mix(probabilities, items) if lexical is not None else probabilities

    rows: list[ParityRow] = []
    skipped: dict[str, str] = {}

    def run_rows(artefact: str, title: str, files: tuple[str, ...], compute: Callable[[], np.ndarray]) -> None:
        try:
            candidate = compute()
        except (RuntimeError, ValueError, OSError, ImportError, subprocess.TimeoutExpired) as error:
            log.warning("Parity: %s could not run: %s", title, error)
            rows.append(ParityRow(artefact, title, len(items), 0.0, float("inf"), False, files, str(error)[:300]))
            return
        rows.append(compare_probabilities(artefact, title, reference, candidate, tolerance, files))

    def onnx_probabilities() -> np.ndarray:
        import onnxruntime

        session = onnxruntime.InferenceSession(str(folder / ONNX_FILE), providers=["CPUExecutionProvider"])
        names = [node.name for node in session.get_inputs()]
        outputs = [
            session.run(None, {name: value.numpy() for name, value in zip(names, inputs, strict=True)})[0]
            for inputs in batches
        ]
        return delivered(torch.from_numpy(np.concatenate(outputs)))

    def torchscript_probabilities() -> np.ndarray:
        scripted = _jit_load(folder / TORCHSCRIPT_FILE)
        with torch.inference_mode():
            outputs = [scripted(*inputs).float() for inputs in batches]
        return delivered(torch.cat(outputs))

    run_rows("onnx", "ONNX (onnxruntime)", (ONNX_FILE,), onnx_probabilities)
    run_rows("torchscript", "TorchScript", (TORCHSCRIPT_FILE,), torchscript_probabilities)
    run_rows(
        "predict.py",
        "predict.py (fresh process, TorchScript)",
        (PREDICT_FILE,),
        lambda: _run_predict_script(folder, items, "torchscript", script_timeout),
    )
    architecture = json.loads((folder / ARCHITECTURE_FILE).read_text(encoding="utf-8"))
    if architecture.get("rebuild"):
        run_rows(
            "predict.py:safetensors",
            "predict.py (fresh process, safetensors)",
            (WEIGHTS_FILE,),
            lambda: _run_predict_script(folder, items, "safetensors", script_timeout),
        )
    else:
        skipped["predict.py (safetensors)"] = str(architecture.get("rebuild_detail", "no rebuild recipe"))
    return ParityReport(rows=rows, examples=len(items), tolerance=tolerance, skipped=skipped)


# ---------------------------------------------------------------------------------------------------- export


@dataclass
class ExportResult:
    """What an export wrote and how far it can be trusted.

    Attributes:
        bundle_dir: the bundle folder.
        zip_path: the zip of the whole bundle (None when not asked for).
        parity: the parity report; only artefacts whose row passed should be offered.
        report: the Markdown model report (also in the bundle as MODEL_REPORT.md).
    """

    bundle_dir: Path
    zip_path: Path | None
    parity: ParityReport
    report: str

    @property
    def ok(self) -> bool:
        return self.parity.ok

    def artefacts(self) -> dict[str, Path]:
        """Single files that passed parity and may be offered for download on their own."""
        names = {"onnx": ONNX_FILE, "torchscript": TORCHSCRIPT_FILE}
        passed = self.parity.passed_files()
        return {key: self.bundle_dir / name for key, name in names.items() if name in passed}


def _prepare_folder(out_dir: Path) -> None:
    if out_dir.exists():
        if not out_dir.is_dir():
            raise ExportError(f"{out_dir} exists and is a file; choose a folder for the bundle.")
        if any(out_dir.iterdir()):
            if not (out_dir / MANIFEST_FILE).is_file() and not (out_dir / PREDICT_FILE).is_file():
                raise ExportError(f"{out_dir} is not empty and holds no earlier bundle; choose an empty folder.")
            shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)


def export_bundle(
    model: nn.Module,
    preprocessor: Any,
    run_info: dict[str, Any],
    out_dir: str | Path,
    items: Sequence[str],
    targets: Sequence[int] | None = None,
    evaluation: Any = None,
    baseline: Any = None,
    make_zip: bool = True,
    max_examples: int = DEFAULT_PARITY_EXAMPLES,
    progress: Callable[[str], None] | None = None,
    counts: Any = None,
) -> ExportResult:
    """Write the bundle of a trained classifier, check its parity on `items` and zip it.

    Args:
        model: the trained `Classifier` (any device; it is copied to the CPU, the original is left alone).
        preprocessor: the app's preprocessor for it (`load`, `collate`).
        run_info: the run record (run.json); its config and metrics go into the bundle.
        out_dir: bundle folder; an earlier bundle there is replaced, any other non-empty folder refused.
        items: the examples the parity check runs on (the test split: image paths or texts).
        targets: their class indices, for the per-class table of the report when no `evaluation` is given.
        evaluation: a `core.evaluation.Evaluation` (or its metrics dict) for the report.
        baseline: baseline results for the report (see `model_report`).
        make_zip: also write `<out_dir>.zip`.
        max_examples: parity runs on at most this many of `items` (the first ones, in order).
        progress: called with a short message before each stage.
        counts: examples per class and split (`Dataset.counts()`) for the report's data summary.

    Raises:
        ExportError: no examples to check on, or the model could not be traced / exported.
    """
    say = progress or (lambda message: log.info("Export: %s", message))
    out = Path(out_dir).expanduser().resolve()
    items = list(items)[:max_examples]
    if not items:
        raise ExportError("There are no examples to check the export on: the test split is empty. Give --data.")
    if targets is not None:
        targets = list(targets)[: len(items)]
    backbone = getattr(model, "backbone", None)
    spec = getattr(backbone, "spec", None)
    if spec is None:
        raise ExportError("Only Transfer Studio classifiers (a Backbone with a spec, plus a head) can be exported.")
    modality = spec.modality
    classes = [str(name) for name in run_info.get("classes") or []]
    _prepare_folder(out)

    cpu_model = copy.deepcopy(model).cpu().eval()
    say("computing the app's reference predictions")
    reference = _reference_probabilities(cpu_model, preprocessor, items, batch_size=32)
    if not classes:
        classes = [str(index) for index in range(reference.shape[1])]
    example = _as_inputs(
        preprocessor.collate([preprocessor.load(item, train=False) for item in _trace_items(items, modality)]), modality
    )
    wrapper = _export_module(cpu_model, modality)

    say("writing weights, labels and preprocessing")
    from safetensors.torch import save_file

    save_file(_bundle_weights(cpu_model), str(out / WEIGHTS_FILE), metadata={"format": "pt"})
    (out / LABELS_FILE).write_text(json.dumps({"classes": classes}, indent=2), encoding="utf-8")
    config = preprocessing_config(spec, preprocessor)
    (out / PREPROCESSING_FILE).write_text(json.dumps(config, indent=2), encoding="utf-8")
    if modality == "text":
        _save_tokenizer(preprocessor, cpu_model, out / TOKENIZER_DIR)
    if modality == "audio":
        from core import audio

        shutil.copyfile(audio.__file__, out / AUDIO_FEATURES_FILE)
    lexical = getattr(model, "lexical", None)
    if lexical is not None:
        from core import ngrams

        lexical.save(out / ngrams.FILE)
        shutil.copyfile(ngrams.__file__, out / LEXICAL_MODULE_FILE)
        config["lexical"] = {"model": ngrams.FILE, "module": LEXICAL_MODULE_FILE, "share": lexical.share,
                             "recipe": lexical.recipe}
        (out / PREPROCESSING_FILE).write_text(json.dumps(config, indent=2), encoding="utf-8")
    recipe = _rebuild_recipe(cpu_model, example, out)
    architecture = {
        "backbone": spec.name,
        "source": spec.source,
        "model_id": spec.model_id,
        "modality": modality,
        "num_features": int(getattr(backbone, "num_features", 0)),
        "num_classes": len(classes),
        "head": "Linear(num_features, num_classes) after dropout (dropout is off at inference)",
        "outputs": "logits; apply softmax for probabilities",
        "inputs": ["input_ids", "attention_mask"] if modality == "text" else ["pixels"],
        **recipe,
    }
    (out / ARCHITECTURE_FILE).write_text(json.dumps(architecture, indent=2), encoding="utf-8")
    (out / RUN_FILE).write_text(json.dumps(run_info, indent=2, default=str), encoding="utf-8")

    say("tracing TorchScript and writing ONNX")
    try:
        export_torchscript(wrapper, example, out / TORCHSCRIPT_FILE)
        export_onnx(wrapper, example, out / ONNX_FILE, modality)
    except (RuntimeError, TypeError, ValueError) as error:
        raise ExportError(f"Exporting {spec.name} failed while tracing: {error}") from error
    shutil.copyfile(Path(bundle_predict.__file__), out / PREDICT_FILE)
    write_manifest(out)  # predict.py verifies the manifest: it must exist before the parity run

    say("checking parity of ONNX, TorchScript and predict.py")
    parity = check_parity(out, cpu_model, preprocessor, items, reference=reference)
    log.info("%s", parity)
    stored_items = items if modality == "text" else [Path(item).name for item in items]
    (out / PARITY_FILE).write_text(json.dumps({**parity.to_dict(), "items": stored_items}, indent=2), "utf-8")
    if evaluation is None and targets is not None and len(targets) == len(items):
        evaluation = _evaluate(reference, targets, classes, items)
    report = model_report(run_info, evaluation=evaluation, baseline=baseline, parity=parity, spec=spec, counts=counts)
    (out / REPORT_FILE).write_text(report, encoding="utf-8")
    (out / README_FILE).write_text(_readme(spec, classes, parity), encoding="utf-8")
    write_manifest(out, {"created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "parity_ok": parity.ok})
    zip_path = zip_bundle(out) if make_zip else None
    return ExportResult(bundle_dir=out, zip_path=zip_path, parity=parity, report=report)


def _trace_items(items: Sequence[str], modality: str) -> list[str]:
    """Two examples to trace on; for text, of different lengths, so the traced graph keeps the padding mask.

    Tracing records the branch taken on the example: a batch without padding lets the attention-mask path be
    skipped, and the traced model would then ignore padding on every later batch.
    """
    if modality != "text":
        return list(items[:2])
    longest = max(items, key=lambda text: len(str(text).split()))
    return [str(longest), "ok"] if len(str(longest).split()) > 1 else [str(longest) + " " + str(longest), "ok"]


def _evaluate(probabilities: np.ndarray, targets: Sequence[int], classes: list[str], items: Sequence[str]) -> Any:
    return evaluate_probabilities(probabilities, targets, classes, items)


def example_input(modality: str) -> str:
    """What a bundle's `predict.py` is given in the README and the app's "On your own computer" line."""
    return {"image": "photo.jpg", "audio": "clip.wav"}.get(modality, '"a text to classify"')


def run_requirements(modality: str) -> str:
    """The packages `predict.py` needs besides torch, for a bundle of this kind of data."""
    return {"image": "pillow", "audio": "numpy scipy soundfile"}.get(modality, "transformers")


def _readme(spec: Any, classes: list[str], parity: ParityReport) -> str:
    example, needs = example_input(spec.modality), run_requirements(spec.modality)
    inputs = "`input_ids`, `attention_mask` [B, T]" if spec.modality == "text" else "`pixels` [B, 3, H, W]"
    return f"""# {spec.title} classifier — Transfer Studio bundle

Classes: {", ".join(classes)}

## Run it
    pip install torch {needs}
    python predict.py --top-k 3 {example}

`predict.py --engine safetensors` rebuilds the architecture instead ({spec.source} `{spec.model_id}` + a linear
head; needs {"timm" if spec.source == "timm" else "transformers"}); `--engine onnx` runs `model.onnx` with
onnxruntime. All engines output logits; predict.py applies softmax.

## Files
- `model.safetensors`: weights; keys `backbone.*` (the library model's own keys) and `head.weight`, `head.bias`.
- `model.torchscript.pt`, `model.onnx`: the same classifier (input {inputs}, output `logits` [B, {len(classes)}]).
- `labels.json`, `preprocessing.json`, `architecture.json`, `tokenizer/` (text), `audio_features.py` (sound: the
  spectrogram code the model was trained with): what predict.py needs.
- `run.json` (training config and metrics), `MODEL_REPORT.md`, `parity.json`.
- `manifest.json`: SHA-256 of every file; predict.py refuses a bundle whose files changed.

## Parity at export
{parity.to_markdown()}
"""


# ------------------------------------------------------------------------------------------------------ CLI


def _load_run(run_dir: Path) -> tuple[nn.Module, Any, dict[str, Any]]:
    return load_trained(run_dir)


def _load_dataset(spec: str) -> Any:
    from core import data

    if spec in ("sample-images", "sample-texts"):
        loaded = data.load_sample(spec.split("-", 1)[1])
    else:
        loader = getattr(data, "load_path", None)
        if loader is None:
            raise ExportError("core.data.load_path is not available in this installation; cannot read --data.")
        loaded = loader(spec)
    return loaded[0] if isinstance(loaded, tuple) else loaded


def _run_test_items(run_dir: Path, run_info: dict[str, Any]) -> tuple[list[str], list[int] | None]:
    """The examples the run's estimate rests on, as the trainer records them in `examples.json`."""
    path = run_dir / "examples.json"
    if not path.is_file():
        return [], None
    recorded = json.loads(path.read_text(encoding="utf-8"))
    return [str(item) for item in recorded["items"]], [int(label) for label in recorded["labels"]]


def export_run(
    run_dir: str | Path,
    out_dir: str | Path,
    dataset: Any = None,
    evaluation: Any = None,
    baseline: Any = None,
    make_zip: bool = True,
    progress: Callable[[str], None] | None = None,
) -> ExportResult:
    """Export a run folder; the parity examples are `dataset`'s test split, else the run's recorded test items."""
    folder = Path(run_dir).expanduser()
    model, preprocessor, run_info = _load_run(folder)
    targets: list[int] | None = None
    if dataset is not None:
        items, targets = dataset.split("test")
        counts = dataset.counts()
        if list(dataset.classes) != [str(name) for name in run_info.get("classes") or dataset.classes]:
            raise ExportError(
                f"The data set's classes {dataset.classes} differ from the model's {run_info.get('classes')}: "
                "give the data set the model was trained on."
            )
    else:
        items, targets = _run_test_items(folder, run_info)
        counts = None
    if not items:
        raise ExportError(
            f"No test examples to check the export on: {folder} records none. Give the data set with --data."
        )
    if evaluation is None:  # the run's own estimate (out of fold under cross-validation), with its confusions
        from core.evaluation import recorded_estimate

        evaluation = recorded_estimate(folder)
    return export_bundle(
        model,
        preprocessor,
        run_info,
        out_dir,
        items,
        targets=targets,
        evaluation=evaluation,
        baseline=baseline,
        make_zip=make_zip,
        progress=progress,
        counts=counts,
    )


def main_export(args: argparse.Namespace) -> int:
    """`python -m core export --model RUN --out BUNDLE [--data DATA]`: write the bundle, print the parity report.

    Exit status 0 when parity holds, 1 when it does not (the bundle is still written, for inspection), 2 when
    the export could not be made.
    """
    try:
        dataset = _load_dataset(args.data) if getattr(args, "data", None) else None
        result = export_run(args.model, args.out, dataset=dataset)
    except (ExportError, BundleError, FileNotFoundError, ValueError, OSError) as error:
        sys.stderr.write(f"error: {error}\n")
        return 2
    sys.stdout.write(f"Bundle: {result.bundle_dir}\n")
    if result.zip_path is not None:
        sys.stdout.write(f"Zip:    {result.zip_path}\n")
    sys.stdout.write(f"{result.parity}\n")
    return 0 if result.ok else 1

