"""Tier 2: the relay's ledger at work, driven in memory (see tests/test_decisions.py): cancelled
requests, calls held for the server's tool list, answers that fail to be checked, and lines no
peer may be sent (lone surrogates)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson
import pytest
from test_decisions import Always, Collect, _relay

from mcpshield import catalog
from mcpshield.catalog import FETCH_TIMEOUT_S
from mcpshield.jsonrpc import RESPONSE, Message
from mcpshield.ledger import CANCELLED_GRACE_S
from mcpshield.policy import ALLOW, Context, Decision, PassThrough, Rewrite
from mcpshield.relay import Relay


def _line(body: dict[str, Any]) -> bytes:
    return orjson.dumps(body) + b"\n"


def _call(msg_id: int | str, tool: str = "echo", **arguments: Any) -> bytes:
    return _line(
        {"jsonrpc": "2.0", "id": msg_id, "method": "tools/call", "params": {"name": tool, "arguments": arguments}}
    )


def _result(msg_id: int | str, text: str = "done") -> bytes:
    return _line({"jsonrpc": "2.0", "id": msg_id, "result": {"content": [{"type": "text", "text": text}]}})


def _cancel(msg_id: int | str) -> bytes:
    return _line({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": msg_id}})


def _sent(out: Collect) -> list[dict[str, Any]]:
    """What was written, and forgets it, so each step of a test sees only its own output."""
    messages = out.messages()
    out.data = b""
    return messages


# -- cancelled requests -----------------------------------------------------------------


def test_a_client_may_reuse_the_id_of_a_call_it_cancelled() -> None:
    relay, to_server, to_client, _ = _relay(Always(ALLOW))
    relay._on_client_data(_call(1, text="first"))
    relay._on_client_data(_cancel(1))
    _sent(to_server)
    relay._on_client_data(_call(1, text="second"))  # the server never answered the first
    assert [m.get("params", {}).get("arguments") for m in _sent(to_server)] == [{"text": "second"}]
    assert _sent(to_client) == []
    relay._on_server_data(_result(1, "second"))
    assert [m["result"]["content"][0]["text"] for m in _sent(to_client)] == ["second"]


def test_a_cancelled_call_the_server_never_answers_stops_taking_room(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = Clock(1000.0)
    monkeypatch.setattr("mcpshield.relay.time", clock)
    relay, to_server, _, _ = _relay(Always(ALLOW))
    relay._on_client_data(_call(1))
    relay._on_client_data(_cancel(1))
    assert relay._client_ledger.active_tool_calls == 0
    clock.now += CANCELLED_GRACE_S
    relay._on_client_data(_call(2))
    assert 1 not in relay._client_ledger
    assert len(relay._client_ledger) == 1
    _sent(to_server)
    relay._on_server_data(_result(1))  # too late: now an answer nobody waits for
    assert 2 in relay._client_ledger


class Clock:
    """Stands in for the time module in mcpshield.relay."""

    def __init__(self, now: float) -> None:
        self.now = now

    def monotonic(self) -> float:
        return self.now


# -- calls held for the server's tool list (mcpshield.catalog) ----------------------------


class NeedsList(PassThrough):
    """Wants the server's tool list before judging any call; remembers how many tool calls each
    call's check was told are running (this one included)."""

    def __init__(self) -> None:
        self.listed = False
        self.running: dict[object, int] = {}

    def catalog_needed(self, msg: Message) -> bool:
        return not self.listed

    def check(self, msg: Message, ctx: Context) -> Decision:
        if ctx.request is not None and ctx.request.own:
            self.listed = "nextCursor" not in msg.body["result"]
        elif msg.method == "tools/call":
            self.running[msg.id] = ctx.active_calls
        return ALLOW


class FakeLoop:
    """Stands in for the event loop: keeps the timers the relay sets, to fire by hand."""

    def __init__(self) -> None:
        self.timers: list[tuple[float, Callable[..., None], tuple[Any, ...]]] = []

    def call_later(self, delay: float, callback: Callable[..., None], *args: Any) -> None:
        self.timers.append((delay, callback, args))


def _held_relay() -> tuple[Relay, NeedsList, FakeLoop, Collect, Collect, Collect]:
    policy = NeedsList()
    relay, to_server, to_client, stderr = _relay(policy)
    loop = FakeLoop()
    relay._loop = loop  # type: ignore[assignment]
    return relay, policy, loop, to_server, to_client, stderr


def _tools(msg_id: object, cursor: str | None = None) -> bytes:
    result: dict[str, Any] = {"tools": [{"name": "echo", "inputSchema": {"type": "object"}}]}
    if cursor is not None:
        result["nextCursor"] = cursor
    return _line({"jsonrpc": "2.0", "id": msg_id, "result": result})


def test_a_server_answer_to_a_held_call_it_never_received_is_dropped() -> None:
    relay, _, _, to_server, to_client, stderr = _held_relay()
    relay._on_client_data(_call(1))
    (own,) = _sent(to_server)
    assert own["method"] == "tools/list"
    relay._on_server_data(_result(1, "guessed"))
    relay._on_server_data(b'{"jsonrpc":"2.0","id":1,"result":1,"result":2}\n')  # a malformed guess too
    assert _sent(to_client) == []
    assert stderr.data.count(b"mcpshield holds that call, unsent") == 2
    relay._on_server_data(_tools(own["id"]))
    assert [m["id"] for m in _sent(to_server)] == [1]
    relay._on_server_data(_result(1, "real"))
    assert [m["result"]["content"][0]["text"] for m in _sent(to_client)] == ["real"]


def test_the_fetch_timeout_bounds_every_page_together() -> None:
    relay, _, loop, to_server, _, stderr = _held_relay()
    relay._on_client_data(_call(1))
    (page1,) = _sent(to_server)
    relay._on_server_data(_tools(page1["id"], cursor="2"))
    (page2,) = _sent(to_server)
    assert page2["params"]["cursor"] == "2"
    assert [delay for delay, _, _ in loop.timers] == [FETCH_TIMEOUT_S], "one deadline for the whole fetch"
    _, fire, args = loop.timers[0]
    fire(*args)  # the server is still paging when the deadline comes
    assert [m["id"] for m in _sent(to_server)] == [1]
    assert b"did not list its tools within" in stderr.data


def test_held_calls_are_capped_by_bytes_and_the_next_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    relay, _, _, to_server, to_client, _ = _held_relay()
    first, second = _call(1, text="a" * 100), _call(2, text="b" * 100)
    monkeypatch.setattr(catalog, "MAX_HELD_BYTES", len(first) + len(second))  # newlines make room for no third
    relay._on_client_data(first + second + _call(3, text="c"))
    (refused,) = _sent(to_client)
    assert refused["id"] == 3
    assert refused["error"]["code"] == -32000
    assert "bytes" in refused["error"]["message"]
    (own,) = _sent(to_server)
    assert 3 not in relay._client_ledger
    relay._on_server_data(_tools(own["id"]))
    assert [m["id"] for m in _sent(to_server)] == [1, 2]


def test_held_calls_do_not_count_as_running() -> None:
    relay, policy, _, to_server, _, _ = _held_relay()
    relay._on_client_data(_call(1) + _call(2))
    assert relay._client_ledger.active_tool_calls == 0
    (own,) = _sent(to_server)
    relay._on_server_data(_tools(own["id"]))
    assert policy.running == {1: 1, 2: 2}, "each is judged with only the calls sent before it"
    relay._on_client_data(_call(3))
    assert policy.running[3] == 3


# -- an answer that fails to be checked ---------------------------------------------------


class BadRewrite(PassThrough):
    """A policy with a bug: it rewrites every response into something that cannot be encoded."""

    def check(self, msg: Message, ctx: Context) -> Decision:
        if msg.kind is RESPONSE:
            return Rewrite({"jsonrpc": "2.0", "id": msg.id, "result": {"bad": {1, 2}}})
        return ALLOW


def test_a_bug_while_handling_an_answer_answers_the_requester_with_an_error() -> None:
    relay, to_server, to_client, stderr = _relay(BadRewrite())
    relay._on_client_data(_call(1))
    _sent(to_server)
    relay._on_server_data(_result(1))
    (answer,) = _sent(to_client)
    assert answer["id"] == 1 and answer["error"]["code"] == -32603
    assert b"internal error (TypeError" in stderr.data
    assert 1 not in relay._client_ledger


def test_a_bug_while_handling_the_clients_answer_answers_the_server() -> None:
    relay, to_server, to_client, _ = _relay(BadRewrite())
    relay._on_server_data(_line({"jsonrpc": "2.0", "id": "s1", "method": "roots/list"}))
    assert [m["id"] for m in _sent(to_client)] == ["s1"]
    relay._on_client_data(_line({"jsonrpc": "2.0", "id": "s1", "result": {"roots": []}}))
    (answer,) = _sent(to_server)
    assert answer["id"] == "s1" and answer["error"]["code"] == -32603


# -- lone surrogates ----------------------------------------------------------------------


def test_a_request_with_a_lone_surrogate_is_refused_and_never_reaches_the_server() -> None:
    relay, to_server, to_client, stderr = _relay(Always(ALLOW))
    relay._on_client_data(b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo\\ud800"}}\n')
    assert to_server.data == b""
    (answer,) = _sent(to_client)
    assert answer["id"] == 1 and answer["error"]["code"] == -32600
    assert "lone UTF-16 surrogate" in answer["error"]["message"]
    assert b"lone UTF-16 surrogate" in stderr.data


def test_a_server_answer_with_a_lone_surrogate_becomes_an_error_for_the_client() -> None:
    relay, _, to_client, _ = _relay(Always(ALLOW))
    relay._on_client_data(_call(1))
    relay._on_server_data(b'{"jsonrpc":"2.0","id":1,"result":{"content":[{"type":"text","text":"\\udc00"}]}}\n')
    assert b"\\udc00" not in to_client.data
    (answer,) = _sent(to_client)
    assert answer["id"] == 1 and answer["error"]["code"] == -32603
    assert "lone UTF-16 surrogate" in answer["error"]["message"]
