"""A desktop notification when a request reaches the interactive approver: best effort, beside
the terminal bell. `notify-send` on Linux (when installed and a desktop session is there to show
it), `osascript` on macOS. Fire and forget: one at a time, each bounded, never awaited by the UI.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from collections.abc import Mapping
from typing import Final

import anyio
import anyio.abc

from mcpshield.approval.protocol import Hello, Request
from mcpshield.audit.show import visible

#: A notifier that has not exited by then is killed: a stuck notification daemon must not
#: leave processes behind.
NOTIFY_TIMEOUT_S: Final = 5.0
#: Characters of the notification's body: a glance, not the request (the terminal shows it whole).
MAX_BODY_CHARS: Final = 200
TITLE: Final = "mcpshield: a call waits for your approval"
#: Any of these says a desktop session can show a notification on Linux.
_SESSION_VARIABLES: Final = ("DBUS_SESSION_BUS_ADDRESS", "DISPLAY", "WAYLAND_DISPLAY")


def notifier_argv(title: str, body: str, env: Mapping[str, str] | None = None) -> list[str] | None:
    """The command that shows a notification here, or None when none can."""
    env = os.environ if env is None else env
    if sys.platform == "darwin":
        osascript = shutil.which("osascript", path=env.get("PATH"))
        if osascript is None:
            return None
        script = ["on run argv", "display notification (item 2 of argv) with title (item 1 of argv)", "end run"]
        return [osascript, *(part for line in script for part in ("-e", line)), title, body]
    notify_send = shutil.which("notify-send", path=env.get("PATH"))
    if notify_send is None or not any(env.get(name) for name in _SESSION_VARIABLES):
        return None
    # `--` ends the options: a tool name cannot pass for one.
    return [notify_send, "--app-name=mcpshield", "--", title, body]


def body(request: Request, hello: Hello) -> str:
    """Who asks for what, escaped for a terminal and for notification markup; never arguments."""
    client = hello.client or "a client"
    text = f"{visible(request.tool)} from {visible(client)} ({visible(hello.server)})"
    if len(text) > MAX_BODY_CHARS:
        text = text[: MAX_BODY_CHARS - 1] + "…"
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


class Notifier:
    """Shows a notification per new request in the background of `task_group`."""

    def __init__(self, task_group: anyio.abc.TaskGroup, *, enabled: bool = True) -> None:
        self._tg = task_group
        self._enabled = enabled
        self._running = False

    def new_request(self, request: Request, hello: Hello) -> None:
        if not self._enabled or self._running:  # one at a time: a burst is one notification
            return
        argv = notifier_argv(TITLE, body(request, hello))
        if argv is None:
            return
        self._running = True
        self._tg.start_soon(self._show, argv)

    async def _show(self, argv: list[str]) -> None:
        try:
            process = await anyio.open_process(
                argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
        except OSError:
            self._running = False
            return  # best effort: the bell still rang
        try:
            with anyio.move_on_after(NOTIFY_TIMEOUT_S):
                await process.wait()
        finally:
            with anyio.CancelScope(shield=True):
                if process.returncode is None:
                    with contextlib.suppress(ProcessLookupError):
                        process.kill()
                await process.aclose()
            self._running = False
