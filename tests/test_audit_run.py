"""Tier 2: `mcpshield run` around the fake server writes a complete, verifiable audit log.

Each test points MCPSHIELD_LOG_DIR at its own folder, drives the wrapper with raw JSON-RPC
lines, ends the session one way or another, then reads the one session file it left and checks
it with `mcpshield audit verify`.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
from conftest import INIT_PARAMS, ROOT, LineClient, environ_with, fake_argv, wait_all_gone

Shield = Callable[..., LineClient]
JSON = dict[str, Any]

#: Bound on one `mcpshield audit verify`.
VERIFY_TIMEOUT_S = 30

PROFILE = """
[tools]
default = "deny"
allow = ["echo", "sleep", "exit"]
ask = ["write_file"]

[[rules]]
tool = "read_file"
action = "allow"
[rules.args.path]
within = ["/tmp/public"]

[env]
TOKEN = "env:AUDIT_TEST_TOKEN"

[audit]
record_arguments = true

[approval]
elicitation = false  # the terminal channel alone: the test client declares elicitation
"""
TOKEN = "audit-test-token-5f1e2d3c"  # noqa: S105  made up


def _start(shield: Shield, tmp_path: Path, profile: str = PROFILE, log_dir: Path | None = None) -> LineClient:
    path = tmp_path / "profile.toml"
    path.write_text(profile)
    env = environ_with(MCPSHIELD_LOG_DIR=str(log_dir or tmp_path / "logs"), AUDIT_TEST_TOKEN=TOKEN)
    client = shield(*fake_argv(), flags=["--profile", str(path)], env=env)
    client.initialize()
    return client


def _answers(client: LineClient, ids: list[int]) -> dict[int, JSON]:
    """The answers to `ids`, in whatever order they come."""
    found: dict[int, JSON] = {}
    while len(found) < len(ids):
        message = client.read()
        if message.get("id") in ids and "method" not in message:
            found[message["id"]] = message
    return found


def _session_file(tmp_path: Path) -> Path:
    (path,) = (tmp_path / "logs").glob("*/*.jsonl")
    return path


def _events(tmp_path: Path) -> list[JSON]:
    return [json.loads(line) for line in _session_file(tmp_path).read_text().splitlines()]


def _requests(events: list[JSON], method: str = "tools/call") -> dict[Any, JSON]:
    return {e["id"]: e for e in events if e["event"] == "request" and e["method"] == method}


def _verify(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mcpshield", "audit", "verify", str(path)],
        capture_output=True,
        text=True,
        timeout=VERIFY_TIMEOUT_S,
        check=False,
        cwd=ROOT,
    )


def _assert_verifies(tmp_path: Path) -> list[JSON]:
    path = _session_file(tmp_path)
    done = _verify(path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "incomplete" not in done.stdout
    events = _events(tmp_path)
    assert events[0]["event"] == "session_start" and events[-1]["event"] == "session_end"
    return events


def test_every_call_is_recorded_with_its_decision_rule_and_outcome(shield: Shield, tmp_path: Path) -> None:
    client = _start(shield, tmp_path)
    client.call(2, "echo", {"text": f"the token is {TOKEN}"})
    client.call(3, "write_file", {"path": "/tmp/x", "content": "y"})
    client.call(4, "read_file", {"path": "/etc/passwd"})
    client.call(5, "shell", {"cmd": "id"})
    _answers(client, [2, 3, 4, 5])
    client.close_stdin()
    assert client.wait() == 0

    events = _assert_verifies(tmp_path)
    start = events[0]
    assert start["profile"]["source"] == str(tmp_path / "profile.toml")
    assert start["command"] == fake_argv()
    (init,) = [e for e in events if e["event"] == "initialize"]
    assert init["client"] == {"name": "tests", "version": "1"}
    assert init["protocol"] == init["negotiated"] == "2025-11-25"
    assert init["server"]["name"] == "fake-server"

    calls = _requests(events)
    assert set(calls) == {2, 3, 4, 5}
    echo = calls[2]
    assert (echo["decision"], echo["rule"], echo["outcome"], echo["is_error"]) == (
        "allow",
        "tools.allow",
        "answered",
        False,
    )
    assert echo["redactions"] == 1  # the echoed token, replaced on its way to the client
    assert echo["arguments"] == {"text": "the token is [REDACTED:TOKEN]"}  # recorded, redacted
    assert len(echo["args_sha256"]) == 64
    assert echo["latency_us"] > 0
    asked = calls[3]
    assert (asked["decision"], asked["rule"], asked["outcome"]) == ("ask", "tools.ask", "refused")
    assert asked["approval"]["decision"] == "unavailable"  # no approver runs in this test
    assert "`mcpshield approvals`" in asked["reason"]
    ruled = calls[4]  # no rule's conditions held: the default decided, saying what the rule wants
    assert (ruled["decision"], ruled["rule"], ruled["outcome"]) == ("deny", "tools.default", "refused")
    assert "/tmp/public" in ruled["reason"]
    hidden = calls[5]
    assert (hidden["decision"], hidden["rule"], hidden["tool"]) == ("deny", "tools.hidden", "shell")
    end = events[-1]
    assert end["exit_status"] == 0
    assert end["requests"]["deny"] == 2 and end["requests"]["ask"] == 1
    assert TOKEN not in _session_file(tmp_path).read_text()


def test_two_hundred_concurrent_calls_leave_one_event_each(shield: Shield, tmp_path: Path) -> None:
    client = _start(shield, tmp_path)
    ids = list(range(100, 300))  # each call's arguments differ: the loop breaker stays out of it
    client.send_raw(
        b"".join(
            json.dumps(
                {"jsonrpc": "2.0", "id": i, "method": "tools/call", "params": {"name": "sleep", "arguments": {"ms": i}}}
            ).encode()
            + b"\n"
            for i in ids
        )
    )
    assert all("result" in answer for answer in _answers(client, ids).values())
    client.close_stdin()
    assert client.wait() == 0

    events = _assert_verifies(tmp_path)
    calls = [e for e in events if e["event"] == "request" and e["method"] == "tools/call"]
    assert sorted(e["id"] for e in calls) == ids
    assert {e["outcome"] for e in calls} == {"answered"}


def test_a_killed_server_leaves_a_complete_log(shield: Shield, tmp_path: Path) -> None:
    client = _start(shield, tmp_path)
    client.call(2, "sleep", {"ms": 60_000})
    server = next(p for p in client.tree() if p.cmdline() == fake_argv())
    server.kill()
    assert "error" in client.answer_for(2)
    assert client.wait() == 128 + signal.SIGKILL

    events = _assert_verifies(tmp_path)
    assert _requests(events)[2]["outcome"] == "server_exited"
    assert events[-1]["exit_status"] == 128 + signal.SIGKILL


def test_a_vanished_client_leaves_a_complete_log(tmp_path: Path) -> None:
    profile = tmp_path / "profile.toml"
    profile.write_text(PROFILE)
    argv = [sys.executable, "-m", "mcpshield", "run", "--profile", str(profile), "--", *fake_argv()]
    env = environ_with(MCPSHIELD_LOG_DIR=str(tmp_path / "logs"), AUDIT_TEST_TOKEN=TOKEN)
    init = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": INIT_PARAMS}
    call = {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "sleep", "arguments": {"ms": 60_000}}}
    wrapper = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)
    try:
        assert wrapper.stdin is not None and wrapper.stdout is not None
        wrapper.stdin.write(json.dumps(init).encode() + b"\n" + json.dumps(call).encode() + b"\n")
        wrapper.stdin.flush()
        assert b'"id":1' in wrapper.stdout.readline()
        tree = [psutil.Process(wrapper.pid), *psutil.Process(wrapper.pid).children(recursive=True)]
        # The client dies with a call in flight: its ends of both pipes close at once.
        wrapper.stdin.close()
        wrapper.stdout.close()
        wrapper.wait(timeout=VERIFY_TIMEOUT_S)
    finally:
        wrapper.kill()
    assert not wait_all_gone(tree)

    events = _assert_verifies(tmp_path)
    assert _requests(events)[2]["outcome"] == "unanswered"
    assert events[-1]["why"] in ("the client closed mcpshield's stdin", "the client stopped reading mcpshield's stdout")


def test_a_cancelled_call_is_recorded_as_cancelled(shield: Shield, tmp_path: Path) -> None:
    client = _start(shield, tmp_path)
    client.call(2, "sleep", {"ms": 60_000})
    client.send({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 2}})
    client.call(3, "echo", {"text": "after"})
    client.answer_for(3)
    client.close_stdin()
    client.wait()

    calls = _requests(_assert_verifies(tmp_path))
    assert calls[2]["outcome"] == "cancelled"
    assert calls[3]["outcome"] == "answered"


def test_bad_input_is_recorded(shield: Shield, tmp_path: Path) -> None:
    client = _start(shield, tmp_path)
    client.send_raw(b"this is not json\n")
    client.read()
    client.close_stdin()
    client.wait()

    (refused,) = [e for e in _assert_verifies(tmp_path) if e["event"] == "refused_input"]
    assert refused["from"] == "client"
    assert refused["excerpt"].startswith("this is not json")


def test_an_unwritable_log_folder_stops_the_launch(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    done = subprocess.run(
        [sys.executable, "-m", "mcpshield", "run", "--profile", "none", "--", *fake_argv()],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env=environ_with(MCPSHIELD_LOG_DIR=str(blocker / "logs")),
        timeout=VERIFY_TIMEOUT_S,
        check=False,
    )
    assert done.returncode == 4
    first, tip = done.stderr.strip().splitlines()
    assert first.startswith("mcpshield: cannot create the audit log")
    assert tip.startswith("Tip:") and "MCPSHIELD_LOG_DIR" in tip
    assert "fake-server: ready" not in done.stderr  # nothing was started


def test_on_log_failure_continue_runs_without_a_log(shield: Shield, tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    profile = '[tools]\nallow = ["echo"]\n\n[audit]\non_log_failure = "continue"\n'
    client = _start(shield, tmp_path, profile, log_dir=blocker / "logs")
    client.call(2, "echo", {"text": "still works"})
    assert "result" in client.answer_for(2)
    client.wait_stderr(b"mcpshield: running without an audit log, as the profile allows")


def _start_with_small_files(shield: Shield, tmp_path: Path, profile: str) -> LineClient:
    """The wrapper under RLIMIT_FSIZE, which stands in for a full disk: writes past 4 KiB fail
    with EFBIG (Python ignores SIGXFSZ). The first line fits; the calls' events soon do not."""

    def small_files() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))

    path = tmp_path / "profile.toml"
    path.write_text(profile)
    env = environ_with(MCPSHIELD_LOG_DIR=str(tmp_path / "logs"))
    client = shield(*fake_argv(), flags=["--profile", str(path)], env=env, preexec_fn=small_files)
    client.initialize()
    return client


def test_a_log_that_fills_up_stops_calls(shield: Shield, tmp_path: Path) -> None:
    client = _start_with_small_files(shield, tmp_path, '[tools]\nallow = ["echo"]\n')
    refused = None
    for request_id in range(2, 200):
        client.call(request_id, "echo", {"text": f"{request_id} " + "x" * 50})  # distinct: no loop breaker
        answer = client.answer_for(request_id)
        if answer["result"].get("isError"):
            refused = answer["result"]["content"][0]["text"]
            break
    assert refused is not None, "calls went on while the audit log could not be written"
    assert "audit log cannot be written (File too large)" in refused
    client.wait_stderr(b"mcpshield: refused a request: the audit log cannot be written")


def test_no_audit_writes_nothing(shield: Shield, tmp_path: Path) -> None:
    env = environ_with(MCPSHIELD_LOG_DIR=str(tmp_path / "logs"))
    client = shield(*fake_argv(), flags=["--profile", "none", "--no-audit"], env=env)
    client.initialize()
    client.close_stdin()
    assert client.wait() == 0
    assert not (tmp_path / "logs").exists()


def test_log_files_are_private(shield: Shield, tmp_path: Path) -> None:
    client = _start(shield, tmp_path)
    client.close_stdin()
    client.wait()
    path = _session_file(tmp_path)
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert os.stat(path.parent).st_mode & 0o777 == 0o700


def test_a_killed_mcpshield_still_leaves_every_event_it_handed_over(shield: Shield, tmp_path: Path) -> None:
    client = _start(shield, tmp_path)
    for request_id in (2, 3, 4):
        client.call(request_id, "echo", {"text": f"call {request_id}"})
        client.answer_for(request_id)
    tree = client.tree()  # mcpshield, the server, and the audit writer
    os.kill(client.proc.pid, signal.SIGKILL)
    assert not wait_all_gone(tree), "the audit writer or the server outlived mcpshield"

    path = _session_file(tmp_path)
    done = _verify(path)
    assert done.returncode == 0, done.stdout
    assert "incomplete" in done.stdout  # no session_end: mcpshield could not write it
    assert set(_requests(_events(tmp_path))) == {2, 3, 4}


def test_a_log_that_fills_up_under_continue_says_so_once_and_goes_on(shield: Shield, tmp_path: Path) -> None:
    profile = '[tools]\nallow = ["echo"]\n\n[audit]\non_log_failure = "continue"\n'
    client = _start_with_small_files(shield, tmp_path, profile)
    for request_id in range(2, 120):
        client.call(request_id, "echo", {"text": f"{request_id} " + "x" * 50})
        assert not client.answer_for(request_id)["result"].get("isError")
    said = client.wait_stderr(b"mcpshield: the audit log cannot be written (File too large); going on without it")
    assert said.count(b"going on without it") == 1
