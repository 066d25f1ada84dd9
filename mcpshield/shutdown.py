"""Ending a session in order: stop reading the client, close the server's stdin, wait, SIGTERM the
server's process group, wait, SIGKILL; each step bounded. A second signal kills at once."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable
from typing import Final

import anyio
from anyio.abc import TaskGroup

from mcpshield.supervisor import Child

#: After the client hangs up and the server's stdin is closed, how long the server may take
#: to exit on its own before SIGTERM (clients allow about 2 s for the whole shutdown).
STDIN_CLOSE_GRACE_S: Final = 1.0
#: After SIGTERM, how long before SIGKILL.
TERM_GRACE_S: Final = 1.0

_SIGNALS: Final = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


class Shutdown:
    """Watches the server's exit and mcpshield's signals, and escalates once asked to stop."""

    def __init__(self, child: Child, stop_input: Callable[[], None]) -> None:
        self._child = child
        self._stop_input = stop_input  # stops reading the client, closes the server's stdin
        self._signals = 0
        #: True once the session is ending on mcpshield's side (client gone, or a signal).
        self.started = False
        #: What ended the session (for the audit log): the first reason given, or the server's exit.
        self.why = "the server exited"
        self.child_gone = asyncio.Event()

    def watch(self, loop: asyncio.AbstractEventLoop, tg: TaskGroup) -> None:
        """Sets child_gone when the server exits; takes SIGTERM, SIGINT and SIGHUP over."""
        self._tg = tg
        exit_fd = self._child.exit_fd

        def exited() -> None:
            if self._child.returncode is not None:
                loop.remove_reader(exit_fd)
                self.child_gone.set()

        loop.add_reader(exit_fd, exited)
        exited()
        for sig in _SIGNALS:
            loop.add_signal_handler(sig, self._on_signal)

    def unwatch(self, loop: asyncio.AbstractEventLoop) -> None:
        for sig in _SIGNALS:
            loop.remove_signal_handler(sig)

    def begin(self, why: str) -> None:
        """Starts ending the session (once; later calls are no-ops)."""
        if self.started:
            return
        self.started = True
        self.why = why
        self._stop_input()
        self._tg.start_soon(self._escalate)

    def _on_signal(self) -> None:
        self._signals += 1
        if self._signals == 1:
            self.begin("mcpshield was asked to stop")
        else:
            self._child.signal_group(signal.SIGKILL)

    async def _escalate(self) -> None:
        with anyio.move_on_after(STDIN_CLOSE_GRACE_S):
            await self.child_gone.wait()
            return
        self._child.signal_group(signal.SIGTERM)
        with anyio.move_on_after(TERM_GRACE_S):
            await self.child_gone.wait()
            return
        self._child.signal_group(signal.SIGKILL)
