"""Transfer Studio: the router. Builds the navigation over the five steps, the session's state and the sidebar."""

from __future__ import annotations

import logging

import streamlit as st

from pages._ui import PAGES, get_state

logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

st.set_page_config(page_title="Transfer Studio", page_icon="🧪", layout="wide")

state = get_state()
navigation = st.navigation([st.Page(path, title=title, icon=icon) for path, title, icon in PAGES])

with st.sidebar:
    st.markdown("### Your progress")
    dataset = state.dataset
    st.markdown(
        ("✅ Data: **%s** — %d examples, %d classes" % (dataset.name, len(dataset.table), dataset.num_classes))
        if dataset is not None
        else "⬜ Data: not loaded yet"
    )
    st.markdown(f"✅ Backbone: **{state.backbone_name}**" if state.backbone_name else "⬜ Backbone: not chosen")
    st.markdown(
        f"✅ Freezing: **{state.frozen_groups}** group(s) frozen"
        if state.frozen_groups is not None
        else "⬜ Freezing: not chosen"
    )
    job = state.job
    if job is not None and getattr(job, "is_running", False):
        st.markdown("⏳ Train: **running**")
    elif state.run_dir:
        st.markdown("✅ Train: model trained")
    else:
        st.markdown("⬜ Train: no model yet")

navigation.run()
