"""Transfer Studio: the router. Builds the navigation over the five steps, the session's state and the sidebar."""

from __future__ import annotations

import logging

import streamlit as st

from core.paths import workspace_dir
from core.store import RunStore
from pages._ui import PAGES, draw_progress, get_state

logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

st.set_page_config(page_title="Transfer Studio", page_icon="🧪", layout="wide")


@st.cache_resource(show_spinner=False)
def _close_abandoned_runs(workspace: str) -> list[str]:
    """Once per server start and workspace: runs a killed server left "running" are recorded as failed."""
    return RunStore().mark_abandoned()


_close_abandoned_runs(str(workspace_dir()))

state = get_state()
navigation = st.navigation([st.Page(path, title=title, icon=icon) for path, title, icon in PAGES])

# Drawn before the page (so a page that stops early still shows it) and again after it, in the same slot, so
# that what the page just changed (a data set loaded, a freezing chosen) shows without waiting a rerun.
progress_slot = st.sidebar.empty()
draw_progress(progress_slot, state)
navigation.run()
draw_progress(progress_slot, state)
