"""`mcpshield run --tty`: with no approver and a client that cannot be asked, the call is put to
the person at the wrapper's controlling terminal, for real: the wrapper runs in a session of its
own whose controlling terminal is a pseudo-terminal the test reads and types into.
"""

from __future__ import annotations

import json
import os
import select
import sys
import termios
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

import pytest
from conftest import ROOT, LineClient, environ_with, fake_argv

from mcpshield.approval.tty import plain_keys

#: Bound on the prompt (or a line after a key) showing on the terminal.
SCREEN_TIMEOUT_S: Final = 15.0
JSON = dict[str, Any]

PROFILE = """
[tools]
allow = ["echo"]
ask = ["write_file"]

[approval]
timeout_s = {timeout}
elicitation = false
"""
#: Makes the terminal named by argv[1] the controlling terminal of this new session, then runs argv[2:].
ADOPT_TTY: Final = (
    "import fcntl, os, sys, termios\n"
    "fd = os.open(sys.argv[1], os.O_RDWR)\n"
    "fcntl.ioctl(fd, termios.TIOCSCTTY, 0)\n"
    "os.close(fd)\n"
    "os.execv(sys.argv[2], sys.argv[2:])\n"
)


class Terminal:
    """The test's end of a pseudo-terminal: what the wrapper writes to /dev/tty, and keys."""

    def __init__(self) -> None:
        self.master, self.slave = os.openpty()
        self.name = os.ttyname(self.slave)
        self.seen = b""

    def shows(self, needle: str, times: int = 1) -> str:
        """Waits until the terminal has shown `needle` (`times` times); returns all it showed."""
        deadline = time.monotonic() + SCREEN_TIMEOUT_S
        while self.seen.count(needle.encode()) < times:
            left = deadline - time.monotonic()
            assert left > 0, f"the terminal never showed {needle!r}; it showed {self.seen!r}"
            ready, _, _ = select.select([self.master], [], [], left)
            if ready:
                self.seen += os.read(self.master, 65536)
        return self.seen.decode("utf-8", "replace")

    def type(self, keys: str) -> None:
        os.write(self.master, keys.encode())

    def close(self) -> None:
        os.close(self.master)
        os.close(self.slave)


@pytest.fixture
def terminal() -> Iterator[Terminal]:
    term = Terminal()
    yield term
    term.close()


def _wrapper(tmp_path: Path, terminal: Terminal | None, timeout: float = 30) -> LineClient:
    """`mcpshield run --tty` around the fake server, no approver running; in a new session
    whose controlling terminal is `terminal` (or none at all)."""
    profile = tmp_path / "ask.toml"
    profile.write_text(PROFILE.format(timeout=timeout))
    empty = tmp_path / "approver"
    empty.mkdir(mode=0o700)
    run = [sys.executable, "-m", "mcpshield", "run", "--tty", "--profile", str(profile), "--", *fake_argv()]
    argv = run if terminal is None else [sys.executable, "-c", ADOPT_TTY, terminal.name, *run]
    env = environ_with(MCPSHIELD_APPROVER_DIR=str(empty), MCPSHIELD_LOG_DIR=str(tmp_path / "logs"))
    client = LineClient(argv, env=env, cwd=ROOT, start_new_session=True)
    client.initialize()
    client.request("list", "tools/list")
    client.answer_for("list")
    return client


def _text(answer: JSON) -> str:
    text: str = answer["result"]["content"][0]["text"]
    return text


@pytest.fixture
def stop() -> Iterator[list[LineClient]]:
    started: list[LineClient] = []
    yield started
    for client in started:
        client.kill()


def test_the_call_is_shown_whole_on_the_terminal_and_o_runs_it_once(
    tmp_path: Path, terminal: Terminal, stop: list[LineClient]
) -> None:
    stop.append(client := _wrapper(tmp_path, terminal))
    target = tmp_path / "out.txt"
    note = "red \x1b[31mALERT\x1b[0m and \u202eevil"
    client.call(2, "write_file", {"path": str(target), "content": note})
    screen = terminal.shows("o: approve once")
    assert "tool:    write_file" in screen and "rule:    tools.ask" in screen
    assert f'"path": "{target}"' in screen
    assert "\\u001b[31mALERT\\u001b[0m" in screen and "\\u202eevil" in screen
    assert b"\x1b" not in terminal.seen and "\u202e".encode() not in terminal.seen
    assert not termios.tcgetattr(terminal.slave)[3] & termios.ICANON  # one key, no Enter
    terminal.type("o")
    assert "isError" not in client.answer_for(2)["result"]
    assert target.read_text() == note
    terminal.shows("approved once")
    assert termios.tcgetattr(terminal.slave)[3] & termios.ICANON  # the terminal's mode given back
    client.call(3, "write_file", {"path": str(target), "content": note})
    terminal.shows("o: approve once", times=2)  # once: the same call is asked about again
    client.close_stdin()
    client.wait()
    (log,) = (tmp_path / "logs").glob("*/*.jsonl")
    events = [json.loads(line) for line in log.read_text().splitlines()]
    (first,) = [e for e in events if e.get("id") == 2]
    assert first["approval"]["channel"] == "tty" and first["approval"]["decision"] == "once"
    assert first["approval"]["approver_uid"] == os.fstat(terminal.slave).st_uid


def test_d_denies_and_s_approves_for_the_session(tmp_path: Path, terminal: Terminal, stop: list[LineClient]) -> None:
    stop.append(client := _wrapper(tmp_path, terminal))
    target = tmp_path / "out.txt"
    client.call(2, "write_file", {"path": str(target), "content": "no"})
    terminal.shows("o: approve once")
    terminal.type("x")  # not a decision: nothing happens
    terminal.type("\x1bOP\x1b[D\x1bo")  # F1, left, Alt-o, which hold O, D, o: nothing either
    terminal.type("D")  # capitals decide nothing
    terminal.type("d")
    assert _text(client.answer_for(2)) == "mcpshield refused this call: the user denied write_file at the terminal"
    assert not target.exists()
    client.call(3, "write_file", {"path": str(target), "content": "yes"})
    terminal.shows("denied")
    terminal.shows("o: approve once", times=2)
    terminal.type("s")
    assert "isError" not in client.answer_for(3)["result"]
    client.call(4, "write_file", {"path": str(target), "content": "yes"})  # the session's approval
    assert "isError" not in client.answer_for(4)["result"]
    assert terminal.seen.count(b"o: approve once") == 2


def test_a_call_that_times_out_leaves_the_prompt_saying_so(
    tmp_path: Path, terminal: Terminal, stop: list[LineClient]
) -> None:
    stop.append(client := _wrapper(tmp_path, terminal, timeout=1))
    client.call(2, "write_file", {"path": str(tmp_path / "out.txt"), "content": "late"})
    terminal.shows("o: approve once")
    text = _text(client.answer_for(2))
    assert "did not answer within 1 s" in text and "Call it again to ask the user again" in text
    terminal.shows("timed out")
    assert termios.tcgetattr(terminal.slave)[3] & termios.ICANON


def test_without_a_terminal_the_run_says_so_once_and_refuses(tmp_path: Path, stop: list[LineClient]) -> None:
    stop.append(client := _wrapper(tmp_path, None))
    for request_id in (2, 3):
        client.call(request_id, "write_file", {"path": str(tmp_path / "out.txt"), "content": "x"})
        assert "no approver is available" in _text(client.answer_for(request_id))
    stderr = client.wait_stderr(b"--tty: cannot open /dev/tty")
    assert stderr.count(b"--tty:") == 1


def test_escape_sequences_never_pass_for_the_letters_inside_them() -> None:
    assert plain_keys(b"\x1bOP\x1b[D\x1b[1;5Ao\x1bdx") == "ox"
