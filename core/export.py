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

This module writes a bundle and is the public face of the export modules below it, which it re-exports:
`core._export_bundle` (the files, the manifest, the zip and the reader), `core._export_formats` (TorchScript,
ONNX, the weights' layout, the rebuild recipe, the preprocessing) and `core._export_parity` (the parity check).
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import shutil
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from core import audio, bundle_predict, data, ngrams
from core._bundle_folder import (
    ARCHITECTURE_FILE,
    AUDIO_FEATURES_FILE,
    BACKBONE_CONFIG_DIR,
    FEATURE_EXTRACTOR_DIR,
    LABELS_FILE,
    LEXICAL_FILE,
    LEXICAL_MODULE_FILE,
    MANIFEST_FILE,
    ONNX_FILE,
    PARITY_FILE,
    PREDICT_FILE,
    PREPROCESSING_FILE,
    README_FILE,
    REPORT_FILE,
    RUN_FILE,
    TOKENIZER_DIR,
    TORCHSCRIPT_FILE,
    WEIGHTS_FILE,
)
from core._export_bundle import (
    BundleError,
    BundleModel,
    BundlePreprocessor,
    ExportError,
    as_inputs,
    load_bundle,
    verify_manifest,
    write_manifest,
    zip_bundle,
)
from core._export_formats import (
    ONNX_OPSET,
    bundle_weights,
    export_module,
    export_onnx,
    export_torchscript,
    input_names,
    preprocessing_config,
    rebuild_recipe,
    save_feature_extractor,
    save_tokenizer,
    trace_items,
)
from core._export_parity import (
    PARITY_TOLERANCE,
    ParityReport,
    ParityRow,
    check_parity,
    compare_probabilities,
    reference_probabilities,
)
from core.backbones import get_spec
from core.evaluation import evaluate_probabilities, recorded_estimate
from core.model_report import model_report
from core.preprocess import uses_feature_extractor
from core.training import load_trained

log = logging.getLogger(__name__)

DEFAULT_PARITY_EXAMPLES = 256


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
    reference = reference_probabilities(cpu_model, preprocessor, items, batch_size=32)
    if not classes:
        classes = [str(index) for index in range(reference.shape[1])]
    example = as_inputs(
        preprocessor.collate([preprocessor.load(item, train=False) for item in trace_items(items, modality)]), modality
    )
    wrapper = export_module(cpu_model, modality)

    say("writing weights, labels and preprocessing")
    from safetensors.torch import save_file

    save_file(bundle_weights(cpu_model), str(out / WEIGHTS_FILE), metadata={"format": "pt"})
    (out / LABELS_FILE).write_text(json.dumps({"classes": classes}, indent=2), encoding="utf-8")
    config = preprocessing_config(spec, preprocessor)
    (out / PREPROCESSING_FILE).write_text(json.dumps(config, indent=2), encoding="utf-8")
    if modality == "text":
        save_tokenizer(preprocessor, cpu_model, out / TOKENIZER_DIR)
    if modality == "audio":
        shutil.copyfile(audio.__file__, out / AUDIO_FEATURES_FILE)
        if uses_feature_extractor(spec):
            save_feature_extractor(preprocessor, out / FEATURE_EXTRACTOR_DIR)
    lexical = getattr(model, "lexical", None)
    if lexical is not None:
        lexical.save(out / LEXICAL_FILE)
        shutil.copyfile(ngrams.__file__, out / LEXICAL_MODULE_FILE)
        config["lexical"] = {"model": LEXICAL_FILE, "module": LEXICAL_MODULE_FILE, "share": lexical.share,
                             "recipe": lexical.recipe}
        (out / PREPROCESSING_FILE).write_text(json.dumps(config, indent=2), encoding="utf-8")
    recipe = rebuild_recipe(cpu_model, example, out)
    architecture = {
        "backbone": spec.name,
        "source": spec.source,
        "model_id": spec.model_id,
        "modality": modality,
        "num_features": int(getattr(backbone, "num_features", 0)),
        "num_classes": len(classes),
        "head": "Linear(num_features, num_classes) after dropout (dropout is off at inference)",
        "outputs": "logits; apply softmax for probabilities",
        "inputs": input_names(spec),
        **recipe,
    }
    (out / ARCHITECTURE_FILE).write_text(json.dumps(architecture, indent=2), encoding="utf-8")
    (out / RUN_FILE).write_text(json.dumps(run_info, indent=2, default=str), encoding="utf-8")

    say("tracing TorchScript and writing ONNX")
    try:
        export_torchscript(wrapper, example, out / TORCHSCRIPT_FILE)
        export_onnx(wrapper, example, out / ONNX_FILE, modality, input_names(spec))
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


def _evaluate(probabilities: np.ndarray, targets: Sequence[int], classes: list[str], items: Sequence[str]) -> Any:
    return evaluate_probabilities(probabilities, targets, classes, items)


def example_input(modality: str) -> str:
    """What a bundle's `predict.py` is given in the README and the app's "On your own computer" line."""
    return {"image": "photo.jpg", "audio": "clip.wav"}.get(modality, '"a text to classify"')


def run_requirements(modality: str, backbone: Any = None) -> str:
    """The packages `predict.py` needs besides torch, for a bundle of this kind of data (and this backbone, a spec
    or its name: an audio foundation model's bundle also needs transformers, for its feature extractor)."""
    needs = {"image": "pillow", "audio": "numpy scipy soundfile"}.get(modality, "transformers")
    if modality == "audio" and backbone is not None and _hears_through_extractor(backbone):
        needs += " transformers"
    return needs


def _hears_through_extractor(backbone: Any) -> bool:
    if not isinstance(backbone, str):
        return uses_feature_extractor(backbone)
    try:
        return uses_feature_extractor(get_spec(backbone))
    except KeyError:  # a backbone this installation does not know (a test's): the spectrogram kind
        return False


def _readme(spec: Any, classes: list[str], parity: ParityReport) -> str:
    example = example_input(spec.modality)
    needs = run_requirements(spec.modality, spec)
    inputs = {"pixels": "`pixels` [B, 3, H, W]", "input_values": "`input_values` (the feature extractor's output)"}.get(
        input_names(spec)[0], "`input_ids`, `attention_mask` [B, T]")
    metadata = f"`{LABELS_FILE}`, `{PREPROCESSING_FILE}`, `{ARCHITECTURE_FILE}`, `{TOKENIZER_DIR}/` (text)"
    return f"""# {spec.title} classifier — Transfer Studio bundle

Classes: {", ".join(classes)}

## Run it
    pip install torch {needs}
    python {PREDICT_FILE} --top-k 3 {example}

`{PREDICT_FILE} --engine safetensors` rebuilds the architecture instead ({spec.source} `{spec.model_id}` + a linear
head; needs {"timm" if spec.source == "timm" else "transformers"}); `--engine onnx` runs `{ONNX_FILE}` with
onnxruntime. All engines output logits; {PREDICT_FILE} applies softmax.

## Files
- `{WEIGHTS_FILE}`: weights; keys `backbone.*` (the library model's own keys) and `head.weight`, `head.bias`.
- `{TORCHSCRIPT_FILE}`, `{ONNX_FILE}`: the same classifier (input {inputs}, output `logits` [B, {len(classes)}]).
- {metadata}, `{AUDIO_FEATURES_FILE}` (sound: the
  spectrogram or clip-cutting code the model was trained with), `{FEATURE_EXTRACTOR_DIR}/` (an audio foundation model's
  own preprocessing): what {PREDICT_FILE} needs.
- `{RUN_FILE}` (training config and metrics), `{REPORT_FILE}`, `{PARITY_FILE}`.
- `{MANIFEST_FILE}`: SHA-256 of every file; {PREDICT_FILE} refuses a bundle whose files changed.

## Parity at export
{parity.to_markdown()}
"""


# ------------------------------------------------------------------------------------------------------ CLI


def _load_run(run_dir: Path) -> tuple[nn.Module, Any, dict[str, Any]]:
    return load_trained(run_dir)


def _load_dataset(spec: str) -> Any:
    """`--data`: what the command line accepts (a zip, a folder, a table or a built-in sample), as a Dataset."""
    return data.load_path(spec)[0]


def _run_test_items(run_dir: Path) -> tuple[list[str], list[int] | None, Any]:
    """The examples the run's estimate rests on, their labels and the estimate itself, from `examples.json` (read
    once, by `recorded_estimate`); no examples and no estimate for a run that recorded none."""
    recorded = recorded_estimate(run_dir)
    if recorded is None:
        return [], None, None
    return [str(item) for item in recorded.items], [int(label) for label in recorded.targets], recorded


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
    recorded_items, recorded_targets, recorded = _run_test_items(folder)
    if dataset is not None:
        items, targets = dataset.split("test")
        counts = dataset.counts()
        if list(dataset.classes) != [str(name) for name in run_info["classes"]]:
            raise ExportError(
                f"The data set's classes {dataset.classes} differ from the model's {run_info['classes']}: "
                "give the data set the model was trained on."
            )
    else:
        items, targets, counts = recorded_items, recorded_targets, None
    if not items:
        raise ExportError(
            f"No test examples to check the export on: {folder} records none. Give the data set with --data."
        )
    if evaluation is None:  # the run's own estimate (out of fold under cross-validation), with its confusions
        evaluation = recorded
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


__all__ = [
    "ARCHITECTURE_FILE",
    "AUDIO_FEATURES_FILE",
    "BACKBONE_CONFIG_DIR",
    "FEATURE_EXTRACTOR_DIR",
    "DEFAULT_PARITY_EXAMPLES",
    "LABELS_FILE",
    "LEXICAL_FILE",
    "LEXICAL_MODULE_FILE",
    "MANIFEST_FILE",
    "ONNX_FILE",
    "ONNX_OPSET",
    "PARITY_FILE",
    "PARITY_TOLERANCE",
    "PREDICT_FILE",
    "PREPROCESSING_FILE",
    "README_FILE",
    "REPORT_FILE",
    "RUN_FILE",
    "TOKENIZER_DIR",
    "TORCHSCRIPT_FILE",
    "WEIGHTS_FILE",
    "BundleError",
    "BundleModel",
    "BundlePreprocessor",
    "ExportError",
    "ExportResult",
    "ParityReport",
    "ParityRow",
    "check_parity",
    "compare_probabilities",
    "example_input",
    "export_bundle",
    "export_onnx",
    "export_run",
    "export_torchscript",
    "load_bundle",
    "main_export",
    "model_report",
    "preprocessing_config",
    "run_requirements",
    "verify_manifest",
    "write_manifest",
    "zip_bundle",
]
