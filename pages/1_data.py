"""Step 1 · Data: pick a source, load and check it, see the split, the classes and every problem found; save the
whole project to one file, or open one.

All the work is in `core.data` and `core.project`; this page draws widgets, calls them, and keeps a good data set
loaded when a new attempt fails (a data set with errors never replaces a good one).
"""

from __future__ import annotations

import io
import logging
from collections.abc import Callable
from typing import Any

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from core import audio, data, project, smalldata
from core.dataset import SPLITS, Dataset
from core.paths import data_root
from pages._ui import get_state

logger = logging.getLogger(__name__)

SAMPLE_IMAGES = "Sample images"
SAMPLE_TEXTS = "Sample texts"
SAMPLE_AUDIO = "Sample sound clips"
CLIPS_PER_CLASS = 4
UPLOAD_ZIP = "Upload a zip of class folders"
UPLOAD_TABLE = "Upload a CSV/TSV of texts"
SERVER = "Folder on the server"
OPEN_PROJECT = "Open a saved project"
SPLIT_COLOURS = {"train": "#2563eb", "val": "#f59e0b", "test": "#10b981"}
THUMBNAILS_PER_CLASS = 8
KINDS = {"image": "images", "text": "texts", "audio": "sound clips"}
CLASSES_SHOWN = 30

state = get_state()
scratch = state.scratch

st.title("1 · Data")
st.caption(
    "Give Transfer Studio labelled examples: images or sound clips in one folder per class, or a table of texts "
    "with a label column. Everything is checked before anything trains. New here? Load a sample with one click."
)


@st.cache_data(show_spinner=False, max_entries=512)
def _spectrogram(item: str) -> Any:
    """A clip's spectrogram picture for the gallery, computed once per file."""
    return audio.file_thumbnail(item)


def _attempt(what: str, load: Callable[[], tuple[Dataset, dict[str, Any]]]) -> None:
    """Run a loader; keep the result only when its report has no errors, and remember what to tell the user."""
    for key in ("data_error", "data_failed_report", "data_pending", "project_pending"):
        scratch.pop(key, None)
    try:
        with st.spinner(f"Loading and checking {what}…"):
            dataset, report = load()
    except data.DataError as exc:
        scratch["data_error"] = str(exc)
        return
    except Exception as exc:  # a bug must not lose the loaded data set or show a traceback
        logger.exception("unexpected failure loading %s", what)
        scratch["data_error"] = f"Something went wrong while reading {what} ({type(exc).__name__}: {exc})."
        return
    if not report["ok"]:
        scratch["data_failed_report"] = report
        scratch.pop("data_notice", None)
    elif _work_set_aside(dataset):
        scratch["data_pending"] = (dataset, report)  # asked below: replace, or keep what is loaded
        scratch.pop("data_notice", None)
    else:
        _replace_dataset(dataset, report)


def _open_project(upload: Any) -> None:
    """Bring a saved project's data and runs into the workspace; it becomes the session's like any loaded data set
    (asked first when it would set work aside), with its settings, runs and chosen model."""
    for key in ("data_error", "data_failed_report", "data_pending", "project_pending"):
        scratch.pop(key, None)
    try:
        with st.spinner(f"Checking and opening `{upload.name}`…"):
            opened = project.open_project(upload.getvalue(), owner=state.owner, name=upload.name)
    except project.ProjectError as exc:
        scratch["data_error"] = str(exc)
        return
    except Exception as exc:  # a bug must not lose the loaded data set or show a traceback
        logger.exception("unexpected failure opening %s", upload.name)
        scratch["data_error"] = f"Something went wrong while opening `{upload.name}` ({type(exc).__name__}: {exc})."
        return
    scratch["project_pending"] = opened
    if _work_set_aside(opened.dataset):
        scratch["data_pending"] = (opened.dataset, opened.report)  # asked below: replace, or keep what is loaded
        scratch.pop("data_notice", None)
    else:
        _replace_dataset(opened.dataset, opened.report)


def _work_set_aside(dataset: Dataset) -> list[str]:
    """What loading `dataset` would set aside, in the user's words; empty when nothing trained depends on the old one.

    The same data again (same items, labels and split) changes nothing that was trained, so it is never asked about.
    """
    if state.dataset is None or dataset.fingerprint == state.dataset.fingerprint:
        return []
    lost = []
    job = state.job
    if job is not None and getattr(job, "is_running", False):
        lost.append("the run training now: it finishes, but its model does not become the one step 5 tests")
    if state.run_dir is not None:
        lost.append("the trained model that step 5 tests and exports")
    if lost and dataset.modality != state.dataset.modality:
        lost.append(f"the chosen backbone and freezing (they are for {KINDS[state.dataset.modality]})")
    return lost


def _replace_dataset(dataset: Dataset, report: dict[str, Any]) -> None:
    """Make `dataset` the loaded one. Runs already trained stay in `state.runs`, so the Test page still lists them."""
    opened = scratch.pop("project_pending", None)
    if opened is not None and opened.dataset is dataset:
        _take_over_project(opened)
        return
    if state.dataset is not None and dataset.fingerprint == state.dataset.fingerprint:
        state.dataset, state.data_report = dataset, report  # the same examples: the trained model still fits them
    else:
        state.set_dataset(dataset, report)
    scratch["data_notice"] = f"Loaded **{dataset.name}**: {len(dataset.table)} examples, {dataset.num_classes} classes."


def _take_over_project(opened: project.OpenedProject) -> None:
    """The session gets the project's data, settings, runs and chosen model; the widgets that hold a copy of a
    setting (the protocol here, the freezing slider) start again from the project's."""
    project.apply_to_state(state, opened)
    st.session_state["data_protocol"] = opened.protocol
    for key in [key for key in st.session_state if str(key).startswith("freezing_frozen_")]:
        del st.session_state[key]
    runs = data.plural(len(opened.run_dirs), "run")
    models = data.plural(len(opened.testable), "model")
    scratch["data_notice"] = (
        f"Opened the project **{opened.dataset.name}**: {len(opened.dataset.table)} examples, "
        f"{opened.dataset.num_classes} classes, backbone **{opened.backbone_name or 'not chosen'}**, {runs} "
        f"({models} to test on step 5). " + " ".join(opened.notes)
    )


def _confirm_replace() -> None:
    pending = scratch.pop("data_pending", None)
    if pending is not None:
        _replace_dataset(*pending)


def _keep_loaded() -> None:
    scratch.pop("data_pending", None)
    scratch.pop("project_pending", None)
    scratch["data_notice"] = f"Kept **{state.dataset.name}**; nothing was replaced."


def _column_pickers(frame: pd.DataFrame, key: str) -> tuple[str, str]:
    """Preview a table and let the user pick its text and label columns (guessed defaults)."""
    st.caption(
        f"Preview of `{frame.attrs.get('name', 'the file')}` — {len(frame)} rows, encoding "
        f"{frame.attrs.get('encoding', '?')}, separator {frame.attrs.get('delimiter', ',')!r}"
    )
    st.dataframe(frame.head(8), hide_index=True, width="stretch")
    columns = list(frame.columns)
    text_guess, label_guess = data.guess_columns(frame)
    left, right = st.columns(2)
    text_column = left.selectbox(
        "Column with the texts",
        columns,
        index=columns.index(text_guess) if text_guess in columns else 0,
        key=f"{key}_text_column",
    )
    label_column = right.selectbox(
        "Column with the labels",
        columns,
        index=columns.index(label_guess) if label_guess in columns else min(1, len(columns) - 1),
        key=f"{key}_label_column",
    )
    return text_column, label_column


def _preview(key: str, file_id: str, read: Callable[[], pd.DataFrame]) -> pd.DataFrame | None:
    """Read a table once per file (kept in scratch); show a clear error instead of the preview when unreadable."""
    cached = scratch.get(f"{key}_preview")
    if cached is None or cached[0] != file_id:
        try:
            cached = (file_id, read(), None)
        except data.DataError as exc:
            cached = (file_id, None, str(exc))
        scratch[f"{key}_preview"] = cached
    if cached[2]:
        st.error(cached[2])
    return cached[1]


# ------------------------------------------------------------------------------------------------ source choice

sources = [SAMPLE_IMAGES, SAMPLE_TEXTS, SAMPLE_AUDIO, UPLOAD_ZIP, UPLOAD_TABLE]
server_root = data_root()
if server_root is not None:
    sources.append(SERVER)
sources.append(OPEN_PROJECT)
source = st.radio("Where is your data?", sources, horizontal=True, key="data_source")

with st.expander("Split: train / validation / test", expanded=False):
    left, middle, right = st.columns(3)
    val_fraction = left.slider("Validation share", 0.05, 0.4, 0.15, 0.05, key="data_val_fraction")
    test_fraction = middle.slider("Test share", 0.0, 0.4, 0.15, 0.05, key="data_test_fraction")
    seed = int(right.number_input("Random seed", 0, 1_000_000, 0, 1, key="data_seed"))
    st.caption(
        f"Train gets the rest: {1 - val_fraction - test_fraction:.0%}. The split is stratified (each class in the "
        "same proportions) and keeps identical files together. Folders named `train/`, `val/`, `test/` in your "
        "data are used as they are. Load again after changing these."
    )
fractions = (round(1 - val_fraction - test_fraction, 6), val_fraction, test_fraction)

if source == SAMPLE_IMAGES:
    st.markdown("240 handwritten digits (10 classes, from the UCI digits data, CC BY 4.0).")
    if st.button("Load sample images", type="primary", key="load_sample_images"):
        _attempt("the sample images", lambda: data.load_sample("images", seed=seed, fractions=fractions))
elif source == SAMPLE_TEXTS:
    st.markdown("160 customer-support messages in 4 classes: billing, delivery, technical problem, praise (CC0).")
    if st.button("Load sample texts", type="primary", key="load_sample_texts"):
        _attempt("the sample texts", lambda: data.load_sample("texts", seed=seed, fractions=fractions))
elif source == SAMPLE_AUDIO:
    st.markdown("144 one-second clips of 6 spoken words: yes, no, up, down, left, right (espeak-ng voices in sox "
                "noise, CC0).")
    if st.button("Load sample sound clips", type="primary", key="load_sample_audio"):
        _attempt("the sample sound clips", lambda: data.load_sample("audio", seed=seed, fractions=fractions))
elif source == UPLOAD_ZIP:
    st.markdown(
        "A zip with **one folder per class** of images (`cats/1.jpg`, `dogs/7.png`, …) or of sound clips "
        "(`yes/1.wav`, `no/2.flac`; wav, flac, ogg or mp3), wrapping folders are fine; or the files plus a CSV with "
        "columns `file,label`. Folders `train/`, `val/`, `test/` at the top keep your split. Clips are converted to "
        f"{audio.MelSettings.sample_rate // 1000} kHz mono."
    )
    upload = st.file_uploader("Zip of class folders", type=["zip"], key="data_zip_upload")
    if upload is not None and st.button("Check and load", type="primary", key="load_zip"):

        def _load_zip(upload: Any = upload) -> tuple[Dataset, dict[str, Any]]:
            data.check_upload_size(upload.size, upload.name)
            return data.load_zip(upload.getvalue(), name=upload.name, seed=seed, fractions=fractions)

        _attempt(f"`{upload.name}`", _load_zip)
elif source == UPLOAD_TABLE:
    st.markdown("A CSV or TSV file (UTF-8 or Latin-1) with a header row, one text per row and a label column.")
    upload = st.file_uploader("CSV or TSV of texts", type=["csv", "tsv", "txt"], key="data_table_upload")
    if upload is not None:

        def _read(upload: Any = upload) -> pd.DataFrame:
            data.check_upload_size(upload.size, upload.name)
            return data.read_table(upload.getvalue(), name=upload.name)

        frame = _preview("data_table", upload.file_id, _read)
        if frame is not None:
            text_column, label_column = _column_pickers(frame, "data_table")
            if st.button("Check and load", type="primary", key="load_table"):
                _attempt(
                    f"`{upload.name}`",
                    lambda: data.load_text_table(
                        upload.getvalue(),
                        name=upload.name,
                        text_column=text_column,
                        label_column=label_column,
                        seed=seed,
                        fractions=fractions,
                    ),
                )
elif source == OPEN_PROJECT:
    st.markdown(
        f"A `{project.PROJECT_SUFFIX}` file that **Save project** wrote, here or on another machine: its data, "
        "settings, runs and chosen model come back, offline. Nothing you have is removed; its runs join yours."
    )
    upload = st.file_uploader("Project file", type=["zip"], key="data_project_upload")
    if upload is not None and st.button("Open project", type="primary", key="open_project"):
        _open_project(upload)
elif source == SERVER and server_root is not None:
    entries = data.list_server_entries()
    if not entries:
        st.info(f"The server's data folder `{server_root}` is empty: ask the operator to put data sets there.")
    else:
        entry = st.selectbox("Data set in the server's data folder", entries, key="data_server_entry")
        text_column = label_column = None
        if entry.lower().endswith(tuple(data.TABLE_EXTENSIONS)):
            frame = _preview("data_server", entry, lambda: data.read_table(server_root / entry))
            if frame is not None and not data.lists_images(frame):
                text_column, label_column = _column_pickers(frame, "data_server")
        if st.button("Check and load", type="primary", key="load_server"):
            _attempt(
                f"`{entry}`",
                lambda: data.load_server_path(
                    entry, text_column=text_column, label_column=label_column, seed=seed, fractions=fractions
                ),
            )

# ----------------------------------------------------------------------------------------------- what happened


def _show_problems(report: dict[str, Any]) -> None:
    for problem in report["errors"]:
        st.error(problem["message"], icon="⛔")
        if len(problem["items"]) > 1:
            with st.expander(f"All {len(problem['items'])} items"):
                st.code("\n".join(problem["items"]), language=None)
    for problem in report["warnings"]:
        st.warning(problem["message"], icon="⚠️")
        if len(problem["items"]) > 1:
            with st.expander(f"All {len(problem['items'])} items"):
                st.code("\n".join(problem["items"]), language=None)


if scratch.get("data_error"):
    st.error(scratch["data_error"], icon="⛔")
failed = scratch.get("data_failed_report")
if failed:
    st.error(
        f"**{failed['info'].get('name', 'This data set')}** was not loaded: fix the errors below and load it again.",
        icon="⛔",
    )
    _show_problems(failed)
pending = scratch.get("data_pending")
if pending is not None and not _work_set_aside(pending[0]):  # nothing to set aside any more (a run was let go)
    _confirm_replace()
    pending = None
if pending is not None:
    new_dataset, new_report = pending
    with st.container(border=True):
        st.warning(
            f"**{new_dataset.name}** is checked and ready ({len(new_dataset.table)} examples, "
            f"{new_dataset.num_classes} classes), but loading it sets aside work done on **{state.dataset.name}**: "
            + "; ".join(_work_set_aside(new_dataset))
            + ". Runs already trained stay listed on the Test page. Replace the data?",
            icon="❓",
        )
        _show_problems(new_report)
        replace, keep = st.columns(2)
        replace.button(f"Replace with {new_dataset.name}", type="primary", key="data_confirm_replace",
                       on_click=_confirm_replace)  # fmt: skip
        keep.button(f"Keep {state.dataset.name}", key="data_keep_loaded", on_click=_keep_loaded)
elif (scratch.get("data_error") or failed) and state.dataset is not None:
    st.info(f"Your earlier data set **{state.dataset.name}** is still loaded.", icon="💾")
elif scratch.get("data_notice") and state.dataset is not None:
    st.success(scratch["data_notice"], icon="✅")

# --------------------------------------------------------------------------------------------- the loaded data

dataset = state.dataset
if dataset is None:
    st.stop()

report = state.data_report or {"errors": [], "warnings": [], "info": {}}
st.divider()
st.subheader(f"Loaded: {dataset.name}")
counts = dataset.counts()
metrics = st.columns(5)
metrics[0].metric("Examples", len(dataset.table))
metrics[1].metric("Classes", dataset.num_classes)
for column, split in zip(metrics[2:], SPLITS, strict=True):
    column.metric({"train": "Train", "val": "Validation", "test": "Test"}[split], int(counts[split].sum()))
info = report.get("info", {})
notes = [f"split: {info['split_source']}"] if info.get("split_source") else []
if info.get("skipped_junk"):
    notes.append(f"{info['skipped_junk']} hidden/system files skipped (`__MACOSX`, `.DS_Store`, dotfiles)")
if info.get("normalised_images"):
    notes.append(f"{info['normalised_images']} images converted to upright RGB")
if info.get("normalised_clips"):
    notes.append(f"{data.plural(info['normalised_clips'], 'clip')} converted to "
                 f"{audio.MelSettings.sample_rate // 1000} kHz mono wav")
if info.get("clip_seconds"):
    lengths = info["clip_seconds"]
    notes.append(f"every clip {lengths['min']:g} s long" if lengths["min"] == lengths["max"] else
                 f"clips {lengths['min']:g}–{lengths['max']:g} s long (median {lengths['median']:g} s)")
if info.get("encoding"):
    notes.append(f"encoding {info['encoding']}")
if notes:
    st.caption(" · ".join(notes))

# How accuracy will be estimated: the rule's choice, in one sentence, and the user's override (Train reads it).
PROTOCOL_CHOICES = {"auto": "Automatic (recommended)", "cross-validation": "Cross-validation, then train on all",
                    "test split": "Held-out test split"}  # fmt: skip
protocol_choice = st.selectbox(
    "How to estimate accuracy", list(PROTOCOL_CHOICES), format_func=PROTOCOL_CHOICES.get, key="data_protocol",
    help="Cross-validation scores every labelled example with a model that never saw it and then trains the "
    "delivered model on all of them; a test split holds some examples out and never trains on them.",
)
state.scratch["protocol"] = protocol_choice
protocol = smalldata.choose_protocol(
    [str(label) for label in dataset.table["label"]], dataset.split_given, protocol_choice
)
st.info(f"**Estimate: {protocol.name}.** {protocol.reason}", icon="📏")

st.markdown("#### Check report")
if not report["errors"] and not report["warnings"]:
    st.success("No problems found.", icon="✅")
_show_problems(report)

figure = go.Figure(
    [
        go.Bar(
            name=split, x=[str(c) for c in counts.index], y=counts[split].tolist(), marker_color=SPLIT_COLOURS[split]
        )
        for split in SPLITS
    ]
)
figure.update_layout(
    barmode="stack",
    title="Examples per class and split",
    xaxis_title="class",
    yaxis_title="examples",
    height=320,
    margin={"l": 10, "r": 10, "t": 40, "b": 10},
    legend_title_text="split",
)
st.plotly_chart(figure, key="data_counts_chart")

if dataset.modality == "image":
    st.markdown("#### Examples per class")
    for label in dataset.classes[:CLASSES_SHOWN]:
        rows = dataset.table[dataset.table["label"] == label].head(THUMBNAILS_PER_CLASS)
        st.markdown(f"**{label}** — {int(counts.loc[label, 'total'])} images")
        captions = rows["source"].map(lambda s: str(s).rsplit("/", 1)[-1]).tolist() if "source" in rows else None
        st.image(rows["item"].tolist(), width=96, caption=captions)
    if dataset.num_classes > CLASSES_SHOWN:
        st.caption(f"Showing the first {CLASSES_SHOWN} of {dataset.num_classes} classes.")
elif dataset.modality == "audio":
    st.markdown("#### Examples per class")
    st.caption("Each clip as the model sees it (log-mel spectrogram: time left to right, low pitches at the bottom), "
               "and as you hear it.")
    for label in dataset.classes[:CLASSES_SHOWN]:
        rows = dataset.table[dataset.table["label"] == label].head(CLIPS_PER_CLASS)
        st.markdown(f"**{label}** — {int(counts.loc[label, 'total'])} clips")
        for column, (item, source_name) in zip(st.columns(CLIPS_PER_CLASS), zip(rows["item"], rows["source"],
                                                                                  strict=True), strict=False):
            column.image(_spectrogram(item), caption=str(source_name).rsplit("/", 1)[-1], width="stretch")
            column.audio(item)
    if dataset.num_classes > CLASSES_SHOWN:
        st.caption(f"Showing the first {CLASSES_SHOWN} of {dataset.num_classes} classes.")
else:
    st.markdown("#### Examples per class")
    sample = dataset.table.groupby("label", sort=False).head(5).sort_values("label")
    st.dataframe(
        sample[["label", "item", "split"]].rename(columns={"item": "text"}),
        hide_index=True,
        width="stretch",
    )

# ------------------------------------------------------------------------------------------------ the project

st.markdown("#### Project")
project_runs = project.project_runs(dataset, state.owner, [*state.runs, *state.scratch.get("train_run_dirs", [])])


def _project_file(runs: list[str] = project_runs, protocol: str = protocol_choice) -> bytes:
    """Written when the button is clicked (not on every rerun): the zip that `project.open_project` reads."""
    buffer = io.BytesIO()
    project.save_project(
        buffer, dataset, state.data_report, backbone_name=state.backbone_name, frozen_groups=state.frozen_groups,
        protocol=protocol, run_dirs=runs, chosen_run=state.run_dir,
    )
    return buffer.getvalue()


carried = {"text": "its texts", "audio": "its sound clips, or only their list when they are large"}.get(
    dataset.modality, "its images, or only their list when they are large")
st.caption(
    f"One file with this data set ({carried}), the backbone, freezing and accuracy settings, and "
    f"{data.plural(len(project_runs), 'run')} on it with their metrics and models. Open it here or on another "
    f"machine with **{OPEN_PROJECT}** above."
)
st.download_button(
    "Save project", data=_project_file, file_name=project.project_file_name(dataset), mime="application/zip",
    key="data_save_project", on_click="ignore", icon="💾",
)

st.page_link("pages/2_backbone.py", label="Next: choose a backbone", icon="🧠")
