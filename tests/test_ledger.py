"""Tier 1: the ledger's bookkeeping of cancelled and held requests, no processes."""

from __future__ import annotations

import orjson
import pytest

from mcpshield import jsonrpc, ledger
from mcpshield.jsonrpc import Message
from mcpshield.ledger import CANCELLED_GRACE_S, Ledger


def _call(msg_id: int | str, tool: str = "echo") -> Message:
    body = {"jsonrpc": "2.0", "id": msg_id, "method": "tools/call", "params": {"name": tool, "arguments": {}}}
    msg = jsonrpc.decode(orjson.dumps(body))
    assert isinstance(msg, Message), msg
    return msg


def test_a_cancelled_request_the_server_never_answers_is_forgotten_after_the_grace_period() -> None:
    book = Ledger()
    assert book.open(_call(1), 0.0) is not None
    book.cancel(1, 5.0)
    book.open(_call(2), 5.0 + CANCELLED_GRACE_S - 1)
    assert 1 in book, "a late answer within the grace period is still recognised (and dropped)"
    book.open(_call(3), 5.0 + CANCELLED_GRACE_S)
    assert 1 not in book
    assert len(book) == 2


def test_cancelled_requests_do_not_count_toward_the_in_flight_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ledger, "MAX_IN_FLIGHT", 2)
    book = Ledger()
    assert book.open(_call(1), 0.0) is not None
    assert book.open(_call(2), 0.0) is not None
    assert book.open(_call(3), 0.0) is None, "full"
    book.cancel(1, 0.0)
    assert book.open(_call(3), 0.0) is not None
    assert book.active_tool_calls == 2


def test_a_cancelled_id_can_be_reused_and_the_new_request_takes_it_over() -> None:
    book = Ledger()
    old = book.open(_call(1, "first"), 0.0)
    assert old is not None
    book.cancel(1, 0.0)
    new = book.open(_call(1, "second"), 1.0)
    assert new is not None and new is not old
    assert book.active_tool_calls == 1
    answered = book.answer(1)  # whichever answer comes first is taken as the new request's
    assert answered is new and not answered.cancelled
    assert book.answer(1) is None
    assert book.active_tool_calls == 0


def test_cancelled_requests_kept_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ledger, "MAX_CANCELLED", 3)
    book = Ledger()
    for n in range(5):
        book.open(_call(n), 0.0)
        book.cancel(n, 0.0)
    assert [n for n in range(5) if n in book] == [2, 3, 4]


def test_a_held_request_is_not_running_and_an_answer_to_it_leaves_it_in_place() -> None:
    book = Ledger()
    entry = book.open(_call(1), 0.0)
    assert entry is not None and book.active_tool_calls == 1
    book.hold(entry)
    assert book.active_tool_calls == 0
    assert book.answer(1) is entry and 1 in book, "a guessed answer does not close a held call"
    book.release(entry)
    assert book.active_tool_calls == 1
    assert book.answer(1) is entry and 1 not in book
    assert book.active_tool_calls == 0


def test_a_held_request_cancelled_and_its_id_reused_is_not_closed_by_the_old_one() -> None:
    book = Ledger()
    old = book.open(_call(1), 0.0)
    assert old is not None
    book.hold(old)
    book.cancel(1, 0.0)
    new = book.open(_call(1), 0.0)
    book.release(old)
    book.discard(old)
    assert book.get(1) is new
    assert book.active_tool_calls == 1
