"""Tier 2: calls a profile says to `ask` about wait for a person at `mcpshield approvals --json`.

`mcpshield run` wraps the fake server under a profile that asks about `write_file`; a real
approver process, driven through its scriptable mode, decides. The call runs only once approved,
other traffic goes on while it waits, and every ending (deny, timeout, cancel, no approver)
reaches the client as a refusal the model can act on.
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT, LineClient, environ_with, fake_argv

Shield = Callable[..., LineClient]
JSON = dict[str, Any]

#: Bound on the approver starting, and on each line it prints once something caused it.
LINE_TIMEOUT_S = 15.0

PROFILE = """
[tools]
allow = ["echo", "sleep", "emit"]
ask = ["write_file"]

[approval]
timeout_s = {timeout}
elicitation = {elicitation}
"""


class Approver:
    """`mcpshield approvals --json` as a subprocess: stdout lines as JSON, decisions on stdin."""

    def __init__(self, directory: Path) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "mcpshield", "approvals", "--json"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=environ_with(MCPSHIELD_APPROVER_DIR=str(directory)),
            cwd=ROOT,
        )
        self._lines: queue.Queue[bytes] = queue.Queue()
        self._notes: queue.Queue[bytes] = queue.Queue()
        assert self.process.stdout is not None and self.process.stderr is not None
        self._pumps = [
            threading.Thread(target=_pump, args=(stream, sink), daemon=True)
            for stream, sink in ((self.process.stdout, self._lines), (self.process.stderr, self._notes))
        ]
        for pump in self._pumps:
            pump.start()
        while b"listening on" not in self._notes.get(timeout=LINE_TIMEOUT_S):
            pass

    def line(self) -> JSON:
        body: JSON = json.loads(self._lines.get(timeout=LINE_TIMEOUT_S))
        return body

    def decide(self, request_id: str, decision: str, reason: str | None = None) -> None:
        assert self.process.stdin is not None
        line = json.dumps({"id": request_id, "decision": decision, "reason": reason})
        self.process.stdin.write(line.encode() + b"\n")
        self.process.stdin.flush()

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=LINE_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        for pump in self._pumps:  # they end at the pipes' end, which the exit brought
            pump.join(timeout=LINE_TIMEOUT_S)
        for stream in (self.process.stdin, self.process.stdout, self.process.stderr):
            if stream is not None:
                stream.close()


def _pump(stream: Any, sink: queue.Queue[bytes]) -> None:
    for line in stream:
        sink.put(line)


@pytest.fixture
def approver_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "approver"
    directory.mkdir(mode=0o700)
    return directory


@pytest.fixture
def approver(approver_dir: Path) -> Iterator[Approver]:
    running = Approver(approver_dir)
    yield running
    running.stop()


def _wrapped(
    shield: Shield, tmp_path: Path, approver_dir: Path, timeout: float = 30, elicitation: bool = False
) -> LineClient:
    """The terminal channel alone unless `elicitation`: the test client declares elicitation."""
    profile = tmp_path / "ask.toml"
    profile.write_text(PROFILE.format(timeout=timeout, elicitation=str(elicitation).lower()))
    env = environ_with(MCPSHIELD_APPROVER_DIR=str(approver_dir), MCPSHIELD_LOG_DIR=str(tmp_path / "logs"))
    client = shield(*fake_argv(), flags=["--profile", str(profile)], env=env)
    client.initialize()
    client.request(1, "tools/list")  # the catalog first, so calls are judged at once
    client.answer_for(1)
    return client


def _write(client: LineClient, request_id: int, path: Path, content: str = "approved") -> None:
    client.call(request_id, "write_file", {"path": str(path), "content": content})


def _waiting_call(
    shield: Shield, tmp_path: Path, approver_dir: Path, approver: Approver, timeout: float = 30
) -> tuple[LineClient, Path, JSON]:
    """A wrapper whose client called write_file (id 2), the file it would write, and the
    request as the approver shows it."""
    client = _wrapped(shield, tmp_path, approver_dir, timeout)
    target = tmp_path / "out.txt"
    _write(client, 2, target)
    return client, target, approver.line()


def _assert_never_answered_nor_run(client: LineClient, target: Path) -> None:
    """Call 2 was cancelled: a later call is answered, call 2 never is, and its file is not written."""
    client.call(3, "echo", {"text": "after"})
    client.answer_for(3)
    assert not any(message.get("id") == 2 for message in client.skipped)
    assert not target.exists()


def _text(answer: JSON) -> str:
    text: str = answer["result"]["content"][0]["text"]
    return text


def test_an_approved_call_runs_and_other_traffic_goes_on_while_it_waits(
    shield: Shield, tmp_path: Path, approver_dir: Path, approver: Approver
) -> None:
    client, target, pending = _waiting_call(shield, tmp_path, approver_dir, approver)
    assert (pending["tool"], pending["arguments"]["path"], pending["rule"]) == ("write_file", str(target), "tools.ask")
    assert pending["server"].endswith("fake_server.py") and pending["client"] == "tests"
    assert not target.exists()  # nothing ran yet
    client.call(3, "echo", {"text": "meanwhile"})
    assert _text(client.answer_for(3)) == "meanwhile"  # a waiting call blocks nothing else
    approver.decide(pending["id"], "once")
    assert approver.line() == {"id": pending["id"], "resolved": "once"}
    assert not client.answer_for(2)["result"].get("isError")
    assert target.read_text() == "approved"


def test_a_denied_call_never_runs_and_the_model_reads_why(
    shield: Shield, tmp_path: Path, approver_dir: Path, approver: Approver
) -> None:
    client, target, pending = _waiting_call(shield, tmp_path, approver_dir, approver)
    approver.decide(pending["id"], "deny", "not into my home directory")
    answer = client.answer_for(2)
    assert answer["result"]["isError"] is True
    assert _text(answer) == (
        "mcpshield refused this call: the user denied write_file in `mcpshield approvals`: not into my home directory"
    )
    assert not target.exists()


def test_a_session_approval_covers_the_same_call_again_but_no_other(
    shield: Shield, tmp_path: Path, approver_dir: Path, approver: Approver
) -> None:
    client, target, pending = _waiting_call(shield, tmp_path, approver_dir, approver)
    approver.decide(pending["id"], "session")
    approver.line()  # resolved
    assert not client.answer_for(2)["result"].get("isError")
    _write(client, 3, target)  # the same tool and arguments: approved for this session
    assert not client.answer_for(3)["result"].get("isError")
    _write(client, 4, target, content="something else")  # other arguments: asked again
    assert approver.line()["arguments"]["content"] == "something else"


def test_approved_calls_still_count_against_the_profiles_limits(
    shield: Shield, tmp_path: Path, approver_dir: Path, approver: Approver
) -> None:
    profile = tmp_path / "limited.toml"
    limits = "\n[limits]\nidentical_calls_per_minute = 2\n"
    profile.write_text(PROFILE.format(timeout=30, elicitation="false") + limits)
    env = environ_with(MCPSHIELD_APPROVER_DIR=str(approver_dir), MCPSHIELD_LOG_DIR=str(tmp_path / "logs"))
    client = shield(*fake_argv(), flags=["--profile", str(profile)], env=env)
    client.initialize()
    client.request(1, "tools/list")
    client.answer_for(1)
    target = tmp_path / "out.txt"
    _write(client, 2, target)
    approver.decide(approver.line()["id"], "session")
    approver.line()  # resolved
    assert not client.answer_for(2)["result"].get("isError")
    _write(client, 3, target)  # approved for the session: runs, the second identical call
    assert not client.answer_for(3)["result"].get("isError")
    _write(client, 4, target)  # approved too, but over the loop breaker's limit
    refused = client.answer_for(4)["result"]
    assert refused["isError"] and "mcpshield refused this call" in _text({"result": refused})


def test_nobody_answering_refuses_the_call_when_the_timeout_ends_saying_how_to_retry(
    shield: Shield, tmp_path: Path, approver_dir: Path, approver: Approver
) -> None:
    client, target, pending = _waiting_call(shield, tmp_path, approver_dir, approver, timeout=1)
    text = _text(client.answer_for(2))
    assert "the user did not answer within 1 s" in text
    assert "approve write_file in `mcpshield approvals`, where it stays for 120 s more" in text
    assert "then call it again with the same arguments" in text
    assert approver.line() == {"id": pending["id"], "resolved": "timeout", "late_s": 120.0}
    assert not target.exists()


def test_a_late_approval_runs_the_identical_retry_once_never_the_stale_call(
    shield: Shield, tmp_path: Path, approver_dir: Path, approver: Approver
) -> None:
    client, target, pending = _waiting_call(shield, tmp_path, approver_dir, approver, timeout=1)
    client.answer_for(2)  # refused: timed out
    assert approver.line()["resolved"] == "timeout"
    approver.decide(pending["id"], "once")
    assert approver.line() == {"id": pending["id"], "resolved": "once", "late": True}
    client.wait_stderr(b"approved (once) after it had timed out")
    assert not target.exists()  # the stale call never runs
    _write(client, 3, target, content="approved")  # the model calls again: it runs without asking
    assert not client.answer_for(3)["result"].get("isError")
    assert target.read_text() == "approved"
    _write(client, 4, target)  # used up: the next identical call is asked about again
    assert approver.line()["tool"] == "write_file"
    client.close_stdin()
    client.wait()
    calls = _audited_calls(tmp_path)
    assert calls[2]["approval"]["decision"] == "timeout" and calls[2]["outcome"] == "refused"
    assert calls[3]["approval"] == {
        "channel": "terminal", "approver_uid": os.getuid(), "decision": "once", "late": True, "wait_ms": 0
    }  # fmt: skip
    assert calls[3]["outcome"] == "answered"


def _audited_calls(tmp_path: Path) -> dict[Any, JSON]:
    """The session's tool-call events by id (the session is over: its file is complete)."""
    (path,) = (tmp_path / "logs").glob("*/*.jsonl")
    events = [json.loads(line) for line in path.read_text().splitlines()]
    return {e["id"]: e for e in events if e["event"] == "request" and e["method"] == "tools/call"}


def test_a_late_approval_does_not_cover_other_arguments(
    shield: Shield, tmp_path: Path, approver_dir: Path, approver: Approver
) -> None:
    client, target, pending = _waiting_call(shield, tmp_path, approver_dir, approver, timeout=1)
    client.answer_for(2)
    approver.line()
    approver.decide(pending["id"], "once")
    approver.line()
    client.wait_stderr(b"after it had timed out")
    _write(client, 3, target, content="something else")
    assert approver.line()["arguments"]["content"] == "something else"
    assert not target.exists()


def test_a_cancelled_call_is_withdrawn_from_the_approver_and_never_runs(
    shield: Shield, tmp_path: Path, approver_dir: Path, approver: Approver
) -> None:
    client, target, pending = _waiting_call(shield, tmp_path, approver_dir, approver)
    client.send({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 2}})
    assert approver.line() == {"id": pending["id"], "resolved": "cancelled"}
    _assert_never_answered_nor_run(client, target)


def test_without_an_approver_the_call_is_refused_at_once_naming_the_command(
    shield: Shield, tmp_path: Path, approver_dir: Path
) -> None:
    client = _wrapped(shield, tmp_path, approver_dir)
    _write(client, 2, tmp_path / "out.txt")
    text = _text(client.answer_for(2, timeout=5))
    assert "no approver is available" in text
    assert "run `mcpshield approvals` in a terminal" in text


# -- both channels: the terminal approver and the client's elicitation race ---------------------


def _elicitation(client: LineClient) -> JSON:
    """mcpshield's own elicitation/create, as the client receives it."""
    return client.read_until(lambda message: message.get("method") == "elicitation/create")


def test_the_approver_deciding_first_withdraws_the_question_put_to_the_client(
    shield: Shield, tmp_path: Path, approver_dir: Path, approver: Approver
) -> None:
    client = _wrapped(shield, tmp_path, approver_dir, elicitation=True)
    target = tmp_path / "out.txt"
    _write(client, 2, target)
    asked = _elicitation(client)
    assert asked["id"].startswith("mcpshield-approval-")
    approver.decide(approver.line()["id"], "once")
    cancel = client.read_until(lambda message: message.get("method") == "notifications/cancelled")
    assert cancel["params"]["requestId"] == asked["id"]
    assert not client.answer_for(2)["result"].get("isError")
    client.send({"jsonrpc": "2.0", "id": asked["id"], "result": {"action": "decline"}})  # too late: nothing
    assert target.read_text() == "approved"


def test_the_client_deciding_first_withdraws_the_call_from_the_approver(
    shield: Shield, tmp_path: Path, approver_dir: Path, approver: Approver
) -> None:
    client = _wrapped(shield, tmp_path, approver_dir, elicitation=True)
    target = tmp_path / "out.txt"
    _write(client, 2, target)
    asked = _elicitation(client)
    pending = approver.line()
    client.send({"jsonrpc": "2.0", "id": asked["id"], "result": {"action": "decline"}})
    answer = client.answer_for(2)
    assert "the user declined in the client" in _text(answer)
    assert approver.line() == {"id": pending["id"], "resolved": "cancelled"}
    assert not target.exists()


def test_a_server_request_using_mcpshields_own_id_space_is_refused(
    shield: Shield, tmp_path: Path, approver_dir: Path
) -> None:
    client = _wrapped(shield, tmp_path, approver_dir, elicitation=True)
    request = {"jsonrpc": "2.0", "id": "mcpshield-approval-1", "method": "roots/list", "params": {}}
    client.call(2, "emit", {"lines": [json.dumps(request).encode().hex()]})
    client.answer_for(2)
    assert b"reserved for mcpshield's own requests" in client.wait_stderr(b"reserved for mcpshield")
    assert not any(message.get("method") == "roots/list" for message in client.skipped)


def test_a_cancelled_call_withdraws_the_question_put_to_the_client(
    shield: Shield, tmp_path: Path, approver_dir: Path
) -> None:
    client = _wrapped(shield, tmp_path, approver_dir, elicitation=True)  # no approver: the client alone
    target = tmp_path / "out.txt"
    _write(client, 2, target)
    asked = _elicitation(client)
    client.send({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 2}})
    cancel = client.read_until(lambda message: message.get("method") == "notifications/cancelled")
    assert cancel["params"]["requestId"] == asked["id"]
    client.send(
        {"jsonrpc": "2.0", "id": asked["id"], "result": {"action": "accept", "content": {"decision": "approve"}}}
    )
    _assert_never_answered_nor_run(client, target)


def test_a_client_that_cannot_ask_its_user_leaves_the_call_refused_without_an_approver(
    shield: Shield, tmp_path: Path, approver_dir: Path
) -> None:
    client = _wrapped(shield, tmp_path, approver_dir, elicitation=True)
    _write(client, 2, tmp_path / "out.txt")
    asked = _elicitation(client)
    client.send({"jsonrpc": "2.0", "id": asked["id"], "error": {"code": -32601, "message": "no elicitation here"}})
    text = _text(client.answer_for(2, timeout=5))
    assert "no approver is available" in text and "`mcpshield approvals`" in text


def test_a_waiting_call_with_a_progress_token_tells_the_client_it_waits(
    shield: Shield, tmp_path: Path, approver_dir: Path, approver: Approver
) -> None:
    client = _wrapped(shield, tmp_path, approver_dir)
    target = tmp_path / "out.txt"
    arguments = {"path": str(target), "content": "approved"}
    client.request(2, "tools/call", {"name": "write_file", "arguments": arguments, "_meta": {"progressToken": "p-2"}})
    pending = approver.line()
    first = client.read_until(lambda m: m.get("method") == "notifications/progress")
    assert first["params"]["progressToken"] == "p-2" and first["params"]["progress"] == 0
    assert "waiting for the user to approve write_file" in first["params"]["message"]
    again = client.read_until(lambda m: m.get("method") == "notifications/progress")  # every 5 s
    assert again["params"]["progress"] > first["params"]["progress"]
    approver.decide(pending["id"], "once")
    assert not client.answer_for(2)["result"].get("isError")
    assert target.read_text() == "approved"
