"""The browser benchmark's network clock (core.bench_browser._Wire): Streamlit's messages, read without Streamlit."""

from __future__ import annotations

import base64

from streamlit.proto.BackMsg_pb2 import BackMsg
from streamlit.proto.ForwardMsg_pb2 import ForwardMsg

from core.bench_browser import _fields, _Wire


def _frame(message, at: float) -> dict:
    return {"timestamp": at, "response": {"opcode": 2, "payloadData": base64.b64encode(
        message.SerializeToString()).decode()}}


def _rerun(at: float, fragment: str = "", auto: bool = False) -> dict:
    message = BackMsg()
    message.rerun_script.page_script_hash = "abc"
    message.rerun_script.fragment_id = fragment
    message.rerun_script.is_auto_rerun = auto
    return _frame(message, at)


def _finished(at: float, status: int) -> dict:
    message = ForwardMsg()
    message.script_finished = status
    return _frame(message, at)


def _wire() -> _Wire:
    wire = _Wire.__new__(_Wire)  # no browser: the frames are fed by hand
    wire.wall_offset, wire.requests, wire.finished = None, [], []
    return wire


def test_the_field_numbers_are_streamlits() -> None:
    assert BackMsg.DESCRIPTOR.fields_by_name["rerun_script"].number == _Wire.RERUN_SCRIPT
    assert ForwardMsg.DESCRIPTOR.fields_by_name["script_finished"].number == _Wire.SCRIPT_FINISHED
    state = BackMsg.DESCRIPTOR.fields_by_name["rerun_script"].message_type
    assert state.fields_by_name["fragment_id"].number == _Wire.FRAGMENT_ID
    assert state.fields_by_name["is_auto_rerun"].number == _Wire.IS_AUTO_RERUN
    assert {ForwardMsg.FINISHED_SUCCESSFULLY, ForwardMsg.FINISHED_WITH_COMPILE_ERROR} == set(_Wire.PAGE_RUN_ENDED)
    message = BackMsg()
    message.rerun_script.fragment_id = "f1"
    assert _fields(_fields(message.SerializeToString())[_Wire.RERUN_SCRIPT])[_Wire.FRAGMENT_ID] == b"f1"


def test_each_page_request_is_answered_by_the_first_full_page_run_that_ends_after_it() -> None:
    wire = _wire()
    wire._handshake({"timestamp": 100.0, "wallTime": 1_000_100.0})
    wire._sent(_rerun(101.0))  # a click
    wire._sent(_rerun(101.2, fragment="live"))  # a fragment's beat: not a page request
    wire._sent(_rerun(101.3, auto=True))
    wire._received(_finished(101.4, ForwardMsg.FINISHED_FRAGMENT_RUN_SUCCESSFULLY))
    wire._received(_finished(101.5, ForwardMsg.FINISHED_EARLY_FOR_RERUN))  # cut short by the next click
    wire._sent(_rerun(101.6))
    wire._received(_finished(102.1, ForwardMsg.FINISHED_SUCCESSFULLY))  # answers both clicks
    wire._sent(_rerun(103.0))  # never answered (the class ended): not counted
    answers = wire.answers()
    assert [round(asked - 1_000_000.0, 3) for asked, _ in answers] == [101.0, 101.6]
    assert [round(seconds, 3) for _, seconds in answers] == [1.1, 0.5]


def test_text_frames_and_large_frames_are_not_read() -> None:
    wire = _wire()
    wire._received({"timestamp": 1.0, "response": {"opcode": 1, "payloadData": "hello"}})
    wire._received({"timestamp": 1.0, "response": {"opcode": 2, "payloadData": "A" * (_Wire.SMALL_FRAME + 1)}})
    wire._sent({"timestamp": 1.0, "response": {"opcode": 2, "payloadData": base64.b64encode(b"\xff\xff").decode()}})
    assert wire.finished == [] and wire.requests == [] and wire.answers() == []
