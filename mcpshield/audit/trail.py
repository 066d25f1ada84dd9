"""What the relay tells the audit log: one event per request, built once, when it is over.

When a request is decided, `decided` returns the little that must be kept of the decision (the
ledger entry holds it, beside the request's id, method, tool and arguments); when the request is
over (answered, refused, cancelled, never answered), its event is built and recorded. Only cheap
work happens here, on the relay's thread: hashing the arguments, redacting and cutting what is
recorded happen in the writer process (see `writer`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from mcpshield.audit.writer import AuditLog
from mcpshield.jsonrpc import Message
from mcpshield.ledger import Entry

#: Requests whose target (a resource URI or prompt name) is recorded, and the param holding it.
TARGETS: Final = {
    "resources/read": "uri",
    "resources/subscribe": "uri",
    "resources/unsubscribe": "uri",
    "prompts/get": "name",
}


@dataclass(frozen=True, slots=True)
class Recording:
    """What the profile's [audit] asks to keep besides the decisions."""

    arguments: bool = False
    results: bool = False
    max_bytes: int = 4096
    #: "stop": calls are refused once the log cannot be written; "continue": they go on.
    on_failure: str = "stop"


class AuditTrail:
    """The relay's side of the audit log: builds events, counts, and says when calls must stop."""

    __slots__ = ("_log", "_recording", "_told", "counts", "redactions", "report")

    def __init__(self, log: AuditLog, recording: Recording) -> None:
        self._log = log
        self._recording = recording
        self._told = False
        #: Where a line for the user goes (the relay sets its stderr reporter).
        self.report: Callable[[str], None] = lambda text: None
        #: Requests decided, by decision; for session_end.
        self.counts: dict[str, int] = {}
        self.redactions = 0

    @property
    def stops_calls(self) -> str | None:
        """Why calls must be refused now (the log failed and the profile says stop), or None."""
        failed = self._log.failed
        if failed is None or self._recording.on_failure == "stop":
            return failed
        if not self._told:
            self._told = True
            self.report(f"the audit log cannot be written ({failed}); going on without it, as the profile allows")
        return None

    def decided(self, msg: Message, to_server: bool, decision: str, rule: str | None) -> list[Any]:
        """What is kept of a request just decided, until it is over (the ledger entry holds the
        rest: id, method, tool, arguments, start)."""
        counts = self.counts
        counts[decision] = counts.get(decision, 0) + 1
        method = msg.method
        target = msg.params.get(TARGETS[method]) if method in TARGETS else None
        return [to_server, decision, rule, target, None, None]  # then: what of the answer; the approval

    def undecided(self, entry: Entry, outcome: str, now: float) -> None:
        """Records a request that ended before anything was decided about it (a call held for
        the server's tool list, then cancelled or left when the server exited): no decision."""
        entry.audit = [True, None, None, None, None, None]
        self.ended(entry, outcome, now)

    def refused(self, entry: Entry, reason: str, now: float) -> None:
        """Records a request mcpshield answered itself."""
        event = self._event(entry, "refused", True, now, 0)
        event["reason"] = reason
        self._log.record("request", event)

    def approval(self, entry: Entry, approval: dict[str, Any]) -> None:
        """Notes how a person (or this session's earlier approval) decided an `ask`."""
        assert entry.audit is not None
        entry.audit[5] = approval

    def answered(self, entry: Entry, msg: Message, now: float, redactions: int) -> None:
        """Records a request whose answer is on its way back; `msg` is the answer as received."""
        body = msg.body
        if "error" in body:
            self._log.record("request", self._event(entry, "error", True, now, redactions))
            return
        result = body.get("result")
        failed = type(result) is dict and result.get("isError") is True
        event = self._event(entry, "answered", failed, now, redactions)
        if self._recording.results:
            event["_result"] = result
        self._log.record("request", event)

    def response_decided(self, entry: Entry, decision: str, rule: str | None) -> None:
        """Notes that the answer itself was rewritten or refused on its way back."""
        assert entry.audit is not None
        entry.audit[4] = (decision, rule)

    def ended(self, entry: Entry, outcome: str, now: float) -> None:
        """Records a request that will get no answer from its peer: cancelled, server gone, or
        answered by mcpshield's own question for the client's user (input_required)..."""
        is_error = outcome not in ("cancelled", "input_required")
        self._log.record("request", self._event(entry, outcome, is_error, now, 0))

    def _event(self, entry: Entry, outcome: str, is_error: bool, now: float, redactions: int) -> dict[str, Any]:
        """The request's event, built once, when it is over; its entry forgets it."""
        kept = entry.audit
        assert kept is not None
        entry.audit = None
        self.redactions += redactions
        event: dict[str, Any] = {
            "dir": "to_server" if kept[0] else "to_client",
            "id": entry.id,
            "method": entry.method,
            "decision": kept[1],
            "rule": kept[2],
            "outcome": outcome,
            "is_error": is_error,
            "latency_us": int((now - entry.started) * 1e6),
            "redactions": redactions,
        }
        if entry.method == "tools/call":
            event["tool"] = entry.tool
            event["_args"] = entry.arguments  # hashed (and kept, if asked) by the writer
            if not self._recording.arguments:
                event["_hash_only"] = True
        elif kept[3] is not None:
            event["target"] = kept[3]
        if kept[4] is not None:
            event["response_decision"], event["response_rule"] = kept[4]
        if kept[1] == "ask":
            event["approval"] = kept[5]  # null: nobody could be asked
        return event

    def hand_over(self) -> None:
        """Passes what was recorded to the writer; the relay calls it once per chunk."""
        self._log.hand_over()

    def watch(self, loop: asyncio.AbstractEventLoop) -> None:
        """Keeps `stops_calls` current from the writer's reports, on `loop`."""
        self._log.watch(loop)

    def unwatch(self, loop: asyncio.AbstractEventLoop) -> None:
        self._log.unwatch(loop)

    def refused_input(self, side: str, reason: str, excerpt: str) -> None:
        self._log.record("refused_input", {"from": side, "reason": reason, "excerpt": excerpt})

    def initialized(self, request: dict[str, Any], answer: dict[str, Any]) -> None:
        """Records who connected: the client's initialize params and the server's result."""
        client = request.get("clientInfo")
        server = answer.get("serverInfo")
        self._log.record(
            "initialize",
            {
                "client": _info(client),
                "protocol": request.get("protocolVersion"),
                "negotiated": answer.get("protocolVersion"),
                "server": _info(server),
            },
        )


def _info(value: Any) -> dict[str, Any] | None:
    if type(value) is not dict:
        return None
    return {"name": value.get("name"), "version": value.get("version")}
