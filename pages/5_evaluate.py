"""Step 5 · Test: how good is the trained model on data it never saw, where does it go wrong, and what does it
say about new examples. The work is in `core.evaluation`; this page draws it and keeps results per run (its larger
sections are drawn by `pages/_evaluate_baselines.py` and `pages/_evaluate_views.py`)."""

from __future__ import annotations

import hashlib
import importlib
import logging
import re
from pathlib import Path
from typing import Any

import numpy as np
import plotly.graph_objects as go
import streamlit as st

from core import data, evaluation, insight, model_report
from core.paths import check_in_workspace, workspace_subdir
from core.stats import format_interval
from pages._evaluate_baselines import render_transfer_section
from pages._evaluate_views import GALLERY_SIZE, learning_curve_chart, live_bars, render_confusion_section
from pages._explain import render_explain
from pages._suggest import render_suggest_section
from pages._ui import get_state, require

log = logging.getLogger(__name__)

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
    if not info:  # no run.json (yet): a run that ended before its set-up
        return Path(run_dir).name
    accuracy = info["metrics"]["val_accuracy"]
    parts = [str(info["run_id"]), str(info["backbone"]), f"{info['frozen_groups']} group(s) frozen"]
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

classes = list(run_info["classes"])
if classes != list(dataset.classes):
    st.error(
        f"This run was trained on the classes {', '.join(classes)}, but the loaded data set has "
        f"{', '.join(dataset.classes)}. Load the data set it was trained on, or pick another run."
    )
    st.stop()
if run_info["dataset_fingerprint"] != dataset.fingerprint:
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
elif tuning.get("frozen_accuracy") is not None:  # "auto" scored the frozen encoder's head and kept it
    st.caption(tuning["reason"])
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

render_transfer_section(run_dir, dataset, run_info, result)  # pages/_evaluate_baselines.py


# ---------------------------------------------------------------------------------------------------- more data

st.subheader("Would more data help?")
if run_info["frozen_groups"] < run_info["num_groups"]:
    st.caption("The learning curve reruns feature extraction (every layer group frozen) on shares of your labels; "
               "this run fine-tuned layer groups, so it is not drawn for it yet.")
else:
    curves = scratch.setdefault("learning_curves", {})
    curve_key = f"{run_info['backbone']}|{dataset.fingerprint}"
    if curve_key not in curves:
        st.caption("Refits the head on 10, 25, 50 and 100 % of each fold's labels (cached features: seconds to a "
                   "minute) and fits a trend, to say what more labelled examples of this kind would likely buy.")
    if curve_key not in curves and st.button("Draw the learning curve", key="test_learning_curve"):
        curve_bar = st.progress(0.0, text="Refitting the head on shares of your labels…")
        try:
            curves[curve_key] = insight.dataset_curve(
                dataset, str(run_info["backbone"]),
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

render_confusion_section(result, scratch, dataset.modality, model, preprocessor, classes)


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
    """Uploaded images or clips written into the workspace (the preprocessor reads files); returns (paths, names).

    A zip is opened and each image or clip in it is named by its path inside the zip (`cats/0000.png`), so that rows
    of the prediction table stay apart and can be traced back to the user's own files.
    """
    folder = workspace_subdir("predict", get_state().owner)
    paths, names = [], []
    for file in files:
        content = file.getvalue()
        if file.name.lower().endswith(".zip"):
            in_zip = data.clips_in_zip if dataset.modality == "audio" else data.images_in_zip
            for inside, path in in_zip(content, name=file.name):
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
        uploads = st.file_uploader(
            "Sound clips to classify, or a zip of them", type=[*AUDIO_TYPES, "zip"], accept_multiple_files=True,
            key="test_predict_clips", help="A zip keeps its folders: each row of the predictions names the clip by "
            "its path inside the zip, such as `birds/0001.wav`.",
        )
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
    if dataset.modality in ("image", "audio") and repeated:
        st.caption(f"Some file names repeat ({repeated} of {len(names)}): a browser sends file names without their "
                   "folders. Upload a zip to keep the folders in the table and the CSV.")  # fmt: skip
    st.download_button(
        "Download predictions (CSV)",
        table.to_csv(index=False).encode("utf-8"),
        file_name=f"predictions-{run_info['run_id']}.csv",
        mime="text/csv",
    )
    render_explain(model, preprocessor, classes, inputs, "test_explain_new", names=names)


# ---------------------------------------------------------------------------------------------------- live preview


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
        st.plotly_chart(live_bars(live), key="test_live_chart")


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
