"""Helpers that drive Transfer Studio in the browser like a person, waiting only on the app's own state.

The waits and the steps a person takes (`wait_idle`, `rerun`, `go_to`, ...) live in `core.browser`, shared with
the browser classroom benchmark; the screenshots, uploads and chart readers the tests need are here.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from playwright.sync_api import Page, expect

from core.browser import (  # noqa: F401  (the e2e tests import these from here)
    REPO_ROOT,
    RUN_COUNTER_SCRIPT,
    choose_radio,
    click_button,
    go_to,
    main,
    rerun,
    runs_finished,
    sidebar_link,
    wait_app_loaded,
    wait_idle,
    wait_images_loaded,
)

ARTIFACTS = REPO_ROOT / "test-artifacts" / "e2e"
README_SCREENSHOTS = REPO_ROOT / "assets" / "screenshots"

TRAINING_TIMEOUT_MS = 480_000


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
