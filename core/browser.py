"""Driving the app in a real browser: a Streamlit server on a free port, Debian's Chromium through Playwright, and
waits on the app's own state. The end-to-end tests (`tests/e2e/`) and the browser classroom benchmark
(`core.bench_browser`) share it; the app never imports it (Playwright is a test extra).

Streamlit marks its root element with `data-test-script-state` ("running" while a script run is in progress,
"notRunning" when it is done) and `data-test-connection-state`; its own e2e suite waits on these. We add a
small counter of finished runs (installed before the page's scripts) so that "do X, then wait for the rerun X
caused" needs no fixed sleep.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from playwright.sync_api import Locator, Page, expect

REPO_ROOT = Path(__file__).resolve().parents[1]
SERVER_START_TIMEOUT_S = 90.0
VIEWPORT = {"width": 1400, "height": 1000}
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-background-networking",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

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

RERUN_GRACE_MS = 3_000


class ServerError(RuntimeError):
    """The Streamlit server exited or did not answer its health check; the message holds its log's tail."""


# ------------------------------------------------------------------------------------------------ server, browser


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _log_tail(log_path: Path, lines: int = 40) -> str:
    if not log_path.exists():
        return "(no server log)"
    return "\n".join(log_path.read_text(errors="replace").splitlines()[-lines:])


def _wait_healthy(url: str, process: subprocess.Popen, log_path: Path) -> None:
    """Poll Streamlit's health endpoint until it answers "ok"; raise early if the server died."""
    deadline = time.monotonic() + SERVER_START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ServerError(f"The Streamlit server exited with status {process.returncode}:\n{_log_tail(log_path)}")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
                if response.status == 200 and response.read().strip() == b"ok":
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.25)  # polling a subprocess's health endpoint, not waiting on the browser
    raise ServerError(f"The Streamlit server did not answer /_stcore/health within {SERVER_START_TIMEOUT_S:.0f} s:\n"
                      f"{_log_tail(log_path)}")


@contextmanager
def studio_server(home: Path, log_path: Path, **env: str) -> Iterator[tuple[str, subprocess.Popen]]:
    """Run `streamlit run app.py` with workspace `home` on a free port, offline; yield its URL and process once it
    is healthy; always stop it."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    environment = dict(os.environ)
    environment.update(TRANSFER_STUDIO_HOME=str(home), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
                       PYTHONUNBUFFERED="1", **env)
    command = [
        sys.executable, "-m", "streamlit", "run", "app.py",
        "--server.port", str(port),
        "--server.address", "127.0.0.1",
        "--server.headless", "true",
        "--browser.gatherUsageStats", "false",
        "--server.fileWatcherType", "none",
    ]
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, cwd=REPO_ROOT, env=environment, stdout=log, stderr=subprocess.STDOUT)
        try:
            _wait_healthy(url, process, log_path)
            yield url, process
        finally:
            process.terminate()
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=15)


def chromium_executable() -> Path:
    """Debian's Chromium (Playwright's own browser download is not used here); FileNotFoundError says how to get it."""
    executable = Path(shutil.which("chromium") or "/usr/bin/chromium")
    if not executable.exists():
        raise FileNotFoundError("Chromium is not installed: install it with `make test` (or `apt-get install "
                                "chromium`); Playwright's own browser download is not used here.")
    return executable


def new_tab(browser: Any, url: str, before_load: Callable[[Page], Any] | None = None, **context_options: Any) -> Page:
    """A fresh browser context (a new person, a new Streamlit session) with the app at `url` loaded and idle.

    `before_load` is called with the new tab before it opens the app (a benchmark attaches its network listener
    there, so it sees the app's websocket from its first message)."""
    context = browser.new_context(viewport=VIEWPORT, **context_options)
    context.set_default_timeout(30_000)
    context.add_init_script(RUN_COUNTER_SCRIPT)
    tab = context.new_page()
    if before_load is not None:
        before_load(tab)
    tab.goto(url)
    wait_app_loaded(tab)
    return tab


# ------------------------------------------------------------------------------------------------ waiting


def wait_idle(page: Page, timeout_ms: float = 60_000) -> None:
    """Wait until the app is connected, no script run is in progress and every element has rendered."""
    page.locator(CONNECTED).wait_for(state="attached", timeout=timeout_ms)
    page.locator(IDLE).wait_for(state="attached", timeout=timeout_ms)
    expect(page.get_by_test_id("stSkeleton")).to_have_count(0, timeout=timeout_ms)
    expect(page.locator("[data-stale='true']")).to_have_count(0, timeout=timeout_ms)


def wait_images_loaded(page: Page, timeout_ms: float = 60_000) -> None:
    """Wait until every image on the page has loaded (or failed to): until then a gallery grows as its pictures
    arrive and moves whatever is below it, so a click aimed at a button there can land on a picture instead."""
    page.wait_for_function("() => Array.from(document.images).every((image) => image.complete)", timeout=timeout_ms)


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


# ------------------------------------------------------------------------------------------------ steps


def main(page: Page) -> Locator:
    """The main (non-sidebar) area of the app."""
    return page.get_by_test_id("stMain")


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


def freeze_every_group(page: Page) -> None:
    """Step 3: move the slider to full fine-tuning (0 frozen) and back to feature extraction (every group frozen)."""
    go_to(page, "3 · Freezing")
    slider = main(page).get_by_role("slider")
    expect(slider).to_be_visible(timeout=120_000)  # the backbone loads first
    frozen = main(page).get_by_test_id("stMetric").filter(has_text="Frozen layer groups")
    value = frozen.get_by_test_id("stMetricValue")
    # On a busy machine (three sessions training) a rerun takes seconds: wait for the page before each key press.
    wait_idle(page)
    slider.focus()
    slider.press("Home")
    expect(value).to_have_text(re.compile(r"^0 of \d+$"), timeout=60_000)
    wait_idle(page)
    slider.focus()
    slider.press("End")
    expect(value).to_have_text(re.compile(r"^(\d+) of \1$"), timeout=60_000)
    wait_idle(page)
    expect(main(page).get_by_test_id("stException")).to_have_count(0)
