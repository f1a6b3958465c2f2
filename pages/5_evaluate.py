"""Step 5 · Test: how good is the trained model on data it never saw, where does it go wrong, and what does it
say about new examples. The work is in `core.evaluation`; this page draws it and keeps results per run."""

from __future__ import annotations

import hashlib
import importlib
import logging
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from core import background, data, evaluation, insight, model_report, no_transfer, stats, transfer_verdict
from core.paths import check_in_workspace, workspace_subdir
from core.stats import format_interval
from pages._explain import render_explain
from pages._suggest import render_suggest_section
from pages._ui import get_state, require

log = logging.getLogger(__name__)

GALLERY_SIZE = 12
IMAGE_TYPES = ["png", "jpg", "jpeg", "bmp", "gif", "webp", "tif", "tiff"]
AUDIO_TYPES = ["wav", "flac", "ogg", "oga", "mp3"]

st.title("5 · Test")
state = get_state()
if state.run_dir is None and state.runs:
    # Loading another data set sets the model aside, not the session's runs: they stay here to pick (newest first).
    state.run_dir = state.runs[-1]
state = require("Data", "Train")
dataset = state.dataset
scratch: dict[str, Any] = state.scratch.setdefault("test", {})



# ---------------------------------------------------------------------------------------------------- which run


def _run_label(run_dir: str) -> str:
    info = evaluation.read_run_info(run_dir)
    if not info:
        return Path(run_dir).name
    accuracy = (info.get("metrics") or {}).get("val_accuracy")
    parts = [str(info.get("run_id") or Path(run_dir).name), str(info.get("backbone", "?"))]
    if info.get("frozen_groups") is not None:
        parts.append(f"{info['frozen_groups']} group(s) frozen")
    if isinstance(accuracy, (int, float)):
        parts.append(f"val {accuracy:.0%}")
    return " · ".join(parts)


runs = list(dict.fromkeys([*reversed(state.runs), state.run_dir]))
run_dir = st.selectbox(
    "Run to test",
    runs,
    index=runs.index(state.run_dir),
    format_func=_run_label,
    help="Your runs on this data (kept across a refresh), newest first. The one chosen here is also the one "
    "exported below.",
)
state.run_dir = run_dir


def _load(run_dir: str) -> tuple[Any, Any, dict[str, Any]]:
    """The run's model, kept for this session so that page switches do not reload it."""
    cached = scratch.get("model")
    if cached is not None and cached[0] == run_dir:
        return cached[1], cached[2], cached[3]
    check_in_workspace(run_dir, state.owner)
    with st.spinner("Loading the trained model…"):
        model, preprocessor, info = evaluation.load_model(run_dir)
    scratch["model"] = (run_dir, model, preprocessor, info)
    return model, preprocessor, info


try:
    model, preprocessor, run_info = _load(run_dir)
except (evaluation.ModelLoadError, OSError, RuntimeError, ValueError, KeyError) as error:  # PermissionError too
    st.error(f"This run's model cannot be loaded: {error}")
    st.stop()

classes = list(run_info.get("classes") or dataset.classes)
if classes != list(dataset.classes):
    st.error(
        f"This run was trained on the classes {', '.join(classes)}, but the loaded data set has "
        f"{', '.join(dataset.classes)}. Load the data set it was trained on, or pick another run."
    )
    st.stop()
if run_info.get("dataset_fingerprint") and run_info["dataset_fingerprint"] != dataset.fingerprint:
    st.warning(
        "This run was trained on a different version or split of the data than the one loaded now: some test "
        "examples below may have been training examples for it, which would make the scores look too good."
    )


# ---------------------------------------------------------------------------------------------------- evaluation


def _evaluation() -> evaluation.Evaluation:
    """What the run recorded of itself (out-of-fold or test-split predictions), else the test split run now."""
    cache = scratch.setdefault("evaluations", {})
    key = f"{run_dir}|{dataset.fingerprint}"
    if key not in cache:
        recorded = evaluation.recorded_estimate(run_dir)
        if recorded is not None:
            cache[key] = recorded
            return recorded
        bar = st.progress(0.0, text="Running the model on the test split…")
        try:
            cache[key] = evaluation.evaluate(
                model,
                preprocessor,
                dataset,
                "test",
                progress=lambda done, total: bar.progress(done / max(total, 1), text=f"Tested {done} of {total}"),
            )
        finally:
            bar.empty()
    return cache[key]


try:
    result = _evaluation()
except (ValueError, OSError, RuntimeError) as error:
    st.error(f"The model could not be tested: {error}")
    st.stop()

cross_validated = result.metrics.get("protocol") == "cross-validation"
if cross_validated:
    st.info(f"**Protocol: {result.metrics['folds']}-fold cross-validation.** {result.metrics['protocol_reason']} "
            "Every number below is from predictions on examples the scoring model never saw.")  # fmt: skip
else:
    st.info(
        "**Protocol: held-out test split.** "
        + (result.metrics.get("protocol_reason") or "Scores come from the test split, which training and early "
           "stopping never saw.")  # fmt: skip
    )
tuning = result.metrics.get("sentence_tuning") or {}
if tuning.get("on"):
    st.caption(f"🎯 {tuning['reason']}" + (" Every fold tuned its own copy on its own training part only."
                                            if cross_validated else ""))
if result.metrics.get("lexical"):
    st.caption(f"🔤 Delivered probabilities: {model_report.lexical_sentence(result.metrics['lexical'])} "
               "Turn this off under Train → Advanced settings.")
accuracy_low, accuracy_high = result.metrics["accuracy_interval95"]
f1_low, f1_high = result.metrics["macro_f1_interval95"]
estimated_on = "Examples scored" if cross_validated else "Test examples"
columns = st.columns(4)
columns[0].metric(
    "Cross-validated accuracy" if cross_validated else "Test accuracy", f"{result.accuracy:.1%}",
    help="The 95 % interval (Wilson) is where the true accuracy on new data of this kind most likely lies.",
)
columns[0].caption(f"95 % interval {accuracy_low:.1%}–{accuracy_high:.1%} · n = {result.metrics['n']}")
columns[1].metric("Macro-F1", f"{result.macro_f1:.3f}", help="F1 averaged over classes: small classes count as much.")
columns[1].caption(f"95 % interval {f1_low:.3f}–{f1_high:.3f} (bootstrap)")
columns[2].metric(estimated_on, result.metrics["n"])
columns[3].metric(
    "Calibration error",
    f"{result.metrics['calibration_error']:.1%}",
    help="Average gap between the confidence the model shows and how often it is right (0 % = calibrated). "
    "Probabilities are temperature-scaled (fitted on examples not scored here).",
)
if "calibration_error_before" in result.metrics:
    columns[3].caption(f"{result.metrics['calibration_error_before']:.1%} before temperature scaling")
if result.metrics["small_sample"]:
    st.warning(
        f"These numbers rest on only {result.metrics['n']} examples (fewer than 30): read them with care; "
        "the intervals show how wide the truth may be."
    )


# ---------------------------------------------------------------------------------------------------- baselines

BASELINE_TASK = "test_baseline_task"  # (run folder, core.background.BackgroundTask): one per session


def _difference_cell(row: dict[str, Any]) -> str:
    """'+4.6 points (−1.2 to +10.4)' for the table: pretrained minus the baseline, with its 95 % interval."""
    low, high = row["interval95"]
    points = transfer_verdict.format_points
    return f"{points(row['difference'])} points ({points(low)} to {points(high)})"


def _baseline_key() -> str:
    """The baselines' task key in this server process: the run folder, so a reloaded page finds its task again."""
    return f"baselines:{Path(run_dir).resolve()}"


def _baseline_task() -> background.BackgroundTask | None:
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
    task = background.running(_baseline_key())
    if task is not None:
        st.session_state[BASELINE_TASK] = (run_dir, task)
    return task


def _start_baselines(epochs: int, scratch: bool) -> background.BackgroundTask:
    """The baselines of the run shown, on a thread of their own (the page polls it: `_baseline_progress`): the
    classic model of the data's kind, and the random-weights network if `scratch`."""
    data, info, estimate = dataset, run_info, result  # what the worker reads; it never touches the page
    kinds = [*no_transfer.DEFAULT_CLASSIC_BASELINE.get(dataset.modality, []), *(["scratch"] if scratch else [])]

    def work(progress: Any, stop_event: Any) -> list[no_transfer.BaselineResult]:
        return no_transfer.train_baselines(data, info, kinds=kinds, epochs=epochs, estimate=estimate,
                                          progress=progress, stop_event=stop_event)

    return background.start_once(_baseline_key(), work, label=f"baselines-{info.get('run_id')}")


@st.fragment(run_every=1.0)
def _baseline_progress() -> None:
    """Redrawn every second on its own while the baselines train; the whole page reruns once when they are done."""
    task = _baseline_task()
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


st.subheader("Does transfer learning help?")
if "zero_shot" in result.metrics:  # a sentence encoder: the class names alone already make a classifier
    zero_shot = result.metrics["zero_shot"]
    st.markdown(
        f"**0 examples** (the class names alone, embedded by {run_info.get('backbone', 'the backbone')}) → "
        f"{format_interval(zero_shot['accuracy'], zero_shot['accuracy_interval95'])}; **trained on your labelled "
        f"examples** → {format_interval(result.accuracy, result.metrics['accuracy_interval95'])} (both scored on the "
        f"same {zero_shot['n']} examples)."
        + (" The class names are embedded by the pretrained encoder, before any tuning." if tuning.get("on") else "")
    )
baselines = no_transfer.load_baselines(run_info)
network_alone = (result.metrics.get("lexical") or {}).get("network_accuracy")  # texts: the mix holds TF-IDF too
verdict = transfer_verdict.judge_run(result, baselines)
transfer_section = st.container(key="test_transfer_section")  # the verdict and its table: one picture in the README
alert = {"success": "success", "warning": "warning", "worse": "error"}.get(verdict.level, "info")
getattr(transfer_section, alert)(verdict.sentence)
if baselines:
    differences = {row["baseline"]: row for row in verdict.comparisons if row["interval95"] is not None}
    rows = [{"model": f"Pretrained {run_info.get('backbone', '')}", "accuracy": result.accuracy,
             "interval": format_interval(result.accuracy, result.metrics["accuracy_interval95"]),
             "n": len(result.targets), "macro_f1": result.macro_f1, "difference": "",
             "what": "this run" if network_alone is None else "this run: network + TF-IDF, as delivered"}]  # fmt: skip
    if network_alone is not None:
        correct = round(network_alone * len(result.targets))
        rows.append({"model": f"Pretrained {run_info.get('backbone', '')}, network alone", "accuracy": network_alone,
                     "interval": format_interval(network_alone, stats.wilson_interval(correct, len(result.targets))),
                     "n": len(result.targets), "macro_f1": None, "difference": "",
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
with st.expander("Train a baseline", expanded=not baselines):
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
    task = _baseline_task()
    if st.button("Train baseline", type="primary", disabled=task is not None and task.is_running):
        st.session_state[BASELINE_TASK] = (run_dir, _start_baselines(int(baseline_epochs), with_scratch))
        task = _baseline_task()
    if task is not None and task.is_running:
        _baseline_progress()
    elif task is not None:
        finished = task.snapshot()
        if finished.status == background.FAILED:  # kept on screen until the next try; the table above stays
            st.error(f"The baseline could not be trained: {finished.error}. Any baseline trained before it is kept "
                     "above; press Train baseline to try again.")
        else:
            del st.session_state[BASELINE_TASK]


# ---------------------------------------------------------------------------------------------------- more data


def learning_curve_chart(curve: insight.LearningCurve) -> go.Figure:
    """Accuracy with its 95 % interval at each share of the labels, and the fitted trend out to twice the data."""
    sizes = [point.examples for point in curve.points]
    accuracies = [point.accuracy for point in curve.points]
    figure = go.Figure(go.Scatter(
        x=sizes, y=accuracies, mode="markers+lines", name="cross-validated accuracy",
        error_y={"type": "data", "symmetric": False,
                 "array": [point.interval95[1] - point.accuracy for point in curve.points],
                 "arrayminus": [point.accuracy - point.interval95[0] for point in curve.points]},
    ))
    if curve.trend is not None:
        grid = np.geomspace(min(sizes), 2 * curve.examples_now, 40)
        figure.add_trace(go.Scatter(x=grid, y=[curve.trend.accuracy(size) for size in grid], mode="lines",
                                    line={"dash": "dash"}, name="trend (power law)"))
    figure.update_layout(xaxis_title="labelled examples per model", yaxis_title="accuracy", yaxis_tickformat=".0%",
                         xaxis_type="log", height=320, margin={"t": 20, "b": 40, "l": 50, "r": 10})
    return figure


st.subheader("Would more data help?")
if not 0 < int(run_info.get("num_groups") or 0) <= int(run_info.get("frozen_groups") or 0):
    st.caption("The learning curve reruns feature extraction (every layer group frozen) on shares of your labels; "
               "this run fine-tuned layer groups, so it is not drawn for it yet.")
else:
    curves = scratch.setdefault("learning_curves", {})
    curve_key = f"{run_info.get('backbone')}|{dataset.fingerprint}"
    if curve_key not in curves:
        st.caption("Refits the head on 10, 25, 50 and 100 % of each fold's labels (cached features: seconds to a "
                   "minute) and fits a trend, to say what more labelled examples of this kind would likely buy.")
    if curve_key not in curves and st.button("Draw the learning curve", key="test_learning_curve"):
        curve_bar = st.progress(0.0, text="Refitting the head on shares of your labels…")
        try:
            curves[curve_key] = insight.dataset_curve(
                dataset, str(run_info.get("backbone")),
                progress=lambda done, total: curve_bar.progress(done / total, text=f"Fitted {done} of {total} models"),
                lexical=bool(result.metrics.get("lexical")),  # texts: mixed as this run delivers, or not
            )
        except (ValueError, OSError, RuntimeError) as error:
            st.error(f"The learning curve could not be drawn: {error}")
        finally:
            curve_bar.empty()
    if curve_key in curves:
        curve = curves[curve_key]
        curve_section = st.container(key="test_learning_curve_section")
        curve_section.plotly_chart(learning_curve_chart(curve), width="stretch", key="test_learning_curve_chart")
        curve_section.info(curve.sentence)
        points = [f"{point.fraction:.0%} of the labels: {format_interval(point.accuracy, point.interval95)}"
                  for point in curve.points]
        curve_section.caption(" · ".join(points) + f" · n = {curve.points[-1].n} each")


# ---------------------------------------------------------------------------------------------------- per class

st.subheader("Per class")
per_class = result.per_class_table()
per_class["recall_interval95"] = [f"{low:.0%}–{high:.0%}" for low, high in per_class["recall_interval95"]]
st.dataframe(
    per_class,
    column_config={
        "precision": st.column_config.NumberColumn("Precision", format="%.3f"),
        "recall": st.column_config.NumberColumn("Recall", format="%.3f"),
        "recall_interval95": st.column_config.TextColumn("Recall, 95 % interval (bootstrap)"),
        "f1": st.column_config.NumberColumn("F1", format="%.3f"),
        "support": st.column_config.NumberColumn("Examples scored"),
    },
)


# ---------------------------------------------------------------------------------------------------- confusion


def _count_ticks(largest: int, most: int = 6) -> list[int]:
    """Whole-number ticks from 0 to `largest` for a colour bar of counts (no "1.5 examples"), at most `most`."""
    step = max(1, -(-largest // (most - 1)))
    return list(range(0, largest + 1, step))


def _confusion_figure(result: evaluation.Evaluation, normalised: bool, chosen: tuple[str, str]) -> go.Figure:
    """A heatmap of the confusion matrix, with an invisible marker on every cell so that a click selects it, and
    the chosen (true, predicted) cell outlined: the one whose examples are shown below it.

    Streamlit's plotly selection returns nothing for heatmap traces, but it does for scatter markers.
    """
    names = result.classes
    values = result.confusion_normalised() if normalised else result.confusion
    text = [[f"{v:.0%}" if normalised else str(int(v)) for v in row] for row in values]
    largest = int(result.confusion.max())
    colour_bar = {"tickformat": ".0%"} if normalised else {"tickvals": _count_ticks(largest), "title": "examples"}
    figure = go.Figure(
        go.Heatmap(
            z=values.tolist(),
            x=names,
            y=names,
            text=text,
            texttemplate="%{text}",
            colorscale="Blues",
            zmin=0,
            zmax=1 if normalised else max(largest, 1),
            colorbar=colour_bar,
            hoverinfo="skip",
        )
    )
    true_name, predicted_name = chosen
    row, column = names.index(true_name), names.index(predicted_name)
    figure.add_shape(  # category axes place cell i at i, so the cell spans i - 0.5 to i + 0.5
        type="rect", x0=column - 0.5, x1=column + 0.5, y0=row - 0.5, y1=row + 0.5,
        line={"color": "#e67e22", "width": 4}, name="chosen cell",
    )
    cells_true = [true for true in names for _ in names]
    cells_predicted = [predicted for _ in names for predicted in names]
    counts = result.confusion.ravel().tolist()
    figure.add_trace(
        go.Scatter(
            x=cells_predicted,
            y=cells_true,
            mode="markers",
            marker={"symbol": "square", "size": 40, "color": "rgba(0,0,0,0)"},
            customdata=counts,
            hovertext=[data.plural(count, "example") for count in counts],
            hovertemplate="true %{y}, predicted %{x}: %{hovertext}<extra></extra>",
            showlegend=False,
        )
    )
    figure.update_layout(
        xaxis_title="Predicted class",
        yaxis_title="True class",
        yaxis_autorange="reversed",
        height=max(320, 60 * len(names) + 120),
        margin={"l": 10, "r": 10, "t": 30, "b": 10},
        clickmode="event+select",
    )
    return figure


def _cell_from_selection(selection: Any) -> tuple[str, str] | None:
    points = list((selection or {}).get("selection", {}).get("points", []) or [])
    for point in points:
        true, predicted = point.get("y"), point.get("x")
        if true in result.classes and predicted in result.classes:
            return str(true), str(predicted)
    return None


st.subheader("Confusion matrix")
normalised = st.toggle("Row-normalised (share of each true class)", key="test_normalised")
# A click is read from the chart's state before the chart is drawn, so the chart drawn below outlines that cell. A
# new outline makes a new chart (its selection starts empty), so clicking the same cell again later still counts.
clicked = _cell_from_selection(st.session_state.get("test_confusion_chart"))
if clicked != scratch.get("seen_click"):
    scratch["seen_click"] = clicked
    if clicked is not None:
        st.session_state["test_true_class"], st.session_state["test_predicted_class"] = clicked
for widget_key in ("test_true_class", "test_predicted_class"):
    if st.session_state.get(widget_key) not in result.classes:
        st.session_state.pop(widget_key, None)
if "test_true_class" not in st.session_state:
    off_diagonal = result.confusion - np.diag(np.diag(result.confusion))
    true_index, predicted_index = np.unravel_index(int(off_diagonal.argmax()), off_diagonal.shape)
    st.session_state["test_true_class"] = result.classes[int(true_index)]
    st.session_state["test_predicted_class"] = result.classes[int(predicted_index)]
chosen_cell = (st.session_state["test_true_class"], st.session_state["test_predicted_class"])
st.plotly_chart(
    _confusion_figure(result, normalised, chosen_cell),
    key="test_confusion_chart",
    on_select="rerun",
    selection_mode="points",
)

st.caption("Click a cell, or choose it here, to see its examples (most confident mistakes first).")
pick_true, pick_predicted = st.columns(2)
true_name = pick_true.selectbox("True class", result.classes, key="test_true_class")
predicted_name = pick_predicted.selectbox("Predicted class", result.classes, key="test_predicted_class")
true_index, predicted_index = result.classes.index(true_name), result.classes.index(predicted_name)
examples = result.examples(true_index, predicted_index)
kind = "correct answer" if true_index == predicted_index else "mistake"
count, noun = data.plural(len(examples), kind).split(" ", 1)
st.markdown(f"**{count}** {noun}: true **{true_name}**, predicted **{predicted_name}**.")


def _top_classes(index: int, count: int = 3) -> str:
    probabilities = result.probabilities[index]
    order = np.argsort(-probabilities)[:count]
    return ", ".join(f"{result.classes[i]} {probabilities[i]:.0%}" for i in order)


shown = examples.head(GALLERY_SIZE)
if shown.empty:
    st.caption("No test example falls in this cell.")
elif dataset.modality == "image":
    grid = st.columns(4)
    for position, row in enumerate(shown.itertuples(index=False)):
        with grid[position % 4]:
            st.image(row.item, caption=_top_classes(int(row.index)), width="stretch")
elif dataset.modality == "audio":
    grid = st.columns(4)
    for position, row in enumerate(shown.itertuples(index=False)):
        with grid[position % 4]:
            st.audio(row.item)
            st.caption(_top_classes(int(row.index)))
else:
    st.dataframe(
        pd.DataFrame(
            {
                "text": shown["item"],
                "predicted probability": shown["confidence"],
                "true-class probability": shown["true_probability"],
                "top classes": [_top_classes(int(i)) for i in shown["index"]],
            }
        ),
        hide_index=True,
        column_config={
            "predicted probability": st.column_config.NumberColumn(format="percent"),
            "true-class probability": st.column_config.NumberColumn(format="percent"),
        },
    )
if len(examples) > GALLERY_SIZE:
    st.caption(f"Showing the {GALLERY_SIZE} most confident of {len(examples)}.")
render_explain(model, preprocessor, classes, list(shown["item"]), "test_explain_gallery",
               scored_answers=list(shown["predicted"]))


# ---------------------------------------------------------------------------------------------------- confidence

st.subheader("How sure is it?")
st.caption(
    "Below the threshold the model answers **not sure** instead of guessing. A higher threshold answers fewer "
    "examples (coverage) and, when its confidence means something, gets more of those right."
)
# Start at 0.5, or lower for a hesitant model, so that at least half of the test split is answered.
median_confidence = float(np.median(result.probabilities.max(axis=1)))
default_threshold = min(0.5, np.floor(median_confidence * 20) / 20)
threshold = st.slider("Confidence threshold", 0.0, 1.0, float(default_threshold), 0.05, key="test_threshold")
point = evaluation.confidence_at(result.probabilities, result.targets, threshold)
answered_accuracy = "–" if np.isnan(point["accuracy"]) else f"{point['accuracy']:.1%}"
numbers = st.columns(3)
numbers[0].metric("Accuracy on answered", answered_accuracy, help=f"{result.accuracy:.1%} when answering all")
numbers[1].metric("Coverage", f"{point['coverage']:.0%}", help="Share of test examples the model answers.")
numbers[2].metric("Not sure", int(point["not_sure"]))
curve = result.coverage()
curve_figure = go.Figure()
curve_figure.add_trace(go.Scatter(x=curve["threshold"], y=curve["accuracy"], name="accuracy on answered"))
curve_figure.add_trace(go.Scatter(x=curve["threshold"], y=curve["coverage"], name="coverage"))
curve_figure.add_vline(x=threshold, line_dash="dash")
curve_figure.update_layout(
    xaxis_title="Confidence threshold",
    yaxis={"title": "Share", "tickformat": ".0%", "range": [0, 1.02]},
    height=320,
    margin={"l": 10, "r": 10, "t": 30, "b": 10},
)
st.plotly_chart(curve_figure, key="test_coverage_chart")


# ---------------------------------------------------------------------------------------------------- predict

st.subheader("Predict new examples")
top_k = st.slider("Classes to show per example", 1, max(1, len(classes)), min(3, len(classes)), key="test_top_k")


def _saved_uploads(files: list[Any]) -> tuple[list[str], list[str]]:
    """Uploaded images written into the workspace (the preprocessor reads files); returns (paths, names).

    A zip is opened and each image in it is named by its path inside the zip (`cats/0000.png`), so that rows of the
    prediction table stay apart and can be traced back to the user's own files.
    """
    folder = workspace_subdir("predict", get_state().owner)
    paths, names = [], []
    for file in files:
        content = file.getvalue()
        if file.name.lower().endswith(".zip"):
            for inside, path in data.images_in_zip(content, name=file.name):
                paths.append(str(path))
                names.append(inside)
            continue
        # One folder per content, the user's file name kept, so that messages name the file they know.
        safe_name = re.sub(r"[^\w.\- ]", "_", Path(file.name).name).strip() or "upload.png"
        path = folder / hashlib.sha256(content).hexdigest()[:16] / safe_name
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(content)
        paths.append(str(path))
        names.append(file.name)
    return paths, names


inputs: list[str] = []
names: list[str] = []
try:
    if dataset.modality == "image":
        uploads = st.file_uploader(
            "Images to classify, or a zip of them", type=[*IMAGE_TYPES, "zip"], accept_multiple_files=True,
            key="test_predict_files", help="A zip keeps its folders: each row of the predictions names the file by "
            "its path inside the zip, such as `cats/0000.png`.",
        )
        files = list(uploads or [])  # photos from the camera are classified in the live preview below
        if files:
            inputs, names = _saved_uploads(files)
            evaluation.check_image_files(inputs, names)
    elif dataset.modality == "audio":
        uploads = st.file_uploader("Sound clips to classify", type=AUDIO_TYPES, accept_multiple_files=True,
                                   key="test_predict_clips")
        if uploads:
            inputs, names = _saved_uploads(list(uploads))
            evaluation.check_audio_files(inputs, names)
    else:
        pasted = st.text_area("Texts to classify, one per line", key="test_predict_text")
        upload = st.file_uploader("…or a CSV with a 'text' column", type=["csv", "txt"], key="test_predict_csv")
        if upload is not None:
            content = upload.getvalue().decode("utf-8", errors="replace")
            inputs = evaluation.read_texts(content, is_csv=upload.name.lower().endswith(".csv"))
        elif pasted.strip():
            inputs = evaluation.read_texts(pasted)
        names = inputs
except (evaluation.PredictionInputError, data.DataError) as error:
    st.error(str(error))
    inputs = []

if inputs:
    with st.spinner(f"Classifying {len(inputs)} example(s)…"):
        probabilities = evaluation.predict_proba(model, preprocessor, inputs)
    table = evaluation.top_k_table(names, probabilities, classes, top_k=top_k, threshold=threshold)
    if dataset.modality == "image" and len(inputs) <= GALLERY_SIZE:
        grid = st.columns(4)
        for position, (path, row) in enumerate(zip(inputs, table.itertuples(index=False), strict=True)):
            grid[position % 4].image(path, caption=f"{row.prediction} ({row.confidence:.0%})", width="stretch")
    st.dataframe(
        table,
        hide_index=True,
        column_config={
            column: st.column_config.NumberColumn(format="percent")
            for column in table.columns
            if column == "confidence" or column.startswith("probability_")
        },
    )
    repeated = len(names) - len(set(names))
    if dataset.modality == "image" and repeated:
        st.caption(f"Some file names repeat ({repeated} of {len(names)}): a browser sends file names without their "
                   "folders. Upload a zip to keep the folders in the table and the CSV.")  # fmt: skip
    st.download_button(
        "Download predictions (CSV)",
        table.to_csv(index=False).encode("utf-8"),
        file_name=f"predictions-{run_info.get('run_id', 'model')}.csv",
        mime="text/csv",
    )
    render_explain(model, preprocessor, classes, inputs, "test_explain_new", names=names)


# ---------------------------------------------------------------------------------------------------- live preview


def _live_bars(answer: pd.Series) -> go.Figure:
    """The top classes of one example as horizontal bars, the most likely on top: one row of `top_k_table`."""
    ranks = range(1, sum(column.startswith("class_") for column in answer.index) + 1)
    names = [str(answer[f"class_{rank}"]) for rank in ranks]
    shares = [float(answer[f"probability_{rank}"]) for rank in ranks]
    figure = go.Figure(
        go.Bar(x=shares, y=names, orientation="h", text=[f"{share:.0%}" for share in shares], textposition="auto",
               hovertemplate="%{y}: %{x:.1%}<extra></extra>")  # fmt: skip
    )
    figure.update_layout(
        xaxis={"title": "Probability", "tickformat": ".0%", "range": [0, 1]},
        yaxis={"autorange": "reversed"},
        height=80 + 40 * len(names),
        margin={"l": 10, "r": 10, "t": 10, "b": 10},
    )
    return figure


st.subheader("Live preview")
live_inputs: list[str] = []
live_names: list[str] = []
try:
    if dataset.modality == "image":
        st.caption(
            "Classifies **each photo you take**, as soon as you take it: point the camera at something and press "
            "*Take photo*, then clear it and take the next. (A browser page sends photos, not a video stream.)"
        )
        if st.toggle("Turn on the camera", key="test_live_camera_on"):
            photo = st.camera_input("Point the camera and take a photo", key="test_live_camera")
            if photo is not None:
                live_inputs, live_names = _saved_uploads([photo])
                evaluation.check_image_files(live_inputs, live_names)
    elif dataset.modality == "audio":
        st.caption("Classifies **each clip you record**: press the microphone, say one word, press stop.")
        recording = st.audio_input("Record a clip", key="test_live_audio")
        if recording is not None:
            live_inputs, live_names = _saved_uploads([recording])
            evaluation.check_audio_files(live_inputs, live_names)
    else:
        typed = st.text_input(
            "Type something to classify", key="test_live_text", placeholder="A sentence like the ones you trained on"
        )
        st.caption("The bars **update when you press Enter** (or click outside the box).")
        if typed.strip():
            live_inputs = live_names = [typed.strip()]
except evaluation.PredictionInputError as error:
    taken = "recording" if dataset.modality == "audio" else "camera's photo"
    st.error(f"The {taken} could not be read, take it again. {error}")
    live_inputs = []

if live_inputs:
    try:
        live_probabilities = evaluation.predict_proba(model, preprocessor, live_inputs)
    except OSError as error:  # an image that passed the check but cannot be decoded in full (a truncated photo)
        st.error(f"The photo could not be read ({error}): take it again.")
    else:
        answer = evaluation.top_k_table(live_names, live_probabilities, classes, top_k=top_k, threshold=threshold)
        live = answer.iloc[0]
        st.markdown(
            f"**{live['prediction']}** ({live['confidence']:.0%})"
            + (f", below the {threshold:.0%} confidence threshold" if live["prediction"] == evaluation.NOT_SURE
               else "")  # fmt: skip
        )
        st.plotly_chart(_live_bars(live), key="test_live_chart")


render_suggest_section(state, model, preprocessor, run_info)  # What should I label next? (pages/_suggest.py)

# ---------------------------------------------------------------------------------------------------- export

try:
    export_page = importlib.import_module("pages._export")
except ModuleNotFoundError as error:
    if error.name != "pages._export":
        raise
    log.debug("pages/_export.py is not there yet; the export section is skipped")
else:
    st.divider()
    export_page.render_export_section(state)
