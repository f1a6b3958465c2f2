"""Step 1 in the browser: the sample loads with its report, and bad uploads are refused without losing it."""

from __future__ import annotations

from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from tests.e2e.files import corrupt_image_archive, not_a_zip, zip_slip_archive
from tests.e2e.studio import choose_radio, click_button, main, shot, upload

pytestmark = pytest.mark.e2e


SAMPLE_EXAMPLES = {"images": 240, "texts": 160, "sound clips": 144}


def load_sample(page: Page, kind: str = "images") -> None:
    """Load a sample ("images", "texts" or "sound clips") from the Data page and wait for its check report."""
    choose_radio(page, f"Sample {kind}")
    click_button(page, f"Load sample {kind}")
    expect(main(page).get_by_role("heading", name="Check report")).to_be_visible()
    expect_loaded(page, examples=SAMPLE_EXAMPLES[kind])
    # the sidebar summary is redrawn after the page ran, so it shows the new data at once
    expect(page.get_by_test_id("stSidebar")).to_contain_text("Data: Sample")


def load_sample_images(page: Page) -> None:
    load_sample(page, "images")


def expect_loaded(page: Page, examples: int) -> None:
    """The Data page shows a loaded data set with this many examples."""
    metric = main(page).get_by_test_id("stMetric").filter(has_text="Examples")
    expect(metric.get_by_test_id("stMetricValue")).to_have_text(str(examples))


def test_bad_uploads_show_an_error_and_keep_the_earlier_data(page: Page, tmp_path: Path) -> None:
    load_sample_images(page)

    choose_radio(page, "Upload a zip of class folders")
    upload(page, zip_slip_archive(tmp_path))
    click_button(page, "Check and load")
    alerts = main(page).get_by_test_id("stAlert")
    expect(alerts.filter(has_text="points outside the archive")).to_be_visible()
    expect(alerts.filter(has_text="is still loaded")).to_be_visible()
    expect_loaded(page, examples=240)
    assert not (tmp_path.parent / "escaped.jpg").exists()
    shot(page, "data-zip-slip-refused")

    upload(page, not_a_zip(tmp_path))
    click_button(page, "Check and load")
    expect(alerts.filter(has_text="photos.zip")).to_be_visible()
    expect(alerts.filter(has_text="is still loaded")).to_be_visible()
    expect(main(page).get_by_test_id("stException")).to_have_count(0)

    # A truncated JPEG among good ones: the file is named and skipped, the rest loads and the page works on.
    upload(page, corrupt_image_archive(tmp_path))
    click_button(page, "Check and load")
    expect(alerts.filter(has_text="truncated.jpg")).to_be_visible()
    expect(main(page).get_by_role("heading", name="Loaded: broken_jpeg.zip")).to_be_visible()
    expect_loaded(page, examples=20)
    expect(main(page).get_by_test_id("stException")).to_have_count(0)
    shot(page, "data-truncated-jpeg-skipped")

    # ... and the sample can be loaded again afterwards.
    load_sample_images(page)
