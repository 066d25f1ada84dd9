"""The wrapper's link to the terminal approver: submits calls, enforces their timeouts, and
follows the approver across restarts, all as tasks in the caller's task group.
"""

from __future__ import annotations

import contextlib
import math
import os
import stat
import sys
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Final, Literal, TypeAlias

import anyio
import anyio.abc
from anyio.abc import SocketAttribute
from anyio.streams.memory import MemoryObjectSendStream

from mcpshield.approval.location import APPROVER_DIR_ENV, approver_dir, checked_dir, socket_path
from mcpshield.approval.peer import peer_uid
from mcpshield.approval.protocol import (
    MAX_LINE_BYTES,
    Decision,
    Hello,
    Malformed,
    Remembered,
    Request,
    Withdraw,
    WithdrawReason,
    decode_to_wrapper,
    encode,
)
from mcpshield.approval.streams import LineTooLong, read_lines, write_lines
from mcpshield.errors import ApprovalError

#: Bound on connecting to the approver's socket: a live approver accepts at once.
CONNECT_TIMEOUT_S: Final = 2.0
#: How often a link whose approver went away, with calls still waiting, looks for a new one.
RECONNECT_INTERVAL_S: Final = 0.1
#: Shortest wait told to an approver that gets a request again after a restart (it never waits).
MIN_RESENT_TIMEOUT_S: Final = 0.001
NO_APPROVER: Final = "no approver is running: start `mcpshield approvals` in a terminal of this user"
#: Why nothing reaches a terminal approver on Windows (its transport is a named pipe, not built).
NOT_ON_WINDOWS: Final = (
    "the terminal approver is not available on Windows yet (its named pipe is not built); "
    "Tip: approve in a client that supports MCP elicitation, or run mcpshield under WSL"
)

OutcomeKind: TypeAlias = Literal["once", "session", "always", "deny", "timeout", "unavailable", "cancelled"]


@dataclass(frozen=True)
class Outcome:
    """How a request ended. `approver_uid` is the uid the OS reported for the approver's end of
    the socket (set for the four decisions only)."""

    decision: OutcomeKind
    reason: str | None = None
    approver_uid: int | None = None
    channel: Literal["terminal", "tty"] = "terminal"


#: on_late(request, outcome): a decision made after the request timed out (see Request.late_s).
OnLate: TypeAlias = Callable[[Request, Outcome], None]


@dataclass(eq=False)
class _Wait:
    request: Request
    on_outcome: Callable[[Outcome], None]
    deadline: float
    timer: anyio.CancelScope
    on_late: OnLate | None = None


class ApproverLink:
    """One wrapper's link to the approver. Its tasks run in `task_group` (the caller's: they end
    with it). Connects on the first request; when the approver goes away with requests waiting,
    tries again every RECONNECT_INTERVAL_S and sends them, with what is left of their timeouts,
    to the approver that comes back. `hello` is read at each connect (set its client name once
    the client's initialize is known)."""

    def __init__(
        self,
        hello: Hello,
        task_group: anyio.abc.TaskGroup,
        *,
        directory: Path | None = None,
        report: Callable[[str], None] | None = None,
    ) -> None:
        self.hello = hello
        self._tg = task_group
        self._directory = directory
        self._report = report or _stderr
        self._uid = os.getuid() if hasattr(os, "getuid") else -1
        self._waits: dict[str, _Wait] = {}
        #: Requests that timed out and may still be decided late: id -> (request, on_late, until).
        self._late: dict[str, tuple[Request, OnLate, float]] = {}
        self._outbox: MemoryObjectSendStream[bytes] | None = None
        self._connecting = False
        self._why_unavailable = NO_APPROVER
        self._last_report = ""

    @property
    def connected(self) -> bool:
        return self._outbox is not None

    @property
    def waiting(self) -> int:
        """Requests submitted and not yet resolved."""
        return len(self._waits)

    def submit(self, request: Request, on_outcome: Callable[[Outcome], None], on_late: OnLate | None = None) -> None:
        """Asks for a decision on `request`. `on_outcome` is called exactly once, from the event
        loop and never before `submit` returns: with the decision, or timeout after
        `request.timeout_s`, unavailable (no approver), or cancelled (`withdraw`). After a
        timeout, a decision the approver still sends within `request.late_s` goes to `on_late`."""
        if request.id in self._waits:
            raise ValueError(f"request id {request.id!r} is already waiting")
        if sys.platform == "win32":
            self._unavailable(NOT_ON_WINDOWS, loud=True)
            self._tg.start_soon(_call, on_outcome, Outcome("unavailable", NOT_ON_WINDOWS))
            return
        line = encode(request)
        if len(line) > MAX_LINE_BYTES:
            too_big = Outcome("unavailable", f"the call is too large to show the approver (over {MAX_LINE_BYTES} B)")
            self._tg.start_soon(_call, on_outcome, too_big)
            return
        deadline = anyio.current_time() + request.timeout_s
        wait = _Wait(request, on_outcome, deadline, anyio.CancelScope(), on_late if request.late_s > 0 else None)
        self._waits[request.id] = wait
        self._tg.start_soon(self._expire, wait)
        if self._outbox is not None:
            self._send(line)
        elif not self._connecting:
            self._connecting = True
            self._tg.start_soon(self._keep_connected)

    async def ask(self, request: Request) -> Outcome:
        """`submit`, awaited; cancelling the caller withdraws the request."""
        done = anyio.Event()
        box: list[Outcome] = []

        def on_outcome(outcome: Outcome) -> None:
            box.append(outcome)
            done.set()

        self.submit(request, on_outcome)
        try:
            await done.wait()
        finally:
            if not box:
                self.withdraw(request.id)
        return box[0]

    def withdraw(self, request_id: str, why: WithdrawReason = "cancelled") -> bool:
        """Stops waiting (its outcome: cancelled, or timeout) and tells the approver; False when
        the request was not waiting."""
        return self._finish(request_id, Outcome(why), withdraw=why)

    def remembered(self, request_id: str, file: str | None, error: str | None) -> None:
        """Tells the approver what became of its "always" (best effort: not sent if it went away)."""
        if self._outbox is not None:
            self._send(encode(Remembered(request_id, file, error)))

    def _finish(self, request_id: str, outcome: Outcome, withdraw: WithdrawReason | None = None) -> bool:
        wait = self._waits.pop(request_id, None)
        if wait is None:
            return False
        wait.timer.cancel()
        if withdraw == "timeout" and wait.on_late is not None:
            now = anyio.current_time()
            for stale in [key for key, (_r, _f, until) in self._late.items() if until <= now]:
                del self._late[stale]
            self._late[request_id] = (wait.request, wait.on_late, now + wait.request.late_s)
        if withdraw is not None and self._outbox is not None:
            self._send(encode(Withdraw(request_id, withdraw)))
        wait.on_outcome(outcome)
        return True

    def _send(self, line: bytes) -> None:
        assert self._outbox is not None
        # A connection that is ending: what waits is sent again on the next one.
        with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):
            self._outbox.send_nowait(line)

    async def _expire(self, wait: _Wait) -> None:
        with wait.timer:
            await anyio.sleep_until(wait.deadline)
            self._finish(wait.request.id, Outcome("timeout", _timeout_reason(wait.request)), withdraw="timeout")

    async def _keep_connected(self) -> None:
        """Connects, and reconnects while requests wait. A first attempt that fails makes every
        waiting request unavailable at once; after a connection was lost, it tries again until
        nothing waits."""
        try:
            lost = False
            while self._waits:
                stream = await self._connect()
                if stream is not None:
                    await self._session(stream)
                    lost = True
                elif lost:
                    await anyio.sleep(RECONNECT_INTERVAL_S)
                else:
                    for request_id in list(self._waits):
                        self._finish(request_id, Outcome("unavailable", self._why_unavailable))
        finally:
            self._connecting = False

    async def _connect(self) -> anyio.abc.SocketStream | None:
        """A connection to an approver of this user, or None (why: `_why_unavailable`)."""
        try:
            directory = approver_dir(create=False) if self._directory is None else checked_dir(self._directory)
            path = socket_path(directory)
            info = os.lstat(path)
        except FileNotFoundError:
            self._unavailable(NO_APPROVER)
            return None
        except (ApprovalError, OSError) as exc:
            self._unavailable(f"cannot reach the approver: {exc}", loud=True)
            return None
        if not stat.S_ISSOCK(info.st_mode) or info.st_uid != self._uid:
            self._unavailable(f"{path} is not a socket of yours; refusing to send it calls", loud=True)
            return None
        try:
            with anyio.fail_after(CONNECT_TIMEOUT_S):
                stream = await anyio.connect_unix(path)
        except (OSError, TimeoutError):
            self._unavailable(NO_APPROVER)
            return None
        uid = peer_uid(stream.extra(SocketAttribute.raw_socket))  # noqa: S610 -- anyio, not Django
        if uid != self._uid:
            await stream.aclose()
            who = "an unknown user" if uid is None else f"uid {uid}"
            self._unavailable(f"the approver socket {path} is served by {who}; refusing it", loud=True)
            return None
        self._last_report = ""
        return stream

    def _unavailable(self, why: str, loud: bool = False) -> None:
        self._why_unavailable = why
        if loud and why != self._last_report:
            self._last_report = why
            self._report(why)

    async def _session(self, stream: anyio.abc.SocketStream) -> None:
        """Registers, sends what waits, and handles decisions until the connection ends."""
        # Unbounded: it holds the requests waiting (the relay bounds calls in flight) and their withdrawals.
        send, receive = anyio.create_memory_object_stream[bytes](math.inf)
        async with stream:
            self._outbox = send
            send.send_nowait(encode(self.hello))
            now = anyio.current_time()
            for wait in self._waits.values():
                left = max(round(wait.deadline - now, 3), MIN_RESENT_TIMEOUT_S)
                send.send_nowait(encode(replace(wait.request, timeout_s=left)))
            try:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(write_lines, stream, receive, tg.cancel_scope)
                    await self._read(stream)
                    tg.cancel_scope.cancel()
            finally:
                self._outbox = None
                send.close()

    async def _read(self, stream: anyio.abc.SocketStream) -> None:
        try:
            async for line in read_lines(stream):
                message = decode_to_wrapper(line)
                if isinstance(message, Malformed):
                    self._report(f"the approver broke the protocol ({message.why}); disconnected")
                    return
                self._decided(message)
        except LineTooLong:
            self._report(f"the approver sent a line over {MAX_LINE_BYTES} bytes; disconnected")

    def _decided(self, message: Decision) -> None:
        outcome = Outcome(message.decision, message.reason, self._uid)
        if self._finish(message.id, outcome):
            return
        late = self._late.pop(message.id, None)
        if late is not None and late[2] > anyio.current_time():
            late[1](late[0], outcome)
        # Else a decision for a request no longer waiting crossed our withdrawal: nothing to do.


async def _call(on_outcome: Callable[[Outcome], None], outcome: Outcome) -> None:
    on_outcome(outcome)


def _timeout_reason(request: Request) -> str:
    return f"nobody answered in {request.timeout_s:g} s; ask the user to watch `mcpshield approvals`, then retry"


def _stderr(text: str) -> None:
    sys.stderr.write(f"mcpshield: {text}\n")


__all__ = ["APPROVER_DIR_ENV", "ApproverLink", "Hello", "Outcome", "Request"]
