"""Channel 3: mcpshield's own `elicitation/create` to the client, asking its user about a call.

Only the wire format lives here: the request (ids that never collide with the server's, a text
that shows the call, cut only with a note), and what an answer means. The Broker races it
against the terminal approver.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, Final, Literal

import orjson

from mcpshield import jsonrpc
from mcpshield.jsonrpc import JsonId, Message
from mcpshield.ledger import Ledger

#: mcpshield's elicitation ids start with this; a server request using it is refused, so a late
#: answer to a withdrawn elicitation of ours can never reach the server as its answer.
ID_PREFIX: Final = "mcpshield-approval-"
#: Characters of pretty-printed arguments shown in the client at most: a form is no place for a
#: whole file; the cut is always said, and the terminal approver shows the call whole.
MAX_SHOWN_ARGUMENTS: Final = 2000

Verdict = Literal["approve", "deny", "unavailable"]

#: The form: one required field, `decision`, a string `approve` or `deny`.
SCHEMA: Final = {
    "type": "object",
    "properties": {
        "decision": {
            "type": "string",
            "title": "Decision",
            "enum": ["approve", "deny"],
            "description": "approve: run this one call, once. deny: refuse it.",
        }
    },
    "required": ["decision"],
}


def is_own_id(msg_id: JsonId | None) -> bool:
    return type(msg_id) is str and msg_id.startswith(ID_PREFIX)


def supports_form(capabilities: object) -> bool:
    """True if a client's initialize capabilities allow a form elicitation (`elicitation: {}`
    means form only; since 2025-11-25 a client may declare `url` without `form`)."""
    if not isinstance(capabilities, dict):
        return False
    elicitation = capabilities.get("elicitation")
    if not isinstance(elicitation, dict):
        return False
    return not elicitation or "form" in elicitation


class Elicitor:
    """Sends mcpshield's elicitation requests to the client, as `own` entries of the server
    ledger (requests the client must answer): the answer comes back to mcpshield, never to the
    server."""

    def __init__(self, ledger: Ledger, send: Callable[[bytes], None], now: Callable[[], float]) -> None:
        self._ledger = ledger
        self._send = send
        self._now = now
        self._seq = 0

    def ask(self, text: str) -> str | None:
        """Sends one elicitation; its id, or None if the ledger has no room."""
        while True:
            self._seq += 1
            own_id = f"{ID_PREFIX}{self._seq}"
            if own_id not in self._ledger:
                break
        params = {"message": text, "requestedSchema": SCHEMA}
        raw = orjson.dumps({"jsonrpc": "2.0", "id": own_id, "method": "elicitation/create", "params": params})
        msg = jsonrpc.decode(raw)
        assert isinstance(msg, Message)
        entry = self._ledger.open(msg, self._now())
        if entry is None:
            return None
        entry.own = True
        self._send(raw + b"\n")
        return own_id

    def withdraw(self, own_id: str) -> None:
        """Tells the client to stop asking; a late answer is then dropped (and reported)."""
        entry = self._ledger.get(own_id)
        if entry is not None and entry.own:
            self._ledger.discard(entry)
            note = {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": own_id}}
            self._send(orjson.dumps(note) + b"\n")


def message(tool: str, arguments: Any, server: str, prompt: str | None) -> str:
    """The text the client shows its user: tool, server, arguments (cut with a note)."""
    shown = json.dumps(arguments, indent=2, ensure_ascii=True, sort_keys=True)
    if len(shown) > MAX_SHOWN_ARGUMENTS:
        shown = (
            f"{shown[:MAX_SHOWN_ARGUMENTS]}\n[cut: {MAX_SHOWN_ARGUMENTS} of {len(shown)} characters shown; "
            "run `mcpshield approvals` in a terminal to see the call whole]"
        )
    why = f"\n{_visible(prompt)}" if prompt else ""
    return (
        f"mcpshield: approve this tool call?{why}\n\ntool: {_visible(tool)}\nserver: {_visible(server)}\n"
        f"arguments:\n{shown}"
    )


def verdict(result: object) -> Verdict:
    """What the client's answer (its result; None for an error) decides: approve (accept +
    approve), deny (decline, cancel, or accept + deny), or unavailable (neither)."""
    if not isinstance(result, dict):
        return "unavailable"
    action = result.get("action")
    if action in ("decline", "cancel"):
        return "deny"
    content = result.get("content")
    decision = content.get("decision") if isinstance(content, dict) else None
    if action == "accept" and decision in ("approve", "deny"):
        return "approve" if decision == "approve" else "deny"
    return "unavailable"


def _visible(text: str) -> str:
    """Control characters and non-ASCII (bidi overrides among them) escaped, as `--json` does."""
    return json.dumps(text, ensure_ascii=True)[1:-1]
