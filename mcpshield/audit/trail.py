"""What the relay tells the audit log: one event per request, built in two steps.

When a request is decided, `decided` builds its event (kept on the ledger entry if the request
goes on, recorded at once if it was refused); when it is over, `answered` or `ended` completes
and records it. Only cheap work happens here, on the relay's thread: hashing the arguments,
redacting and cutting what is recorded happen in the writer process (see `writer`).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, Final

from mcpshield.audit.writer import AuditLog
from mcpshield.jsonrpc import Message

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

    __slots__ = ("_log", "_recording", "counts", "redactions")

    def __init__(self, log: AuditLog, recording: Recording) -> None:
        self._log = log
        self._recording = recording
        #: Requests decided, by decision; for session_end.
        self.counts: dict[str, int] = {}
        self.redactions = 0

    @property
    def stops_calls(self) -> str | None:
        """Why calls must be refused now (the log failed and the profile says stop), or None."""
        failed = self._log.failed
        return failed if failed is not None and self._recording.on_failure == "stop" else None

    def decided(self, msg: Message, to_server: bool, decision: str, rule: str | None, now: float) -> dict[str, Any]:
        """The event of a request just decided; the caller keeps it until the request is over."""
        self.counts[decision] = self.counts.get(decision, 0) + 1
        event: dict[str, Any] = {
            "dir": "to_server" if to_server else "to_client",
            "id": msg.id,
            "method": msg.method,
            "decision": decision,
            "rule": rule,
            "_started": now,
        }
        method = msg.method
        if method == "tools/call":
            params = msg.params
            event["tool"] = params.get("name")
            event["_args"] = params.get("arguments", {})
        elif method in TARGETS:
            event["target"] = msg.params.get(TARGETS[method])
        return event

    def withdrawn(self, msg: Message, started: float, now: float) -> None:
        """Records a request its sender cancelled before anything was decided (a call held for
        the server's tool list): no decision, outcome cancelled."""
        event = self.decided(msg, True, "none", None, started)
        self.counts["none"] -= 1
        event["decision"] = None
        self.ended(event, "cancelled", now)

    def refused(self, event: dict[str, Any], reason: str, now: float, approval: dict[str, Any] | None = None) -> None:
        """Records a request mcpshield answered itself."""
        event["outcome"] = "refused"
        event["reason"] = reason
        event["is_error"] = True
        if event["decision"] == "ask":
            event["approval"] = approval
        self._finish(event, now, 0)

    def answered(self, event: dict[str, Any], msg: Message, now: float, redactions: int) -> None:
        """Records a request whose answer is on its way back; `msg` is the answer as received."""
        body = msg.body
        if "error" in body:
            event["outcome"] = "error"
            event["is_error"] = True
        else:
            result = body.get("result")
            event["outcome"] = "answered"
            event["is_error"] = type(result) is dict and result.get("isError") is True
            if self._recording.results:
                event["_result"] = result
        self._finish(event, now, redactions)

    def response_decided(self, event: dict[str, Any], decision: str, rule: str | None) -> None:
        """Notes that the answer itself was rewritten or refused on its way back."""
        event["response_decision"] = decision
        event["response_rule"] = rule

    def ended(self, event: dict[str, Any], outcome: str, now: float) -> None:
        """Records a request that will get no answer from its peer: cancelled, server gone, ..."""
        event["outcome"] = outcome
        event["is_error"] = outcome != "cancelled"
        self._finish(event, now, 0)

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

    def _finish(self, event: dict[str, Any], now: float, redactions: int) -> None:
        event["latency_us"] = int((now - event.pop("_started")) * 1e6)
        event["redactions"] = redactions
        self.redactions += redactions
        if not self._recording.arguments:
            # Only its hash is kept; the writer process computes it.
            event["_hash_only"] = True
        self._log.record("request", event)


def _info(value: Any) -> dict[str, Any] | None:
    if type(value) is not dict:
        return None
    return {"name": value.get("name"), "version": value.get("version")}
