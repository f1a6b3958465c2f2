"""End-to-end fixtures: a real Streamlit server on a free port and a headless Chromium that talks to it.

The server runs `app.py` exactly as a user would start it, in its own workspace folder, with no network.
Each test gets a fresh browser context (so a fresh Streamlit session); the server and browser are shared by
the whole e2e run to keep it fast. On a failing test a screenshot of the page is kept in `test-artifacts/e2e/`.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.e2e.studio import ARTIFACTS, REPO_ROOT, RUN_COUNTER_SCRIPT, wait_app_loaded

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


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _server_log_tail(log_path: Path, lines: int = 40) -> str:
    if not log_path.exists():
        return "(no server log)"
    return "\n".join(log_path.read_text(errors="replace").splitlines()[-lines:])


def _wait_healthy(url: str, process: subprocess.Popen, log_path: Path) -> None:
    """Poll Streamlit's health endpoint until it answers "ok"; fail early if the server died."""
    deadline = time.monotonic() + SERVER_START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"The Streamlit server exited with status {process.returncode}:\n{_server_log_tail(log_path)}")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
                if response.status == 200 and response.read().strip() == b"ok":
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.25)  # polling a subprocess's health endpoint, not waiting on the browser
    pytest.fail(f"The Streamlit server did not answer /_stcore/health within {SERVER_START_TIMEOUT_S:.0f} s:\n"
                f"{_server_log_tail(log_path)}")


@pytest.fixture(scope="session")
def studio_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The app server's workspace (runs, uploads, caches): a throwaway folder for this e2e run."""
    return tmp_path_factory.mktemp("e2e-workspace")


@contextmanager
def studio_server(home: Path, log_path: Path, **env: str) -> Iterator[str]:
    """Run `streamlit run app.py` with workspace `home` on a free port; yield its URL once healthy; always stop it."""
    port = _free_port()
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
            yield url
        finally:
            process.terminate()
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=15)


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

    executable = shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(executable).exists():
        pytest.fail(
            "Chromium is not installed, so the end-to-end tests cannot run. Install it with `make test` "
            "(or `apt-get install chromium`); Playwright's own browser download is not used here."
        )
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
