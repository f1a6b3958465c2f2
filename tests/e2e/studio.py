"""Helpers that drive Transfer Studio in the browser like a person, waiting only on the app's own state.

Streamlit marks its root element with `data-test-script-state` ("running" while a script run is in progress,
"notRunning" when it is done) and `data-test-connection-state`; its own e2e suite waits on these. We add a
small counter of finished runs (installed before the page's scripts) so that "do X, then wait for the rerun X
caused" needs no fixed sleep.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from playwright.sync_api import Locator, Page, expect

REPO_ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO_ROOT / "test-artifacts" / "e2e"
README_SCREENSHOTS = REPO_ROOT / "assets" / "screenshots"

APP = "[data-testid='stApp']"
IDLE = f"{APP}[data-test-script-state='notRunning']"
CONNECTED = f"{APP}[data-test-connection-state='CONNECTED']"

# Counts finished script runs (each flip away from "running"); installed before any of the page's own scripts.
RUN_COUNTER_SCRIPT = """
window.__studioRuns = 0;
new MutationObserver((records) => {
  for (const record of records) {
    if (record.oldValue === 'running') window.__studioRuns += 1;
  }
}).observe(document, {subtree: true, attributes: true, attributeOldValue: true,
                      attributeFilter: ['data-test-script-state']});
"""

TRAINING_TIMEOUT_MS = 480_000
RERUN_GRACE_MS = 3_000


def wait_idle(page: Page, timeout_ms: float = 60_000) -> None:
    """Wait until the app is connected, no script run is in progress and every element has rendered."""
    page.locator(CONNECTED).wait_for(state="attached", timeout=timeout_ms)
    page.locator(IDLE).wait_for(state="attached", timeout=timeout_ms)
    expect(page.get_by_test_id("stSkeleton")).to_have_count(0, timeout=timeout_ms)
    expect(page.locator("[data-stale='true']")).to_have_count(0, timeout=timeout_ms)


def wait_app_loaded(page: Page, timeout_ms: float = 60_000) -> None:
    """After `goto`/`reload`: the app view is there, a first script run has finished and the app is idle."""
    page.wait_for_selector("[data-testid='stAppViewContainer']", state="attached", timeout=timeout_ms)
    page.wait_for_function("() => (window.__studioRuns || 0) > 0", timeout=timeout_ms)
    wait_idle(page, timeout_ms)


def runs_finished(page: Page) -> int:
    """How many script runs this tab has seen finish."""
    return int(page.evaluate("() => window.__studioRuns || 0"))


@contextmanager
def rerun(page: Page, timeout_ms: float = 60_000) -> Iterator[None]:
    """Wrap an action that makes Streamlit rerun: afterwards wait for a run to finish and the app to be idle."""
    before = runs_finished(page)
    started = page.evaluate("() => Date.now()")
    yield
    # A run that finishes within one React update never shows "running" in the DOM, so the counter can miss it:
    # after a grace period an idle app also counts as done (the caller's retrying `expect` checks the result).
    page.wait_for_function(
        """([n, t0, grace]) => (window.__studioRuns || 0) > n
            || (Date.now() - t0 > grace && !!document.querySelector(
                "[data-testid='stApp'][data-test-script-state='notRunning']"))""",
        arg=[before, started, RERUN_GRACE_MS],
        timeout=timeout_ms,
    )
    wait_idle(page, timeout_ms)


def sidebar_link(page: Page, title: str) -> Locator:
    """The `st.navigation` link of one step ("1 · Data", "2 · Backbone", ...)."""
    return page.get_by_test_id("stSidebarNav").get_by_role("link").filter(has_text=title)


def go_to(page: Page, title: str) -> None:
    """Switch step with the sidebar link, inside the same Streamlit session (a full page load would start anew)."""
    sidebar_link(page, title).click()
    expect(page).to_have_url(_url_pattern(title))
    # Every page draws its step title first (before any "do this first" guard); a quick run can finish without
    # the script-state attribute ever showing "running", so wait on the page's own heading, then on idleness.
    heading = title.split("·", 1)[0].strip() + " ·"
    expect(main(page).get_by_role("heading", level=1).filter(has_text=heading)).to_be_visible(timeout=60_000)
    wait_idle(page)


def _url_pattern(title: str) -> re.Pattern[str]:
    """The URL `st.Page` gives a step: "2 · Backbone" -> ".../backbone"; the first (default) page is also "/".
    The query string (the workspace's code, `?workspace=...`) may follow."""
    path = re.escape(title.split("·", 1)[-1].strip().lower().replace(" ", "_"))
    return re.compile(rf"/({path}/?)?(\?[^#]*)?$" if title.startswith("1 ") else rf"/{path}/?(\?[^#]*)?$")


def main(page: Page) -> Locator:
    """The main (non-sidebar) area of the app."""
    return page.get_by_test_id("stMain")


def shot(page: Page, step: str) -> Path:
    """Screenshot the whole app at this step into `test-artifacts/e2e/`; with UPDATE_SCREENSHOTS=1 also into
    `assets/screenshots/` for the README.

    Streamlit scrolls inside its own container, so the viewport is stretched to the content's height first.
    """
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{step}.png"
    viewport = page.viewport_size or {"width": 1400, "height": 1000}
    content_height = page.evaluate(
        """() => {
          const main = document.querySelector("[data-testid='stMain']");
          const block = document.querySelector("[data-testid='stMainBlockContainer']");
          return Math.max(main ? main.scrollHeight : 0, block ? block.scrollHeight + 120 : 0);
        }"""
    )
    tall = max(viewport["height"], min(int(content_height), 4000))
    page.set_viewport_size({"width": viewport["width"], "height": tall})
    try:
        page.screenshot(path=str(path), full_page=True, animations="disabled")
    finally:
        page.set_viewport_size(viewport)
    if os.environ.get("UPDATE_SCREENSHOTS") == "1":
        README_SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, README_SCREENSHOTS / f"{step}.png")
    return path


def choose_radio(page: Page, label: str) -> None:
    """Pick one option of an `st.radio` by its visible label (no rerun to wait for when it is already picked)."""
    option = main(page).get_by_test_id("stRadio").get_by_role("radio", name=label, exact=True)
    if option.is_checked():
        return
    with rerun(page):
        main(page).get_by_test_id("stRadio").get_by_text(label, exact=True).click()
    expect(option).to_be_checked()


def click_button(page: Page, name: str, timeout_ms: float = 60_000) -> None:
    """Click an `st.button` by its label and wait for the rerun it causes."""
    with rerun(page, timeout_ms):
        main(page).get_by_role("button", name=name, exact=True).click()


def upload(page: Page, path: Path, index: int = 0) -> None:
    """Give a file to the `index`-th `st.file_uploader` of the main area, and wait until the app has it."""
    uploader = main(page).get_by_test_id("stFileUploader").nth(index)
    with rerun(page):
        uploader.get_by_test_id("stFileUploaderDropzoneInput").set_input_files(str(path))
    expect(uploader.get_by_role("button", name=f"Remove {path.name}")).to_be_visible()


def fill_number(page: Page, label: str, value: float) -> None:
    """Type a value into an `st.number_input` (inside a form: nothing reruns until the form is submitted).

    A field inside a collapsed `st.expander` (the Train page keeps most settings under "Advanced") is reached as a
    person would: by opening that expander first.
    """
    field = main(page).get_by_role("spinbutton", name=label, exact=True, include_hidden=True)
    if not field.is_visible():
        hidden = page.get_by_role("spinbutton", name=label, exact=True, include_hidden=True)
        main(page).locator("details", has=hidden).locator("summary").first.click()
        expect(field).to_be_visible()
    field.fill(str(value))
    field.press("Tab")


def chart_points(page: Page, chart_key: str, trace: int = 0) -> int:
    """How many points trace `trace` of the plotly chart with Streamlit key `chart_key` holds now (0: not drawn)."""
    return int(
        page.evaluate(
            """([key, trace]) => {
              const plot = document.querySelector(`.st-key-${key} .js-plotly-plot`);
              const data = plot && plot.data && plot.data[trace];
              return data && data.x ? data.x.length : 0;
            }""",
            [chart_key, trace],
        )
    )


def wait_chart_grows(page: Page, chart_key: str, beyond: int, timeout_ms: float = TRAINING_TIMEOUT_MS) -> int:
    """Wait until the live chart `chart_key` holds more than `beyond` points (redrawn by the app as data comes)."""
    page.wait_for_function(
        """([key, beyond]) => {
          const plot = document.querySelector(`.st-key-${key} .js-plotly-plot`);
          const data = plot && plot.data && plot.data[0];
          return !!(data && data.x && data.x.length > beyond);
        }""",
        arg=[chart_key, beyond],
        timeout=timeout_ms,
    )
    return chart_points(page, chart_key)
