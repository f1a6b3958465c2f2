"""End-to-end fixtures: a real Streamlit server on a free port and a headless Chromium that talks to it.

The server runs `app.py` exactly as a user would start it, in its own workspace folder, with no network.
Each test gets a fresh browser context (so a fresh Streamlit session); the server and browser are shared by
the whole e2e run to keep it fast. On a failing test a screenshot of the page is kept in `test-artifacts/e2e/`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from playwright.sync_api import expect

from core import browser as driver
from core.browser import CHROMIUM_ARGS, RUN_COUNTER_SCRIPT, VIEWPORT, wait_app_loaded  # noqa: F401
from tests.e2e.studio import ARTIFACTS

# Waits on what the page shows: seconds on a machine whose cores the other tests share (five by default).
expect.set_options(timeout=20_000)


@pytest.fixture(scope="session")
def studio_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The app server's workspace (runs, uploads, caches): a throwaway folder for this e2e run."""
    return tmp_path_factory.mktemp("e2e-workspace")


@contextmanager
def studio_server(home: Path, log_path: Path, **env: str) -> Iterator[str]:
    """`core.browser.studio_server`'s URL; a server that does not come up fails the test with its log."""
    try:
        with driver.studio_server(home, log_path, **env) as (url, _process):
            yield url
    except driver.ServerError as error:
        pytest.fail(str(error))


@pytest.fixture(scope="session")
def app_url(studio_home: Path) -> Iterator[str]:
    """The app as users get it (features warm up once a backbone is chosen), for the whole e2e run."""
    with studio_server(studio_home, ARTIFACTS / "server.log", TRANSFER_STUDIO_WARM_UP="1") as url:
        yield url


@pytest.fixture(scope="session")
def browser(tmp_path_factory: pytest.TempPathFactory):
    """Debian's Chromium driven by Playwright; missing Chromium is a failure, not a skip (CI installs it).

    Its microphone is a fake that says "left" (a word of the sound sample), so `st.audio_input` records for real.
    """
    from playwright.sync_api import sync_playwright

    from tests.e2e.files import microphone_wav

    microphone = microphone_wav(tmp_path_factory.mktemp("microphone"))

    try:
        executable = driver.chromium_executable()
    except FileNotFoundError as error:
        pytest.fail(f"{error} The end-to-end tests cannot run without it.")
    with sync_playwright() as playwright:
        fake_microphone = ["--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
                           f"--use-file-for-fake-audio-capture={microphone}"]
        chromium = playwright.chromium.launch(executable_path=executable, args=[*CHROMIUM_ARGS, *fake_microphone])
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    """Remember each phase's outcome on the test item, so the page fixture can screenshot failures."""
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report


@pytest.fixture
def page(request: pytest.FixtureRequest, browser, app_url: str):
    """A fresh browser context and tab (a new Streamlit session) with the app loaded and idle."""
    context = browser.new_context(viewport=VIEWPORT, accept_downloads=True, permissions=["microphone"])
    context.set_default_timeout(30_000)
    context.add_init_script(RUN_COUNTER_SCRIPT)
    tab = context.new_page()
    tab.app_url = app_url  # the tests need it for reloads and direct page loads
    try:
        tab.goto(app_url)
        wait_app_loaded(tab)
        yield tab
    finally:
        failed = getattr(request.node, "rep_call", None)
        if failed is not None and failed.failed:
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            tab.screenshot(path=str(ARTIFACTS / f"FAILED-{request.node.name}.png"), full_page=True)
        context.close()
