"""Answers mcpshield writes itself, in place of the peer that never saw the message refused."""

from __future__ import annotations

from typing import Final

import orjson

from mcpshield import jsonrpc
from mcpshield.jsonrpc import Message

#: The `_meta` key every request carries in the stateless (2026-07-28) protocol era.
_STATELESS_META: Final = "io.modelcontextprotocol/protocolVersion"


def refusal(msg: Message, reason: str, code: int | None) -> bytes:
    """A refused tool call is a tool result the model can read; anything else an error. Newline
    included."""
    if code is None and msg.method == "tools/call":
        result: dict[str, object] = {"content": [{"type": "text", "text": reason}], "isError": True}
        if _STATELESS_META in _meta(msg):
            # The 2026-07-28 era: a client rejects a result that does not say it is complete.
            result["resultType"] = "complete"
        return orjson.dumps({"jsonrpc": "2.0", "id": msg.id, "result": result}) + b"\n"
    return jsonrpc.error_response(msg.id, code or jsonrpc.INVALID_REQUEST, reason)


def no_approver(msg: Message, prompt: str) -> str:
    """Why a message the profile wants a person to approve was refused: nobody could."""
    what = "call" if msg.method == "tools/call" else "request"
    return (
        f"mcpshield refused this {what}: the profile says a person must approve it ({prompt}), "
        "and no approver is available"
    )


def log_failed(why: str) -> str:
    """Why a request was refused while the audit log cannot be written."""
    return (
        f"mcpshield refused this request: its audit log cannot be written ({why}), and the profile "
        "says to stop rather than run unrecorded; free disk space or fix the log folder, then restart the server"
    )


def _meta(msg: Message) -> dict[str, object]:
    meta = msg.params.get("_meta")
    return meta if isinstance(meta, dict) else {}
