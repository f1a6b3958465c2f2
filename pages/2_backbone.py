"""Step 2: choose the pretrained backbone the classifier is built on."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from core import jobs
from core.backbones import availability, catalogue_rows, default_backbone, get_spec
from pages._ui import require

st.title("2 · Backbone")
state = require("Data")
modality = state.dataset.modality

st.markdown(
    "A **backbone** is a network someone already trained on millions of examples. Your classifier reuses what it "
    "learned and only adds a small new layer for your classes."
)

filters = st.columns([1, 1, 2])
shown_modality = filters[0].radio(
    "Kind of data", ["image", "text", "audio"], index=["image", "text", "audio"].index(modality), horizontal=True,
    help=f"Your data set holds {modality}s; backbones of the other kind cannot read it.",
)
offline_only = filters[1].toggle("Available offline only", value=False, key="backbone_offline_only")

rows = pd.DataFrame(catalogue_rows(shown_modality))
if offline_only:
    rows = rows[rows["available"]]
table = rows.rename(columns={
    "title": "Backbone", "params_millions": "Parameters (M)", "gmacs": "Compute (GMACs)", "input": "Input",
    "licence": "Licence", "pretrained_on": "Trained on", "available": "Available here", "weights": "Weights from",
})[["Backbone", "Parameters (M)", "Compute (GMACs)", "Input", "Available here", "Weights from", "Licence",
    "Trained on"]]
st.dataframe(table, hide_index=True, width="stretch")
st.caption("Click a column header to sort. Compute is per image, or per 128 tokens of text.")

if shown_modality != modality:
    st.warning(f"These are {shown_modality} backbones, but your data set holds {modality}s. Switch back to choose.")
    st.stop()

names = rows["name"].tolist()
if not names:
    st.info("No backbone of this kind is available offline here. Turn off the filter to see how to get one.")
    st.stop()
current = state.backbone_name if state.backbone_name in names else default_backbone(modality)
if current not in names:
    current = names[0]
titles = dict(zip(rows["name"], rows["title"], strict=True))
chosen = st.selectbox(
    "Backbone", names, index=names.index(current), format_func=lambda n: f"{titles[n]}  ({n})",
    help="Pre-selected: the best backbone for your data that works offline on this machine.",
)

spec = get_spec(chosen)
status = availability(chosen)
with st.container(border=True):
    st.subheader(spec.title)
    st.markdown(spec.description)
    left, middle, right = st.columns(3)
    left.metric("Size", f"{spec.params_millions:.1f} M parameters", help="Bigger: usually more accurate, slower.")
    unit = {"image": "image", "audio": "clip"}.get(spec.modality, "128 tokens")
    compute = f"{spec.gmacs:.2f} GMACs per {unit}"
    middle.metric("Speed", "fast" if spec.gmacs < 1 else ("medium" if spec.gmacs < 5 else "slow"), help=compute)
    if spec.modality == "text":
        right.metric("Input", f"up to {spec.max_tokens} tokens")
    elif spec.modality == "audio":
        right.metric("Input", f"{spec.extra['audio']['clip_seconds']:g} s clip",
                     help="Each clip becomes a " + "x".join(map(str, spec.input_size[1:])) + " spectrogram picture.")
    else:
        right.metric("Input", "x".join(map(str, spec.input_size[1:])) + " px")
    st.markdown(f"**Trained on:** {spec.pretrained_on}.  \n**Compute:** {compute}.  \n**Licence:** {spec.licence}.")
    if not spec.commercial_use:
        st.warning(f"The {spec.licence} licence restricts commercial use of these weights. Check it before you "
                   "ship a model built on them.", icon="⚠️")
    if status.available:
        st.success(f"Available: {status.detail}", icon="✅")
    else:
        st.error(status.detail, icon="🚫")

if status.available:
    if chosen != state.backbone_name:
        if state.backbone_name is not None:
            state.frozen_groups = None  # the layer groups belong to the old backbone
        state.backbone_name = chosen
    if jobs.warm_up_features(state.dataset, chosen):
        st.caption("⚡ Its features for your data are being computed in the background, so training with the "
                   "backbone frozen can start at once.")
    st.page_link("pages/3_freezing.py", label="Next: choose what to freeze", icon="➡️")
else:
    st.info("Choose an available backbone to go on.")
