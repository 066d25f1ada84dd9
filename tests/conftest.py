"""Shared helpers: a raw line client for `mcpshield run` with every wait bounded."""

from __future__ import annotations

import json
import os
import queue
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Final, NoReturn

import psutil
import pytest

ROOT: Final = Path(__file__).resolve().parent.parent
FAKE_SERVER: Final = str(ROOT / "tests" / "fake_server.py")
#: Bound on any single answer from a fake server through the relay.
ANSWER_TIMEOUT_S: Final = 10.0
#: Bound on a process tree disappearing after its end was asked for.
EXIT_TIMEOUT_S: Final = 10.0


def pytest_configure(config: pytest.Config) -> None:
    """Every `mcpshield run` a test starts writes its audit log and its caches under the test run's
    own folders and looks for an approver there, never the user's; tests of any of them point the
    variables at their own tmp_path."""
    if "MCPSHIELD_LOG_DIR" not in os.environ:
        import tempfile

        os.environ["MCPSHIELD_LOG_DIR"] = _TEST_LOGS = tempfile.mkdtemp(prefix="mcpshield-test-logs-")
        config.add_cleanup(lambda: shutil.rmtree(_TEST_LOGS, ignore_errors=True))
    if "MCPSHIELD_APPROVER_DIR" not in os.environ:  # nor ask the user's own approver
        import tempfile

        os.environ["MCPSHIELD_APPROVER_DIR"] = _TEST_APPROVER = tempfile.mkdtemp(prefix="mcpshield-test-approver-")
        config.add_cleanup(lambda: shutil.rmtree(_TEST_APPROVER, ignore_errors=True))
    if "MCPSHIELD_CACHE_DIR" not in os.environ:  # the sandbox's probe cache and server caches
        import tempfile

        os.environ["MCPSHIELD_CACHE_DIR"] = _TEST_CACHE = tempfile.mkdtemp(prefix="mcpshield-test-cache-")
        config.add_cleanup(lambda: shutil.rmtree(_TEST_CACHE, ignore_errors=True))


INIT_PARAMS: Final = {
    "protocolVersion": "2025-11-25",
    "capabilities": {"sampling": {}, "elicitation": {}, "roots": {"listChanged": True}},
    "clientInfo": {"name": "tests", "version": "1"},
}


def shield_argv(*server: str, flags: Sequence[str] = ()) -> list[str]:
    """`mcpshield run` around `server`: pass-through (`--profile none`) unless flags name a profile."""
    profile = [] if "--profile" in flags else ["--profile", "none"]
    return [sys.executable, "-m", "mcpshield", "run", *profile, *flags, "--", *server]


def fake_argv(*flags: str) -> list[str]:
    return [sys.executable, FAKE_SERVER, *flags]


class LineClient:
    """Speaks newline-delimited JSON-RPC to a process; reads happen in threads so that
    every wait can be bounded."""

    def __init__(self, argv: Sequence[str], env: dict[str, str] | None = None, **popen: Any) -> None:
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            **popen,
        )
        self._lines: queue.Queue[bytes | None] = queue.Queue()
        self.skipped: list[dict[str, Any]] = []
        self._stderr: list[bytes] = []
        self._stderr_changed = threading.Condition()
        threading.Thread(target=self._pump_stdout, daemon=True).start()
        threading.Thread(target=self._pump_stderr, daemon=True).start()

    def _pump_stdout(self) -> None:
        assert self.proc.stdout
        for line in self.proc.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def _pump_stderr(self) -> None:
        assert self.proc.stderr
        for line in self.proc.stderr:
            with self._stderr_changed:
                self._stderr.append(line)
                self._stderr_changed.notify_all()

    def send_raw(self, data: bytes) -> None:
        assert self.proc.stdin
        self.proc.stdin.write(data)
        self.proc.stdin.flush()

    def send(self, message: dict[str, Any]) -> None:
        self.send_raw(json.dumps(message).encode() + b"\n")

    def request(self, msg_id: int | str, method: str, params: dict[str, Any] | None = None) -> None:
        message: dict[str, Any] = {"jsonrpc": "2.0", "id": msg_id, "method": method}
        if params is not None:
            message["params"] = params
        self.send(message)

    def call(self, msg_id: int | str, tool: str, arguments: dict[str, Any] | None = None) -> None:
        self.request(msg_id, "tools/call", {"name": tool, "arguments": arguments or {}})

    def read_raw(self, timeout: float = ANSWER_TIMEOUT_S) -> bytes:
        """The next line on stdout, newline included; b"" at EOF."""
        line = self._lines.get(timeout=timeout)
        return b"" if line is None else line

    def read(self, timeout: float = ANSWER_TIMEOUT_S) -> dict[str, Any]:
        line = self.read_raw(timeout)
        assert line, "stdout closed before an answer arrived"
        message: dict[str, Any] = json.loads(line)
        return message

    def read_until(
        self, matches: Callable[[dict[str, Any]], bool], timeout: float = ANSWER_TIMEOUT_S
    ) -> dict[str, Any]:
        """Reads messages until one matches; the others are returned in `skipped`."""
        deadline = time.monotonic() + timeout
        while True:
            message = self.read(max(0.01, deadline - time.monotonic()))
            if matches(message):
                return message
            self.skipped.append(message)

    def answer_for(self, msg_id: int | str, timeout: float = ANSWER_TIMEOUT_S) -> dict[str, Any]:
        self.skipped = []
        return self.read_until(lambda m: m.get("id") == msg_id and "method" not in m, timeout)

    def initialize(self) -> dict[str, Any]:
        self.request("init", "initialize", INIT_PARAMS)
        answer = self.answer_for("init")
        self.send({"jsonrpc": "2.0", "method": "notifications/initialized"})
        return answer

    def nothing_more(self, within: float) -> bool:
        """True if no line arrives on stdout within `within` seconds."""
        try:
            self._lines.put(self._lines.get(timeout=within))
        except queue.Empty:
            return True
        return False

    def wait_stderr(self, needle: bytes, timeout: float = ANSWER_TIMEOUT_S) -> bytes:
        """Waits until stderr holds `needle`; returns all of stderr so far."""
        deadline = time.monotonic() + timeout
        with self._stderr_changed:
            while needle not in b"".join(self._stderr):
                left = deadline - time.monotonic()
                assert left > 0, f"stderr never showed {needle!r}: {b''.join(self._stderr)!r}"
                self._stderr_changed.wait(left)
            return b"".join(self._stderr)

    def stderr_text(self) -> bytes:
        with self._stderr_changed:
            return b"".join(self._stderr)

    def close_stdin(self) -> None:
        assert self.proc.stdin
        self.proc.stdin.close()

    def wait(self, timeout: float = EXIT_TIMEOUT_S) -> int:
        return self.proc.wait(timeout=timeout)

    def tree(self) -> list[psutil.Process]:
        """The process and all its descendants, as now."""
        me = psutil.Process(self.proc.pid)
        return [me, *me.children(recursive=True)]

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=EXIT_TIMEOUT_S)
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


def wait_all_gone(procs: Sequence[psutil.Process], timeout: float = EXIT_TIMEOUT_S) -> list[psutil.Process]:
    """Waits (bounded) for every process to end; returns those still alive (zombies count as ended)."""
    deadline = time.monotonic() + timeout
    alive = list(procs)
    while alive and time.monotonic() < deadline:
        alive = [p for p in alive if _running(p)]
        if alive:
            time.sleep(0.02)
    return alive


def _running(proc: psutil.Process) -> bool:
    try:
        return bool(proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False


@pytest.fixture
def shield() -> Iterator[Callable[..., LineClient]]:
    """Starts `mcpshield run` around a command; everything started is killed afterwards."""
    started: list[LineClient] = []

    def start(*server: str, flags: Sequence[str] = (), env: dict[str, str] | None = None, **popen: Any) -> LineClient:
        client = LineClient(shield_argv(*server, flags=flags), env=env, **popen)
        started.append(client)
        return client

    yield start
    for client in started:
        client.kill()


def environ_with(**extra: str) -> dict[str, str]:
    return {**os.environ, **extra}


def sandbox_unavailable(why: str) -> NoReturn:
    """Skips a test whose sandbox feature this machine lacks; with MCPSHIELD_REQUIRE_SANDBOX=1
    (CI sets it) fails it instead, so that a missing feature cannot pass as a skip."""
    if os.environ.get("MCPSHIELD_REQUIRE_SANDBOX") == "1":
        pytest.fail(f"{why}, and MCPSHIELD_REQUIRE_SANDBOX=1: run scripts/setup --dev as root")
    pytest.skip(why)
