"""Three people on one server at once (issues 14.1-3, 10.3), each in their own browser context (own cookies, own URL),
so each in a private workspace of their own.

- Every Train click starts or queues a run, and the page says which (three clicks within a fraction of a second).
- No browser ever shows another's data, job, model or export: a new browser opening the Train page while others
  train sees nothing of theirs, and no page lists another browser's run ids.
- After a refresh all of your runs are back, listed on the Train page and testable on the Test page.
- Typing another's workspace code in the sidebar joins that workspace, with its runs.

Feature extraction on the small samples, with one epoch of gradient descent on the cached features, keeps
each run to seconds.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

import pytest
from playwright.sync_api import Browser, Locator, Page, expect

from tests.e2e.conftest import VIEWPORT
from tests.e2e.studio import (
    ARTIFACTS,
    RUN_COUNTER_SCRIPT,
    choose_radio,
    fill_number,
    go_to,
    main,
    shot,
    wait_app_loaded,
    wait_idle,
)
from tests.e2e.test_data import load_sample
from tests.e2e.test_walk import choose_default_backbone, expect_finished, set_feature_extraction

pytestmark = pytest.mark.e2e

CLICK_SAID = re.compile(r"(Started|Queued at place (\d+)): your click (?:began|queued) run (\S+?)[ ;]")


@contextmanager
def _person(browser: Browser, app_url: str, name: str) -> Iterator[Page]:
    """A browser context of its own (a separate person), with the app loaded; screenshotted if the test fails."""
    context = browser.new_context(viewport=VIEWPORT)
    context.set_default_timeout(30_000)
    context.add_init_script(RUN_COUNTER_SCRIPT)
    tab = context.new_page()
    failed = True
    try:
        tab.goto(app_url)
        wait_app_loaded(tab)
        yield tab
        failed = False
    finally:
        if failed:
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            tab.screenshot(path=str(ARTIFACTS / f"FAILED-sessions-{name}.png"), full_page=True)
        context.close()


def _ready_to_train(page: Page, kind: str) -> None:
    """Sample data, the default backbone, every group frozen; on the Train page, a short gradient-descent run."""
    load_sample(page, kind)
    choose_default_backbone(page, kind)
    set_feature_extraction(page)
    go_to(page, "4 · Train")
    choose_radio(page, "Gradient descent, epoch by epoch")
    fill_number(page, "Epochs", 1)


def _press_train(page: Page) -> None:
    """Press Train without waiting: the next person presses theirs at once."""
    main(page).get_by_role("button", name=re.compile(r"Train( in the queue)?$")).click()


def _what_the_click_did(page: Page) -> tuple[str, int | None, str]:
    """("Started", None, run id) or ("Queued", place, run id), as the page says it."""
    said = main(page).get_by_text(CLICK_SAID)
    expect(said).to_be_visible()
    match = CLICK_SAID.search(said.inner_text())
    assert match is not None
    verb, place, run_id = match.groups()
    return verb.split()[0], int(place) if place else None, run_id.strip("`")


def _text(page: Page) -> str:
    return page.get_by_test_id("stApp").inner_text()


def _data_name(page: Page) -> str:
    """The data set the sidebar says this session has loaded."""
    sidebar = page.get_by_test_id("stSidebar")
    expect(sidebar).to_contain_text("✅ Data:")
    match = re.search(r"Data: (.+?) — ", sidebar.inner_text())
    assert match is not None
    return match.group(1)


def _run_choices(page: Page, label: str) -> list[str]:
    """The options of an `st.selectbox`, read by opening it (and closing it again)."""
    box = _open_choices(page, label)
    options = page.get_by_role("option").all_inner_texts()
    box.press("Escape")
    return options


def _open_choices(page: Page, label: str) -> Locator:
    """Open an `st.selectbox`'s list from the keyboard (a click right after a reload may only focus it)."""
    box = main(page).get_by_role("combobox", name=label, exact=True)
    box.focus()
    box.press("ArrowDown")
    expect(page.get_by_role("option").first).to_be_visible()
    return box


def test_three_people_train_at_once_and_each_sees_only_their_own_work(browser: Browser, app_url: str) -> None:
    with ExitStack() as people:
        alice, bob, carol = (people.enter_context(_person(browser, app_url, n)) for n in ("alice", "bob", "carol"))
        urls = {alice.url, bob.url, carol.url}
        assert len(urls) == 3 and all("workspace=" in url for url in urls), urls  # each in a workspace of its own

        _ready_to_train(alice, "images")
        _press_train(alice)
        wait_idle(alice)
        verb, _, alice_first = _what_the_click_did(alice)
        assert verb == "Started"

        # Carol is new: opening the Train page while Alice's job is on the server shows her nothing of Alice's.
        go_to(carol, "4 · Train")
        expect(main(carol).get_by_text("This step needs an earlier one")).to_be_visible()
        expect(carol.get_by_test_id("stSidebar")).to_contain_text("Data: not loaded yet")
        assert alice_first not in _text(carol)

        _ready_to_train(bob, "texts")
        go_to(carol, "1 · Data")
        _ready_to_train(carol, "images")
        expect_finished(alice)
        everyone = (alice, bob, carol)
        for person in everyone:  # three clicks within a fraction of a second
            _press_train(person)
        said = {}
        for person in everyone:
            wait_idle(person)
            said[person] = _what_the_click_did(person)
        run_ids = [run_id for _, _, run_id in said.values()]
        assert len(set(run_ids)) == 3 and alice_first not in run_ids, said
        places = sorted(place for verb, place, _ in said.values() if verb == "Queued")
        assert places == list(range(1, len(places) + 1)), said  # one queue, no place given twice
        assert any(verb == "Started" for verb, _, _ in said.values()), said
        for person in everyone:
            expect_finished(person)
        shot(alice, "sessions-4-train-alice")

        alice_runs = {alice_first, said[alice][2]}
        own = {alice: alice_runs, bob: {said[bob][2]}, carol: {said[carol][2]}}
        data = {person: _data_name(person) for person in everyone}
        assert data[bob] != data[alice] == data[carol]  # texts vs images (Alice and Carol both chose the digits)

        # Everyone refreshes: each gets back their own job, data and runs, and nobody else's.
        for person in everyone:
            person.reload()
            wait_app_loaded(person)
            expect(main(person).get_by_text("Reattached to the latest training job")).to_be_visible()
            assert _data_name(person) == data[person]
            text = _text(person)
            others = set(run_ids + [alice_first]) - own[person]
            assert not [run_id for run_id in others if run_id in text], (person, others)
        compared = main(alice).get_by_test_id("stMultiSelect").filter(has_text="Compare two runs")
        for run_id in alice_runs:
            expect(compared).to_contain_text(run_id)
        assert sorted(_run_choices(alice, "Model to test in step 5")) == sorted(alice_runs)

        # ... and every one of Alice's runs can be tested: the older one too.
        go_to(alice, "5 · Test")
        choices = _run_choices(alice, "Run to test")
        assert len(choices) == 2 and {c.split(" · ")[0] for c in choices} == alice_runs, choices
        older = next(c for c in choices if c.startswith(alice_first))
        picker = _open_choices(alice, "Run to test")
        alice.get_by_role("option", name=older).click()
        wait_idle(alice)
        accuracy = main(alice).get_by_test_id("stMetric").filter(has_text="accuracy").first
        expect(accuracy.get_by_test_id("stMetricValue")).to_have_text(re.compile(r"^\d+(\.\d)?%$"), timeout=120_000)
        expect(picker).to_have_value(older)
        go_to(bob, "5 · Test")
        assert [c.split(" · ")[0] for c in _run_choices(bob, "Run to test")] == [said[bob][2]]
        assert not [run_id for run_id in alice_runs | own[carol] if run_id in _text(bob)]

        # Carol types Alice's code, as it shows in Alice's sidebar, and works in Alice's workspace from then on.
        code = re.search(r"workspace=([a-z0-9-]+)", alice.url).group(1)
        expect(alice.get_by_test_id("stSidebar")).to_contain_text(f"Workspace: {code}")
        sidebar = carol.get_by_test_id("stSidebar")
        sidebar.get_by_text("Join another workspace").click()
        box = sidebar.get_by_label("Workspace code")
        box.fill(code.replace("-", " ").title())
        box.press("Enter")
        wait_idle(carol)
        sidebar.get_by_role("button", name="Join", exact=True).click()
        wait_idle(carol)
        expect(sidebar).to_contain_text(f"You joined the workspace {code}")
        assert f"workspace={code}" in carol.url
        go_to(carol, "5 · Test")
        assert {c.split(" · ")[0] for c in _run_choices(carol, "Run to test")} == alice_runs
