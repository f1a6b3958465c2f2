"""Parity: every artefact of a bundle against the app's own predictions on the same examples.

ONNX (onnxruntime) and TorchScript run on the app preprocessor's batches; the bundle's `predict.py` runs in a fresh
process with its own preprocessing. An artefact passes when its top-1 class always equals the app's and its
probabilities differ by at most `PARITY_TOLERANCE`; only what passed is offered for download.
"""

from __future__ import annotations

import json
import logging
import math
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from core._bundle_folder import (
    ARCHITECTURE_FILE,
    ONNX_FILE,
    PREDICT_FILE,
    PREPROCESSING_FILE,
    TORCHSCRIPT_FILE,
    WEIGHTS_FILE,
)
from core._export_bundle import as_inputs, jit_load
from core.evaluation import predict_proba

log = logging.getLogger(__name__)

PARITY_TOLERANCE = 1e-4


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


def _batches(preprocessor: Any, items: Sequence[str], batch_size: int) -> list[Any]:
    return [
        preprocessor.collate([preprocessor.load(item, train=False) for item in items[start : start + batch_size]])
        for start in range(0, len(items), batch_size)
    ]


def reference_probabilities(model: nn.Module, preprocessor: Any, items: Sequence[str], batch_size: int) -> np.ndarray:
    """The app's own probabilities on `items` (CPU): what every artefact is compared with."""
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
        reference = reference_probabilities(model, preprocessor, items, batch_size)
    batches = [as_inputs(batch, modality) for batch in _batches(preprocessor, items, batch_size)]
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
        scripted = jit_load(folder / TORCHSCRIPT_FILE)
        with torch.inference_mode():
            outputs = [scripted(*inputs).float() for inputs in batches]
        return delivered(torch.cat(outputs))

    run_rows("onnx", "ONNX (onnxruntime)", (ONNX_FILE,), onnx_probabilities)
    run_rows("torchscript", "TorchScript", (TORCHSCRIPT_FILE,), torchscript_probabilities)
    run_rows(
        PREDICT_FILE,  # the artefact is the bundle's script itself
        "predict.py (fresh process, TorchScript)",
        (PREDICT_FILE,),
        lambda: _run_predict_script(folder, items, "torchscript", script_timeout),
    )
    architecture = json.loads((folder / ARCHITECTURE_FILE).read_text(encoding="utf-8"))
    if architecture["rebuild"]:
        run_rows(
            "predict.py:safetensors",
            "predict.py (fresh process, safetensors)",
            (WEIGHTS_FILE,),
            lambda: _run_predict_script(folder, items, "safetensors", script_timeout),
        )
    else:
        skipped["predict.py (safetensors)"] = str(architecture["rebuild_detail"])
    return ParityReport(rows=rows, examples=len(items), tolerance=tolerance, skipped=skipped)

