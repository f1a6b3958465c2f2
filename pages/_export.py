"""The Export section at the end of the Test page: build the bundle, show its parity check, offer the downloads.

Only artefacts that passed the parity check are offered; a failure is shown in red with what did not match.
The work is in `core.export`; this module only draws it.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pandas as pd
import streamlit as st

from core import evaluation, export, no_transfer
from core.paths import check_in_workspace, workspace_subdir
from core.session import StudioState

log = logging.getLogger(__name__)

_MIME = {".zip": "application/zip", ".onnx": "application/octet-stream", ".pt": "application/octet-stream"}
_ARTEFACT_TITLES = {"onnx": "ONNX model", "torchscript": "TorchScript model"}


def _model(state: StudioState) -> tuple[Any, Any, dict[str, Any]]:
    """The run's model as the Test page loaded it (kept in its scratch), or loaded here."""
    cached = state.scratch.get("test", {}).get("model")
    if cached is not None and cached[0] == state.run_dir:
        return cached[1], cached[2], cached[3]
    check_in_workspace(state.run_dir, state.owner)
    with st.spinner("Loading the trained model…"):
        return evaluation.load_model(state.run_dir)


def _evaluation(state: StudioState) -> Any:
    """The Test page's evaluation of this run on the loaded data, if it computed one."""
    if state.dataset is None:
        return None
    evaluations = state.scratch.get("test", {}).get("evaluations", {})
    return evaluations.get(f"{state.run_dir}|{state.dataset.fingerprint}")


def _download(label: str, path: Path, key: str) -> None:
    st.download_button(
        label, path.read_bytes(), file_name=path.name, mime=_MIME.get(path.suffix, "application/octet-stream"), key=key
    )


def _show_result(result: export.ExportResult, run_id: str) -> None:
    parity = result.parity
    if parity.ok:
        st.success(
            f"Parity holds: every export gives the app's top-1 class on all {parity.examples} test examples, and "
            f"probabilities within {parity.tolerance:g} (largest difference {parity.max_abs_diff:.1e}).",
            icon="✅",
        )
    else:
        st.error(
            "Parity FAILED: some exports do not give the app's answers. They are not offered for download; the "
            "table says which and by how much.",
            icon="🛑",
        )
    st.dataframe(pd.DataFrame(parity.table()), hide_index=True, width="stretch")
    for artefact, reason in parity.skipped.items():
        st.caption(f"{artefact}: not checked — {reason}.")
    for row in parity.rows:
        if not row.passed:
            detail = row.error or f"top-1 agreement {row.top1_agreement:.1%}, max |Δp| {row.max_abs_diff:.1e}"
            st.error(f"{row.title} does not match the app ({detail}); it is not offered.")

    columns = st.columns(3)
    with columns[0]:
        if parity.ok and result.zip_path is not None and result.zip_path.is_file():
            _download("Download bundle (zip)", result.zip_path, key=f"export-zip-{run_id}")
            st.caption(f"Weights, ONNX, TorchScript, {export.PREDICT_FILE}, labels, preprocessing, report, manifest.")
        else:
            st.caption("The bundle zip is offered once every artefact passes parity.")
    for column, (artefact, path) in zip(columns[1:], result.artefacts().items(), strict=False):
        with column:
            _download(f"Download {_ARTEFACT_TITLES.get(artefact, artefact)}", path, key=f"export-{artefact}-{run_id}")


def _how_to_run(result: export.ExportResult | None, run_id: str, modality: str, backbone: str | None) -> None:
    """The commands that run the downloaded bundle on the user's own computer.

    The run folder lives on the server, so a command naming it is of no use in the user's terminal; the bundle
    zip is what they take away, and its `predict.py` is what they run (the same commands as the bundle's README).
    """
    zip_name = result.zip_path.name if result is not None and result.zip_path is not None else f"{run_id}.zip"
    folder = result.bundle_dir.name if result is not None else run_id
    example, packages = export.example_input(modality), f"torch {export.run_requirements(modality, backbone)}"
    st.markdown(f"**On your own computer**: build the bundle, download `{zip_name}`, then")
    st.code(f"unzip {zip_name}\npip install {packages}\npython {folder}/{export.PREDICT_FILE} --top-k 3 {example}",
            language="bash")  # fmt: skip


def render_export_section(state: StudioState) -> None:
    """Draw the Export section for the run chosen on the Test page (`state.run_dir`)."""
    st.header("Export")
    st.caption(
        "A bundle that runs without Transfer Studio: weights (safetensors), the same model as ONNX and "
        "TorchScript, a standalone `predict.py`, labels, preprocessing and a model report. Before anything is "
        "offered, each export is run on the test split and must give the app's answers."
    )
    if state.run_dir is None or state.dataset is None:
        st.info("Train a model and load its data set first.")
        return
    try:
        model, preprocessor, run_info = _model(state)
    except (evaluation.ModelLoadError, OSError, RuntimeError, ValueError, KeyError) as error:
        st.error(f"This run's model cannot be loaded for export: {error}")
        return
    run_id = str(run_info.get("run_id") or Path(state.run_dir).name)
    scratch: dict[str, Any] = state.scratch.setdefault("export", {})
    result_of_test = _evaluation(state)
    baselines = no_transfer.load_baselines(run_info)
    items, targets = state.dataset.split("test")

    if st.button("Build bundle", type="primary", key="export-build", disabled=not items):
        with st.spinner("Exporting ONNX and TorchScript, writing the bundle and checking parity…"):
            try:
                scratch[state.run_dir] = export.export_bundle(
                    model,
                    preprocessor,
                    run_info,
                    workspace_subdir("exports", state.owner) / run_id,
                    items,
                    targets=targets,
                    evaluation=result_of_test,
                    baseline=baselines,
                    counts=state.dataset.counts(),
                )
            except (export.ExportError, OSError, RuntimeError, ValueError) as error:
                log.exception("Export of %s failed", run_id)
                st.error(f"The export failed: {error}")
    if not items:
        st.warning("The test split is empty, so an export cannot be checked. Reload the data with a test share.")
    result = scratch.get(state.run_dir)
    if result is not None:
        _show_result(result, run_id)
    _how_to_run(result, run_id, str(run_info.get("modality") or state.dataset.modality),
                run_info.get("backbone") or state.backbone_name)

    report = (
        result.report
        if result is not None
        else export.model_report(run_info, evaluation=result_of_test, baseline=baselines, counts=state.dataset.counts())
    )
    st.download_button(
        "Download model report (Markdown)",
        report.encode("utf-8"),
        file_name=f"model-report-{run_id}.md",
        mime="text/markdown",
        key=f"export-report-{run_id}",
    )
