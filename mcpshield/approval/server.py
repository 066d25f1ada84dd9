"""The approver's socket side: listens, checks each peer's uid, keeps every wrapper's pending
requests, and tells a front end what happens (`Sink`: the JSON lines of `--json`, or the
interactive terminal UI).
"""

from __future__ import annotations

import contextlib
import math
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Protocol

import anyio
import anyio.abc
from anyio.abc import SocketAttribute
from anyio.streams.memory import MemoryObjectSendStream

from mcpshield.approval.location import LOCK_NAME, socket_path
from mcpshield.approval.peer import peer_uid
from mcpshield.approval.protocol import (
    MAX_LINE_BYTES,
    Choice,
    Decision,
    Hello,
    Malformed,
    Remembered,
    Request,
    ToApprover,
    Withdraw,
    decode_to_approver,
    encode,
)
from mcpshield.approval.streams import LineTooLong, read_lines, write_lines
from mcpshield.errors import ApprovalError

#: Bound on asking an existing socket whether an approver still answers on it.
PROBE_TIMEOUT_S: Final = 2.0
SOCKET_MODE: Final = 0o600
_TIP_RUNNING: Final = "answer in the terminal where it runs, or stop it (Ctrl-C) and start this one again"


class Sink(Protocol):
    """What the front end is told; every call comes from the event loop and must not block it long."""

    def pending(self, request: Request, hello: Hello) -> None: ...

    def resolved(self, request_id: str, outcome: str, *, late_s: float = 0.0, late: bool = False) -> None:
        """`outcome`: the decision, or timeout / cancelled (the wrapper withdrew it) / withdrawn
        (its wrapper went away). A timeout with `late_s` > 0 leaves the request decidable that
        long (a late decision pre-authorises an identical retry); such a decision comes with
        `late` true."""

    def gone(self, request_id: str) -> None:
        """A request that timed out is no longer decidable late (nothing is printed for it)."""

    def remembered(self, request_id: str, file: str | None, error: str | None) -> None:
        """What the wrapper made of an "always": the rule written into `file`, or why not."""

    def report(self, text: str) -> None: ...


@dataclass
class Listening:
    """The bound socket, with the lock that says this approver is the live one."""

    listener: anyio.abc.SocketListener
    path: Path
    inode: int
    lock_fd: int

    async def aclose(self) -> None:
        """Stops listening and removes the socket file, unless another approver has replaced it."""
        await self.listener.aclose()
        with contextlib.suppress(OSError):
            if os.lstat(self.path).st_ino == self.inode:
                self.path.unlink()
        os.close(self.lock_fd)


async def listen(directory: Path) -> Listening:
    """Binds `approver.sock` in `directory` (already checked private). A live approver there, or
    anything but a stale socket at the path, raises ApprovalError."""
    path = socket_path(directory)
    lock_fd = _lock(directory / LOCK_NAME)
    try:
        await _clear_stale(path)
        try:
            listener = await anyio.create_unix_listener(path, mode=SOCKET_MODE)
        except OSError as exc:
            raise ApprovalError(
                f"cannot listen on {path}: {exc.strerror or exc}", "check that the directory is yours and writable"
            ) from None
        return Listening(listener, path, os.lstat(path).st_ino, lock_fd)
    except BaseException:
        os.close(lock_fd)
        raise


def _lock(path: Path) -> int:
    import fcntl

    flags = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(path, flags, 0o600)
    except OSError as exc:
        raise ApprovalError(f"cannot open {path}: {exc.strerror or exc}", "remove it; mcpshield makes it") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise ApprovalError(f"another approver is already running ({path.parent})", _TIP_RUNNING) from None
    return fd


async def _clear_stale(path: Path) -> None:
    """Removes a socket file nobody answers on (an approver that was killed left it)."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(info.st_mode):
        raise ApprovalError(f"{path} exists and is not a socket", "remove it; mcpshield makes its own socket there")
    try:
        with anyio.fail_after(PROBE_TIMEOUT_S):
            probe = await anyio.connect_unix(path)
    except (ConnectionRefusedError, FileNotFoundError):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)  # a cheap local syscall, like the bind that follows
        return
    except (OSError, TimeoutError) as exc:
        raise ApprovalError(f"cannot tell whether an approver answers on {path}: {exc}", _TIP_RUNNING) from None
    await probe.aclose()
    raise ApprovalError(f"another approver is already listening on {path}", _TIP_RUNNING)


@dataclass(eq=False)
class _Wrapper:
    """One connected wrapper: what it said it is, its requests still pending, its outgoing lines."""

    outbox: MemoryObjectSendStream[bytes]
    hello: Hello | None = None
    ids: set[str] = field(default_factory=set)
    #: Requests decided "always", whose `remembered` is still to come.
    always: set[str] = field(default_factory=set)

    @property
    def name(self) -> str:
        return "a wrapper" if self.hello is None else f"the wrapper pid {self.hello.pid}"


class ApproverServer:
    """Serves every wrapper of this user at once; a person's decisions come in through `decide`."""

    def __init__(self, sink: Sink) -> None:
        self._sink = sink
        self._uid = os.getuid()
        self._pending: dict[str, tuple[_Wrapper, Request]] = {}
        #: Requests that timed out and may still be decided late, with when that ends.
        self._late: dict[str, tuple[_Wrapper, Request, anyio.CancelScope]] = {}
        self._tg: anyio.abc.TaskGroup | None = None

    async def serve(
        self, listener: anyio.abc.SocketListener, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Accepts connections until cancelled."""
        async with anyio.create_task_group() as tg:
            self._tg = tg
            task_status.started()
            await listener.serve(self._handle, tg)

    def decide(self, request_id: str, choice: Choice, reason: str | None) -> bool:
        """Sends a decision to the wrapper that asked (also for a request that timed out and is
        still decidable late); False when no request has that id."""
        late = self._late.pop(request_id, None)
        if late is not None:
            wrapper, timer = late[0], late[2]
            timer.cancel()
        else:
            entry = self._pending.pop(request_id, None)
            if entry is None:
                return False
            wrapper = entry[0]
        wrapper.ids.discard(request_id)
        if choice == "always":
            wrapper.always.add(request_id)
        answer = encode(Decision(request_id, choice, reason, self._uid))
        with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):
            wrapper.outbox.send_nowait(answer)
        self._sink.resolved(request_id, choice, late=late is not None)
        return True

    async def _handle(self, stream: anyio.abc.SocketStream) -> None:
        async with stream:
            uid = peer_uid(stream.extra(SocketAttribute.raw_socket))  # noqa: S610 -- anyio, not Django
            if uid != self._uid:
                who = "a process whose uid the OS would not tell" if uid is None else f"uid {uid}"
                self._sink.report(f"refused a connection from {who}: only uid {self._uid} may ask this approver")
                return
            # Unbounded: it holds only decisions, one per request of this wrapper, at a person's pace.
            send, receive = anyio.create_memory_object_stream[bytes](math.inf)
            wrapper = _Wrapper(send)
            try:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(write_lines, stream, receive, tg.cancel_scope)
                    await self._read(stream, wrapper)
                    tg.cancel_scope.cancel()
            finally:
                send.close()
                self._drop(wrapper)

    async def _read(self, stream: anyio.abc.SocketStream, wrapper: _Wrapper) -> None:
        try:
            async for line in read_lines(stream):
                problem = self._message(wrapper, decode_to_approver(line))
                if problem is not None:
                    self._sink.report(f"{wrapper.name} broke the protocol ({problem}); connection closed")
                    return
        except LineTooLong:
            self._sink.report(f"{wrapper.name} sent a line over {MAX_LINE_BYTES} bytes; connection closed")

    def _message(self, wrapper: _Wrapper, message: ToApprover | Malformed) -> str | None:
        """Acts on one message; returns what is wrong with it, if anything."""
        if isinstance(message, Malformed):
            return message.why
        if isinstance(message, Hello):
            if wrapper.hello is not None:
                return "a second hello"
            wrapper.hello = message
            return None
        if wrapper.hello is None:
            return "a message before hello"
        if isinstance(message, Request):
            if message.id in self._pending:
                return f"request id {message.id!r} is already pending"
            self._pending[message.id] = (wrapper, message)
            wrapper.ids.add(message.id)
            self._sink.pending(message, wrapper.hello)
            return None
        if isinstance(message, Remembered):
            if message.id not in wrapper.always:
                return f"remembered for {message.id!r}, which was not approved always"
            wrapper.always.discard(message.id)
            self._sink.remembered(message.id, message.file, message.error)
            return None
        assert isinstance(message, Withdraw)
        self._withdrawn(wrapper, message)
        return None

    def _withdrawn(self, wrapper: _Wrapper, message: Withdraw) -> None:
        late = self._late.get(message.id)
        if late is not None and late[0] is wrapper:  # the wrapper no longer takes a late decision
            self._forget_late(message.id)
            return
        entry = self._pending.get(message.id)
        if entry is None or entry[0] is not wrapper:  # already decided: a race that is fine
            return
        del self._pending[message.id]
        request = entry[1]
        if message.why == "timeout" and request.late_s > 0 and self._tg is not None:
            timer = anyio.CancelScope()
            self._late[message.id] = (wrapper, request, timer)
            self._tg.start_soon(self._expire_late, message.id, request.late_s, timer)
            self._sink.resolved(message.id, "timeout", late_s=request.late_s)
            return
        wrapper.ids.discard(message.id)
        self._sink.resolved(message.id, message.why)

    async def _expire_late(self, request_id: str, late_s: float, timer: anyio.CancelScope) -> None:
        with timer:
            await anyio.sleep(late_s)
            self._forget_late(request_id)

    def _forget_late(self, request_id: str) -> None:
        late = self._late.pop(request_id, None)
        if late is not None:
            late[0].ids.discard(request_id)
            late[2].cancel()
            self._sink.gone(request_id)

    def _drop(self, wrapper: _Wrapper) -> None:
        for request_id in sorted(wrapper.ids):
            if request_id in self._late:
                self._forget_late(request_id)
                continue
            self._pending.pop(request_id, None)
            self._sink.resolved(request_id, "withdrawn")
        wrapper.ids.clear()
        wrapper.always.clear()
