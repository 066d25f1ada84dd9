"""The relay's answers to what is not a message it can pass: malformed or oversized lines from
either side, duplicate ids, answers to calls mcpshield holds, and its own failures.

A mixin of `Relay`: each case answers whoever would otherwise wait (a JSON-RPC error to the
requester), reports on stderr, and records refused input in the audit log.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Final

from mcpshield import jsonrpc
from mcpshield.approval.elicit import is_own_id
from mcpshield.jsonrpc import NOTIFICATION, REQUEST, RESPONSE, DecodeFailure, JsonId, Message, Oversized
from mcpshield.ledger import Entry, Ledger
from mcpshield.policy import Direction

if TYPE_CHECKING:
    from mcpshield.approval.broker import Broker
    from mcpshield.audit.trail import AuditTrail
    from mcpshield.catalog import CatalogFetch
    from mcpshield.stderr import Stderr

TO_SERVER: Final = Direction.TO_SERVER
TO_CLIENT: Final = Direction.TO_CLIENT


class Malformed:
    """What `Relay` provides, and the handlers it gets from here."""

    _report: Callable[[str], None]
    _stderr: Stderr
    _trail: AuditTrail | None
    _to_client: list[bytes]
    _to_server: list[bytes]
    _client_ledger: Ledger
    _server_ledger: Ledger
    _fetch: CatalogFetch
    _broker: Broker | None
    # Methods of Relay (or its other mixin), declared only: a stub here would shadow them.
    _judge_held: Callable[[list[tuple[Message, Entry]]], None]
    _audit_end: Callable[[Entry | None, str], None]

    def _client_failure(self, failure: DecodeFailure, line: bytes) -> None:
        excerpt = self._stderr.excerpt(failure, line)
        self._report(f"refused a message from the client: {failure.reason}: {excerpt}")
        if self._trail is not None:
            self._trail.refused_input("client", failure.reason, excerpt)
        if failure.kind is NOTIFICATION:
            return
        if failure.kind is RESPONSE:
            entry = self._server_ledger.close(failure.id) if failure.id is not None else None
            if entry is not None and entry.own:  # an answer to mcpshield's elicitation: no decision
                if self._broker is not None:
                    self._broker.elicited(entry.id, None)
            elif entry is not None:
                # The server asked; answer it in the client's stead so it does not wait forever.
                self._to_server.append(
                    jsonrpc.error_response(
                        entry.id, failure.code, f"mcpshield refused the client's answer: {failure.reason}"
                    )
                )
            return
        self._to_client.append(jsonrpc.error_response(failure.id, failure.code, failure.reason))

    def _client_oversized(self, line: Oversized) -> None:
        reason = f"message of {line.size} bytes is over mcpshield's limit of {jsonrpc.MAX_MESSAGE_BYTES} bytes"
        self._report(f"refused a message from the client: {reason}")
        if self._trail is not None:
            self._trail.refused_input("client", reason, "")
        self._to_client.append(jsonrpc.error_response(jsonrpc.salvage_id(line), jsonrpc.INVALID_REQUEST, reason))

    def _server_failure(self, failure: DecodeFailure, line: bytes) -> None:
        excerpt = self._stderr.excerpt(failure, line)
        if self._trail is not None:
            self._trail.refused_input("server", failure.reason, excerpt)
        if failure.code == jsonrpc.PARSE_ERROR:
            self._report(f"kept non-JSON server output off the client's stdout: {excerpt}")
            return
        self._report(f"refused a message from the server: {failure.reason}: {excerpt}")
        if failure.id is None:
            return
        if failure.kind is RESPONSE:
            entry = self._waiting_client(failure.id)
            if entry is not None:
                self._to_client.append(
                    jsonrpc.error_response(
                        entry.id, jsonrpc.INTERNAL_ERROR, f"mcpshield refused the server's answer: {failure.reason}"
                    )
                )
        elif failure.kind is REQUEST:
            self._to_server.append(jsonrpc.error_response(failure.id, failure.code, failure.reason))

    def _server_oversized(self, line: Oversized) -> None:
        reason = (
            f"the server's message of {line.size} bytes is over mcpshield's limit of {jsonrpc.MAX_MESSAGE_BYTES} bytes"
        )
        self._report(f"refused a message from the server: {reason}")
        if self._trail is not None:
            self._trail.refused_input("server", reason, "")
        entry = self._waiting_client(jsonrpc.salvage_id(line))
        if entry is not None:
            self._to_client.append(jsonrpc.error_response(entry.id, jsonrpc.INTERNAL_ERROR, reason))

    def _waiting_client(self, msg_id: JsonId | None) -> Entry | None:
        """The client's request a refused answer from the server was for, if the client still
        waits for it (closed then); None if nobody is to be told."""
        entry = self._client_ledger.answer(msg_id) if msg_id is not None else None
        if entry is None or entry.cancelled:
            return None
        if entry.held:
            self._report_guess(entry.id)
            return None
        if entry.own:  # mcpshield's own tools/list: judge the held calls without it
            if self._fetch.owns(entry.id):
                self._judge_held(self._fetch.release())
            return None
        return entry

    def _report_guess(self, msg_id: JsonId) -> None:
        self._report(f"dropped a response from the server to id {msg_id!r}: mcpshield holds that call, unsent")

    def _refuse_duplicate(self, msg: Message, back: list[bytes]) -> None:
        reason = f"request id {msg.id!r} is already in flight (or too many requests are)"
        if is_own_id(msg.id):
            reason = f"request id {msg.id!r} is reserved for mcpshield's own requests to the client"
        self._report(f"refused a request: {reason}")
        back.append(jsonrpc.error_response(msg.id, jsonrpc.INVALID_REQUEST, reason))

    def _internal_error(self, exc: Exception, line: bytes | Oversized, direction: Direction) -> None:
        """Refuses a message whose handling failed; whoever waits on it gets an error: the
        sender of a request, the requester (on the far side) of a response."""
        self._report(f"internal error ({type(exc).__name__}: {exc}); the message was not forwarded")
        decoded = jsonrpc.decode(line) if type(line) is bytes else None
        if type(decoded) is not Message or decoded.id is None:
            return
        text = "mcpshield failed to check this message"
        if decoded.kind is REQUEST:
            ledger = self._client_ledger if direction is TO_SERVER else self._server_ledger
            self._audit_end(ledger.close(decoded.id), "refused")
            back = self._to_client if direction is TO_SERVER else self._to_server
            back.append(jsonrpc.error_response(decoded.id, jsonrpc.INTERNAL_ERROR, text))
        elif decoded.kind is RESPONSE:
            # Failed before _response took it from the ledger (after that, _response answers).
            ledger = self._client_ledger if direction is TO_CLIENT else self._server_ledger
            entry = ledger.answer(decoded.id)
            self._audit_end(entry, "error")
            if entry is not None and not (entry.held or entry.cancelled or entry.own):
                forward = self._to_client if direction is TO_CLIENT else self._to_server
                forward.append(jsonrpc.error_response(entry.id, jsonrpc.INTERNAL_ERROR, text))
