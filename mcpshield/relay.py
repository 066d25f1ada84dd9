"""The relay: the only place where the client's and the server's messages meet.

Both directions are read in large chunks, split into lines, decoded once, judged by the
policy in one place (`_decide`), and written out in one syscall per chunk. A message no
check changes leaves as the bytes it arrived as. Injected secrets are redacted from every
byte bound for the client's stdout and for stderr, at the two places those bytes leave.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Final

import anyio
import orjson

from mcpshield import answers, jsonrpc
from mcpshield.aftermath import Aftermath
from mcpshield.approval.elicit import is_own_id
from mcpshield.catalog import FETCH_TIMEOUT_S, CatalogFetch
from mcpshield.fdio import FdReader, FdWriter, is_pollable
from mcpshield.jsonrpc import REQUEST, RESPONSE, DecodeFailure, Message, Oversized
from mcpshield.ledger import Entry, Ledger
from mcpshield.malformed import Malformed
from mcpshield.policy import Allow, Ask, Context, Decision, Deny, Direction, Policy, Rewrite
from mcpshield.shutdown import Shutdown
from mcpshield.stderr import STDERR_HOLD_BYTES, Stderr
from mcpshield.supervisor import Child, describe_exit, exit_status

if TYPE_CHECKING:  # `run` imports these only when there is something to redact, audit or ask
    from mcpshield.approval.broker import ApprovalSetup, Broker
    from mcpshield.audit.trail import AuditTrail
    from mcpshield.policy.redact import Redactor

#: After the server exits, how long its stdout may stay open (a grandchild holding it).
STDOUT_DRAIN_S: Final = 0.5
#: How long the last answers may take to reach the client before mcpshield exits anyway.
CLIENT_FLUSH_S: Final = 2.0

__all__ = ["STDERR_HOLD_BYTES", "Relay"]

_NL: Final = b"\n"
TO_SERVER: Final = Direction.TO_SERVER
TO_CLIENT: Final = Direction.TO_CLIENT
_CANCELLED: Final = "notifications/cancelled"


class Relay(Malformed, Aftermath):
    """Relays one client connection to one server process until either side ends."""

    def __init__(
        self,
        child: Child,
        policy: Policy,
        client_in: int = 0,
        client_out: int = 1,
        *,
        redactor: Redactor | None = None,
        trail: AuditTrail | None = None,
        approvals: ApprovalSetup | None = None,
    ) -> None:
        self._child = child
        self._policy = policy
        # None when not auditing: then, as for the redactor, the hot path pays attribute checks.
        self._trail = trail
        self._initialize: dict[str, object] = {}  # the client's initialize params, for the log
        # None unless there is something to redact: then the hot path pays one attribute check.
        self._redactor = redactor if redactor is not None and redactor.active else None
        self._client_redactions = 0
        self._stderr = Stderr(self._redactor)
        self._report = self._stderr.report
        if trail is not None:
            trail.report = self._report
        self._client_ledger = Ledger()  # the client's requests, awaiting the server
        self._server_ledger = Ledger()  # the server's requests (and mcpshield's), awaiting the client
        self._broker: Broker | None = None
        if approvals is not None:
            from mcpshield.approval.broker import Broker
            from mcpshield.approval.elicit import Elicitor

            elicitor = Elicitor(self._server_ledger, self._to_client_now, time.monotonic)
            answer = (self._approved, self._disapproved, self._report)
            self._broker = Broker(
                approvals, *answer, answer=self._asked_here, elicitor=elicitor, notify=self._to_client_now
            )
        self._on_stderr_data = self._stderr.server_data
        self._on_stderr_eof = self._stderr.server_eof
        self._client_in_fd = client_in
        self._client_out_fd = client_out
        self._from_client = jsonrpc.LineFramer()
        self._from_server = jsonrpc.LineFramer()
        self._to_server: list[bytes] = []
        self._to_client: list[bytes] = []
        self._fetch = CatalogFetch(self._client_ledger, self._to_server_append)
        self._shutdown = Shutdown(child, self._stop_input)
        self._restore: list[Callable[[], None]] = []
        self._now = time.monotonic()

    @property
    def why_ended(self) -> str:
        """What ended the session: the client, a signal, or the server's own exit."""
        return self._shutdown.why

    @property
    def redactions(self) -> int:
        """Replacements made so far, in everything sent to the client and written to stderr."""
        return self._client_redactions + self._stderr.redactions

    async def run(self) -> int:
        """Relays until the server has exited; returns the exit status to exit with."""
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._server_eof = asyncio.Event()
        self._start_io(loop)
        try:
            async with anyio.create_task_group() as tg:
                self._shutdown.watch(loop, tg)
                if self._broker is not None:
                    self._broker.start(tg)
                await self._shutdown.child_gone.wait()
                with anyio.move_on_after(STDOUT_DRAIN_S):
                    await self._server_eof.wait()
                tg.cancel_scope.cancel()
            returncode = self._child.returncode
            assert returncode is not None
            self._fail_in_flight(returncode)
            with anyio.move_on_after(CLIENT_FLUSH_S):
                await self._out_client.flushed()
                await self._err.flushed()
        finally:
            if self._broker is not None:
                self._broker.close()
            self._close_io()
            self._child.close()
        return exit_status(returncode)

    # -- wiring -------------------------------------------------------------------------

    def _start_io(self, loop: asyncio.AbstractEventLoop) -> None:
        child = self._child
        self._out_server = FdWriter(loop, child.stdin_fd, self._server_pressure, self._server_gone)
        self._out_client = self._client_writer(loop)
        self._err = self._stderr.out = FdWriter(loop, 2, self._stderr_pressure, lambda: None, pollable=_is_stream(2))
        self._keep_blocking_state(self._client_in_fd)
        self._in_client = FdReader(loop, self._client_in_fd, self._on_client_data, self._on_client_eof)
        self._in_server = FdReader(loop, child.stdout_fd, self._on_server_data, self._server_eof.set)
        self._in_stderr = FdReader(loop, child.stderr_fd, self._on_stderr_data, self._on_stderr_eof)
        for reader in (self._in_client, self._in_server, self._in_stderr):
            reader.start()
        if self._trail is not None:
            self._trail.watch(loop)

    def _client_writer(self, loop: asyncio.AbstractEventLoop) -> FdWriter:
        fd = self._client_out_fd
        pollable = _is_stream(fd)
        if pollable:
            self._keep_blocking_state(fd)
        return FdWriter(loop, fd, self._client_pressure, self._client_gone, pollable=pollable)

    def _keep_blocking_state(self, fd: int) -> None:
        """Remembers fd's blocking mode to restore at the end: the client's pipe (or a shared
        terminal) is not mcpshield's to leave non-blocking."""
        with contextlib.suppress(OSError):
            was_blocking = os.get_blocking(fd)
            self._restore.append(lambda: os.set_blocking(fd, was_blocking))

    def _stop_input(self) -> None:
        self._in_client.stop()
        self._out_server.close()

    def _close_io(self) -> None:
        for reader in (self._in_client, self._in_server, self._in_stderr):
            reader.stop()
        self._shutdown.unwatch(self._loop)
        if self._trail is not None:
            self._trail.unwatch(self._loop)
        for restore in self._restore:
            with contextlib.suppress(OSError):
                restore()

    # -- client -> server ---------------------------------------------------------------

    def _on_client_data(self, chunk: bytes) -> None:
        self._feed(self._from_client.feed(chunk), self._client_line, self._client_oversized, TO_SERVER)

    def _feed(
        self,
        lines: list[bytes | Oversized],
        on_line: Callable[[bytes], None],
        on_oversized: Callable[[Oversized], None],
        direction: Direction,
    ) -> None:
        """Handles the lines one chunk completed, then writes all they produced at once."""
        self._now = time.monotonic()  # one reading for the whole chunk: its lines arrived together
        for line in lines:
            try:
                if type(line) is bytes:
                    on_line(line)
                else:
                    assert isinstance(line, Oversized)
                    on_oversized(line)
            except Exception as exc:  # a bug must cost one message, refused, not the relay
                self._internal_error(exc, line, direction)
        self._flush()

    def _client_line(self, line: bytes) -> None:
        msg = jsonrpc.decode(line)
        if type(msg) is not Message:
            assert isinstance(msg, DecodeFailure)
            if line.strip():
                self._client_failure(msg, line)
            return
        kind = msg.kind
        if kind is REQUEST:
            entry = self._client_ledger.open(msg, self._now)
            if entry is None:
                self._refuse_duplicate(msg, self._to_client)
                return
            if msg.method == "initialize" and self._broker is not None:
                self._broker.initialize(msg.params)
            if msg.method == "tools/call" and self._policy.catalog_needed(msg) and self._hold(msg, entry):
                return
            self._dispatch(msg, TO_SERVER, entry)
        elif kind is RESPONSE:
            self._response(msg, self._server_ledger, TO_SERVER)
        else:
            if msg.method == _CANCELLED:
                self._note_cancel(msg, self._client_ledger)
            self._dispatch(msg, TO_SERVER, None)

    def _on_client_eof(self) -> None:
        self._shutdown.begin("the client closed mcpshield's stdin")

    # -- server -> client ---------------------------------------------------------------

    def _on_server_data(self, chunk: bytes) -> None:
        self._feed(self._from_server.feed(chunk), self._server_line, self._server_oversized, TO_CLIENT)

    def _server_line(self, line: bytes) -> None:
        msg = jsonrpc.decode(line)
        if type(msg) is not Message:
            assert isinstance(msg, DecodeFailure)
            if line.strip():
                self._server_failure(msg, line)
            return
        kind = msg.kind
        if kind is RESPONSE:
            self._response(msg, self._client_ledger, TO_CLIENT)
        elif kind is REQUEST:
            entry = None if is_own_id(msg.id) else self._server_ledger.open(msg, self._now)
            if entry is None:  # (mcpshield's own ids are refused: a late answer could reach the server)
                self._refuse_duplicate(msg, self._to_server)
                return
            self._dispatch(msg, TO_CLIENT, entry)
        else:
            if msg.method == _CANCELLED:
                self._note_cancel(msg, self._server_ledger)
            self._dispatch(msg, TO_CLIENT, None)

    # -- both ways ----------------------------------------------------------------------

    def _response(self, msg: Message, ledger: Ledger, direction: Direction) -> None:
        """Passes an answer on only if the other side is waiting for exactly that id."""
        entry = ledger.answer(msg.id) if msg.id is not None else None
        if entry is None:
            sender = "server" if direction is TO_CLIENT else "client"
            self._report(f"dropped a response from the {sender} to id {msg.id!r}, which no request is waiting for")
            return
        if entry.held:
            self._report_guess(entry.id)
            return
        if entry.cancelled:
            return  # the requester withdrew it: a late answer must not reach it
        if entry.own:
            self._own_answer(msg, entry)
            return
        try:
            redactions = self._dispatch(msg, direction, entry)
        except Exception as exc:  # as in _feed, but the requester is on the far side: answer it
            self._report(f"internal error ({type(exc).__name__}: {exc}); an answer was not forwarded")
            out = self._to_client if direction is TO_CLIENT else self._to_server
            out.append(jsonrpc.error_response(entry.id, jsonrpc.INTERNAL_ERROR, "mcpshield failed to check the answer"))
            redactions = 0
        if entry.audit is not None:
            self._audit_answer(msg, entry, redactions)
        if entry.approved and self._broker is not None:
            self._broker.answered(entry, msg)

    # -- tool calls held for the server's tool list (see mcpshield.catalog) -------------

    def _to_server_append(self, data: bytes) -> None:
        self._to_server.append(data)

    def _hold(self, msg: Message, entry: Entry) -> bool:
        """Holds a call for the tool list, or refuses it if too much is held; False if neither."""
        fetch = self._fetch
        full = fetch.no_room(msg)
        if full is not None:
            reason = f"mcpshield refused this call: {full} for the server's tool list; retry in a moment"
            self._report(reason)
            self._client_ledger.close(entry.id)
            self._to_client.append(jsonrpc.error_response(entry.id, jsonrpc.SERVER_ERROR, reason))
            return True
        generation = fetch.generation
        if not fetch.hold(msg, entry, self._now):
            return False
        if fetch.generation != generation:  # one deadline for the whole fetch, every page
            self._loop.call_later(FETCH_TIMEOUT_S, self._fetch_timed_out, fetch.generation)
        return True

    def _to_client_now(self, data: bytes) -> None:
        self._to_client.append(data)
        self._flush()

    def _own_answer(self, msg: Message, entry: Entry) -> None:
        """The answer to mcpshield's own request: the client's user deciding about a call (see
        mcpshield.approval.elicit), or the server's tool list, which the policy learns; the
        other side never sees it."""
        if entry.method == "elicitation/create":
            if self._broker is not None:
                self._broker.elicited(entry.id, msg.body.get("result"))
            return
        if "result" in msg.body:
            self._decide(msg, TO_CLIENT, entry)
        else:
            self._report("the server refused mcpshield's own tools/list; held tool calls are judged without it")
        if self._fetch.owns(msg.id):
            self._judge_held(self._fetch.answered(msg, self._now))

    def _fetch_timed_out(self, generation: int) -> None:
        if self._fetch.fetching(generation):
            self._report(f"the server did not list its tools within {FETCH_TIMEOUT_S:g} s; judging held calls")
            self._now = time.monotonic()
            self._judge_held(self._fetch.release())
            self._flush()

    def _judge_held(self, held: list[tuple[Message, Entry]]) -> None:
        ledger = self._client_ledger
        for msg, entry in held:
            ledger.release(entry)  # counted as running from here, one by one, for max_concurrent
            if entry.cancelled:
                ledger.discard(entry)  # withdrawn: never sent (its id may have been reused since)
                if self._trail is not None:
                    self._trail.undecided(entry, "cancelled", self._now)
                continue
            try:
                self._dispatch(msg, TO_SERVER, entry)
            except Exception as exc:  # as in _feed: one message refused, not the relay
                self._internal_error(exc, msg.raw, TO_SERVER)

    def _note_cancel(self, msg: Message, ledger: Ledger) -> None:
        request_id = msg.params.get("requestId")
        if isinstance(request_id, str | int) and not isinstance(request_id, bool):
            entry = ledger.cancel(request_id, self._now)
            if entry is not None and self._broker is not None and ledger is self._client_ledger:
                self._broker.cancelled(entry)
            if entry is not None and entry.audit is not None and self._trail is not None:
                self._trail.ended(entry, "cancelled", self._now)

    def _dispatch(self, msg: Message, direction: Direction, entry: Entry | None) -> int:
        """Applies the message's Decision; returns the secrets redacted from it (only counted
        here for answers being audited: everything else is redacted as it is flushed)."""
        decision = self._decide(msg, direction, entry)
        out = self._to_server if direction is TO_SERVER else self._to_client
        if type(decision) is Allow:
            data = msg.raw
        elif isinstance(decision, Rewrite):
            data = orjson.dumps(decision.body)
        elif isinstance(decision, Deny):
            self._refuse(msg, direction, decision.reason, decision.code)
            return 0
        else:
            assert isinstance(decision, Ask)
            if self._broker is not None and entry is not None and direction is TO_SERVER and msg.method == "tools/call":
                self._broker.ask(msg, entry, decision.rule, decision.prompt)  # waits; the rest goes on
            else:  # no channel reaches a person for this (a server's request, a resource): refuse
                self._refuse(msg, direction, answers.no_approver(msg, decision.prompt), None)
            return 0
        count = 0
        if self._redactor is not None and direction is TO_CLIENT and entry is not None and entry.audit is not None:
            data, count = self._redactor.redact(data, json_context=True)
            self._client_redactions += count
        out.append(data)
        out.append(_NL)
        return count

    def _decide(self, msg: Message, direction: Direction, entry: Entry | None) -> Decision:
        """The single point every decision passes through (the audit log hooks in here)."""
        ctx = Context(self._now, direction, entry, self._client_ledger.active_tool_calls)
        try:
            decision = self._policy.check(msg, ctx)
        except Exception as exc:  # a failing check must refuse, never wave the message through
            self._report(f"a policy check failed ({type(exc).__name__}); refusing the message")
            decision = Deny("mcpshield could not check this message", jsonrpc.INTERNAL_ERROR)
        if self._trail is not None and entry is not None and not entry.own:
            return self._audited(msg, direction, entry, decision)
        return decision

    def _refuse(self, msg: Message, direction: Direction, reason: str, code: int | None) -> None:
        """Answers whoever waits on a refused message; the other side never sees it."""
        back = self._to_client if direction is TO_SERVER else self._to_server
        if msg.kind is REQUEST:
            ledger = self._client_ledger if direction is TO_SERVER else self._server_ledger
            entry = ledger.close(msg.id)  # type: ignore[arg-type]
            back.append(answers.refusal(msg, reason, code))
            if entry is not None and entry.audit is not None and self._trail is not None:
                self._trail.refused(entry, reason, self._now)
        elif msg.kind is RESPONSE:
            # The requester is on the far side: it gets an error instead of the refused answer.
            forward = self._to_server if direction is TO_SERVER else self._to_client
            forward.append(jsonrpc.error_response(msg.id, code or jsonrpc.INTERNAL_ERROR, reason))

    def _flush(self) -> None:
        if self._to_server:
            batch = self._to_server
            self._to_server = []
            self._out_server.write(batch[0] if len(batch) == 1 else b"".join(batch))
        if self._to_client:
            batch = self._to_client
            self._to_client = []
            data = batch[0] if len(batch) == 1 else b"".join(batch)
            redactor = self._redactor
            if redactor is not None:
                # Every byte for the client passes here (forwarded, rewritten, refusals, errors),
                # once per chunk rather than per message. Only whole JSON lines are in the batch.
                data, count = redactor.redact(data, json_context=True)
                self._client_redactions += count
            self._out_client.write(data)
        if self._trail is not None:
            self._trail.hand_over()

    # -- back-pressure and endings ------------------------------------------------------

    def _server_pressure(self, full: bool) -> None:
        (self._in_client.pause if full else self._in_client.resume)()

    def _client_pressure(self, full: bool) -> None:
        (self._in_server.pause if full else self._in_server.resume)()

    def _stderr_pressure(self, full: bool) -> None:
        (self._in_stderr.pause if full else self._in_stderr.resume)()

    def _server_gone(self) -> None:
        """The server closed its stdin; its exit is what ends the relay."""

    def _client_gone(self) -> None:
        self._shutdown.begin("the client stopped reading mcpshield's stdout")

    def _fail_in_flight(self, returncode: int) -> None:
        """Answers every request the server can no longer answer, naming why."""
        reason = f"the MCP server {describe_exit(returncode)} before answering"
        if self._child.memory_killed_mib is not None:
            reason = (
                f"the MCP server was stopped before answering: its processes used "
                f"{self._child.memory_killed_mib} MiB, over the profile's [sandbox] memory_mb"
            )
        self._now = time.monotonic()
        trail = self._trail
        for entry in self._client_ledger.drain():
            if not entry.cancelled and not entry.own:
                self._to_client.append(jsonrpc.error_response(entry.id, jsonrpc.SERVER_ERROR, reason))
            if trail is not None and not entry.own:
                outcome = "unanswered" if self._shutdown.started else "server_exited"
                if entry.audit is not None:
                    trail.ended(entry, outcome, self._now)
                elif entry.held:  # still held for the tool list: never decided
                    trail.undecided(entry, "cancelled" if entry.cancelled else outcome, self._now)
        for entry in self._server_ledger.drain():  # the server's requests the client never answered
            if entry.audit is not None and trail is not None:
                trail.ended(entry, "unanswered", self._now)
        if self._to_client and not self._shutdown.started:
            self._report(reason)
        self._flush()


def _is_stream(fd: int) -> bool:
    """Only pipes and sockets are switched to non-blocking; a shared terminal is left alone."""
    try:
        return is_pollable(fd) and not os.isatty(fd)
    except OSError:
        return False
