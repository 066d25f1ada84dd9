"""The session's audit writer: the relay records events, a process of its own writes them.

Recording an event is a dict and a list append on the relay's hot path. Once per chunk of
messages the relay hands what it recorded over: one JSON array, one line, one write into a pipe. A process
forked at the start (so on the other core, and with nothing to import) reads the pipe, seals
each event (see `sealer`), appends the lines to the session's file, and fsyncs on a bounded
interval and at the end. The pipe outlives mcpshield: if mcpshield is killed, the writer still
writes everything handed over before it exits. A write that fails is reported back on a status
pipe; the relay then stops calls, unless the profile chose to continue.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import select
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import orjson

from mcpshield.audit.location import create_session_file, session_path
from mcpshield.audit.sealer import Sealer
from mcpshield.errors import AuditError

if TYPE_CHECKING:
    from mcpshield.policy.redact import Redactor

#: Written lines reach the disk at least this often (and at the session's end).
FSYNC_INTERVAL_S: Final = 1.0
#: After taking in a batch, the writer lets the next gather this long: it then wakes at most
#: this often while events flow (and not at all while none do), instead of once per chunk the
#: relay hands over, which would cost every call a context switch. The events wait in the pipe,
#: where they survive mcpshield being killed.
BATCH_S: Final = 0.02
#: How long closing waits for the writer to write what is left and exit.
CLOSE_TIMEOUT_S: Final = 5.0
#: The event pipe's size where the OS lets it be set (Linux): a burst of events fits without
#: the relay waiting on the writer.
PIPE_BYTES: Final = 1 << 20
#: The most the writer reads from the pipe at once.
READ_BYTES: Final = 1 << 20
_F_SETPIPE_SZ: Final = 1031  # fcntl.F_SETPIPE_SZ, Linux only


class AuditLog:
    """One session's file, and the writer process that owns it once started."""

    def __init__(self, root: Path, redactor: Redactor | None = None, max_recorded_bytes: int = 4096) -> None:
        self.session = secrets.token_hex(8)
        self.path = session_path(root, self.session, time.time())
        self._fd = create_session_file(self.path)
        self._sealer = Sealer(self.session, redactor, max_recorded_bytes)
        self._pending: list[dict[str, Any]] = []  # recorded, not yet handed over
        self._events_w = -1
        self._status_r = -1
        self._pid = 0
        #: Why writing failed (the first failure), or None while the log is whole.
        self.failed: str | None = None

    def watch(self, loop: asyncio.AbstractEventLoop) -> None:
        """Has `loop` take in the writer's reports as they come, so `failed` is current."""
        if self._status_r >= 0:
            loop.add_reader(self._status_r, self._on_status, loop)

    def unwatch(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._status_r >= 0:
            loop.remove_reader(self._status_r)

    def _on_status(self, loop: asyncio.AbstractEventLoop) -> None:
        try:
            report = os.read(self._status_r, 4096)
        except BlockingIOError:
            return
        except OSError as exc:
            report, self.failed = b"", self.failed or f"the audit writer cannot be heard ({exc.strerror})"
        if report:
            self.failed = self.failed or report.decode("utf-8", "replace").strip()
        else:  # the writer exited before the session ended: nothing more will be written
            loop.remove_reader(self._status_r)
            self.failed = self.failed or "the audit writer stopped"

    def start(self, fields: dict[str, Any]) -> None:
        """Writes the session_start event here and now, so a log that cannot be written is known
        before the server starts; then forks the writer."""
        fields.update(event="session_start", ts=time.time())
        try:
            _write_all(self._fd, self._sealer.seal(fields))
        except OSError as exc:
            os.close(self._fd)
            raise AuditError(
                f"cannot write the audit log {self.path}: {exc.strerror or exc}",
                'free space or fix permissions there; a profile may set [audit] on_log_failure = "continue"',
            ) from None
        events_r, self._events_w = os.pipe()
        self._status_r, status_w = os.pipe()
        with contextlib.suppress(OSError):
            import fcntl

            fcntl.fcntl(self._events_w, _F_SETPIPE_SZ, PIPE_BYTES)
        sys.stdout.flush()
        sys.stderr.flush()
        self._pid = os.fork()
        if self._pid == 0:  # the writer: it keeps the file and both pipes' far ends, nothing else
            code = 1
            try:
                os.setsid()  # outlives a kill of mcpshield's process group, to write what it was given
                _close_all_but({events_r, status_w, self._fd})
                code = _serve(events_r, status_w, self._fd, self._sealer)
            finally:
                os._exit(code)
        os.close(events_r)
        os.close(status_w)
        os.close(self._fd)
        os.set_blocking(self._status_r, False)

    def record(self, kind: str, fields: dict[str, Any]) -> None:
        """Keeps an event for the next hand-over; `fields` becomes the event (do not reuse it)."""
        fields["event"] = kind
        fields["ts"] = time.time()
        self._pending.append(fields)

    def hand_over(self) -> None:
        """Passes the recorded events to the writer (once per chunk, by the relay)."""
        pending = self._pending
        if not pending or self._events_w < 0:
            return
        self._pending = []
        try:
            _write_all(self._events_w, _batch(pending))
        except OSError as exc:  # the writer is gone
            self.read_status()
            self.failed = self.failed or f"the audit writer stopped ({exc.strerror or exc})"

    def read_status(self) -> None:
        """Takes in what the writer reported (a failure), without waiting."""
        with contextlib.suppress(OSError):
            report = os.read(self._status_r, 4096)
            if report and self.failed is None:
                self.failed = report.decode("utf-8", "replace").strip()

    def close(self, fields: dict[str, Any]) -> None:
        """Records session_end, hands everything over, and waits (bounded) for the writer to
        write it, fsync and exit."""
        self.record("session_end", fields)
        self.hand_over()
        if self._events_w >= 0:
            os.close(self._events_w)
            self._events_w = -1
        if self._pid:
            status = _wait(self._pid, CLOSE_TIMEOUT_S)
            if status is not None:  # it exited: its report, if any, is all there (else never wait on it)
                os.set_blocking(self._status_r, True)
            self.read_status()
            if status is None:
                self.failed = self.failed or f"the audit writer did not finish within {CLOSE_TIMEOUT_S:g} s"
            elif status != 0:
                self.failed = self.failed or "the audit writer failed"
            self._pid = 0
        if self._status_r >= 0:
            os.close(self._status_r)
            self._status_r = -1


def _batch(events: list[dict[str, Any]]) -> bytes:
    """One hand-over: the events as one JSON array on one line (one serialisation per chunk)."""
    try:
        return orjson.dumps(events, option=orjson.OPT_APPEND_NEWLINE)
    except TypeError:  # integers beyond 64 bits in recorded arguments
        return json.dumps(events, separators=(",", ":"), default=str).encode() + b"\n"


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _wait(pid: int, timeout: float) -> int | None:
    """The writer's exit code, or None if it has not exited within `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.005)


def _close_all_but(keep: set[int]) -> None:
    top = max(keep)
    for fd in range(3, top):
        if fd not in keep:
            with contextlib.suppress(OSError):
                os.close(fd)
    os.closerange(top + 1, 1 << 16)
    for fd in (0, 1, 2):  # the client's pipes are not the writer's to hold open
        with contextlib.suppress(OSError):
            os.close(fd)


# -- the writer process ----------------------------------------------------------------


def _serve(events: int, status: int, fd: int, sealer: Sealer) -> int:
    """Seals and appends every event line read from `events` until its end; returns the exit code."""
    os.set_blocking(events, False)
    partial = b""
    dirty = False
    last_sync = time.monotonic()
    failed = False
    while True:
        ready, _, _ = select.select([events], [], [], FSYNC_INTERVAL_S if dirty else None)
        if ready:
            data, ended = _drain(events)
            lines = (partial + data).split(b"\n")
            partial = lines.pop()
            if lines and not failed:
                failed = _append(fd, sealer, lines, status)
                dirty = not failed
            if ended:
                break
            if len(data) < PIPE_BYTES // 2:  # a pipe that filled this much means the relay waits: no nap
                time.sleep(BATCH_S)
        if dirty and time.monotonic() - last_sync >= FSYNC_INTERVAL_S:
            failed = _sync(fd, status)
            dirty, last_sync = False, time.monotonic()
    if not failed and dirty:
        failed = _sync(fd, status)
    return 1 if failed else 0


def _drain(events: int) -> tuple[bytes, bool]:
    """Everything the pipe holds now, and whether its writing end is closed."""
    chunks: list[bytes] = []
    while True:
        try:
            data = os.read(events, READ_BYTES)
        except BlockingIOError:
            return b"".join(chunks), False
        if not data:
            return b"".join(chunks), True
        chunks.append(data)


def _append(fd: int, sealer: Sealer, lines: list[bytes], status: int) -> bool:
    """Seals and writes the lines; True (and the reason reported) if that failed."""
    try:
        _write_all(fd, b"".join([sealer.seal(event) for line in lines for event in orjson.loads(line)]))
    except OSError as exc:
        return _report(status, exc.strerror or str(exc))
    except Exception as exc:  # an event that cannot be sealed must stop calls, not pass unlogged
        return _report(status, f"an event could not be written ({type(exc).__name__})")
    return False


def _sync(fd: int, status: int) -> bool:
    try:
        os.fsync(fd)
    except OSError as exc:
        return _report(status, exc.strerror or str(exc))
    return False


def _report(status: int, why: str) -> bool:
    with contextlib.suppress(OSError):
        os.write(status, why.encode("utf-8", "replace") + b"\n")
    return True
