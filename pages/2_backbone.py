"""Step 2: choose the pretrained backbone the classifier is built on."""

from __future__ import annotations

import numpy as np
import pandas as pd
import streamlit as st

from core import clip_length, jobs, recommend
from core.backbones import availability, catalogue_rows, default_backbone, get_spec, input_summary
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
st.caption("Click a column header to sort. Compute is per image or sound clip, or per 128 tokens of text.")

if shown_modality != modality:
    st.warning(f"These are {shown_modality} backbones, but your data set holds {modality}s. Switch back to choose.")
    st.stop()


def ranking_table(ranking: recommend.Ranking) -> pd.DataFrame:
    """One row per backbone, best first: the run's estimate with its interval and n, speed, size."""
    return pd.DataFrame([{
        "Backbone": candidate.title + ("  ✅" if candidate.name == ranking.best else ""),
        "Accuracy": f"{candidate.accuracy:.1%}",
        "95 % interval": f"{candidate.interval95[0]:.1%}–{candidate.interval95[1]:.1%}",
        "n": candidate.n,
        "Examples/s": round(candidate.examples_per_second, 1),
        "Parameters (M)": candidate.params_millions,
    } for candidate in ranking.candidates])


st.subheader("Which backbone for my data?")
rankable = [row["name"] for row in catalogue_rows(modality) if row["available"]]
scratch = state.scratch.setdefault("backbone", {})
rankings = scratch.setdefault("rankings", {})
rank_key = f"{state.dataset.fingerprint}|{','.join(rankable)}"
if len(rankable) == 1:
    st.info(f"Only one {modality} backbone is available here ({get_spec(rankable[0]).title}): there is nothing to "
            "rank. Its probe still tells what a run with it would estimate on your data.")
if rankable and rank_key not in rankings:
    measured = " (the 240 sample digits: about 10 s per backbone on a 2-core CPU)" if modality == "image" else ""
    st.caption(f"Scores each of the {len(rankable)} available {modality} backbone(s) on your data with the probe a "
               "feature-extraction run uses (its logistic head, cross-validated on small data), so each number is "
               "what that run would report. Each backbone costs a feature pass over your examples and seconds of "
               f"fitting{measured}; its features are kept, so training afterwards starts sooner.")
    if st.button("Rank for my data", key="backbone_rank"):
        bar = st.progress(0.0, text="Computing features…")
        try:
            rankings[rank_key] = recommend.rank_backbones(
                state.dataset, rankable,
                progress=lambda fraction, note: bar.progress(min(max(fraction, 0.0), 1.0), text=note),
            )
            scratch["preselect"] = rankings[rank_key].best  # pre-selected once; the user's own choice wins after
        except (ValueError, OSError, RuntimeError) as error:
            st.error(f"The backbones could not be ranked: {error}")
        else:
            st.rerun()  # draw the page with the ranking (and without the button that asked for it)
        finally:
            bar.empty()
if rank_key in rankings:
    ranking = rankings[rank_key]
    st.dataframe(ranking_table(ranking), hide_index=True, width="stretch")
    first = ranking.candidates[0]
    speed_note = ("while its features were computed" if all(c.speed_from == "feature pass" for c in ranking.candidates)
                  else f"while the features were computed, or on {recommend.SPEED_EXAMPLES} of your examples where "
                  "they were already cached")
    st.caption(f"Accuracy: {first.protocol}, n = {first.n}, 95 % Wilson interval. Examples/s: the feature pass on "
               f"this machine, preprocessing included, measured {speed_note}. ✅ pre-selected below.")
    if modality == "text":
        st.caption("A text run also mixes a TF-IDF word model into its answers; that part does not depend on the "
                   "backbone, so the probe scores the backbone's own head (the run reports it as the network's "
                   "accuracy).")
    if first.n < 30:
        st.warning(f"These accuracies rest on {first.n} examples (fewer than 30): read the order as a hint.")
    st.success(ranking.sentence, icon="🏆")

names = rows["name"].tolist()
if not names:
    st.info("No backbone of this kind is available offline here. Turn off the filter to see how to get one.")
    st.stop()
current = state.backbone_name if state.backbone_name in names else default_backbone(modality)
preselect = scratch.pop("preselect", None)
if preselect in names:
    current = preselect
if current not in names:
    current = names[0]
titles = dict(zip(rows["name"], rows["title"], strict=True))
chosen = st.selectbox(
    "Backbone", names, index=names.index(current), format_func=lambda n: f"{titles[n]}  ({n})",
    # After a ranking the help (part of the widget's identity) changes, so the ranking's pre-selection shows.
    help=("Pre-selected: the best of the ranking above (a smaller one inside the top one's interval wins)."
          if rank_key in rankings else "Pre-selected: the best backbone for your data that works offline on this "
          "machine."),
)

spec = get_spec(chosen)
status = availability(chosen)
clip_choice = "auto"
if spec.modality == "audio":  # how much of each clip it hears: the run's backbone name carries the length
    own = clip_length.own_seconds(chosen)
    durations = clip_length.dataset_sound_seconds(state.dataset)
    auto = clip_length.auto_clip_seconds(durations, own)
    allowed = clip_length.offered_lengths(chosen)
    median = float(np.median(durations)) if len(durations) else own
    clip_choice = st.selectbox(
        "Clip length", ["auto", *allowed], key="backbone_clip_seconds",
        index=(["auto", *allowed].index(state.scratch.get("clip_seconds", "auto"))
               if state.scratch.get("clip_seconds", "auto") in ["auto", *allowed] else 0),
        format_func=lambda value: (f"Auto: {auto:g} s for your clips (their sound lasts {median:.2f} s, median)"
                                   if value == "auto"
                                   else f"{value:g} s" + (" (the backbone's own)" if value == own else "")),
        help=f"Each clip is cut to this length around its loudest part, or padded with silence. Auto keeps the "
        f"backbone's own {own:g} s unless the sound in your clips clearly lasts longer (silence and quiet background "
        f"around it do not count): then its median length, at most {clip_length.AUTO_LONGEST:g} s. Longer clips keep "
        "more of each sound and cost more.",
    )
    state.scratch["clip_seconds"] = clip_choice
    spec = get_spec(clip_length.backbone_for(state.dataset, chosen, clip_choice))
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
        right.metric("Input", f"{spec.extra['audio']['clip_seconds']:g} s clip", help=f"Each {input_summary(spec)}.")
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
    if jobs.warm_up_features(state.dataset, clip_length.backbone_for(state.dataset, chosen, clip_choice)):
        st.caption("⚡ Its features for your data are being computed in the background, so training with the "
                   "backbone frozen can start at once.")
    st.page_link("pages/3_freezing.py", label="Next: choose what to freeze", icon="➡️")
else:
    st.info("Choose an available backbone to go on.")
