"""The "Does transfer learning help?" section of the Test page: the pretrained run against models without
pretraining, with a verdict that reads the paired 95 % interval, and baselines trained in the background.

The work is in `core.no_transfer` (the baselines), `core.transfer_verdict` (the verdict) and `core.background` (the
thread); this module only draws them and polls the task.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import streamlit as st

from core import background, evaluation, no_transfer, stats, transfer_verdict
from core.dataset import Dataset
from core.stats import format_interval

BASELINE_TASK = "test_baseline_task"  # (run folder, core.background.BackgroundTask): one per session


def _difference_cell(row: dict[str, Any]) -> str:
    """'+4.6 points (−1.2 to +10.4)' for the table: pretrained minus the baseline, with its 95 % interval."""
    low, high = row["interval95"]
    points = transfer_verdict.format_points
    return f"{points(row['difference'])} points ({points(low)} to {points(high)})"


def _baseline_key(run_dir: str) -> str:
    """The baselines' task key in this server process: the run folder, so a reloaded page finds its task again."""
    return f"baselines:{Path(run_dir).resolve()}"


def _baseline_task(run_dir: str) -> background.BackgroundTask | None:
    """The baseline task of the run shown: this session's, or one still running for the run (started before a
    reload, or from another tab); another run's finished task is let go."""
    held = st.session_state.get(BASELINE_TASK)
    if held is not None:
        task_run, task = held
        if task_run == run_dir:
            return task
        if task.is_running:
            return None  # this session's baselines of another run are still training
        del st.session_state[BASELINE_TASK]
    task = background.running(_baseline_key(run_dir))
    if task is not None:
        st.session_state[BASELINE_TASK] = (run_dir, task)
    return task


def _start_baselines(run_dir: str, dataset: Dataset, run_info: dict[str, Any], result: evaluation.Evaluation,
                     epochs: int, scratch: bool) -> background.BackgroundTask:
    """The baselines of the run shown, on a thread of their own (the page polls it: `_baseline_progress`): the
    classic model of the data's kind, and the random-weights network if `scratch`."""
    kinds = [*no_transfer.DEFAULT_CLASSIC_BASELINE.get(dataset.modality, []), *(["scratch"] if scratch else [])]

    def work(progress: Any, stop_event: Any) -> list[no_transfer.BaselineResult]:
        # the worker reads only these arguments; it never touches the page
        return no_transfer.train_baselines(dataset, run_info, kinds=kinds, epochs=epochs, estimate=result,
                                          progress=progress, stop_event=stop_event)

    return background.start_once(_baseline_key(run_dir), work, label=f"baselines-{run_info.get('run_id')}")


@st.fragment(run_every=1.0)
def _baseline_progress(run_dir: str) -> None:
    """Redrawn every second on its own while the baselines train; the whole page reruns once when they are done."""
    task = _baseline_task(run_dir)
    if task is None:
        return
    snapshot = task.snapshot()
    if snapshot.status != background.RUNNING:
        st.rerun()  # the whole page once: the verdict and table above redraw with the new baselines
    st.progress(snapshot.share, text=f"{snapshot.note} ({snapshot.seconds:.0f} s)")
    if st.button("Stop the from-scratch training", key="test_baseline_stop",
                 help="Stops after the current batch; the baselines already trained are kept."):
        task.stop()
        st.toast("Stopping after the current batch…")


def render_transfer_section(run_dir: str, dataset: Dataset, run_info: dict[str, Any],
                            result: evaluation.Evaluation) -> None:
    """The section, drawn where it is called: zero-shot line, verdict, comparison table, and the baseline trainer."""
    tuning = result.metrics.get("sentence_tuning") or {}
    st.subheader("Does transfer learning help?")
    if "zero_shot" in result.metrics:  # a sentence encoder: the class names alone already make a classifier
        zero_shot = result.metrics["zero_shot"]
        tuned = (" The class names are embedded by the pretrained encoder, before any tuning."
                 if tuning.get("on") else "")  # fmt: skip
        st.markdown(
            f"**0 examples** (the class names alone, embedded by {run_info.get('backbone', 'the backbone')}) → "
            f"{format_interval(zero_shot['accuracy'], zero_shot['accuracy_interval95'])}; **trained on your "
            f"labelled examples** → {format_interval(result.accuracy, result.metrics['accuracy_interval95'])} (both "
            f"scored on the same {zero_shot['n']} examples)." + tuned
        )
    baselines = no_transfer.load_baselines(run_info)
    _draw_comparison(run_info, result, baselines)
    with st.expander("Train a baseline", expanded=not baselines):
        _draw_baseline_trainer(run_dir, dataset, run_info, result)


def _draw_comparison(run_info: dict[str, Any], result: evaluation.Evaluation,
                     baselines: list[no_transfer.BaselineResult]) -> None:
    """The verdict in its coloured box, and the table of this run and its baselines with the paired differences."""
    network_alone = (result.metrics.get("lexical") or {}).get("network_accuracy")  # texts: the mix holds TF-IDF too
    verdict = transfer_verdict.judge_run(result, baselines)
    transfer_section = st.container(key="test_transfer_section")  # the verdict and its table: one picture in the README
    alert = {"success": "success", "warning": "warning", "worse": "error"}.get(verdict.level, "info")
    getattr(transfer_section, alert)(verdict.sentence)
    if baselines:
        differences = {row["baseline"]: row for row in verdict.comparisons if row["interval95"] is not None}
        scored = len(result.targets)
        this_run = "this run" if network_alone is None else "this run: network + TF-IDF, as delivered"
        rows = [{"model": f"Pretrained {run_info.get('backbone', '')}", "accuracy": result.accuracy,
                 "interval": format_interval(result.accuracy, result.metrics["accuracy_interval95"]),
                 "n": scored, "macro_f1": result.macro_f1, "difference": "", "what": this_run}]  # fmt: skip
        if network_alone is not None:
            correct = round(network_alone * scored)
            rows.append({"model": f"Pretrained {run_info.get('backbone', '')}, network alone",
                         "accuracy": network_alone,
                         "interval": format_interval(network_alone, stats.wilson_interval(correct, scored)),
                         "n": scored, "macro_f1": None, "difference": "",
                         "what": "this run without its TF-IDF model"})  # fmt: skip
        rows += [{"model": b.title, "accuracy": b.accuracy, "n": b.n,
                  "interval": format_interval(b.accuracy, b.accuracy_interval95) if b.accuracy_interval95 else "-",
                  "macro_f1": b.macro_f1, "what": b.detail,
                  "difference": _difference_cell(differences[b.name]) if b.name in differences else "-"}
                 for b in baselines]  # fmt: skip
        transfer_section.container(key="test_baselines_table").dataframe(
            pd.DataFrame(rows),
            hide_index=True,
            column_order=["model", "accuracy", "interval", "n", "difference", "macro_f1", "what"],
            column_config={
                "accuracy": st.column_config.ProgressColumn("Accuracy", format="percent", min_value=0, max_value=1),
                "interval": st.column_config.TextColumn("Accuracy with 95 % interval"),
                "n": st.column_config.NumberColumn("n (examples scored)"),
                "difference": st.column_config.TextColumn(
                    "Pretrained − this",
                    help="Accuracy points the pretrained model scores above this baseline, with the 95 % interval of "
                    "that difference: both answered the same examples, so it is paired example by example. The verdict "
                    "above reads it."),
                "macro_f1": st.column_config.NumberColumn("Macro-F1", format="%.3f"),
            },
        )


def _draw_baseline_trainer(run_dir: str, dataset: Dataset, run_info: dict[str, Any],
                           result: evaluation.Evaluation) -> None:
    """What the baselines are, their choices, and the button that trains them (its progress while they train)."""
    st.markdown(
        "The **same architecture with random weights** (the same frozen groups and head, trained on the same "
        "split)"
        + (
            ", and **TF-IDF + logistic regression**, a classic text model without any pretraining (word or character "
            "n-grams, whichever cross-validation prefers), scored on the same examples as this run."
            if dataset.modality == "text"
            else ", and **MFCC statistics + logistic regression**, the classic speech features without any "
            "pretraining (20 coefficients and their deltas, mean and spread over time) in this run's own head, scored "
            "on the same examples as this run."
            if dataset.modality == "audio"
            else ", and **raw pixels + logistic regression**: each image shrunk to 32×32, its pixels (their main "
            "patterns) in this run's own head, with no pretraining at all, scored on the same examples as this run."
        )  # fmt: skip
        + " They train in the background: the rest of this page stays usable."
    )
    with_scratch = st.checkbox(
        "Also the same network with random weights", value=True, key="test_baseline_scratch",
        help="It trains the whole network from scratch on every fold, so it takes about as long as a training run "
        "(minutes on a CPU); the classic model takes seconds. Untick it for the quick comparison alone.")
    recorded_epochs = int((run_info.get("config") or {}).get("epochs") or 5)
    baseline_epochs = st.number_input("Epochs for the from-scratch model", 1, 200, min(recorded_epochs, 10),
                                      disabled=not with_scratch)
    task = _baseline_task(run_dir)
    if st.button("Train baseline", type="primary", disabled=task is not None and task.is_running):
        started = _start_baselines(run_dir, dataset, run_info, result, int(baseline_epochs), with_scratch)
        st.session_state[BASELINE_TASK] = (run_dir, started)
        task = _baseline_task(run_dir)
    if task is not None and task.is_running:
        _baseline_progress(run_dir)
    elif task is not None:
        finished = task.snapshot()
        if finished.status == background.FAILED:  # kept on screen until the next try; the table above stays
            st.error(f"The baseline could not be trained: {finished.error}. Any baseline trained before it is kept "
                     "above; press Train baseline to try again.")
        else:
            del st.session_state[BASELINE_TASK]
