"""Step 3: choose how much of the backbone stays as pretrained (frozen) and how much adapts to the data."""

from __future__ import annotations

import copy
from typing import Any

import plotly.graph_objects as go
import streamlit as st

from core.backbones import BackboneUnavailable, Classifier, WeightsMismatch, get_spec, load_backbone
from core.freezing import estimate_cost, freeze_first, recommend
from core.preprocess import make_preprocessor
from core.training import TrainConfig, feature_taps
from pages._ui import require

MEASURE_BATCH_SIZE = 16


@st.cache_resource(show_spinner="Loading the backbone…", max_entries=2)
def cached_backbone(name: str):
    """The pretrained backbone, loaded once per process and shared: read-only, callers copy it."""
    return load_backbone(name)


st.title("3 · Freezing")
state = require("Data", "Backbone")
dataset = state.dataset
spec = get_spec(state.backbone_name)
scratch: dict[str, Any] = state.scratch.setdefault("freezing", {})

st.markdown(
    f"**{spec.title}** is cut into layer groups, from the generic first layers (edges, word pieces) to the "
    "specific last ones. **Frozen** groups keep their pretrained weights; the others adapt to your data. "
    "Freezing more trains faster and needs less data; freezing less can fit unusual data better."
)

try:
    backbone = cached_backbone(spec.name)
except (BackboneUnavailable, WeightsMismatch, OSError) as error:
    st.error(f"{spec.title} cannot be loaded here: {error}")
    st.page_link("pages/2_backbone.py", label="Choose another backbone", icon="🧠")
    st.stop()

spec = backbone.spec  # the catalogue entry, or what a checkpoint of another size holds: it counts the same groups
total_groups = len(backbone.group_names)
train_items, _ = dataset.split("train")
recommended, reason = recommend(len(train_items), dataset.modality, spec)
current = state.frozen_groups if state.frozen_groups is not None and state.frozen_groups <= total_groups else None
slider_key = f"freezing_frozen_{spec.name}"
if slider_key not in st.session_state:
    st.session_state[slider_key] = current if current is not None else recommended


def use_recommendation() -> None:
    st.session_state[slider_key] = recommended


# The slider, its metric, the recommendation, the sidebar and the Train page all count one thing: frozen groups.
# Left, nothing frozen (full fine-tuning); right, everything frozen (feature extraction).
frozen_groups = st.slider(
    "Layer groups frozen",
    min_value=0,
    max_value=total_groups,
    key=slider_key,
    help=f"0 = full fine-tuning: every layer trains. {total_groups} = feature extraction: only the new head trains.",
)
ends = st.columns(2)
ends[0].caption("◀ 0 frozen: full fine-tuning — every layer trains")
ends[1].markdown(f"<div style='text-align: right'><small>{total_groups} frozen: feature extraction — only the new "
                 "head trains ▶</small></div>", unsafe_allow_html=True)  # fmt: skip
state.frozen_groups = frozen_groups

# Freezing a shallow copy's flags would touch the shared backbone: summarise on a private copy, with the
# multi-block features that training adds when every group is frozen (they widen the new head).
private = copy.deepcopy(backbone)
private.set_feature_taps(feature_taps(spec, TrainConfig(spec.name, frozen_groups), frozen_groups, total_groups))
model = Classifier(private, dataset.num_classes)
summary = freeze_first(model, frozen_groups)

left, right = st.columns(2)
left.metric("Trainable parameters", f"{summary.trainable_params:,}",
            help=f"of {summary.total_params:,} in total; the new head has {summary.head_params:,}")
right.metric("Frozen layer groups", f"{frozen_groups} of {total_groups}")

names = [group.name for group in summary.groups] + ["new head"]
params = [group.params for group in summary.groups] + [summary.head_params]
colours = ["#9aa5b1" if group.frozen else "#2e86de" for group in summary.groups] + ["#e67e22"]
figure = go.Figure(go.Bar(
    x=names, y=params, marker_color=colours,
    text=["frozen" if group.frozen else "trains" for group in summary.groups] + ["trains (new)"],
    hovertemplate="%{x}: %{y:,} parameters, %{text}<extra></extra>",
))
figure.update_layout(title="Parameters per layer group (grey: frozen, blue: trains)", yaxis_title="parameters",
                     height=320, margin={"t": 40, "b": 10, "l": 10, "r": 10})
st.plotly_chart(figure, key="freezing_groups_chart")

with st.container(border=True):
    st.markdown(f"**Recommendation: {recommended} of {total_groups} groups frozen.** {reason}")
    if frozen_groups != recommended:
        st.button("Use the recommendation", on_click=use_recommendation)

st.subheader("Cost on this machine")
cost_key = (spec.name, frozen_groups, dataset.fingerprint)
costs: dict[tuple, Any] = scratch.setdefault("costs", {})
if st.button("Measure on this machine", help="Runs a few real training steps on your data; takes seconds."):
    with st.spinner("Running a few training steps on your data…"):
        try:
            costs[cost_key] = estimate_cost(model, make_preprocessor(spec), train_items, MEASURE_BATCH_SIZE,
                                            n_batches=2)
        except (ValueError, RuntimeError) as error:
            st.error(f"The measurement failed: {error}")
estimate = costs.get(cost_key)
if estimate is not None:
    cols = st.columns(2)
    cols[0].metric("Time per epoch", f"{estimate.seconds_per_epoch:.1f} s",
                   help=f"{estimate.seconds_per_batch:.2f} s per batch of {MEASURE_BATCH_SIZE}, measured on "
                        f"{estimate.measured_batches} batches on {estimate.device}")
    cols[1].metric("Extra memory", f"{estimate.peak_memory_mb:.0f} MB", help=f"peak, on {estimate.device}")
else:
    st.caption("Not measured yet for this choice.")

st.page_link("pages/4_train.py", label="Next: train", icon="➡️")
