"""The approver's wire protocol: every message survives a round trip; a bad line is a value, never a crash."""

from __future__ import annotations

import pytest

from mcpshield.approval.protocol import (
    MAX_ID_CHARS,
    Decision,
    Hello,
    Malformed,
    Remembered,
    Request,
    Withdraw,
    decode_to_approver,
    decode_to_wrapper,
    encode,
)
from mcpshield.jsonrpc import arguments_hash


@pytest.mark.parametrize(
    "message",
    [
        Hello(pid=1, profile="git", server="uvx mcp-server-git", client=None),
        Hello(pid=2, profile=None, server="x", client="Claude"),
        Request("write_file", {"path": "/x", "big": 2**80, "text": "\u202e\x1b[2J"}, "tools.ask", "Sure?", 45),
        Request("t", {}, None, None, 0.25, id="abc"),
        Request("t", {}, None, None, 1, late_s=120, always_file="/home/me/.config/mcpshield/profiles/p.toml"),
        Withdraw("abc", "cancelled"),
        Withdraw("abc", "timeout"),
        Remembered("abc", "/home/me/p.toml", None),
        Remembered("abc", None, "read-only"),
    ],
)
def test_wrapper_messages_survive_a_round_trip(message: Hello | Request | Withdraw | Remembered) -> None:
    line = encode(message)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert decode_to_approver(line.rstrip(b"\n")) == message


@pytest.mark.parametrize("choice", ["once", "session", "always", "deny"])
def test_decisions_survive_a_round_trip(choice: str) -> None:
    decision = Decision("abc", choice, "because", 1000)  # type: ignore[arg-type]
    assert decode_to_wrapper(encode(decision)) == decision


def test_request_hashes_its_canonical_arguments() -> None:
    assert Request("t", {"b": 1, "a": 2}, None, None, 1).args_sha256 == arguments_hash({"a": 2, "b": 1})


@pytest.mark.parametrize(
    ("line", "why"),
    [
        (b"not json", "not a JSON line"),
        (b"[1]", "not a JSON object"),
        (b'{"type": "hello"}', "needs 'pid'"),
        (b'{"type": "shout"}', "unknown message type"),
        (b'{"type": "hello", "pid": true, "profile": null, "server": "s", "client": null}', "wrong type"),
        (b'{"type": "hello", "pid": 1, "profile": null, "server": "s", "client": null, "x": 1}', "unexpected field"),
        (b'{"type": "withdraw", "id": "a", "why": "bored"}', "why must be one of"),
        (b'{"type": "withdraw", "id": "", "why": "timeout"}', "an id must be"),
        (b'{"type": "withdraw", "id": "' + b"a" * (MAX_ID_CHARS + 1) + b'", "why": "timeout"}', "an id must be"),
        (b'{"type": "withdraw", "id": "a", "why": NaN}', "not a JSON line"),
    ],
)
def test_malformed_lines_to_the_approver_are_values(line: bytes, why: str) -> None:
    result = decode_to_approver(line)
    assert isinstance(result, Malformed)
    assert why in result.why


@pytest.mark.parametrize("timeout", ["0", "-1", "1e999"])
def test_a_request_needs_a_positive_finite_timeout(timeout: str) -> None:
    line = b'{"type": "request", "id": "a", "tool": "t", "arguments": {}, "args_sha256": "", "rule": null, '
    line += b'"prompt": null, "timeout_s": ' + timeout.encode() + b"}"
    result = decode_to_approver(line)
    assert isinstance(result, Malformed)


def test_a_decision_must_be_one_of_the_four() -> None:
    line = b'{"type": "decision", "id": "a", "decision": "maybe", "reason": null, "approver_uid": 0}'
    assert isinstance(decode_to_wrapper(line), Malformed)
    assert isinstance(decode_to_wrapper(encode(Withdraw("a", "timeout"))), Malformed)


def test_a_request_from_an_older_wrapper_takes_no_late_decision_and_offers_no_always() -> None:
    line = (
        b'{"type":"request","id":"a","tool":"t","arguments":{},"args_sha256":"x","rule":null,"prompt":null,'
        b'"timeout_s":1}'
    )
    request = decode_to_approver(line)
    assert isinstance(request, Request) and request.late_s == 0 and request.always_file is None


@pytest.mark.parametrize("late", ["-1", "1e999", "true"])
def test_a_requests_late_window_is_zero_or_positive_and_finite(late: str) -> None:
    line = (
        b'{"type":"request","id":"a","tool":"t","arguments":{},"args_sha256":"x","rule":null,"prompt":null,'
        b'"timeout_s":1,"late_s":' + late.encode() + b"}"
    )
    assert isinstance(decode_to_approver(line), Malformed)
