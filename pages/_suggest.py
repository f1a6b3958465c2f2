"""The "What should I label next?" section of the Test page: upload unlabelled examples, rank them, download the list.

The ranking is `core.suggest`'s (uncertainty with a diversity step); this module only draws it. A result is kept
per run in the page's scratch, so an upload that cannot be used shows its message above the last good list
instead of wiping it.
"""

from __future__ import annotations

import base64
import io
import logging
from pathlib import Path
from typing import Any

import streamlit as st
from PIL import Image

from core import suggest
from core.paths import workspace_subdir
from core.session import StudioState

log = logging.getLogger(__name__)

IMAGE_TYPES = ["png", "jpg", "jpeg", "bmp", "gif", "webp", "tif", "tiff"]
THUMBNAIL_PIXELS = 96


def _thumbnail(path: str) -> str | None:
    """A small PNG of an image as a data URI, for the table's picture column (None when it cannot be drawn)."""
    try:
        with Image.open(path) as image:
            image = image.convert("RGB")
            image.thumbnail((THUMBNAIL_PIXELS, THUMBNAIL_PIXELS))
            buffer = io.BytesIO()
            image.save(buffer, format="PNG")
    except OSError as error:
        log.warning("No thumbnail for %s: %s", path, error)
        return None
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _show(result: suggest.Suggestions, modality: str, run_id: str) -> None:
    """The list (with thumbnails for images), what was left out and why, and the CSV download."""
    if result.skipped:
        st.warning(f"{len(result.skipped)} file(s) could not be read and were left out: "
                   f"{', '.join(result.skipped[:10])}" + (" …" if len(result.skipped) > 10 else ""))
    if result.already_labelled:
        copies = ", ".join(f"{name} (= {label})" for name, label in result.already_labelled[:10])
        st.info(f"{len(result.already_labelled)} example(s) are exact copies of labelled ones and need no label: "
                f"{copies}" + (" …" if len(result.already_labelled) > 10 else ""))
    if not result.rows:
        st.warning("Nothing left to rank: every example given is already labelled.")
        return
    st.markdown(f"**The {len(result.rows)} to label first**, of {result.examined} scored: the model is least sure "
                "about these, and each is unlike those above it.")
    table = result.table()
    columns: dict[str, Any] = {
        "rank": st.column_config.NumberColumn("#", width="small"),
        "input": st.column_config.TextColumn("Text" if modality == "text" else "File", width="large"),
        "guess": "Model's guess",
        "probability": st.column_config.NumberColumn("Its probability", format="percent"),
        "runner_up": "Runner-up",
        "runner_up_probability": st.column_config.NumberColumn("Runner-up probability", format="percent"),
        "margin": st.column_config.NumberColumn("Margin", format="%.3f",
                                                help="Top probability minus the runner-up's: small = unsure"),
        "entropy": None,
        "why": st.column_config.TextColumn("Why picked", width="large"),
    }
    if modality == "image":
        table.insert(1, "picture", [_thumbnail(row.item) for row in result.rows])
        columns["picture"] = st.column_config.ImageColumn("Picture", width="small")
    st.dataframe(table, hide_index=True, column_config=columns, key="test_suggest_table",
                 row_height=THUMBNAIL_PIXELS // 2 if modality == "image" else None)
    if result.feature_space != "backbone features":
        st.caption(f"Look-alikes were judged on the {result.feature_space}: this model does not expose its features.")
    st.download_button("Download the list (CSV)", result.to_csv().encode("utf-8"),
                       file_name=f"to-label-{run_id}.csv", mime="text/csv", key="test_suggest_csv")


def render_suggest_section(state: StudioState, model: Any, preprocessor: Any, run_info: dict[str, Any]) -> None:
    """Draw "What should I label next?" for the run the Test page tests (its model is already loaded there), in a
    container of its own (key `test_suggest_section`) so that the browser test can picture just this section."""
    with st.container(key="test_suggest_section"):
        _section(state, model, preprocessor, run_info)


def _section(state: StudioState, model: Any, preprocessor: Any, run_info: dict[str, Any]) -> None:
    st.subheader("What should I label next?")
    modality = str(run_info.get("modality") or (state.dataset.modality if state.dataset is not None else "image"))
    if modality not in ("image", "text"):
        st.caption("Suggestions of what to label are built for images and texts; not yet for sound clips.")
        return
    st.caption(
        "Upload examples you have **not labelled yet**. The model ranks them by how unsure it is (the margin between "
        "its two most likely classes) and skips look-alikes of what it already picked, so each label you add "
        "teaches it something new. Exact copies of your labelled examples are left out. Measured on the sample "
        "digits with 20 to 50 labels, labelling the top 20 did about as well as 20 picked at random (see the README): "
        "use the list to see where the model hesitates, not as a promise of faster gains."
    )
    if modality == "image":
        uploads = st.file_uploader("Unlabelled images, or a zip of them (no class folders needed)",
                                   type=[*IMAGE_TYPES, "zip"], accept_multiple_files=True, key="test_suggest_files")
    else:
        uploads = st.file_uploader("Unlabelled texts: a CSV with a `text` column, or a .txt with one text per line",
                                   type=["csv", "tsv", "txt"], accept_multiple_files=True, key="test_suggest_texts")
    top = st.number_input("How many to suggest", min_value=1, max_value=500, value=20, key="test_suggest_top")
    results: dict[str, suggest.Suggestions] = state.scratch.setdefault("test", {}).setdefault("suggestions", {})
    if st.button("Suggest", key="test_suggest", disabled=not uploads):
        bar = st.progress(0.0, text="Reading the examples…")
        try:
            unlabelled = suggest.read_uploads(
                [(file.name, file.getvalue()) for file in uploads or []], modality,
                workspace_subdir("predict", state.owner) / "suggest")
            results[str(state.run_dir)] = suggest.suggest_labels(
                model, preprocessor, list(run_info.get("classes") or []), unlabelled, top=int(top),
                labelled=state.dataset,
                progress=lambda done, total: bar.progress(done / max(total, 1), text=f"Scored {done} of {total}"))
        except suggest.SuggestInputError as error:
            st.error(str(error))
        except (OSError, RuntimeError, ValueError) as error:
            log.exception("Suggestions for %s failed", state.run_dir)
            st.error(f"The examples could not be ranked: {error}")
        finally:
            bar.empty()
    result = results.get(str(state.run_dir))
    if result is not None:
        _show(result, modality, str(run_info.get("run_id") or Path(str(state.run_dir)).name))
