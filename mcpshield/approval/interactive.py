"""`mcpshield approvals` in a terminal: the approver's interactive front end (curses, standard
library only). A list of pending requests, the selected one in full below it, one key per decision.
"""

from __future__ import annotations

import asyncio
import contextlib
import curses
import locale
import os
import signal
import time
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

import anyio

from mcpshield.approval.notify import Notifier
from mcpshield.approval.protocol import Choice, Hello, Request
from mcpshield.approval.render import detail_lines
from mcpshield.approval.server import ApproverServer
from mcpshield.audit.show import visible

#: Below this the layout cannot show a request usefully; a short message is shown instead.
MIN_ROWS: Final = 12
MIN_COLS: Final = 50
#: How often the ages in the list are redrawn.
TICK_S: Final = 1.0
#: A deny reason is one line for a person to type; longer input is ignored.
MAX_REASON_CHARS: Final = 500
#: Escape ends the reason prompt without a long wait for a following sequence (milliseconds).
ESC_DELAY_MS: Final = "25"
_KEYS: Final = "o once  s session  a always  d deny  j/k select  PgUp/PgDn scroll  q quit"
_SAID: Final = {
    "once": "approved once",
    "session": "approved for this session",
    "always": "approved always (the wrapper writes the rule into the profile)",
    "deny": "denied",
    "timeout": "timed out (the wrapper stopped waiting)",
    "cancelled": "cancelled by the client, or decided in it",
    "withdrawn": "withdrawn (its wrapper went away)",
}
_ENTER: Final = ("\n", "\r", curses.KEY_ENTER)
_BACKSPACE: Final = ("\x7f", "\b", curses.KEY_BACKSPACE)

Mode = Literal["list", "confirm", "reason"]


@dataclass
class _Waiting:
    request: Request
    hello: Hello
    since: float
    #: Set once it timed out: until when a late decision is still taken (monotonic).
    late_until: float | None = None


def _cells(char: str) -> int:
    return 2 if unicodedata.east_asian_width(char) in ("W", "F") else 1


def fit(text: str, width: int) -> str:
    """`text` cut to `width` terminal cells, ending in `…` when cut (list columns only)."""
    used, out = 0, list[str]()
    for char in text:
        used += _cells(char)
        if used > width:
            return "".join(out[:-1]) + "…" if out else ""
        out.append(char)
    return "".join(out)


def wrap(text: str, width: int) -> list[str]:
    """`text` in lines of at most `width` cells: nothing is dropped."""
    lines, line, used = list[str](), list[str](), 0
    for char in text:
        if used + _cells(char) > width and line:
            lines.append("".join(line))
            line, used = [], 0
        line.append(char)
        used += _cells(char)
    lines.append("".join(line))
    return lines


def detail(item: _Waiting) -> list[str]:
    """Everything about one request, every untrusted character made visible; arguments whole."""
    lines = detail_lines(item.request, item.hello)
    if item.late_until is not None:
        left = max(int(item.late_until - time.monotonic()), 0)
        lines.insert(0, f"TIMED OUT: the call was refused. Approving now (for {left} s more) lets the same call run")
        lines.insert(1, "when the model makes it again; the stale call itself never runs.")
    return lines


def confirmation(request: Request) -> list[str]:
    """What approving always writes, and where: shown whole before the person says y."""
    file = request.always_file or "?"
    if os.path.exists(file):
        what = [f"APPROVE ALWAYS? This appends to {visible(file)}:"]
    else:  # the wrapper runs a shipped profile: its rules go into the user's own, made to extend it
        name = os.path.splitext(os.path.basename(file))[0]
        what = [
            f"APPROVE ALWAYS? This creates {visible(file)}",
            f"(extending the shipped profile {visible(name)!r}) with:",
        ]
    return [
        *what,
        "  [[approval.always]]",
        f'  tool = "{visible(request.tool)}"',
        f'  args_sha256 = "{request.args_sha256}"',
        "so this call (this tool, exactly these arguments) runs without asking from now on, in this",
        "session and the next ones of that profile; other arguments are still asked about. y: write it, n: back",
        "",
    ]


def _age(seconds: float) -> str:
    whole = int(seconds)
    return f"{whole}s" if whole < 60 else f"{whole // 60}m{whole % 60:02d}s"


class Console:
    """The Sink that keeps the waiting requests and draws them; keys come in through `key`."""

    def __init__(self, screen: curses.window, where: Path, notifier: Notifier | None = None) -> None:
        self.screen = screen
        self.server: ApproverServer | None = None
        self.notifier = notifier
        self.done = anyio.Event()
        self._where = where
        self._waiting: dict[str, _Waiting] = {}
        #: The request the keys decide, by id: never a list position, which shifts when a request
        #: above it goes away. None: nothing selected (decision keys do nothing until j/k).
        self._selected_id: str | None = None
        #: The request this person just decided: when it goes, the selection moves to its neighbour.
        self._decided_here: str | None = None
        self._scroll = 0
        self._status = ""
        self._mode: Mode = "list"
        self._target: str | None = None
        self._reason = ""

    # The Sink.

    def pending(self, request: Request, hello: Hello) -> None:
        self._waiting[request.id] = _Waiting(request, hello, time.monotonic())
        if len(self._waiting) == 1:  # the only one, shown as it arrives
            self._selected_id = request.id
        with contextlib.suppress(curses.error):
            curses.beep()
        if self.notifier is not None:
            self.notifier.new_request(request, hello)
        self.draw()

    def resolved(self, request_id: str, outcome: str, *, late_s: float = 0.0, late: bool = False) -> None:
        item = self._waiting.get(request_id)
        if item is None:
            return
        said = _SAID.get(outcome, outcome)
        if late_s > 0:  # it stays, decidable late
            item.late_until = time.monotonic() + late_s
            said = f"{said}; still decidable for {late_s:g} s: approving lets the model's retry run"
        else:
            self._forget(request_id)
            if late:
                said = f"{said}, late: the same call runs when the model makes it again"
        self._status = f"{visible(item.request.tool)} ({visible(item.hello.server)}): {said}{self._unselected()}"
        self.draw()

    def gone(self, request_id: str) -> None:
        item = self._waiting.get(request_id)
        if item is not None:
            self._forget(request_id)
            self._status = (
                f"{visible(item.request.tool)}: no longer decidable (its late window ended){self._unselected()}"
            )
            self.draw()

    def remembered(self, request_id: str, file: str | None, error: str | None) -> None:
        said = f"the rule is in {file}" if error is None else f"for this session only: {error}"
        self._status = visible(f"approved always: {said}")
        self.draw()

    def _forget(self, request_id: str) -> None:
        ids = list(self._waiting)
        position = ids.index(request_id) if request_id in ids else 0
        self._waiting.pop(request_id, None)
        if request_id == self._target:
            self._mode, self._target = "list", None
        if request_id == self._selected_id:
            # Decided here: on to the next one, as the person expects. Gone by itself (timed out,
            # cancelled, decided elsewhere): nothing, so that a key meant for it decides nothing else.
            rest = list(self._waiting)
            mine = request_id == self._decided_here and rest
            self._selected_id = rest[min(position, len(rest) - 1)] if mine else None
            self._scroll = 0

    def report(self, text: str) -> None:
        self._status = visible(text)
        self.draw()

    # Keys.

    def key(self, key: str | int) -> None:
        if self._mode == "confirm":
            self._confirm(key)
        elif self._mode == "reason":
            self._type(key)
        elif key == "q":
            self.done.set()
        elif key in ("j", curses.KEY_DOWN, "k", curses.KEY_UP):
            self._move(1 if key in ("j", curses.KEY_DOWN) else -1)
        elif key in (curses.KEY_NPAGE, " ", curses.KEY_PPAGE):
            page = max(self.screen.getmaxyx()[0] // 2, 1)
            self._scroll = max(0, self._scroll + (-page if key == curses.KEY_PPAGE else page))
        elif (chosen := self._chosen()) is not None and key in ("o", "s", "a", "d"):
            if key == "o":
                self._decide(chosen, "once", None)
            elif key == "s":
                self._decide(chosen, "session", None)
            elif key == "a" and self._waiting[chosen].request.always_file is None:
                self._status = "approve always is not available: this session's profile file cannot take a rule"
            else:
                self._mode, self._target, self._reason = ("confirm" if key == "a" else "reason"), chosen, ""
                self._scroll = 0
        self.draw()

    def _confirm(self, key: str | int) -> None:
        target, self._mode, self._target = self._target, "list", None
        if key in ("y", "Y") and target is not None:
            self._decide(target, "always", None)
        else:
            self._status = "not approved: nothing was decided"

    def _type(self, key: str | int) -> None:
        if key in _ENTER and self._target is not None:
            target, self._mode, self._target = self._target, "list", None
            self._decide(target, "deny", self._reason.strip() or None)
        elif key == "\x1b":
            self._mode, self._target = "list", None
            self._status = "not denied: nothing was decided"
        elif key in _BACKSPACE:
            self._reason = self._reason[:-1]
        elif isinstance(key, str) and key.isprintable() and len(self._reason) < MAX_REASON_CHARS:
            self._reason += key

    def _unselected(self) -> str:
        """Said when the selected request went away by itself and others wait."""
        return " - nothing is selected now: j/k to choose" if self._selected_id is None and self._waiting else ""

    def _move(self, step: int) -> None:
        ids = list(self._waiting)
        if not ids:
            return
        now = ids.index(self._selected_id) if self._selected_id in ids else (-1 if step > 0 else len(ids))
        self._selected_id = ids[max(0, min(now + step, len(ids) - 1))]
        self._scroll = 0

    def _chosen(self) -> str | None:
        return self._selected_id if self._selected_id in self._waiting else None

    @property
    def _selected(self) -> int:
        """The selected request's row (-1: none)."""
        ids = list(self._waiting)
        return ids.index(self._selected_id) if self._selected_id in ids else -1

    def _decide(self, request_id: str, choice: Choice, reason: str | None) -> None:
        self._decided_here = request_id
        if self.server is not None and not self.server.decide(request_id, choice, reason):
            self._status = "that request is no longer waiting"

    # Drawing.

    def draw(self) -> None:
        """Redraws the whole screen; curses sends only what changed."""
        screen = self.screen
        screen.erase()
        rows, cols = screen.getmaxyx()
        if rows < MIN_ROWS or cols < MIN_COLS:
            self._put(0, f"terminal too small: need {MIN_COLS}x{MIN_ROWS}", cols)
        else:
            self._draw(rows, cols)
        with contextlib.suppress(curses.error):
            screen.refresh()

    def _draw(self, rows: int, cols: int) -> None:
        items = list(self._waiting.values())
        self._put(0, f"mcpshield approvals: {len(items)} waiting; listening on {visible(str(self._where))}", cols)
        self._put(1, f"  {'age':>6}  {'tool':<24}  {'client':<14}  server", cols, curses.A_BOLD)
        height = max(3, (rows - 6) // 3)
        selected = self._selected
        first = max(0, selected - height + 1)
        now = time.monotonic()
        for row, index in enumerate(range(first, min(first + height, len(items))), start=2):
            item = items[index]
            tool, client = fit(visible(item.request.tool), 24), fit(visible(item.hello.client or "?"), 14)
            age = "late" if item.late_until is not None else _age(now - item.since)
            line = f"{'>' if index == selected else ' '} {age:>6}  {tool:<24}  {client:<14}  "
            line = fit(line + visible(item.hello.server), cols - 1)
            self._put(row, line, cols, curses.A_REVERSE if index == selected else curses.A_NORMAL)
        if not items:
            self._put(2, "  (nothing waiting)", cols)
        top, bottom = 2 + height, rows - 2
        lines = detail(items[selected]) if selected >= 0 else []
        if self._mode == "confirm" and self._target in self._waiting:  # the target's own details
            target = self._waiting[self._target]
            lines = confirmation(target.request) + detail(target)
        body = [part for line in lines for part in wrap(line, cols - 1)]
        self._scroll = min(self._scroll, max(len(body) - (bottom - top - 1), 0))
        shown = body[self._scroll : self._scroll + bottom - top - 1]
        where = f" lines {self._scroll + 1}-{self._scroll + len(shown)} of {len(body)} " if body else " "
        more = "(PgUp/PgDn to scroll) " if len(shown) < len(body) else ""
        self._put(top, (f"--{where}{more}" + "-" * cols)[: cols - 1], cols)
        for row, line in enumerate(shown, start=top + 1):
            self._put(row, line, cols)
        self._put(rows - 2, self._status, cols, curses.A_BOLD)
        self._put(rows - 1, self._prompt(), cols)

    def _prompt(self) -> str:
        if self._mode == "confirm":
            return "approve ALWAYS, writing the rule shown above? y/n"
        if self._mode == "reason":
            return f"deny; reason (optional), Enter to send, Esc to go back: {visible(self._reason)}"
        return _KEYS

    def _put(self, row: int, text: str, cols: int, attr: int = curses.A_NORMAL) -> None:
        with contextlib.suppress(curses.error):  # the bottom-right cell, or a resize under way
            self.screen.addstr(row, 0, fit(text, cols - 1), attr)

    def read_keys(self) -> None:
        """Called when stdin is readable: takes every key curses has, then redraws once."""
        while True:
            try:
                key = self.screen.get_wch()
            except curses.error:  # nothing more to read
                return
            if key == curses.KEY_RESIZE:  # queued by our own resizeterm: resizing again would loop
                self.draw()
            else:
                self.key(key)

    def resize(self) -> None:
        with contextlib.suppress(OSError, curses.error):
            size = os.get_terminal_size(1)
            curses.resizeterm(size.lines, size.columns)
        self.draw()


@contextlib.contextmanager
def _terminal() -> Iterator[curses.window]:
    locale.setlocale(locale.LC_ALL, "")
    os.environ.setdefault("ESCDELAY", ESC_DELAY_MS)
    screen = curses.initscr()
    try:
        curses.noecho()
        curses.cbreak()
        screen.keypad(True)
        screen.nodelay(True)
        with contextlib.suppress(curses.error):
            curses.curs_set(0)
        yield screen
    finally:
        screen.keypad(False)
        curses.nocbreak()
        curses.echo()
        curses.endwin()


def serve_interactive(*, notify: bool = True) -> int:
    """Runs the interactive approver until `q`, SIGINT or SIGTERM (exit 0); `notify`: a desktop
    notification per new request too (best effort)."""
    return anyio.run(_serve, notify, backend="asyncio")


async def _serve(notify: bool) -> int:
    from mcpshield.approval.location import approver_dir
    from mcpshield.approval.server import listen

    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGWINCH) as signals:
        listening = await listen(approver_dir())
        loop = asyncio.get_running_loop()
        try:
            with _terminal() as screen:
                console = Console(screen, listening.path)
                console.server = server = ApproverServer(console)
                console.resize()  # curses believes an inherited LINES/COLUMNS, often stale: ask the terminal
                async with anyio.create_task_group() as tg:
                    console.notifier = Notifier(tg, enabled=notify)
                    await tg.start(server.serve, listening.listener)
                    loop.add_reader(0, console.read_keys)
                    try:

                        async def on_signals() -> None:
                            async for signum in signals:
                                if signum == signal.SIGWINCH:
                                    console.resize()
                                else:
                                    console.done.set()

                        async def tick() -> None:
                            while True:
                                await anyio.sleep(TICK_S)
                                console.draw()

                        tg.start_soon(on_signals)
                        tg.start_soon(tick)
                        await console.done.wait()
                        tg.cancel_scope.cancel()
                    finally:
                        loop.remove_reader(0)
        finally:
            await listening.aclose()
    return 0
