"""The real MCP servers the tier-3 tests drive: where they live, how to start them direct or behind
mcpshield, a hand-spoken JSON-RPC session for when the SDK hides too much, and process-tree checks.

A missing server is a failed test naming ``scripts/test`` (which installs them), never a skip.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import sysconfig
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import psutil
import pytest
from anyio.streams.buffered import BufferedByteReceiveStream
from mcp.client.stdio import StdioServerParameters

REPO_ROOT = Path(__file__).resolve().parent.parent
NPM_PREFIX = REPO_ROOT / ".tools" / "npm"
NPM_BIN = NPM_PREFIX / "node_modules" / ".bin"
PYTHON_SCRIPTS = Path(sysconfig.get_path("scripts"))

READ_TIMEOUT = 15.0
"""Longest wait for one line from a server; node plus npx start in about a second here."""

MAX_LINE_BYTES = 32 * 1024 * 1024
"""Bound on one JSON-RPC line read by hand; the largest the tests send is about 10 MB."""

EXIT_TIMEOUT = 10.0
"""How long every process of a tree gets to disappear once its session has ended."""

POLL_INTERVAL = 0.05
"""Pace of the liveness polls; polling a condition under a deadline, never sleeping to synchronise."""

LONG_CALL = {"duration": 60, "steps": 600}
"""Arguments to server-everything's long-running operation: a minute, in steps of 0.1 s."""

JSON = dict[str, Any]


def _require(path: Path) -> Path:
    if not path.exists():
        pytest.fail(f"{path} is missing: run scripts/test, which installs the real servers", pytrace=False)
    return path


def _program(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not on PATH: run scripts/test, which checks its tools", pytrace=False)
    return found


@dataclass(frozen=True)
class ServerCommand:
    """The argv that starts one real server on stdio."""

    name: str
    argv: tuple[str, ...]


def everything() -> ServerCommand:
    return ServerCommand("everything", (_program("node"), str(_require(NPM_BIN / "mcp-server-everything"))))


def everything_via_npx() -> ServerCommand:
    """npx starts ``sh -c`` which starts node: the server is a great-grandchild of whoever runs npx."""
    _require(NPM_BIN / "mcp-server-everything")
    argv = (_program("npx"), "--no-install", "--prefix", str(NPM_PREFIX), "mcp-server-everything")
    return ServerCommand("everything-via-npx", argv)


def filesystem(root: Path) -> ServerCommand:
    argv = (_program("node"), str(_require(NPM_BIN / "mcp-server-filesystem")), str(root))
    return ServerCommand("filesystem", argv)


def time_server() -> ServerCommand:
    argv = (str(_require(PYTHON_SCRIPTS / "mcp-server-time")), "--local-timezone", "UTC")
    return ServerCommand("time", argv)


def git_server(repo: Path) -> ServerCommand:
    return ServerCommand("git", (str(_require(PYTHON_SCRIPTS / "mcp-server-git")), "--repository", str(repo)))


def wrapper_argv(server: ServerCommand) -> list[str]:
    return [sys.executable, "-m", "mcpshield", "run", "--profile", "none", "--", *server.argv]


def direct(server: ServerCommand) -> StdioServerParameters:
    return StdioServerParameters(command=server.argv[0], args=list(server.argv[1:]), cwd=REPO_ROOT)


def wrapped(server: ServerCommand) -> StdioServerParameters:
    argv = wrapper_argv(server)
    return StdioServerParameters(command=argv[0], args=argv[1:], cwd=REPO_ROOT)


def make_git_repo(path: Path) -> Path:
    """A repository with one file and one commit whose ids and dates never change."""
    fixed = {"GIT_AUTHOR_DATE": "2020-01-01T00:00:00Z", "GIT_COMMITTER_DATE": "2020-01-01T00:00:00Z"}
    identity = ["-c", "user.name=Tier Three", "-c", "user.email=tier3@example.invalid"]
    git = _program("git")
    subprocess.run([git, "init", "--quiet", "--initial-branch=main", str(path)], check=True)
    (path / "README.md").write_text("hello from the tier-3 tests\n")
    subprocess.run([git, "-C", str(path), "add", "README.md"], check=True)
    commit = [git, "-C", str(path), *identity, "commit", "--quiet", "--message", "first"]
    subprocess.run(commit, check=True, env=os.environ | fixed)
    return path


class RawSession:
    """Newline-delimited JSON-RPC spoken by hand over a child's pipes; every read is bounded."""

    def __init__(self, process: anyio.abc.Process) -> None:
        assert process.stdin is not None
        assert process.stdout is not None
        self.process = process
        self._stdin = process.stdin
        self._stdout = BufferedByteReceiveStream(process.stdout)

    async def send(self, message: JSON) -> None:
        await self._stdin.send(json.dumps(message).encode() + b"\n")

    async def receive(self) -> JSON:
        with anyio.fail_after(READ_TIMEOUT):
            line = await self._stdout.receive_until(b"\n", MAX_LINE_BYTES)
        message: JSON = json.loads(line)
        return message

    async def receive_until(self, wanted: str, request_id: int | str | None = None) -> list[JSON]:
        """Messages up to and including the first response to ``request_id`` or notification ``wanted``."""
        seen: list[JSON] = []
        while True:
            message = await self.receive()
            seen.append(message)
            if wanted == "response" and message.get("id") == request_id and "method" not in message:
                return seen
            if message.get("method") == wanted:
                return seen

    async def request(self, request_id: int, method: str, params: JSON) -> JSON:
        await self.send({"jsonrpc": "2.0", "id": request_id, "method": method, "params": params})
        return (await self.receive_until("response", request_id))[-1]

    async def initialize(self) -> JSON:
        params = {
            "protocolVersion": "2025-11-25",
            "capabilities": {},
            "clientInfo": {"name": "mcpshield-tier3", "version": "0"},
        }
        response = await self.request(0, "initialize", params)
        assert "result" in response, f"initialize failed: {response}"
        await self.send({"jsonrpc": "2.0", "method": "notifications/initialized"})
        return response

    async def start_long_call(self, request_id: int) -> None:
        """Starts a minute-long tools/call and returns once the server has surely received it.

        No progress token: a server silent during the call never hits a broken stdout pipe, so only
        what the wrapper does can end it. A ping answered afterwards proves the call arrived first.
        """
        params = {"name": "trigger-long-running-operation", "arguments": LONG_CALL}
        await self.send({"jsonrpc": "2.0", "id": request_id, "method": "tools/call", "params": params})
        await self.request(request_id + 1, "ping", {})

    async def close_stdin(self) -> None:
        await self._stdin.aclose()


@asynccontextmanager
async def wrapper_session(server: ServerCommand) -> AsyncIterator[tuple[RawSession, list[psutil.Process]]]:
    """The wrapper started as a client would start it, initialized by hand; yields the session and
    the process tree as it stood after the handshake, and kills whatever of it a test left alive."""
    process = await anyio.open_process(wrapper_argv(server), cwd=REPO_ROOT, stderr=None, start_new_session=True)
    recorded: list[psutil.Process] = []
    try:
        session = RawSession(process)
        await session.initialize()
        recorded = tree(process.pid)
        yield session, recorded
    finally:
        kill_all([*recorded, *tree(process.pid)])
        with anyio.move_on_after(EXIT_TIMEOUT, shield=True):
            await process.aclose()


def tree(pid: int) -> list[psutil.Process]:
    """The process and all its descendants, as they are now; empty once it is gone."""
    try:
        root = psutil.Process(pid)
        found: list[psutil.Process] = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []
    return found


def describe(processes: list[psutil.Process]) -> str:
    lines = []
    for process in processes:
        try:
            lines.append(f"{process.pid} {' '.join(process.cmdline())[:160]}")
        except psutil.Error:
            lines.append(f"{process.pid} (gone)")
    return "; ".join(lines)


def _alive(process: psutil.Process) -> bool:
    try:
        running: bool = process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
    return running


async def survivors_after(processes: list[psutil.Process]) -> list[psutil.Process]:
    """Polls until every process has exited or ``EXIT_TIMEOUT`` passes; returns those still alive."""
    with anyio.move_on_after(EXIT_TIMEOUT):
        # Nothing signals another process's death to us (orphans are not our children): poll.
        while any(_alive(process) for process in processes):  # noqa: ASYNC110
            await anyio.sleep(POLL_INTERVAL)
    return [process for process in processes if _alive(process)]


def kill_all(processes: list[psutil.Process]) -> None:
    """Cleanup after a failed test, so one leak does not poison the tests after it."""
    for process in processes:
        if _alive(process):
            with contextlib.suppress(psutil.NoSuchProcess):
                process.kill()


CLIENT_SCRIPT = """
import json, subprocess, sys
wrapper = subprocess.Popen(sys.argv[1:], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
def send(message):
    wrapper.stdin.write(json.dumps(message).encode() + b"\\n")
    wrapper.stdin.flush()
def receive_until(done):
    while not done(json.loads(wrapper.stdout.readline())):
        pass
send({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {"protocolVersion": "2025-11-25",
      "capabilities": {}, "clientInfo": {"name": "mcpshield-tier3-client", "version": "0"}}})
receive_until(lambda message: message.get("id") == 0)
send({"jsonrpc": "2.0", "method": "notifications/initialized"})
send({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "trigger-long-running-operation",
      "arguments": LONG_CALL}})
send({"jsonrpc": "2.0", "id": 2, "method": "ping"})
receive_until(lambda message: message.get("id") == 2)
print(wrapper.pid, flush=True)
sys.stdin.read()
""".replace("LONG_CALL", json.dumps(LONG_CALL))
"""A stand-in MCP client (``python -c CLIENT_SCRIPT WRAPPER_ARGV...``): starts the wrapper in its own
process group, initializes it, starts a long call, prints the wrapper's pid and waits to be killed."""
