"""Asks a server which tools it has, for `profile init`: initialize, tools/list (every page), shut down.

The server is started like `run` starts it (minimal environment, its own process group, the reaper
cleaning up its whole tree), and the whole conversation is bounded by one deadline.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import time
from dataclasses import dataclass
from typing import Any, Final

from mcpshield.errors import ProfileError
from mcpshield.supervisor import Child, LaunchSpec, describe_exit

#: Bound on the whole conversation: npx may download the package first, which takes seconds.
PROBE_TIMEOUT_S: Final = 30.0
#: After stdin is closed, how long the server gets to exit before SIGTERM (and again before SIGKILL).
SHUTDOWN_GRACE_S: Final = 1.0
#: Longest answer line accepted; a big tools/list (100 tools with schemas) is well under 1 MiB.
MAX_LINE_BYTES: Final = 16 << 20
#: A server whose nextCursor never ends is looping.
MAX_PAGES: Final = 100
#: How much of the server's stderr is kept to explain a failure.
STDERR_TAIL_BYTES: Final = 4096
PROTOCOL_VERSION: Final = "2025-11-25"
_READ_CHUNK: Final = 65536
_METHOD_NOT_FOUND: Final = -32601

JSON = dict[str, Any]
_INITIALIZE: Final[JSON] = {
    "protocolVersion": PROTOCOL_VERSION,
    "capabilities": {},
    "clientInfo": {"name": "mcpshield", "version": "profile-init"},
}


@dataclass(frozen=True, slots=True)
class ToolInfo:
    """What tools/list said about one tool (names and descriptions are the server's, unsanitized)."""

    name: str
    description: str
    annotations: JSON


@dataclass(frozen=True, slots=True)
class ServerReport:
    """The server's self-description and its tools."""

    name: str
    version: str
    tools: tuple[ToolInfo, ...]


def probe(spec: LaunchSpec, timeout: float = PROBE_TIMEOUT_S) -> ServerReport:
    """Starts the server, lists its tools, and ends it (and everything it started)."""
    child = Child(spec)
    session = _Session(child, timeout)
    try:
        info = session.request("initialize", _INITIALIZE)
        session.notify("notifications/initialized")
        tools = session.list_tools()
    finally:
        session.shut_down()
    server = info.get("serverInfo")
    if not isinstance(server, dict):
        server = {}
    return ServerReport(str(server.get("name", "")), str(server.get("version", "")), tools)


class _Session:
    """Newline-delimited JSON-RPC over the child's pipes, every read bounded by `deadline`."""

    def __init__(self, child: Child, timeout: float) -> None:
        self.child = child
        self.timeout = timeout
        self.deadline = time.monotonic() + timeout
        self.next_id = 0
        self.buffer = b""
        self.stderr_tail = b""
        self.stderr_open = True

    def notify(self, method: str) -> None:
        self._send({"jsonrpc": "2.0", "method": method})

    def request(self, method: str, params: JSON) -> JSON:
        self.next_id += 1
        self._send({"jsonrpc": "2.0", "id": self.next_id, "method": method, "params": params})
        while True:
            message = self._read_message(method)
            if message.get("id") == self.next_id and "method" not in message:
                return self._result(method, message)
            if "method" in message and "id" in message:  # the server asks us something: we can't help
                error = {"code": _METHOD_NOT_FOUND, "message": "not supported by profile init"}
                self._send({"jsonrpc": "2.0", "id": message["id"], "error": error})

    def list_tools(self) -> tuple[ToolInfo, ...]:
        tools: list[ToolInfo] = []
        cursor: object = None
        for _ in range(MAX_PAGES):
            result = self.request("tools/list", {} if cursor is None else {"cursor": cursor})
            tools.extend(_tool(entry) for entry in result.get("tools") or [] if isinstance(entry, dict))
            cursor = result.get("nextCursor")
            if not cursor:
                return tuple(tools)
        raise self._failure(f"tools/list had more than {MAX_PAGES} pages")

    def _result(self, method: str, message: JSON) -> JSON:
        result = message.get("result")
        if isinstance(result, dict):
            return result
        error = message.get("error")
        what = error.get("message") if isinstance(error, dict) else "no result"
        raise self._failure(f"the server refused {method}: {str(what)[:200]!r}")

    def _send(self, message: JSON) -> None:
        data = json.dumps(message).encode() + b"\n"
        try:
            while data:
                data = data[os.write(self.child.stdin_fd, data) :]
        except OSError:
            raise self._failure("the server closed its stdin") from None

    def _read_message(self, waiting_for: str) -> JSON:
        while True:
            line, sep, rest = self.buffer.partition(b"\n")
            if sep:
                self.buffer = rest
                with contextlib.suppress(ValueError):
                    message = json.loads(line)
                    if isinstance(message, dict):
                        return message
                continue  # banners and other noise on stdout are skipped
            if len(self.buffer) > MAX_LINE_BYTES:
                raise self._failure(f"the server sent a line over {MAX_LINE_BYTES} bytes")
            self._fill(waiting_for)

    def _fill(self, waiting_for: str) -> None:
        """Reads what is there on stdout (and stderr) within the deadline."""
        fds = [self.child.stdout_fd, self.child.stderr_fd] if self.stderr_open else [self.child.stdout_fd]
        left = self.deadline - time.monotonic()
        ready = select.select(fds, [], [], max(left, 0))[0] if left > 0 else []
        if not ready:
            raise self._failure(f"no answer to {waiting_for} within {self.timeout:g} s")
        for fd in ready:
            chunk = os.read(fd, _READ_CHUNK)
            if fd == self.child.stderr_fd:
                self.stderr_tail = (self.stderr_tail + chunk)[-STDERR_TAIL_BYTES:]
                self.stderr_open = bool(chunk)
            elif chunk:
                self.buffer += chunk
            else:
                raise self._failure(f"the server closed stdout before answering {waiting_for}")

    def _failure(self, what: str) -> ProfileError:
        code = self.child.returncode
        status = f" ({describe_exit(code)})" if code is not None else ""
        last = _last_line(self.stderr_tail)
        said = f"; its last stderr line: {last!r}" if last else ""
        return ProfileError(
            f"profile init could not list the server's tools: {what}{status}{said}",
            "check that the command runs on its own in a terminal (pass what it needs with --env)",
        )

    def shut_down(self) -> None:
        """Closes stdin; SIGTERM, then SIGKILL, each after a bounded wait; the reaper ends the rest."""
        with contextlib.suppress(OSError):
            os.close(self.child.stdin_fd)
        for sig in (signal.SIGTERM, signal.SIGKILL):
            if self._exited_within(SHUTDOWN_GRACE_S):
                break
            self.child.signal_group(sig)
        self.child.close()
        for fd in (self.child.stdout_fd, self.child.stderr_fd):
            with contextlib.suppress(OSError):
                os.close(fd)

    def _exited_within(self, seconds: float) -> bool:
        deadline = time.monotonic() + seconds
        while self.child.returncode is None:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            select.select([self.child.exit_fd], [], [], left)
        return True


def _tool(entry: JSON) -> ToolInfo:
    annotations = entry.get("annotations")
    return ToolInfo(
        name=str(entry.get("name", "")),
        description=str(entry.get("description") or ""),
        annotations=annotations if isinstance(annotations, dict) else {},
    )


def _last_line(data: bytes) -> str:
    lines = [line for line in data.decode("utf-8", "replace").splitlines() if line.strip()]
    return lines[-1].strip()[:200] if lines else ""
