"""What follows a decision, outside the message path proper: approvals' outcomes reaching the
relay, and the audit log's side of every request (see mcpshield.audit.trail).

A mixin of `Relay`.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Final

import orjson

from mcpshield import answers, jsonrpc
from mcpshield.jsonrpc import REQUEST, Message
from mcpshield.ledger import Entry, Ledger
from mcpshield.policy import Allow, Ask, Context, Decision, Deny, Direction, Policy, Rewrite

if TYPE_CHECKING:
    from mcpshield.audit.trail import AuditTrail
    from mcpshield.shutdown import Shutdown

TO_SERVER: Final = Direction.TO_SERVER
_NL: Final = b"\n"
#: The audit log's name for each kind of Decision.
_DECISIONS: Final[dict[type, str]] = {Allow: "allow", Deny: "deny", Ask: "ask", Rewrite: "rewrite"}


class Aftermath:
    """What `Relay` provides, and the handlers it gets from here."""

    _report: Callable[[str], None]
    _trail: AuditTrail | None
    _to_server: list[bytes]
    _to_client: list[bytes]
    _client_ledger: Ledger
    _policy: Policy
    _shutdown: Shutdown
    _now: float
    _initialize: dict[str, object]
    # Methods of Relay, declared only: a stub here would shadow them.
    _flush: Callable[[], None]
    _refuse: Callable[[Message, Direction, str, int | None], None]

    # -- approvals (see mcpshield.approval.broker) --------------------------------------

    # These run as callbacks from the broker's tasks, outside `_feed`'s guard: a failure here
    # refuses the one call (never sends it) instead of ending the relay.

    def _approved(self, msg: Message, entry: Entry, approval: dict[str, object]) -> None:
        """A person approved a waiting call: it goes to the server now."""
        queued = len(self._to_server)
        try:
            if self._still_waiting(entry, approval):
                ctx = Context(self._now, TO_SERVER, entry, self._client_ledger.active_tool_calls)
                decision = self._policy.approved(msg, ctx)  # the limits still apply
                if isinstance(decision, Deny):
                    self._refuse(msg, TO_SERVER, decision.reason, decision.code)
                else:
                    self._to_server.append(orjson.dumps(decision.body) if isinstance(decision, Rewrite) else msg.raw)
                    self._to_server.append(_NL)
                self._flush()
        except Exception as exc:
            del self._to_server[queued:]  # not sent: it was not checked through to the end
            self._approval_failed(entry, exc)

    def _disapproved(self, msg: Message, entry: Entry, reason: str, approval: dict[str, object]) -> None:
        """A waiting call was denied, timed out, or nobody could be asked: the client is told why."""
        try:
            if self._still_waiting(entry, approval):
                self._refuse(msg, TO_SERVER, reason, None)
                self._flush()
        except Exception as exc:
            self._approval_failed(entry, exc)

    def _asked_here(self, msg: Message, entry: Entry, result: dict[str, object], approval: dict[str, object]) -> None:
        """A waiting call answered by mcpshield itself: its question for the client's user (an
        `input_required` result, 2026-07-28); the client's retry carries the answer."""
        try:
            if self._still_waiting(entry, approval):
                self._client_ledger.close(entry.id)
                self._to_client.append(orjson.dumps({"jsonrpc": "2.0", "id": entry.id, "result": result}) + _NL)
                if entry.audit is not None and self._trail is not None:
                    self._trail.ended(entry, "input_required", self._now)
                self._flush()
        except Exception as exc:
            self._approval_failed(entry, exc)

    def _approval_failed(self, entry: Entry, exc: Exception) -> None:
        self._report(f"internal error ({type(exc).__name__}: {exc}) applying a decision; the call was not sent")
        with contextlib.suppress(Exception):
            if self._client_ledger.get(entry.id) is entry:
                self._client_ledger.close(entry.id)
                self._to_client.append(
                    jsonrpc.error_response(entry.id, jsonrpc.INTERNAL_ERROR, "mcpshield failed to apply the decision")
                )
            self._flush()

    def _still_waiting(self, entry: Entry, approval: dict[str, object]) -> bool:
        if entry.cancelled or self._client_ledger.get(entry.id) is not entry or self._shutdown.started:
            return False
        self._now = time.monotonic()
        if entry.audit is not None and self._trail is not None:
            self._trail.approval(entry, approval)
        return True

    # -- the audit log (see mcpshield.audit.trail) --------------------------------------

    def _audited(self, msg: Message, direction: Direction, entry: Entry, decision: Decision) -> Decision:
        """Starts a request's audit event, or notes what was decided about its answer. While the
        log cannot be written and the profile says stop, every request but ping is refused."""
        trail = self._trail
        assert trail is not None
        if msg.kind is REQUEST:
            stopped = trail.stops_calls
            if stopped is not None and msg.method != "ping":
                decision = Deny(answers.log_failed(stopped), None, "audit.on_log_failure")
                self._report(f"refused a request: the audit log cannot be written ({stopped})")
            elif msg.method == "initialize":
                self._initialize = msg.params
            name = _DECISIONS[type(decision)]
            entry.audit = trail.decided(msg, direction is TO_SERVER, name, decision.rule)
        elif type(decision) is not Allow and entry.audit is not None:
            trail.response_decided(entry, _DECISIONS[type(decision)], decision.rule)
        return decision

    def _audit_answer(self, msg: Message, entry: Entry, redactions: int) -> None:
        trail = self._trail
        assert trail is not None and entry.audit is not None
        trail.answered(entry, msg, self._now, redactions)
        if entry.method == "initialize" and type(msg.body.get("result")) is dict:
            trail.initialized(self._initialize, msg.body["result"])

    def _audit_end(self, entry: Entry | None, outcome: str) -> None:
        """Records a request that ended without its answer passing (an internal error)."""
        if entry is not None and entry.audit is not None and self._trail is not None:
            self._trail.ended(entry, outcome, self._now)
