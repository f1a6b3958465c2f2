"""Transfer Studio: the router. Builds the navigation over the five steps, the session's state and the sidebar."""

from __future__ import annotations

import logging
import re
import uuid

import streamlit as st

from core import jobs
from core.paths import workspace_dir
from core.session import StudioState, restore
from core.store import RunStore
from pages._ui import PAGES, draw_progress, get_state

logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

st.set_page_config(page_title="Transfer Studio", page_icon="🧪", layout="wide")


@st.cache_resource(show_spinner=False)
def _close_abandoned_runs(workspace: str) -> list[str]:
    """Once per server start and workspace: runs a killed server left "running" are recorded as failed."""
    return RunStore().mark_abandoned()


#: The URL query parameter that names this browser, so its jobs and runs are found again after a refresh.
BROWSER_PARAM = "browser"
_BROWSER_ID = re.compile(r"^[0-9a-f]{32}$")


def _claim_browser(state: StudioState, fresh: bool) -> None:
    """Give the session its browser id, keep it in the URL (a reload keeps the query string) and, in a fresh
    session, restore what this browser had. An id in the URL that is not one we hand out is replaced, not used."""
    if state.owner is None:
        asked = st.query_params.get(BROWSER_PARAM, "")
        owner = asked if _BROWSER_ID.match(asked) else uuid.uuid4().hex
        if fresh and restore(state, owner):
            state.scratch["train_reattached"] = state.job.job_id
        state.owner = owner
    if st.query_params.get(BROWSER_PARAM) != state.owner:
        st.query_params[BROWSER_PARAM] = state.owner  # page switches drop the query string; put it back


jobs.recover_once()  # first: adopt workers that outlived a server restart, mark the dead ones resumable
_close_abandoned_runs(str(workspace_dir()))  # then whatever is left "running" with no process (older servers)

fresh_session = "studio" not in st.session_state
state = get_state()
_claim_browser(state, fresh_session)
navigation = st.navigation([st.Page(path, title=title, icon=icon) for path, title, icon in PAGES])

# Drawn before the page (so a page that stops early still shows it) and again after it, in the same slot, so
# that what the page just changed (a data set loaded, a freezing chosen) shows without waiting a rerun.
progress_slot = st.sidebar.empty()
draw_progress(progress_slot, state)
navigation.run()
draw_progress(progress_slot, state)
