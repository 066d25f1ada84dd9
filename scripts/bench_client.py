"""A raw JSON-RPC client on a target's pipes, for scripts/bench: non-blocking, every wait bounded.

Not the SDK: the benchmark needs a client whose own cost per message is a few microseconds.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import IO, Any

import psutil

# Short enough to notice a hang at once, long enough for a loaded 2-core CI machine.
CALL_TIMEOUT_S = 10.0
# Time a target gets to exit after stdin closes before it is killed.
SHUTDOWN_GRACE_S = 2.0
# Often enough to catch the 10 MB message's peak, rare enough to cost the client nothing.
RSS_SAMPLE_INTERVAL_S = 0.005
# One read drains a pipe (64 KiB) many times over.
READ_CHUNK = 1 << 20
INVALID_PARAMS = -32602
# Request ids of the session's set-up; the measured calls count up from 1.
INITIALIZE_ID = 0
LIST_TOOLS_ID = "tools"
# A tool scripts/bench_profile.toml does not allow: mcpshield answers "Unknown tool" itself.
UNKNOWN_TOOL = "shell"
# Echo text the deny rule of scripts/bench_profile.toml refuses: mcpshield answers with isError.
REFUSED_TEXT = "refuse me"


class BenchError(Exception):
    """A target misbehaved (died, hung, answered wrongly); the message says how."""


class Conn:
    """A running target and a non-blocking raw JSON-RPC client on its stdin/stdout."""

    def __init__(self, command: list[str], cwd: Path) -> None:
        # stderr goes to a file: a pipe nobody reads could fill up and stall the target.
        self._stderr: IO[bytes] = tempfile.TemporaryFile()  # noqa: SIM115  closed in close()
        self.proc = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr, cwd=cwd
        )
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self._wfd = self.proc.stdin.fileno()
        self._rfd = self.proc.stdout.fileno()
        os.set_blocking(self._wfd, False)
        os.set_blocking(self._rfd, False)
        self._out = bytearray()
        self._in = bytearray()
        self._scanned = 0  # bytes of _in known to hold no newline
        self._poll = select.poll()
        self._poll.register(self._rfd, select.POLLIN)
        self._writing = False
        self.on_tick: Callable[[], None] | None = None

    def queue(self, data: bytes) -> None:
        """Add to the output; it goes out as the pipe takes it, from the next pump or flush on."""
        self._out += data

    def pump(self, deadline: float) -> bytes:
        """Write what the pipe takes, wait (bounded) for output, and return what was read (maybe b"")."""
        self.flush()
        if self.on_tick is not None:
            self.on_tick()
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise BenchError(f"no answer before the deadline{self.stderr_tail()}")
        timeout = min(remaining, RSS_SAMPLE_INTERVAL_S if self.on_tick else remaining)
        for fd, _events in self._poll.poll(timeout * 1000):
            if fd == self._rfd:
                return self._read()
        return b""

    def read_line(self, deadline: float) -> bytes:
        while (index := self._in.find(b"\n", self._scanned)) < 0:
            self._scanned = len(self._in)
            self._in += self.pump(deadline)
        line = bytes(self._in[:index])
        del self._in[: index + 1]
        self._scanned = 0
        return line

    def request(self, message: dict[str, Any], timeout: float = CALL_TIMEOUT_S) -> dict[str, Any]:
        self.queue(json.dumps(message).encode() + b"\n")
        return check_response(self.read_line(time.monotonic() + timeout), message["id"])

    def buffered_input(self) -> int:
        return len(self._in)

    def flush(self) -> None:
        if self._out:
            try:
                del self._out[: os.write(self._wfd, self._out)]
            except BlockingIOError:
                pass
            except BrokenPipeError as exc:
                raise BenchError(f"target closed its stdin{self.stderr_tail()}") from exc
        if bool(self._out) != self._writing:
            self._writing = bool(self._out)
            if self._writing:
                self._poll.register(self._wfd, select.POLLOUT)
            else:
                self._poll.unregister(self._wfd)

    def _read(self) -> bytes:
        try:
            chunk = os.read(self._rfd, READ_CHUNK)
        except BlockingIOError:
            return b""
        if not chunk:
            try:
                code = self.proc.wait(SHUTDOWN_GRACE_S)
            except subprocess.TimeoutExpired:
                raise BenchError(f"target closed its stdout but kept running{self.stderr_tail()}") from None
            raise BenchError(f"target exited with code {code}{self.stderr_tail()}")
        return chunk

    def stderr_tail(self) -> str:
        self._stderr.seek(0)
        lines = self._stderr.read().decode(errors="replace").strip().splitlines()
        return "; stderr: " + " | ".join(lines[-3:]) if lines else ""

    def close(self) -> None:
        """Close stdin, give the target a bounded grace period, then kill it and its descendants."""
        try:
            descendants = psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            descendants = []
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                stream.close()
        try:
            self.proc.wait(SHUTDOWN_GRACE_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(SHUTDOWN_GRACE_S)
        for process in descendants:
            with suppress(psutil.NoSuchProcess):
                process.kill()
        self._stderr.close()


@contextmanager
def running(command: list[str], cwd: Path) -> Iterator[Conn]:
    conn = Conn(command, cwd)
    try:
        yield conn
    finally:
        conn.close()


def parse_response(line: bytes, expected_id: object) -> dict[str, Any]:
    """The response to `expected_id`, result or error; anything else is the target's fault."""
    try:
        message = json.loads(line)
    except ValueError as exc:
        raise BenchError(f"non-JSON line on stdout: {line[:80]!r}") from exc
    if not isinstance(message, dict) or message.get("id") != expected_id:
        raise BenchError(f"expected the response to id {expected_id!r}, got {line[:120]!r}")
    return message


def check_response(line: bytes, expected_id: object) -> dict[str, Any]:
    """The successful response to `expected_id`."""
    message = parse_response(line, expected_id)
    if "error" in message:
        raise BenchError(f"request {expected_id!r} failed: {message['error']}")
    return message


def check_echo(line: bytes, expected_id: object) -> dict[str, Any]:
    """The echo's answer; a refusal (a result with isError) is an error here, not a fast echo."""
    message = check_response(line, expected_id)
    result = message.get("result")
    if not isinstance(result, dict) or result.get("isError"):
        raise BenchError(f"the echo call {expected_id!r} was refused: {line[:200]!r}")
    return message


def check_unknown_tool(line: bytes, expected_id: object) -> None:
    """The answer to a call of a tool the profile hides: a -32602 "Unknown tool" error."""
    error = parse_response(line, expected_id).get("error")
    message = str(error.get("message")) if isinstance(error, dict) else ""
    if not isinstance(error, dict) or error.get("code") != INVALID_PARAMS or "Unknown tool" not in message:
        raise BenchError(f"expected an Unknown tool error, got {line[:200]!r}")


def check_tool_refused(line: bytes, expected_id: object) -> None:
    """The answer to a call a rule refuses: a result with isError, carrying the reason."""
    result = check_response(line, expected_id).get("result")
    if not isinstance(result, dict) or result.get("isError") is not True:
        raise BenchError(f"expected a tool result with isError, got {line[:200]!r}")


def initialize(conn: Conn) -> None:
    conn.request(
        {
            "jsonrpc": "2.0",
            "id": INITIALIZE_ID,
            "method": "initialize",
            "params": {
                "protocolVersion": "2025-11-25",
                "capabilities": {},
                "clientInfo": {"name": "mcpshield-bench", "version": "0"},
            },
        }
    )
    conn.queue(b'{"jsonrpc":"2.0","method":"notifications/initialized"}\n')
    conn.flush()


def list_tools(conn: Conn) -> None:
    """tools/list, as clients do after initialize; the echo tool must be there with its schema
    (a profile checks the arguments of every call against it)."""
    reply = conn.request({"jsonrpc": "2.0", "id": LIST_TOOLS_ID, "method": "tools/list"})
    result = reply.get("result")
    tools = result.get("tools") if isinstance(result, dict) else None
    schemas = [t.get("inputSchema") for t in tools or [] if isinstance(t, dict) and t.get("name") == "echo"]
    if not isinstance(tools, list) or not schemas or not isinstance(schemas[0], dict):
        raise BenchError(f"tools/list did not declare the echo tool with its inputSchema: {str(reply)[:200]}")


def call_request(request_id: int, tool: str, arguments: dict[str, Any]) -> bytes:
    call = {"name": tool, "arguments": arguments}
    return json.dumps({"jsonrpc": "2.0", "id": request_id, "method": "tools/call", "params": call}).encode()


def echo_request(request_id: int, text: str = "hello") -> bytes:
    return call_request(request_id, "echo", {"text": text})


class RssSampler:
    """Tracks the peak RSS of one process, sampled at most every RSS_SAMPLE_INTERVAL_S."""

    def __init__(self, pid: int) -> None:
        self._process = psutil.Process(pid)
        self._next = 0.0
        self.peak = 0

    def sample(self) -> None:
        now = time.monotonic()
        if now >= self._next:
            self._next = now + RSS_SAMPLE_INTERVAL_S
            self.peak = max(self.peak, self._process.memory_info().rss)
