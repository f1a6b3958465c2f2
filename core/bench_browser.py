"""Classroom load in real browsers: N students on one server, each in a browser context of their own.

`python -m core.bench --classroom N --browser` starts the app as users get it (`streamlit run app.py`, in a fresh
workspace) and one headless Chromium (Playwright) with N contexts, so N Streamlit sessions, each in a private
workspace. Every student takes the steps a person takes, one click after another, round-robin across the class
(the first student's run trains while the later ones are still clicking): "Load sample images" on the Data page,
the Backbone page (default pre-selected), the Freezing slider to every group frozen, the Train page, and Train with
its defaults. While runs train, every student who waits looks at the Backbone page and comes back to the Train
page every few seconds (two page runs each time). Each click is timed from the click until the app is idle again
(the script run finished and every element drawn: what a person waits for); a sidebar click whose page has not
come within 5 s is made again, as a person would, and counted.

It reports: whether every run finished and no session failed, time until every student has a model, click to
finished model p50 / p95 (as the Train page shows "Training finished"), click -> idle p50 / p95 over all clicks
and over the clicks made while others trained, peak memory of the server with its workers and of Chromium, and
whether each browser's pages name only its own runs. Chromium runs at a lower CPU priority than the server (nice
15): in a classroom the browsers run on the students' own computers, not on the server's cores. Nothing here is used
by the app.
"""

from __future__ import annotations

import base64
import bisect
import contextlib
import json
import re
import statistics
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from core import bench_classroom
from core.browser import (
    CHROMIUM_ARGS,
    choose_radio,
    chromium_executable,
    click_button,
    go_to,
    main,
    new_tab,
    rerun,
    studio_server,
    wait_idle,
)

CLICK_SAID = re.compile(r"(Started|Queued at place (\d+)): your click (?:began|queued) run (\S+?)[ ;]")
#: The longest a class may take before the benchmark gives up (runs still going count as not finished).
CLASS_TIMEOUT_SECONDS = 3 * 3600
#: Seconds between two visits of one waiting student (a person checking on their run).
CHECK_EVERY_SECONDS = 5.0


class _Student:
    """One person: their tab, the clicks they made (what, seconds until idle, whether others were training)."""

    def __init__(self, index: int, page: Any) -> None:
        self.name = bench_classroom.owner_name(index)
        self.page = page
        self.clicks: list[tuple[str, float, bool]] = []
        self.run_id = ""
        self.pressed_at: float | None = None
        self.finished_at: float | None = None
        self.failed = ""
        self.last_check = 0.0

    def click(self, what: str, action: Any, busy: bool) -> None:
        """Do `action` and record how long until the app was idle again."""
        started = time.perf_counter()
        action(self.page)
        self.clicks.append((what, time.perf_counter() - started, busy))


def _varint(data: bytes, at: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        byte = data[at]
        value |= (byte & 0x7F) << shift
        at += 1
        if byte < 0x80:
            return value, at
        shift += 7


def _fields(data: bytes) -> dict[int, Any]:
    """The top-level fields of a protobuf message (field number -> last value: an int, or the bytes of a string or
    message). Protobuf's wire format read directly: `core` does not import Streamlit, whose message classes these are.
    Raises ValueError (or IndexError) on bytes that are not a message."""
    fields: dict[int, Any] = {}
    at = 0
    while at < len(data):
        key, at = _varint(data, at)
        number, kind = key >> 3, key & 7
        if kind == 0:
            fields[number], at = _varint(data, at)
        elif kind == 2:
            size, at = _varint(data, at)
            fields[number], at = data[at : at + size], at + size
        elif kind in (1, 5):
            at += 8 if kind == 1 else 4
        else:
            raise ValueError(f"wire type {kind}")
    return fields


class _Wire:
    """The tab's websocket as Chromium's network stack saw it (DevTools protocol): when each page-run request left
    the browser and when the server's "script finished" came back.

    The difference is the app's own answer time, queueing for the server's Python included, and leaves out what the
    tab itself does before sending and after receiving (its JavaScript and drawing). That part runs on the students'
    own computers in a classroom, but here on the server's 2 cores, where 10-30 tabs wait behind the training
    worker. The timestamps are the network stack's, taken when a frame passes, not when Python hears of it.
    """

    #: Received frames longer than this (base64 characters) are page content, never "script finished": not decoded.
    SMALL_FRAME = 600
    #: Streamlit's field numbers (streamlit/proto): BackMsg.rerun_script, its ClientState's fragment_id and
    #: is_auto_rerun (a fragment's own beat), ForwardMsg.script_finished and the statuses that end a full page run
    #: (FINISHED_SUCCESSFULLY, FINISHED_WITH_COMPILE_ERROR; not FINISHED_EARLY_FOR_RERUN, not a fragment's run).
    RERUN_SCRIPT, FRAGMENT_ID, IS_AUTO_RERUN, SCRIPT_FINISHED, PAGE_RUN_ENDED = 11, 5, 6, 6, (0, 1)

    def __init__(self, page: Any) -> None:
        self.wall_offset: float | None = None  # wall clock minus the network stack's monotonic clock
        self.requests: list[float] = []  # full page runs asked for (a click, a page change; not a fragment's beat)
        self.finished: list[float] = []  # full page runs that ended (successfully, or on a compile error)
        session = page.context.new_cdp_session(page)
        session.on("Network.webSocketWillSendHandshakeRequest", self._handshake)
        session.on("Network.webSocketFrameSent", self._sent)
        session.on("Network.webSocketFrameReceived", self._received)
        session.send("Network.enable")

    def _handshake(self, event: dict[str, Any]) -> None:
        self.wall_offset = float(event["wallTime"]) - float(event["timestamp"])

    @staticmethod
    def _message(event: dict[str, Any]) -> dict[int, Any] | None:
        frame = event["response"]
        if frame.get("opcode") != 2:  # Streamlit's messages are binary protobufs
            return None
        try:
            return _fields(base64.b64decode(frame["payloadData"]))
        except (ValueError, IndexError):  # a frame that is not a whole message says nothing here
            return None

    def _sent(self, event: dict[str, Any]) -> None:
        message = self._message(event)
        if message is None or not isinstance(message.get(self.RERUN_SCRIPT), bytes):
            return
        state = _fields(message[self.RERUN_SCRIPT])
        if not state.get(self.FRAGMENT_ID) and not state.get(self.IS_AUTO_RERUN):
            self.requests.append(float(event["timestamp"]))

    def _received(self, event: dict[str, Any]) -> None:
        if len(event["response"].get("payloadData", "")) > self.SMALL_FRAME:
            return
        message = self._message(event)
        if message is not None and message.get(self.SCRIPT_FINISHED, -1) in self.PAGE_RUN_ENDED:
            self.finished.append(float(event["timestamp"]))

    def answers(self) -> list[tuple[float, float]]:
        """(wall-clock time asked, seconds until the page run that answers it ended) for each request; one page run
        answers every request made before it ended (a click during a run reruns it)."""
        if self.wall_offset is None:
            return []
        timed, ends = [], sorted(self.finished)
        for asked in sorted(self.requests):
            at = bisect.bisect_left(ends, asked)  # the first page run to end at or after the request
            if at < len(ends):
                timed.append((asked + self.wall_offset, ends[at] - asked))
        return timed


#: How often a student clicks a sidebar link whose page has not come (as a person would click again).
NAVIGATION_TRIES = 3


def _go(title: str) -> Any:
    """Go to a step by its sidebar link; a click that has not changed the page within 5 s is made again (up to
    `NAVIGATION_TRIES` clicks), and counted on the page (`studio_retries`), so the time includes the retries."""
    def action(page: Any) -> None:
        for attempt in range(NAVIGATION_TRIES):
            try:
                go_to(page, title)
                return
            except AssertionError:
                if attempt == NAVIGATION_TRIES - 1:
                    raise
                page.studio_retries = getattr(page, "studio_retries", 0) + 1
    return action


def _load_sample(page: Any) -> None:
    choose_radio(page, "Sample images")
    click_button(page, "Load sample images")
    main(page).get_by_role("heading", name="Check report").wait_for()


def _press_train(page: Any) -> None:
    with rerun(page):
        main(page).get_by_role("button", name=re.compile(r"Train( in the queue)?$")).click()


def _slider(key: str) -> Any:
    """The Freezing slider moved with one key press ("Home": nothing frozen, "End": every group frozen)."""
    def press(page: Any) -> None:
        slider = main(page).get_by_role("slider")
        slider.wait_for(timeout=120_000)  # the backbone loads first
        slider.focus()
        with rerun(page):
            slider.press(key)
    return press


STEPS = (
    ("load the sample", _load_sample),
    ("Backbone page", _go("2 · Backbone")),
    ("Freezing page", _go("3 · Freezing")),
    ("slider to full fine-tuning", _slider("Home")),
    ("slider to feature extraction", _slider("End")),
    ("Train page", _go("4 · Train")),
    ("Train", _press_train),
)


def _finished(page: Any) -> bool:
    return main(page).get_by_test_id("stAlert").filter(has_text="Training finished").count() > 0


def _percentile(values: list[float], fraction: float) -> float | None:
    return bench_classroom._percentile(values, fraction)


def run(students: int, home: str | Path | None = None) -> dict[str, Any]:
    """The class in browsers, on a server started here; the numbers the README table shows."""
    from playwright.sync_api import sync_playwright

    started = time.perf_counter()
    with ExitStack() as stack:
        folder = Path(home) if home is not None else Path(stack.enter_context(
            tempfile.TemporaryDirectory(prefix="transfer-studio-browser-class-")))
        page_runs = folder / "page_runs.jsonl"  # the server's own time per page run (app.py logs it when asked)
        url, server = stack.enter_context(studio_server(folder, folder / "server.log",
                                                        TRANSFER_STUDIO_RUN_LOG=str(page_runs)))
        playwright = stack.enter_context(sync_playwright())
        browser = playwright.chromium.launch(executable_path=str(chromium_executable()), args=CHROMIUM_ARGS)
        stack.callback(browser.close)
        _lower_priority(browser_pid(browser))  # the students' browsers stand in for their own computers
        memory = stack.enter_context(bench_classroom.MemorySampler(pid=server.pid))
        class_started = time.perf_counter()
        wires: list[_Wire] = []
        people = [_Student(index, new_tab(browser, url, before_load=lambda tab: wires.append(_Wire(tab))))
                  for index in range(students)]
        busy_from: float | None = None  # wall clock of the first Train press: from then on, runs train
        for what, action in STEPS:  # round-robin: everyone's first step, then everyone's second, ...
            for person in people:
                if person.failed:
                    continue
                busy = any(p.pressed_at is not None and p.finished_at is None for p in people)
                try:
                    person.click(what, action, busy)
                except Exception as error:  # noqa: BLE001 - a student whose page broke is counted, the class goes on
                    person.failed = f"{what}: {error}"
                    continue
                if what == "Train":
                    person.pressed_at = time.perf_counter()
                    busy_from = busy_from or time.time()
                    said = main(person.page).get_by_text(CLICK_SAID)
                    match = CLICK_SAID.search(said.inner_text() if said.count() else "")
                    person.run_id = match.group(3).strip("`") if match else ""
        deadline = time.perf_counter() + CLASS_TIMEOUT_SECONDS
        waiting = [p for p in people if not p.failed and p.pressed_at is not None]
        while waiting and time.perf_counter() < deadline:
            for person in list(waiting):
                if _finished(person.page):
                    person.finished_at = time.perf_counter()
                    waiting.remove(person)
                elif time.perf_counter() - person.last_check >= CHECK_EVERY_SECONDS:
                    person.last_check = time.perf_counter()
                    try:  # a look at another step and back: two page runs while others train
                        person.click("Backbone page (waiting)", _go("2 · Backbone"), True)
                        person.click("back to the Train page (waiting)", _go("4 · Train"), True)
                    except Exception as error:  # noqa: BLE001
                        person.failed = f"waiting: {error}"
                        waiting.remove(person)
            time.sleep(0.2)  # between sweeps over the class; the pages poll the server on their own
        until_all = time.perf_counter() - class_started
        busy_until = time.time()
        texts = {person.name: person.page.get_by_test_id("stApp").inner_text() for person in people}
        for person in people:
            wait_idle(person.page)
        chromium = bench_classroom.MemorySampler(pid=browser_pid(browser))
        chromium.sample()
        server_runs = _page_runs(page_runs)
    answers = [answer for wire in wires for answer in wire.answers()]
    wire_all = [seconds for _, seconds in answers]
    wire_busy = [seconds for asked, seconds in answers if busy_from is not None and busy_from <= asked <= busy_until]
    all_runs = [run["seconds"] for run in server_runs]
    busy_runs = [run["seconds"] for run in server_runs
                 if busy_from is not None and busy_from <= run["at"] <= busy_until]
    run_ids = {person.name: person.run_id for person in people}
    seen_others = {name: [rid for other, rid in run_ids.items() if other != name and rid and rid in text]
                   for name, text in texts.items()}
    all_clicks = [seconds for person in people for _, seconds, _ in person.clicks]
    busy_clicks = [seconds for person in people for _, seconds, busy in person.clicks if busy]
    to_model = [p.finished_at - p.pressed_at for p in people if p.finished_at is not None and p.pressed_at]
    by_step: dict[str, list[float]] = {}
    for person in people:
        for what, seconds, _ in person.clicks:
            by_step.setdefault(what, []).append(seconds)
    return {
        "students": students,
        "finished": sum(p.finished_at is not None for p in people),
        "failures": [f"{p.name}: {p.failed}" for p in people if p.failed],
        "missing_run_ids": [p.name for p in people if not p.run_id],
        "seconds_until_all_finished": until_all,
        "click_to_model_p50": _percentile(to_model, 0.5),
        "click_to_model_p95": _percentile(to_model, 0.95),
        "clicks": len(all_clicks),
        "click_to_idle_p50": _percentile(all_clicks, 0.5),
        "click_to_idle_p95": _percentile(all_clicks, 0.95),
        "busy_clicks": len(busy_clicks),
        "navigation_retries": sum(getattr(person.page, "studio_retries", 0) for person in people),
        "busy_click_to_idle_p50": _percentile(busy_clicks, 0.5),
        "busy_click_to_idle_p95": _percentile(busy_clicks, 0.95),
        "busy_click_to_idle_max": max(busy_clicks, default=None),
        "by_step": {what: {"n": len(values), "p50": statistics.median(values), "p95": _percentile(values, 0.95)}
                    for what, values in by_step.items()},
        "wire_answers": len(wire_all),
        "wire_answer_p50": _percentile(wire_all, 0.5),
        "wire_answer_p95": _percentile(wire_all, 0.95),
        "wire_busy_answers": len(wire_busy),
        "wire_busy_answer_p50": _percentile(wire_busy, 0.5),
        "wire_busy_answer_p95": _percentile(wire_busy, 0.95),
        "wire_busy_answer_max": max(wire_busy, default=None),
        "server_page_runs": len(all_runs),
        "server_page_run_p50": _percentile(all_runs, 0.5),
        "server_page_run_p95": _percentile(all_runs, 0.95),
        "server_busy_page_runs": len(busy_runs),
        "server_busy_page_run_p95": _percentile(busy_runs, 0.95),
        "server_busy_page_run_max": max(busy_runs, default=None),
        "peak_memory_mib": memory.mib(),
        "chromium_memory_mib": chromium.mib()["total"],
        "own_runs_only": not any(seen_others.values()),
        "seen_others": {name: ids for name, ids in seen_others.items() if ids},
        "bench_seconds": time.perf_counter() - started,
    }


def _page_runs(path: Path) -> list[dict[str, Any]]:
    """The server's log of its page runs (`pages._ui.logged_page_run`): page, seconds, end time, session."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _lower_priority(pid: int) -> None:
    """Chromium and its tabs below the server's priority: in a classroom they run on the students' computers, and
    here they share the server's cores (each process Chromium starts later inherits the value)."""
    import psutil

    for process in [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]:
        with contextlib.suppress(psutil.Error):
            process.nice(15)


def browser_pid(browser: Any) -> int:
    """The process id of Playwright's browser process (its driver process's child), for the memory sample."""
    import psutil

    for child in psutil.Process().children(recursive=True):
        if "chrom" in child.name().lower() and "--type=" not in " ".join(child.cmdline()):
            return child.pid
    raise RuntimeError("The Chromium process was not found.")


def markdown(results: dict[str, Any], machine: dict[str, Any] | None = None) -> str:
    """The README table of one class in browsers."""
    def seconds(value: float | None) -> str:
        return "-" if value is None else f"{value:.1f} s" if value < 120 else f"{value / 60:.1f} min"

    memory = results["peak_memory_mib"]
    lines = [
        f"Class of {results['students']} in one headless Chromium (a context each), one server"
        + (f"; {machine.get('cpu', '')}, torch {machine.get('torch', '')}" if machine else "") + ".",
        "",
        "| | |",
        "|---|---|",
        f"| Runs finished | {results['finished']} of {results['students']}; failures: "
        f"{len(results['failures'])} |",
        f"| Until every student has a model | {seconds(results['seconds_until_all_finished'])} |",
        f"| Train click to finished model, p50 / p95 | {seconds(results['click_to_model_p50'])} / "
        f"{seconds(results['click_to_model_p95'])} |",
        f"| Click to idle, every click (n = {results['clicks']}), p50 / p95 | "
        f"{seconds(results['click_to_idle_p50'])} / {seconds(results['click_to_idle_p95'])} |",
        f"| Click to idle while others train (n = {results['busy_clicks']}), p50 / p95 / max | "
        f"{seconds(results['busy_click_to_idle_p50'])} / {seconds(results['busy_click_to_idle_p95'])} / "
        f"{seconds(results['busy_click_to_idle_max'])} |",
        f"| The app's answer while others train: page-run request sent to page run ended, at the browser's network "
        f"(n = {results['wire_busy_answers']}), p50 / p95 / max | {seconds(results['wire_busy_answer_p50'])} / "
        f"{seconds(results['wire_busy_answer_p95'])} / {seconds(results['wire_busy_answer_max'])} |",
        f"| The app's answer, all requests (n = {results['wire_answers']}), p50 / p95 | "
        f"{seconds(results['wire_answer_p50'])} / {seconds(results['wire_answer_p95'])} |",
        f"| The server's own time per page run while others train (n = {results['server_busy_page_runs']}), p95 / "
        f"max | {seconds(results['server_busy_page_run_p95'])} / {seconds(results['server_busy_page_run_max'])} |",
        f"| The server's own time per page run, all (n = {results['server_page_runs']}), p50 / p95 | "
        f"{seconds(results['server_page_run_p50'])} / {seconds(results['server_page_run_p95'])} |",
        f"| Peak memory: server + workers | {memory['total']:.0f} MiB (server {memory['server']:.0f}, one worker "
        f"up to {memory['one_worker']:.0f}) |",
        f"| Chromium with {results['students']} tabs (end of run) | {results['chromium_memory_mib']:.0f} MiB |",
        f"| Each browser names only its own runs | {'yes' if results['own_runs_only'] else 'NO'} |",
        f"| Sidebar clicks made again (the page had not come within 5 s) | {results['navigation_retries']} |",
        "",
        "| Step | n | p50 | p95 |",
        "|---|---|---|---|",
        *[f"| {what} | {row['n']} | {seconds(row['p50'])} | {seconds(row['p95'])} |"
          for what, row in results["by_step"].items()],
    ]
    return "\n".join(lines)
