"""Channel 4, opt-in (`mcpshield run --tty`): asking on the wrapper's controlling terminal.

For line-mode clients started from a terminal: the client owns stdin and stdout, but /dev/tty
still reaches the person who started it. One call is shown at a time, whole (as the approver UI
shows it: controls and invisible or bidi characters made visible); keys `o` once, `s` session,
`d` deny. Input typed before a prompt is discarded, so a stray key cannot approve an unseen
call. When /dev/tty cannot be used, the wrapper says so once on stderr and the call is refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, Literal

from mcpshield.approval.client import Outcome
from mcpshield.approval.protocol import Hello, Request
from mcpshield.approval.render import detail_lines

TTY_PATH: Final = "/dev/tty"
#: Bytes read per wakeup: keys arrive one or a few at a time; the rest is discarded.
READ_BYTES: Final = 64
_KEYS: Final[dict[str, Literal["once", "session", "deny"]]] = {"o": "once", "s": "session", "d": "deny"}
_SAID: Final = {
    "once": "approved once",
    "session": "approved for this session",
    "deny": "denied",
    "timeout": "timed out",
    "cancelled": "withdrawn (cancelled, or decided elsewhere)",
}


@dataclass(eq=False)
class _Ask:
    request: Request
    hello: Hello
    on_outcome: Callable[[Outcome], None]


class TtyChannel:
    """The prompts on /dev/tty, opened on the first call and kept; runs on the event loop."""

    def __init__(self, report: Callable[[str], None], path: str = TTY_PATH) -> None:
        self._report = report
        self._path = path
        self._fd: int | None = None
        self._broken: str | None = None
        self._saved: list[Any] | None = None
        self._uid: int | None = None
        self._queue: deque[_Ask] = deque()
        self._shown: _Ask | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def ask(self, request: Request, hello: Hello, on_outcome: Callable[[Outcome], None]) -> bool:
        """Queues the call for the terminal; False (said once on stderr) when it cannot be used.
        `on_outcome` is called at most once, with once, session or deny; a call withdrawn first
        gets nothing."""
        if not self._open():
            return False
        self._queue.append(_Ask(request, hello, on_outcome))
        if self._shown is None:
            self._next()
        return True

    def withdraw(self, request_id: str, why: str) -> None:
        """Stops asking about a call (it timed out, was cancelled, or another channel decided)."""
        shown = self._shown
        if shown is not None and shown.request.id == request_id:
            self._settle(_SAID.get(why, why))
            self._next()
            return
        for item in list(self._queue):
            if item.request.id == request_id:
                self._queue.remove(item)

    def close(self) -> None:
        """Gives the terminal back as it was found."""
        self._queue.clear()
        if self._shown is not None:
            self._settle("withdrawn (mcpshield is stopping)")
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None

    # -- the terminal ---------------------------------------------------------------------

    def _open(self) -> bool:
        if self._fd is not None:
            return True
        if self._broken is not None:
            return False
        try:
            import termios

            fd = os.open(self._path, os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
        except (ImportError, OSError) as exc:
            why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            return self._unusable(f"cannot open {self._path} ({why})")
        try:
            if os.tcgetpgrp(fd) != os.getpgrp():
                os.close(fd)
                return self._unusable(
                    f"{self._path} is in use by another process group (mcpshield runs in the background)"
                )
            termios.tcgetattr(fd)  # a terminal at all
            self._uid = os.fstat(fd).st_uid
        except (OSError, termios.error) as exc:
            os.close(fd)
            return self._unusable(f"{self._path} is not a usable terminal ({exc})")
        self._fd = fd
        self._loop = asyncio.get_running_loop()
        return True

    def _unusable(self, why: str) -> bool:
        self._broken = why
        self._report(f"--tty: {why}; calls that need approval and reach no other channel are refused")
        return False

    def _next(self) -> None:
        """Shows the next queued call, if any."""
        if self._shown is not None or not self._queue or self._fd is None:
            return
        import termios

        item = self._shown = self._queue.popleft()
        fd = self._fd
        try:
            self._saved = termios.tcgetattr(fd)  # as the client left it now: given back after the key
            raw = termios.tcgetattr(fd)
            raw[3] &= ~(termios.ICANON | termios.ECHO)  # one key decides; nothing is echoed
            raw[6][termios.VMIN], raw[6][termios.VTIME] = 1, 0
            termios.tcsetattr(fd, termios.TCSANOW, raw)
            termios.tcflush(fd, termios.TCIFLUSH)  # typeahead must not answer a call not yet shown
            assert self._loop is not None
            self._loop.add_reader(fd, self._on_key)
            self._write(self._prompt(item))
        except (OSError, termios.error) as exc:
            self._fail(f"{self._path} failed ({exc})")

    def _prompt(self, item: _Ask) -> str:
        lines = ["", "── mcpshield: a tool call waits for your approval ──", *detail_lines(item.request, item.hello)]
        keys = "o: approve once   s: approve for this session   d: deny"
        lines.append(f"{keys}   (waits up to {item.request.timeout_s:g} s) > ")
        return "\n".join(lines)

    def _on_key(self) -> None:
        assert self._fd is not None
        try:
            data = os.read(self._fd, READ_BYTES)
        except BlockingIOError:
            return
        except OSError as exc:
            self._fail(f"reading {self._path} failed ({exc.strerror or exc})")
            return
        if not data:
            self._fail(f"{self._path} was closed")
            return
        decision = next((_KEYS[key] for key in plain_keys(data) if key in _KEYS), None)
        if decision is not None and self._shown is not None:
            item = self._shown
            self._settle(_SAID[decision])
            item.on_outcome(Outcome(decision, None, self._uid, channel="tty"))
            self._next()

    def _settle(self, said: str) -> None:
        """Ends the prompt shown: the terminal's own mode back, and what became of the call."""
        self._shown = None
        fd = self._fd
        if fd is None:
            return
        import termios

        with contextlib.suppress(OSError, ValueError):
            assert self._loop is not None
            self._loop.remove_reader(fd)
        with contextlib.suppress(OSError, termios.error):
            if self._saved is not None:
                termios.tcsetattr(fd, termios.TCSANOW, self._saved)
            self._write(f"{said}\n")

    def _fail(self, why: str) -> None:
        """The terminal went away: every call it held is refused through its channel's outcome."""
        waiting = ([self._shown] if self._shown is not None else []) + list(self._queue)
        self._queue.clear()
        self._settle("withdrawn")
        self.close()
        self._broken = why
        self._report(f"--tty: {why}; calls waiting there are refused")
        for item in waiting:
            item.on_outcome(Outcome("unavailable", f"the terminal could not be used: {why}"))

    def _write(self, text: str) -> None:
        """Blocking, as writes to stderr on a terminal are: a prompt is a few KiB."""
        assert self._fd is not None
        data = text.replace("\n", "\r\n").encode("utf-8", "replace")
        while data:
            written = os.write(self._fd, data)
            data = data[written:]


def plain_keys(data: bytes) -> str:
    """The keys typed, without escape sequences: F1 is ESC O P, an arrow ESC [ D, Alt-o ESC o,
    and none of them may pass for the letter inside it."""
    keys: list[str] = []
    text = data.decode("ascii", "replace")
    i = 0
    while i < len(text):
        if text[i] != "\x1b":
            keys.append(text[i])
            i += 1
            continue
        i += 1  # ESC, then: [ parameters final (CSI), O and one key (SS3), or one key (Alt)
        if i < len(text) and text[i] == "[":
            i += 1
            while i < len(text) and not "\x40" <= text[i] <= "\x7e":
                i += 1
        elif i < len(text) and text[i] == "O":
            i += 1
        i += 1
    return "".join(keys)
