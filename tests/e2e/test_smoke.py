"""The app starts, shows the five steps in the sidebar and the progress summary of a fresh session."""

from __future__ import annotations

import pytest
from playwright.sync_api import Page, expect

from tests.e2e.studio import go_to, sidebar_link

pytestmark = pytest.mark.e2e

STEPS = ["1 · Data", "2 · Backbone", "3 · Freezing", "4 · Train", "5 · Test"]


def test_app_starts_with_five_steps_and_empty_progress(page: Page) -> None:
    for title in STEPS:
        expect(sidebar_link(page, title)).to_be_visible()
    sidebar = page.get_by_test_id("stSidebar")
    expect(sidebar).to_contain_text("Data: not loaded yet")
    expect(sidebar).to_contain_text("Backbone: not chosen")
    expect(page.get_by_test_id("stException")).to_have_count(0)


def test_every_step_opens_from_the_sidebar_without_an_error(page: Page) -> None:
    for title in STEPS[1:] + STEPS[:1]:
        go_to(page, title)
        expect(page.get_by_test_id("stException")).to_have_count(0)
