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
import signal
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Final

import anyio
import orjson

from mcpshield import jsonrpc
from mcpshield.catalog import FETCH_TIMEOUT_S, CatalogFetch
from mcpshield.fdio import FdReader, FdWriter, is_pollable
from mcpshield.jsonrpc import NOTIFICATION, REQUEST, RESPONSE, DecodeFailure, Message, Oversized
from mcpshield.ledger import Entry, Ledger
from mcpshield.policy import Allow, Ask, Context, Decision, Deny, Direction, Policy, Rewrite
from mcpshield.supervisor import Child, describe_exit, exit_status

if TYPE_CHECKING:  # `run` imports the redactor only when there is something to redact
    from mcpshield.policy.redact import Redactor

#: After the client hangs up and the server's stdin is closed, how long the server may take
#: to exit on its own before SIGTERM (clients allow about 2 s for the whole shutdown).
STDIN_CLOSE_GRACE_S: Final = 1.0
#: After SIGTERM, how long before SIGKILL.
TERM_GRACE_S: Final = 1.0
#: After the server exits, how long its stdout may stay open (a grandchild holding it).
STDOUT_DRAIN_S: Final = 0.5
#: How long the last answers may take to reach the client before mcpshield exits anyway.
CLIENT_FLUSH_S: Final = 2.0
#: Server stderr held back waiting for the end of its line, at most (then passed on as it
#: is; each piece is redacted alone, so a secret straddling the cut is not caught).
STDERR_HOLD_BYTES: Final = 64 * 1024

_NL: Final = b"\n"
TO_SERVER: Final = Direction.TO_SERVER
TO_CLIENT: Final = Direction.TO_CLIENT
_CANCELLED: Final = "notifications/cancelled"
#: The `_meta` key every request carries in the stateless (2026-07-28) protocol era.
_STATELESS_META: Final = "io.modelcontextprotocol/protocolVersion"


class Relay:
    """Relays one client connection to one server process until either side ends."""

    def __init__(
        self,
        child: Child,
        policy: Policy,
        client_in: int = 0,
        client_out: int = 1,
        *,
        redactor: Redactor | None = None,
    ) -> None:
        self._child = child
        self._policy = policy
        # None unless there is something to redact: then the hot path pays one attribute check.
        self._redactor = redactor if redactor is not None and redactor.active else None
        #: Replacements made so far, in everything sent to the client and written to stderr.
        self.redactions = 0
        self._client_in_fd = client_in
        self._client_out_fd = client_out
        self._client_ledger = Ledger()  # the client's requests, awaiting the server
        self._server_ledger = Ledger()  # the server's requests, awaiting the client
        self._from_client = jsonrpc.LineFramer()
        self._from_server = jsonrpc.LineFramer()
        self._to_server: list[bytes] = []
        self._to_client: list[bytes] = []
        self._fetch = CatalogFetch(self._client_ledger, self._to_server_append)
        self._stderr_partial = b""
        self._shutting_down = False
        self._signals = 0
        self._restore: list[Callable[[], None]] = []
        self._now = time.monotonic()

    async def run(self) -> int:
        """Relays until the server has exited; returns the exit status to exit with."""
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._child_gone = asyncio.Event()
        self._server_eof = asyncio.Event()
        self._start_io(loop)
        try:
            async with anyio.create_task_group() as tg:
                self._tg = tg
                self._watch_exit(loop)
                await self._child_gone.wait()
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
            self._close_io()
            self._child.close()
        return exit_status(returncode)

    # -- wiring -------------------------------------------------------------------------

    def _start_io(self, loop: asyncio.AbstractEventLoop) -> None:
        child = self._child
        self._out_server = FdWriter(loop, child.stdin_fd, self._server_pressure, self._server_gone)
        self._out_client = self._client_writer(loop)
        self._err = FdWriter(loop, 2, self._stderr_pressure, lambda: None, pollable=_is_stream(2))
        self._keep_blocking_state(self._client_in_fd)
        self._in_client = FdReader(loop, self._client_in_fd, self._on_client_data, self._on_client_eof)
        self._in_server = FdReader(loop, child.stdout_fd, self._on_server_data, self._server_eof.set)
        self._in_stderr = FdReader(loop, child.stderr_fd, self._on_stderr_data, self._on_stderr_eof)
        for reader in (self._in_client, self._in_server, self._in_stderr):
            reader.start()
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.add_signal_handler(sig, self._on_signal)

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

    def _watch_exit(self, loop: asyncio.AbstractEventLoop) -> None:
        exit_fd = self._child.exit_fd

        def exited() -> None:
            if self._child.returncode is not None:
                loop.remove_reader(exit_fd)
                self._child_gone.set()

        loop.add_reader(exit_fd, exited)
        exited()

    def _close_io(self) -> None:
        loop = self._loop
        for reader in (self._in_client, self._in_server, self._in_stderr):
            reader.stop()
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(sig)
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
            if msg.method == "tools/call" and self._policy.catalog_needed(msg) and self._hold(msg, entry):
                return
            self._dispatch(msg, TO_SERVER, entry)
        elif kind is RESPONSE:
            self._response(msg, self._server_ledger, TO_SERVER)
        else:
            if msg.method == _CANCELLED:
                self._note_cancel(msg, self._client_ledger)
            self._dispatch(msg, TO_SERVER, None)

    def _client_failure(self, failure: DecodeFailure, line: bytes) -> None:
        self._report(f"refused a message from the client: {failure.reason}: {self._excerpt(failure, line)}")
        if failure.kind is NOTIFICATION:
            return
        if failure.kind is RESPONSE:
            entry = self._server_ledger.close(failure.id) if failure.id is not None else None
            if entry is not None:
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
        self._to_client.append(jsonrpc.error_response(jsonrpc.salvage_id(line), jsonrpc.INVALID_REQUEST, reason))

    def _on_client_eof(self) -> None:
        self._begin_shutdown("the client closed mcpshield's stdin")

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
            entry = self._server_ledger.open(msg, self._now)
            if entry is None:
                self._refuse_duplicate(msg, self._to_server)
                return
            self._dispatch(msg, TO_CLIENT, entry)
        else:
            if msg.method == _CANCELLED:
                self._note_cancel(msg, self._server_ledger)
            self._dispatch(msg, TO_CLIENT, None)

    def _server_failure(self, failure: DecodeFailure, line: bytes) -> None:
        excerpt = self._excerpt(failure, line)
        if failure.code == jsonrpc.PARSE_ERROR:
            self._report(f"kept non-JSON server output off the client's stdout: {excerpt}")
            return
        self._report(f"refused a message from the server: {failure.reason}: {excerpt}")
        if failure.id is None:
            return
        if failure.kind is RESPONSE:
            entry = self._client_ledger.close(failure.id)
            if entry is not None and not entry.cancelled:
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
        msg_id = jsonrpc.salvage_id(line)
        entry = self._client_ledger.close(msg_id) if msg_id is not None else None
        if entry is not None and not entry.cancelled:
            self._to_client.append(jsonrpc.error_response(entry.id, jsonrpc.INTERNAL_ERROR, reason))

    def _on_stderr_data(self, chunk: bytes) -> None:
        data = self._stderr_partial + chunk if self._stderr_partial else chunk
        cut = data.rfind(_NL) + 1
        if cut == 0 and len(data) < STDERR_HOLD_BYTES:
            self._stderr_partial = data
            return
        if cut == 0:
            cut = len(data)
        self._write_err(data[:cut])
        self._stderr_partial = data[cut:]

    def _on_stderr_eof(self) -> None:
        if self._stderr_partial:
            self._write_err(self._stderr_partial + _NL)
            self._stderr_partial = b""

    # -- both ways ----------------------------------------------------------------------

    def _response(self, msg: Message, ledger: Ledger, direction: Direction) -> None:
        """Passes an answer on only if the other side is waiting for exactly that id."""
        entry = ledger.close(msg.id) if msg.id is not None else None
        if entry is None:
            sender = "server" if direction is TO_CLIENT else "client"
            self._report(f"dropped a response from the {sender} to id {msg.id!r}, which no request is waiting for")
            return
        if entry.cancelled:
            return  # the requester withdrew it: a late answer must not reach it
        if entry.own:
            self._own_answer(msg, entry)
            return
        self._dispatch(msg, direction, entry)

    # -- tool calls held for the server's tool list (see mcpshield.catalog) -------------

    def _to_server_append(self, data: bytes) -> None:
        self._to_server.append(data)

    def _hold(self, msg: Message, entry: Entry) -> bool:
        fetch = self._fetch
        already = fetch.pending
        if not fetch.can_hold() or not fetch.hold(msg, entry, self._now):
            return False
        if already is None:
            self._loop.call_later(FETCH_TIMEOUT_S, self._fetch_timed_out, fetch.pending)
        return True

    def _own_answer(self, msg: Message, entry: Entry) -> None:
        """The server's tool list, asked for by mcpshield: the policy learns it; the client never sees it."""
        if "result" in msg.body:
            self._decide(msg, TO_CLIENT, entry)
        else:
            self._report("the server refused mcpshield's own tools/list; held tool calls are judged without it")
        if self._fetch.owns(msg.id):
            self._judge_held(self._fetch.answered(msg, self._now))
            if self._fetch.pending is not None:
                self._loop.call_later(FETCH_TIMEOUT_S, self._fetch_timed_out, self._fetch.pending)

    def _fetch_timed_out(self, own_id: object) -> None:
        if self._fetch.owns(own_id):  # type: ignore[arg-type]
            self._report(f"the server did not list its tools within {FETCH_TIMEOUT_S:g} s; judging held calls")
            self._now = time.monotonic()
            self._judge_held(self._fetch.release())
            self._flush()

    def _judge_held(self, held: list[tuple[Message, Entry]]) -> None:
        for msg, entry in held:
            if entry.cancelled:
                self._client_ledger.close(msg.id)  # type: ignore[arg-type]  # withdrawn: never sent
                continue
            try:
                self._dispatch(msg, TO_SERVER, entry)
            except Exception as exc:  # as in _feed: one message refused, not the relay
                self._internal_error(exc, msg.raw, TO_SERVER)

    def _note_cancel(self, msg: Message, ledger: Ledger) -> None:
        request_id = msg.params.get("requestId")
        if isinstance(request_id, str | int) and not isinstance(request_id, bool):
            ledger.cancel(request_id)

    def _dispatch(self, msg: Message, direction: Direction, entry: Entry | None) -> None:
        decision = self._decide(msg, direction, entry)
        out = self._to_server if direction is TO_SERVER else self._to_client
        if type(decision) is Allow:
            out.append(msg.raw)
            out.append(_NL)
        elif isinstance(decision, Rewrite):
            out.append(orjson.dumps(decision.body))
            out.append(_NL)
        elif isinstance(decision, Deny):
            self._refuse(msg, direction, decision.reason, decision.code)
        else:
            assert isinstance(decision, Ask)
            # Until an approval channel exists, nobody can answer: refuse, as a timeout would.
            what = "call" if msg.method == "tools/call" else "request"
            reason = (
                f"mcpshield refused this {what}: the profile says a person must approve it ({decision.prompt}), "
                "and no approver is available"
            )
            self._refuse(msg, direction, reason, None)

    def _decide(self, msg: Message, direction: Direction, entry: Entry | None) -> Decision:
        """The single point every decision passes through (the audit log hooks in here)."""
        ctx = Context(self._now, direction, entry, self._client_ledger.active_tool_calls)
        try:
            return self._policy.check(msg, ctx)
        except Exception as exc:  # a failing check must refuse, never wave the message through
            self._report(f"a policy check failed ({type(exc).__name__}); refusing the message")
            return Deny("mcpshield could not check this message", jsonrpc.INTERNAL_ERROR)

    def _refuse(self, msg: Message, direction: Direction, reason: str, code: int | None) -> None:
        """Answers whoever waits on a refused message; the other side never sees it."""
        back = self._to_client if direction is TO_SERVER else self._to_server
        if msg.kind is REQUEST:
            ledger = self._client_ledger if direction is TO_SERVER else self._server_ledger
            ledger.close(msg.id)  # type: ignore[arg-type]
            back.append(_refusal(msg, reason, code))
        elif msg.kind is RESPONSE:
            # The requester is on the far side: it gets an error instead of the refused answer.
            forward = self._to_server if direction is TO_SERVER else self._to_client
            forward.append(jsonrpc.error_response(msg.id, code or jsonrpc.INTERNAL_ERROR, reason))

    def _refuse_duplicate(self, msg: Message, back: list[bytes]) -> None:
        reason = f"request id {msg.id!r} is already in flight (or too many requests are)"
        self._report(f"refused a request: {reason}")
        back.append(jsonrpc.error_response(msg.id, jsonrpc.INVALID_REQUEST, reason))

    def _internal_error(self, exc: Exception, line: bytes | Oversized, direction: Direction) -> None:
        """Refuses a message whose handling failed; its sender gets an error if it waits."""
        self._report(f"internal error ({type(exc).__name__}: {exc}); the message was not forwarded")
        decoded = jsonrpc.decode(line) if type(line) is bytes else None
        if type(decoded) is Message and decoded.kind is REQUEST:
            ledger = self._client_ledger if direction is TO_SERVER else self._server_ledger
            ledger.close(decoded.id)  # type: ignore[arg-type]
            back = self._to_client if direction is TO_SERVER else self._to_server
            back.append(
                jsonrpc.error_response(decoded.id, jsonrpc.INTERNAL_ERROR, "mcpshield failed to check this message")
            )

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
                self.redactions += count
            self._out_client.write(data)

    def _report(self, text: str) -> None:
        self._write_err(b"mcpshield: " + text.encode("utf-8", "replace") + _NL)

    def _write_err(self, data: bytes) -> None:
        """Everything for stderr, the server's lines and mcpshield's own, with secrets hidden."""
        redactor = self._redactor
        if redactor is not None:
            data, count = redactor.redact(data, json_context=False)
            self.redactions += count
        self._err.write(data)

    def _excerpt(self, failure: DecodeFailure, line: bytes) -> str:
        """The start of an offending line, for a report. With secrets to hide it is cut from the
        redacted line: cutting first could leave half a secret, which no form matches."""
        redactor = self._redactor
        if redactor is None:
            return _show(failure.excerpt)
        redacted, count = redactor.redact(line, json_context=False)
        self.redactions += count
        return _show(redacted[: jsonrpc.REPORT_EXCERPT_BYTES])

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
        self._begin_shutdown("the client stopped reading mcpshield's stdout")

    def _on_signal(self) -> None:
        self._signals += 1
        if self._signals == 1:
            self._begin_shutdown("mcpshield was asked to stop")
        else:
            self._child.signal_group(signal.SIGKILL)

    def _begin_shutdown(self, why: str) -> None:
        if self._shutting_down:
            return
        self._shutting_down = True
        self._in_client.stop()
        self._out_server.close()
        self._tg.start_soon(self._escalate)

    async def _escalate(self) -> None:
        """Close stdin, wait, SIGTERM the group, wait, SIGKILL: each step bounded."""
        with anyio.move_on_after(STDIN_CLOSE_GRACE_S):
            await self._child_gone.wait()
            return
        self._child.signal_group(signal.SIGTERM)
        with anyio.move_on_after(TERM_GRACE_S):
            await self._child_gone.wait()
            return
        self._child.signal_group(signal.SIGKILL)

    def _fail_in_flight(self, returncode: int) -> None:
        """Answers every request the server can no longer answer, naming why."""
        reason = f"the MCP server {describe_exit(returncode)} before answering"
        for entry in self._client_ledger.drain():
            if not entry.cancelled and not entry.own:
                self._to_client.append(jsonrpc.error_response(entry.id, jsonrpc.SERVER_ERROR, reason))
        if self._to_client and not self._shutting_down:
            self._report(reason)
        self._flush()


def _refusal(msg: Message, reason: str, code: int | None) -> bytes:
    """A refused tool call is a tool result the model can read; anything else an error."""
    if code is None and msg.method == "tools/call":
        result: dict[str, object] = {"content": [{"type": "text", "text": reason}], "isError": True}
        if _STATELESS_META in _meta(msg):
            # The 2026-07-28 era: a client rejects a result that does not say it is complete.
            result["resultType"] = "complete"
        return orjson.dumps({"jsonrpc": "2.0", "id": msg.id, "result": result}) + _NL
    return jsonrpc.error_response(msg.id, code or jsonrpc.INVALID_REQUEST, reason)


def _show(excerpt: bytes) -> str:
    """An excerpt of an offending line, safe to print: control characters escaped."""
    return repr(excerpt.decode("utf-8", "replace"))[1:-1]


def _meta(msg: Message) -> dict[str, object]:
    meta = msg.params.get("_meta")
    return meta if isinstance(meta, dict) else {}


def _is_stream(fd: int) -> bool:
    """Only pipes and sockets are switched to non-blocking; a shared terminal is left alone."""
    try:
        return is_pollable(fd) and not os.isatty(fd)
    except OSError:
        return False
