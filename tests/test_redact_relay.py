"""Tier 2: the relay redacts injected secrets from everything bound for the client and stderr,
driven with in-memory writers (see tests/test_decisions.py)."""

from __future__ import annotations

import base64
import json
from typing import Any

import orjson
from test_decisions import Always, Collect

from mcpshield.jsonrpc import REPORT_EXCERPT_BYTES
from mcpshield.policy import Deny, PassThrough, Rewrite
from mcpshield.policy.redact import Redactor
from mcpshield.relay import STDERR_HOLD_BYTES, Relay

SECRET = "sk-live-4f9a8b7c6d5e4f3a2b1c0d9e"  # noqa: S105  made up
REDACTED = "[REDACTED:API_KEY]"
CALL = b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"env","arguments":{}}}\n'


def _relay(policy: Any = None, secrets: dict[str, str] | None = None) -> tuple[Relay, Collect, Collect, Collect]:
    redactor = Redactor({"API_KEY": SECRET} if secrets is None else secrets)
    relay = Relay(child=None, policy=policy or PassThrough(), redactor=redactor)  # type: ignore[arg-type]
    to_server, to_client, stderr = Collect(), Collect(), Collect()
    relay._out_server = to_server  # type: ignore[assignment]
    relay._out_client = to_client  # type: ignore[assignment]
    relay._stderr.out = stderr
    return relay, to_server, to_client, stderr


def _line(message: dict[str, Any]) -> bytes:
    return orjson.dumps(message) + b"\n"


def _called(relay: Relay) -> None:
    relay._on_client_data(CALL)


def test_a_tool_result_holding_the_secret_reaches_the_client_redacted() -> None:
    relay, _, to_client, _ = _relay()
    _called(relay)
    text = f"API_KEY={SECRET}\nAuthorization: Basic {base64.b64encode(f'me:{SECRET}'.encode()).decode()}"
    relay._on_server_data(_line({"jsonrpc": "2.0", "id": 1, "result": {"content": [{"type": "text", "text": text}]}}))
    (answer,) = to_client.messages()
    shown = answer["result"]["content"][0]["text"]
    assert shown.startswith(f"API_KEY={REDACTED}\nAuthorization: Basic bWU6")
    assert shown.endswith(REDACTED)
    assert SECRET.encode() not in to_client.data
    assert relay.redactions == 2


def test_an_error_from_the_server_reaches_the_client_redacted() -> None:
    relay, _, to_client, _ = _relay()
    _called(relay)
    error = {"code": -32000, "message": f"bad key {SECRET}", "data": {"key": SECRET}}
    relay._on_server_data(_line({"jsonrpc": "2.0", "id": 1, "error": error}))
    (answer,) = to_client.messages()
    assert answer["error"] == {"code": -32000, "message": f"bad key {REDACTED}", "data": {"key": REDACTED}}


def test_a_notification_and_a_request_from_the_server_reach_the_client_redacted() -> None:
    relay, _, to_client, _ = _relay()
    log = {"jsonrpc": "2.0", "method": "notifications/message", "params": {"level": "info", "data": SECRET}}
    ask = {
        "jsonrpc": "2.0",
        "id": "s1",
        "method": "sampling/createMessage",
        "params": {"messages": [{"role": "user", "content": {"type": "text", "text": f"use {SECRET}"}}]},
    }
    relay._on_server_data(_line(log) + _line(ask))
    notification, request = to_client.messages()
    assert notification["params"]["data"] == REDACTED
    assert request["params"]["messages"][0]["content"]["text"] == f"use {REDACTED}"
    assert request["id"] == "s1"


def test_a_rewritten_answer_is_redacted_too() -> None:
    relay, _, to_client, _ = _relay(Always(Rewrite({"jsonrpc": "2.0", "id": 1, "result": {"k": SECRET}})))
    _called(relay)
    relay._on_server_data(_line({"jsonrpc": "2.0", "id": 1, "result": {}}))
    assert to_client.messages() == [{"jsonrpc": "2.0", "id": 1, "result": {"k": REDACTED}}]


def test_a_refusal_quoting_the_server_is_redacted() -> None:
    relay, _, to_client, _ = _relay()
    _called(relay)
    relay._policy = Always(Deny(f"the server's answer named {SECRET}"))
    relay._on_server_data(_line({"jsonrpc": "2.0", "id": 1, "result": {}}))
    (answer,) = to_client.messages()
    assert answer["error"]["message"] == f"the server's answer named {REDACTED}"


def test_non_json_server_output_is_reported_on_stderr_redacted() -> None:
    relay, _, to_client, stderr = _relay()
    relay._on_server_data(b"connecting with key " + SECRET.encode() + b"\n")
    assert to_client.data == b""
    assert (
        b"kept non-JSON server output off the client's stdout: connecting with key " + REDACTED.encode() in stderr.data
    )
    assert SECRET.encode() not in stderr.data


def test_a_secret_across_the_end_of_a_quoted_excerpt_leaves_no_fragment() -> None:
    relay, _, _, stderr = _relay()
    filler = b"x" * (REPORT_EXCERPT_BYTES - 10)
    relay._on_server_data(filler + SECRET.encode() + b" and more\n")
    assert SECRET[:10].encode() not in stderr.data
    assert b"[REDACTED" in stderr.data


def test_server_stderr_is_passed_through_redacted() -> None:
    relay, _, _, stderr = _relay()
    relay._on_stderr_data(b"starting\nusing key " + SECRET[:12].encode())
    relay._on_stderr_data(SECRET[12:].encode() + b" ok\nlast line without end " + SECRET.encode())
    relay._on_stderr_eof()
    assert stderr.data == (
        b"starting\nusing key " + REDACTED.encode() + b" ok\nlast line without end " + REDACTED.encode() + b"\n"
    )
    assert relay.redactions == 2


def test_a_secret_straddling_the_stderr_hold_passes_unredacted_the_known_limit() -> None:
    """A line over STDERR_HOLD_BYTES is written in pieces, each redacted on its own: a secret cut
    in two is in neither piece. (Holding back the longest form's length would close this.)"""
    relay, _, _, stderr = _relay()
    relay._on_stderr_data(b"x" * (STDERR_HOLD_BYTES - 10) + SECRET[:20].encode())
    relay._on_stderr_data(SECRET[20:].encode() + b"\n")
    assert SECRET.encode() in stderr.data
    assert relay.redactions == 0


def test_mcpshields_own_reports_are_redacted() -> None:
    relay, _, _, stderr = _relay()
    relay._report(f"internal error (ValueError: {SECRET})")
    assert stderr.data == f"mcpshield: internal error (ValueError: {REDACTED})\n".encode()


def test_what_the_client_sends_the_server_is_not_redacted() -> None:
    relay, to_server, _, _ = _relay()
    call = _line(
        {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "login", "arguments": {"k": SECRET}}}
    )
    relay._on_client_data(call)
    assert to_server.data == call
    assert relay.redactions == 0


def test_a_message_without_the_secret_is_forwarded_byte_for_byte() -> None:
    relay, _, to_client, _ = _relay()
    _called(relay)
    answer = b'{"jsonrpc":"2.0","id":1,"result":{"content":[{"type":"text","text":"no secret"}]}}\n'
    relay._on_server_data(answer)
    assert to_client.data == answer
    assert relay.redactions == 0


def test_a_redactor_without_secrets_leaves_the_relay_as_it_was() -> None:
    relay, _, to_client, stderr = _relay(secrets={"SHORT": "1234567"})
    assert relay._redactor is None
    _called(relay)
    relay._on_server_data(_line({"jsonrpc": "2.0", "id": 1, "result": {"k": "1234567"}}))
    relay._on_stderr_data(b"1234567\n")
    assert json.loads(to_client.data) == {"jsonrpc": "2.0", "id": 1, "result": {"k": "1234567"}}
    assert stderr.data == b"1234567\n"
