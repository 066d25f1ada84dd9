"""Tier 1: how the relay applies decisions, with in-memory writers instead of pipes."""

from __future__ import annotations

import json
from typing import Any

from mcpshield.jsonrpc import Message, decode
from mcpshield.policy import ALLOW, Ask, Context, Decision, Deny, PassThrough, Rewrite
from mcpshield.relay import Relay

CALL = b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":{"text":"hi"}}}\n'


class Collect:
    """Stands in for an FdWriter: keeps what was written."""

    def __init__(self) -> None:
        self.data = b""

    def write(self, data: bytes) -> None:
        self.data += data

    def messages(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.data.splitlines()]


class Always(PassThrough):
    """A policy that returns one decision for every message."""

    def __init__(self, decision: Decision) -> None:
        self.decision = decision

    def check(self, msg: Message, ctx: Context) -> Decision:
        return self.decision


class Broken(PassThrough):
    def check(self, msg: Message, ctx: Context) -> Decision:
        raise KeyError("a bug in a check")


def _relay(policy: Any) -> tuple[Relay, Collect, Collect, Collect]:
    relay = Relay(child=None, policy=policy)  # type: ignore[arg-type]
    to_server, to_client, stderr = Collect(), Collect(), Collect()
    relay._out_server = to_server  # type: ignore[assignment]
    relay._out_client = to_client  # type: ignore[assignment]
    relay._stderr.out = stderr
    return relay, to_server, to_client, stderr


def test_an_allowed_message_is_forwarded_byte_for_byte() -> None:
    relay, to_server, to_client, _ = _relay(Always(ALLOW))
    relay._on_client_data(CALL)
    assert to_server.data == CALL
    assert to_client.data == b""


def test_a_check_that_fails_refuses_the_message_instead_of_passing_it() -> None:
    relay, to_server, to_client, stderr = _relay(Broken())
    relay._on_client_data(CALL)
    assert to_server.data == b""
    (answer,) = to_client.messages()
    assert answer["id"] == 1
    assert answer["error"]["code"] == -32603
    assert b"a policy check failed (KeyError)" in stderr.data


def test_a_denied_tool_call_is_a_tool_error_the_model_can_read() -> None:
    relay, to_server, to_client, _ = _relay(Always(Deny("write_file is not allowed here")))
    relay._on_client_data(CALL)
    assert to_server.data == b""
    (answer,) = to_client.messages()
    assert answer["result"] == {
        "content": [{"type": "text", "text": "write_file is not allowed here"}],
        "isError": True,
    }


def test_a_refusal_in_the_stateless_era_says_it_is_complete() -> None:
    relay, _, to_client, _ = _relay(Always(Deny("no")))
    meta = {"io.modelcontextprotocol/protocolVersion": "2026-07-28"}
    call = {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "x", "_meta": meta}}
    relay._on_client_data(json.dumps(call).encode() + b"\n")
    assert to_client.messages()[0]["result"]["resultType"] == "complete"


def test_a_denied_request_with_a_code_is_a_json_rpc_error_and_leaves_the_ledger() -> None:
    relay, to_server, to_client, _ = _relay(Always(Deny("Unknown tool: echo", -32602)))
    relay._on_client_data(CALL)
    relay._on_client_data(CALL)  # the same id again: not "in flight", since it was refused
    assert to_server.data == b""
    assert [m["error"]["code"] for m in to_client.messages()] == [-32602, -32602]


def test_a_rewrite_is_the_only_way_bytes_change() -> None:
    relay, to_server, _, _ = _relay(Always(Rewrite({"jsonrpc": "2.0", "id": 1, "method": "ping"})))
    relay._on_client_data(CALL)
    assert json.loads(to_server.data) == {"jsonrpc": "2.0", "id": 1, "method": "ping"}


def test_ask_without_an_approver_is_refused_and_says_so() -> None:
    relay, to_server, to_client, _ = _relay(Always(Ask("echo wants to run")))
    relay._on_client_data(CALL)
    assert to_server.data == b""
    text = to_client.messages()[0]["result"]["content"][0]["text"]
    assert "no approver is available" in text


def test_a_refused_answer_from_the_server_becomes_an_error_for_the_client() -> None:
    relay, _, to_client, _ = _relay(Always(ALLOW))
    relay._on_client_data(CALL)
    relay._policy = Always(Deny("the result carried something it must not"))
    relay._on_server_data(b'{"jsonrpc":"2.0","id":1,"result":{"content":[]}}\n')
    (answer,) = to_client.messages()
    assert answer["id"] == 1
    assert answer["error"]["message"] == "the result carried something it must not"


def test_a_bug_while_handling_a_request_refuses_it_and_frees_its_id() -> None:
    relay, to_server, to_client, stderr = _relay(Always(ALLOW))

    def explode(msg: Message, direction: Any, entry: Any) -> None:
        raise RuntimeError("bug")

    relay._dispatch = explode  # type: ignore[method-assign,assignment]
    relay._on_client_data(CALL)
    assert to_server.data == b""
    assert to_client.messages()[0]["error"]["code"] == -32603
    assert b"internal error (RuntimeError: bug)" in stderr.data
    assert 1 not in relay._client_ledger


def test_a_failure_applying_an_approval_refuses_the_call_and_never_sends_it() -> None:
    # Approvals arrive as callbacks from the broker's tasks, outside the per-message guard.
    relay, to_server, to_client, stderr = _relay(Always(ALLOW))
    msg = decode(CALL.rstrip(b"\n"))
    assert isinstance(msg, Message)
    entry = relay._client_ledger.open(msg, 0.0)
    assert entry is not None
    real_flush = relay._flush
    calls = []

    def flush_once_broken() -> None:
        calls.append(1)
        if len(calls) == 1:
            raise OSError("a bug while flushing")
        real_flush()

    relay._flush = flush_once_broken  # type: ignore[method-assign]
    relay._approved(msg, entry, {"channel": "terminal"})
    assert to_server.data == b""
    (answer,) = to_client.messages()
    assert answer["id"] == 1 and answer["error"]["code"] == -32603
    assert b"internal error (OSError: a bug while flushing) applying a decision" in stderr.data
    assert 1 not in relay._client_ledger
