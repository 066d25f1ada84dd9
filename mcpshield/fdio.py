"""Non-blocking reads and ordered writes on raw file descriptors, driven by the event loop.

The relay's transport boundary: pipes are read in large chunks straight from the fd and
written with one syscall per batch, without asyncio streams (their per-message cost is
most of a naive relay's overhead).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import stat
import threading
from collections.abc import Callable
from typing import Final

#: Bytes asked of the kernel per read: large enough that a 10 MB message takes few reads.
READ_CHUNK: Final = 256 * 1024
#: Buffered bytes at which a writer asks its source to pause, and resumes it below the low mark.
HIGH_WATER: Final = 4 * 1024 * 1024
LOW_WATER: Final = 1024 * 1024
#: Pipe capacity asked for the server's pipes (Linux caps unprivileged requests at 1 MiB).
PIPE_SIZE: Final = 1024 * 1024
_F_SETPIPE_SZ: Final = 1031


def enlarge_pipe(fd: int) -> None:
    """Asks for a bigger pipe buffer where the OS allows; fewer wake-ups for big messages."""
    with contextlib.suppress(OSError, AttributeError):
        import fcntl

        fcntl.fcntl(fd, _F_SETPIPE_SZ, PIPE_SIZE)


def set_nonblocking(fd: int) -> bool:
    """Makes fd non-blocking; returns its previous blocking state, to restore it later."""
    was_blocking = os.get_blocking(fd)
    os.set_blocking(fd, False)
    return was_blocking


def is_pollable(fd: int) -> bool:
    """Pipes, sockets and terminals can be polled; regular files and other devices (/dev/null)
    cannot (epoll refuses them)."""
    mode = os.fstat(fd).st_mode
    return stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode) or (stat.S_ISCHR(mode) and os.isatty(fd))


class FdReader:
    """Calls `on_data(chunk)` for each chunk read from fd and `on_eof()` once at the end."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        fd: int,
        on_data: Callable[[bytes], None],
        on_eof: Callable[[], None],
    ) -> None:
        self._loop = loop
        self._fd = fd
        self._on_data = on_data
        self._on_eof = on_eof
        self._reading = False
        self._done = False
        self._thread: threading.Thread | None = None
        self._thread_gate = threading.Event()
        # One reusable buffer: os.read would allocate (and, at this size, mmap) a new one per call.
        self._buf = bytearray(READ_CHUNK)
        self._view = memoryview(self._buf)

    def start(self) -> None:
        if is_pollable(self._fd):
            set_nonblocking(self._fd)
            self.resume()
        else:
            # A regular file (`mcpshield run < session.jsonl`): read it in a thread.
            self._thread_gate.set()
            self._thread = threading.Thread(target=self._read_blocking, daemon=True)
            self._thread.start()

    def pause(self) -> None:
        if self._thread is not None:
            self._thread_gate.clear()
        elif self._reading:
            self._loop.remove_reader(self._fd)
            self._reading = False

    def resume(self) -> None:
        if self._done:
            return
        if self._thread is not None:
            self._thread_gate.set()
        elif not self._reading:
            self._loop.add_reader(self._fd, self._readable)
            self._reading = True

    def stop(self) -> None:
        """Stops reading for good; `on_eof` is not called."""
        self.pause()
        self._done = True

    def _readable(self) -> None:
        try:
            size = os.readv(self._fd, (self._buf,))
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            size = 0
        data = self._view[:size].tobytes()
        if data:
            self._on_data(data)
        else:
            self.stop()
            self._on_eof()

    def _read_blocking(self) -> None:
        while True:
            self._thread_gate.wait()
            try:
                data = os.read(self._fd, READ_CHUNK)
            except OSError:
                data = b""
            with contextlib.suppress(RuntimeError):  # the loop closed under us: nothing to tell
                self._loop.call_soon_threadsafe(self._deliver, data)
            if not data:
                return

    def _deliver(self, data: bytes) -> None:
        if self._done:
            return
        if data:
            self._on_data(data)
        else:
            self._done = True
            self._on_eof()


class FdWriter:
    """Writes in order to fd without blocking the loop; what the fd cannot take is buffered.

    `on_pressure(True)` asks the producer to pause once the buffer passes HIGH_WATER, and
    `on_pressure(False)` resumes it below LOW_WATER. After a broken pipe, writes are dropped
    and `on_broken()` is called once.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        fd: int,
        on_pressure: Callable[[bool], None],
        on_broken: Callable[[], None],
        *,
        pollable: bool = True,
    ) -> None:
        self._loop = loop
        self._fd = fd
        self._on_pressure = on_pressure
        self._on_broken = on_broken
        self._pollable = pollable
        self._buf: collections.deque[memoryview] = collections.deque()
        self._size = 0
        self._pressed = False
        self._broken = False
        self._close_when_flushed = False
        self._closed = False
        self._flushed = asyncio.Event()
        self._flushed.set()
        if pollable:
            set_nonblocking(fd)

    @property
    def buffered(self) -> int:
        return self._size

    @property
    def broken(self) -> bool:
        return self._broken

    def write(self, data: bytes) -> None:
        if self._broken or self._closed or not data:
            return
        if self._buf:
            self._buf.append(memoryview(data))
            self._size += len(data)
        else:
            written = self._write_now(data)
            if written < len(data) and not self._broken:
                self._buf.append(memoryview(data)[written:])
                self._size += len(data) - written
                self._flushed.clear()
                self._loop.add_writer(self._fd, self._writable)
        if self._size > HIGH_WATER and not self._pressed:
            self._pressed = True
            self._on_pressure(True)

    def close(self) -> None:
        """Closes the fd once everything buffered is written (at once if nothing is)."""
        self._close_when_flushed = True
        if not self._buf:
            self._close_fd()

    async def flushed(self) -> None:
        """Waits until the buffer is empty (or the pipe broke)."""
        await self._flushed.wait()

    def _write_now(self, data: bytes | memoryview) -> int:
        if not self._pollable:
            with contextlib.suppress(OSError):
                os.write(self._fd, data)
            return len(data)
        try:
            return os.write(self._fd, data)
        except (BlockingIOError, InterruptedError):
            return 0
        except OSError:  # EPIPE and friends: the reader is gone
            self._break()
            return 0

    def _writable(self) -> None:
        while self._buf:
            head = self._buf[0]
            written = self._write_now(head)
            if self._broken:
                return
            self._size -= written
            if written < len(head):
                self._buf[0] = head[written:]
                break
            self._buf.popleft()
        if self._pressed and self._size < LOW_WATER:
            self._pressed = False
            self._on_pressure(False)
        if not self._buf:
            self._loop.remove_writer(self._fd)
            self._flushed.set()
            if self._close_when_flushed:
                self._close_fd()

    def _break(self) -> None:
        self._broken = True
        self._buf.clear()
        self._size = 0
        with contextlib.suppress(Exception):
            self._loop.remove_writer(self._fd)
        self._flushed.set()
        self._on_broken()

    def _close_fd(self) -> None:
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(Exception):
            self._loop.remove_writer(self._fd)
        with contextlib.suppress(OSError):
            os.close(self._fd)
        self._flushed.set()
