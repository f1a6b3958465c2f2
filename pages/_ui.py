"""What every page shares: the session's state, the page list and the "do this first" guard."""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterator

import streamlit as st
from streamlit.runtime.scriptrunner import get_script_run_ctx

from core import workspaces
from core.session import StudioState, open_workspace

#: The URL query parameter that names the session's workspace, so a refresh (or the link, on another computer)
#: opens it again.
WORKSPACE_PARAM = "workspace"

#: With this set to a file, the server appends one JSON line per full page run (page, start, seconds, session): the
#: browser classroom benchmark (`core.bench_browser`) reads it to tell the server's time per click from the
#: browsers'. Unset (the default), nothing is written.
RUN_LOG_ENV = "TRANSFER_STUDIO_RUN_LOG"

PAGES = [
    ("pages/1_data.py", "1 · Data", "📁"),
    ("pages/2_backbone.py", "2 · Backbone", "🧠"),
    ("pages/3_freezing.py", "3 · Freezing", "🧊"),
    ("pages/4_train.py", "4 · Train", "🏋️"),
    ("pages/5_evaluate.py", "5 · Test", "🎯"),  # not 5_test.py: tools would take the page for a test file
]
_PAGE_OF_STEP = {"Data": PAGES[0], "Backbone": PAGES[1], "Freezing": PAGES[2], "Train": PAGES[3]}
_WHAT_TO_DO = {
    "Data": "load a data set (or the sample) first",
    "Backbone": "choose a backbone first",
    "Freezing": "choose how many layer groups stay frozen first",
    "Train": "train a model first",
}


def url_path(title: str) -> str:
    """A step's URL comes from its title, not its file name: "5 · Test" -> /test."""
    return title.split("·", 1)[-1].strip().lower().replace(" ", "_")


def get_state() -> StudioState:
    """This browser session's state, created on first use."""
    if "studio" not in st.session_state:
        st.session_state["studio"] = StudioState()
    return st.session_state["studio"]


def require(*steps: str) -> StudioState:
    """Stop the page with a pointer to the earlier step it needs, when that step is not done."""
    state = get_state()
    for step in steps:
        if not state.steps_done[step]:
            path, title, icon = _PAGE_OF_STEP[step]
            st.info(f"This step needs an earlier one: {_WHAT_TO_DO[step]}.", icon="👈")
            st.page_link(path, label=f"Go to {title}", icon=icon)
            st.stop()
    return state


def draw_progress(slot: st.delta_generator.DeltaGenerator, state: StudioState) -> None:
    """The sidebar summary of where the user is, drawn into `slot` (replacing what was there)."""
    lines = ["### Your progress"]
    dataset = state.dataset
    if dataset is not None:
        lines.append(f"✅ Data: **{dataset.name}** — {len(dataset.table)} examples, {dataset.num_classes} classes")
    else:
        lines.append("⬜ Data: not loaded yet")
    lines.append(f"✅ Backbone: **{state.backbone_name}**" if state.backbone_name else "⬜ Backbone: not chosen")
    if state.frozen_groups is not None:
        lines.append(f"✅ Freezing: **{state.frozen_groups}** group(s) frozen")
    else:
        lines.append("⬜ Freezing: not chosen")
    job = state.job
    if job is not None and getattr(job, "is_running", False):
        lines.append("⏳ Train: **running**")
    elif state.run_dir:
        lines.append("✅ Train: model trained")
    else:
        lines.append("⬜ Train: no model yet")
    slot.markdown("\n\n".join(lines))


def draw_workspace(state: StudioState, shared: bool) -> None:
    """The sidebar's workspace: its code, what it keeps apart, and (unless the operator put everyone in one
    shared workspace) a way to join another by its code or to start a new private one."""
    st.sidebar.markdown(f"**Workspace:** `{state.owner}`")
    if shared:
        st.sidebar.caption("Shared by everyone on this server (the operator set it up): you all see the same "
                           "runs and models.")
        return
    st.sidebar.caption("Your runs and models are kept in this workspace, apart from everyone else's. Note its "
                       "code: typing it on another computer, or giving it to your team, opens this workspace there.")
    joined = state.scratch.pop("workspace_joined", None)
    if joined:
        st.sidebar.info(joined, icon="🔑")
    with st.sidebar.expander("Join another workspace"):
        code = st.text_input("Workspace code", key="workspace-code", placeholder="blue-otter-427")
        if st.button("Join", key="workspace-join"):
            try:
                name = workspaces.parse_code(code)
            except workspaces.WorkspaceError as error:
                st.error(str(error))
                return
            if name == state.owner:
                st.info("You are in this workspace already.")
                return
            _enter(name, existed=workspaces.join(name))
        if st.button("Start a new private workspace", key="workspace-new"):
            _enter(workspaces.claim_new(), existed=None)


def _enter(name: str, existed: bool | None) -> None:
    """Leave this workspace for `name` as a fresh session would enter it: nothing of the old one is kept (a run
    of it goes on training; its code opens it again), and what `name` has is restored."""
    for key in list(st.session_state):
        del st.session_state[key]
    state = st.session_state["studio"] = open_workspace(name)
    if existed is None:
        state.scratch["workspace_joined"] = f"A new private workspace: {name}."
    elif existed:
        state.scratch["workspace_joined"] = f"You joined the workspace {name}."
    else:
        state.scratch["workspace_joined"] = (f"The workspace {name} is new, with nothing in it yet. If you meant "
                                             "someone else's, check the code.")
    st.query_params[WORKSPACE_PARAM] = name
    st.rerun()


@contextlib.contextmanager
def logged_page_run(page: str, started: float) -> Iterator[None]:
    """Time one full run of the app from `started` (`time.perf_counter()` at the top of `app.py`) to the end of the
    page, and append it to the `RUN_LOG_ENV` file when that is set. Runs cut short (a rerun, a stop) count too."""
    try:
        yield
    finally:
        path = os.environ.get(RUN_LOG_ENV)
        if path:
            context = get_script_run_ctx()
            record = {"page": page, "seconds": round(time.perf_counter() - started, 4), "at": round(time.time(), 3),
                      "session": context.session_id if context is not None else ""}
            with open(path, "a", encoding="utf-8") as log:
                log.write(json.dumps(record) + "\n")
