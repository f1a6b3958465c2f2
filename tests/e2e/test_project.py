"""A project travels (issue 10.4): train on the sample, save the project, and open it on another server with an
empty workspace, in a fresh browser in another workspace: the same run is there, listed on the Train page and
on the Test page with the same accuracy."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect

from tests.e2e.conftest import studio_server
from tests.e2e.studio import (
    ARTIFACTS,
    choose_radio,
    click_button,
    fill_number,
    go_to,
    main,
    rerun,
    shot,
    upload,
    wait_images_loaded,
)
from tests.e2e.test_data import load_sample
from tests.e2e.test_sessions import _person
from tests.e2e.test_walk import choose_default_backbone, expect_finished, set_feature_extraction

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def other_machine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A second server with a workspace of its own (nothing trained, nothing cached): another machine."""
    with studio_server(tmp_path_factory.mktemp("other-machine"), ARTIFACTS / "server-other-machine.log") as url:
        yield url


def _tested_run(page: Page) -> tuple[str, str]:
    """On the Test page: the run id in the picker and the accuracy it shows."""
    go_to(page, "5 · Test")
    picker = main(page).get_by_role("combobox", name="Run to test", exact=True)
    accuracy = main(page).get_by_test_id("stMetric").filter(has_text="accuracy").first
    expect(accuracy.get_by_test_id("stMetricValue")).to_have_text(re.compile(r"^\d+(\.\d)?%$"), timeout=120_000)
    return picker.input_value().split(" · ")[0], accuracy.get_by_test_id("stMetricValue").inner_text()


def test_a_saved_project_opens_on_another_machine_with_the_same_run_and_accuracy(
    page: Page, browser: Browser, other_machine: str, tmp_path: Path
) -> None:
    load_sample(page, "images")
    choose_default_backbone(page, "images")
    set_feature_extraction(page)
    go_to(page, "4 · Train")
    choose_radio(page, "Gradient descent, epoch by epoch")  # one epoch on the cached features: seconds
    fill_number(page, "Epochs", 1)
    with rerun(page):
        main(page).get_by_role("button", name=re.compile(r"Train$")).click()
    expect_finished(page)
    run_id, accuracy = _tested_run(page)

    go_to(page, "1 · Data")
    save = main(page).get_by_role("button", name=re.compile("Save project"))
    wait_images_loaded(page)  # the sample's gallery sits above the button and grows as its pictures arrive
    save.scroll_into_view_if_needed()
    with page.expect_download(timeout=120_000) as download:
        save.click()
    saved = tmp_path / download.value.suggested_filename
    download.value.save_as(saved)
    assert saved.name.endswith(".tsproject.zip") and saved.stat().st_size > 0

    with _person(browser, other_machine, "project-other-machine") as other:  # screenshotted if it fails
        codes = {re.search(r"workspace=([a-z0-9-]+)", tab.url).group(1) for tab in (page, other)}
        assert len(codes) == 2  # another person's workspace, on another server
        choose_radio(other, "Open a saved project")
        upload(other, saved)
        click_button(other, "Open project", timeout_ms=120_000)
        expect(main(other).get_by_test_id("stAlert").filter(has_text="Opened the project")).to_be_visible()
        expect(other.get_by_test_id("stSidebar")).to_contain_text("Data: Sample: handwritten digits")
        expect(other.get_by_test_id("stSidebar")).to_contain_text("Train: model trained")
        shot(other, "project-opened")

        go_to(other, "4 · Train")
        expect(main(other).get_by_text(run_id).first).to_be_visible()  # in the runs table
        assert _tested_run(other) == (run_id, accuracy)
        shot(other, "project-tested")
