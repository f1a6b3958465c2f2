"""Transfer Studio: the router. Builds the navigation over the five steps, the session's state and the sidebar."""

from __future__ import annotations

import logging
import time

import streamlit as st

from core import jobs, workspaces
from core.paths import is_workspace_name, workspace_dir
from core.session import StudioState, open_workspace
from core.store import RunStore
from pages._ui import (
    PAGES,
    WORKSPACE_PARAM,
    draw_progress,
    draw_workspace,
    get_state,
    logged_page_run,
    url_path,
)

logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

st.set_page_config(page_title="Transfer Studio", page_icon="🧪", layout="wide")
run_started = time.perf_counter()  # the server's own time for this run, logged only when asked (`logged_page_run`)


@st.cache_resource(show_spinner=False)
def _close_abandoned_runs(workspace: str) -> list[str]:
    """Once per server start and workspace: runs a killed server left "running" are recorded as failed."""
    return RunStore().mark_abandoned()


def _claim_workspace(state: StudioState, fresh: bool, shared: str | None) -> StudioState:
    """Put the session in its workspace and keep the code in the URL (a reload keeps the query string): the
    operator's shared one, else the one the URL names, else a fresh private one. A fresh session gets back what
    that workspace had. Returns the session's state."""
    if state.owner is None:
        asked = st.query_params.get(WORKSPACE_PARAM, "")
        name = shared or (asked if is_workspace_name(asked) else workspaces.claim_new())
        if fresh:
            state = st.session_state["studio"] = open_workspace(name)
        state.owner = name
    if st.query_params.get(WORKSPACE_PARAM) != state.owner:
        st.query_params[WORKSPACE_PARAM] = state.owner  # page switches drop the query string; put it back
    return state


jobs.recover_once()  # first: adopt workers that outlived a server restart, mark the dead ones resumable
_close_abandoned_runs(str(workspace_dir()))  # then whatever is left "running" with no process (older servers)

try:
    shared_workspace = workspaces.shared_workspace()
except workspaces.WorkspaceError as error:
    st.error(f"The server's settings are wrong: {error}")
    st.stop()
fresh_session = "studio" not in st.session_state
state = _claim_workspace(get_state(), fresh_session, shared_workspace)
navigation = st.navigation(
    [st.Page(path, title=title, icon=icon, url_path=url_path(title)) for path, title, icon in PAGES]
)
draw_workspace(state, shared=shared_workspace is not None)

# Drawn before the page (so a page that stops early still shows it) and again after it, in the same slot, so
# that what the page just changed (a data set loaded, a freezing chosen) shows without waiting a rerun.
progress_slot = st.sidebar.empty()
draw_progress(progress_slot, state)
with logged_page_run(navigation.title, run_started):
    navigation.run()
    draw_progress(progress_slot, state)
