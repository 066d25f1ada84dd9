"""`mcpshield demo`: wraps the demo server with `mcpshield run` and drives it with a scripted
client, printing what passed through and what mcpshield refused."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import IO, Any, Final

#: The demo's bound on any one answer; the demo server answers in milliseconds.
ANSWER_TIMEOUT_S: Final = 10.0

#: The profile the demo enforces: what a user would write for a server like the demo's.
DEMO_PROFILE: Final = """\
[server]
name = "demo"

[tools]
default = "deny"                      # `shell` is named nowhere: hidden, and unknown if called
allow = ["echo", "add", "whoami", "noisy"]

[[rules]]                             # a rule on an argument: tried before the allow list
tool = "echo"
action = "deny"
reason = "that text looks like it holds a password"
[rules.args.text]
matches = "(?i).*password.*"
"""


def _say(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


class _Peer:
    """The client side of the pipe to `mcpshield run`."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdin and proc.stdout
        self.proc = proc
        self._in: IO[bytes] = proc.stdin
        self._out: IO[bytes] = proc.stdout

    def send_raw(self, line: bytes) -> None:
        self._in.write(line + b"\n")
        self._in.flush()

    def send(self, message: dict[str, Any]) -> None:
        self.send_raw(json.dumps(message).encode())

    def receive(self) -> dict[str, Any]:
        line = self._out.readline()
        if not line:
            raise RuntimeError("mcpshield closed its stdout")
        answer: dict[str, Any] = json.loads(line)
        return answer


def _show(label: str, answer: dict[str, Any]) -> None:
    if label.startswith("tools/call whoami"):
        names = answer["result"]["content"][0]["text"].split(", ")
        leaked = "AWS_SECRET_ACCESS_KEY" in names
        verdict = "LEAKED" if leaked else "not passed"
        _say(f"  {label:<34} passed: {len(names)} variables; AWS_SECRET_ACCESS_KEY {verdict}")
        return
    if "error" in answer:
        _say(f"  {label:<34} refused: {answer['error']['code']} {answer['error']['message']}")
        return
    result = answer["result"]
    if result.get("isError"):
        _say(f"  {label:<34} refused: {result['content'][0]['text'][:90]}")
        return
    if "tools" in result:
        _say(f"  {label:<34} passed: tools {', '.join(t['name'] for t in result['tools'])}")
    elif "content" in result:
        _say(f"  {label:<34} passed: {result['content'][0]['text'][:70]}")
    else:
        _say(f"  {label:<34} passed: {json.dumps(result)[:70]}")


def _script(peer: _Peer) -> None:
    init = {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "demo", "version": "1"}}
    steps: list[tuple[str, bytes]] = [
        ("initialize", _request(1, "initialize", init)),
        ("tools/list", _request(2, "tools/list", {})),
        ("tools/call echo", _request(3, "tools/call", {"name": "echo", "arguments": {"text": "hello"}})),
        ("tools/call add", _request(4, "tools/call", {"name": "add", "arguments": {"a": 2, "b": 40}})),
        ("tools/call add (undeclared arg)", _call(5, "add", {"a": 2, "b": 40, "mode": "sudo"})),
        ("tools/call echo (a password)", _call(6, "echo", {"text": "my password is hunter2"})),
        ("tools/call shell (not in profile)", _call(7, "shell", {"command": "rm -rf ~"})),
        ("tools/call whoami (environment)", _request(8, "tools/call", {"name": "whoami", "arguments": {}})),
        ("tools/call noisy (stray stdout)", _request(9, "tools/call", {"name": "noisy", "arguments": {}})),
        ("a line that is not JSON", b"this is not json"),
        ("a JSON-RPC batch", b'[{"jsonrpc":"2.0","id":10,"method":"ping"}]'),
        ("a request with a duplicate key", b'{"jsonrpc":"2.0","id":11,"method":"tools/call","method":"ping"}'),
    ]
    peer.send_raw(steps[0][1])
    _show(steps[0][0], peer.receive())
    peer.send({"jsonrpc": "2.0", "method": "notifications/initialized"})
    for label, line in steps[1:]:
        peer.send_raw(line)
        _show(label, peer.receive())


def _request(msg_id: int, method: str, params: dict[str, Any]) -> bytes:
    return json.dumps({"jsonrpc": "2.0", "id": msg_id, "method": method, "params": params}).encode()


def _call(msg_id: int, tool: str, arguments: dict[str, Any]) -> bytes:
    return _request(msg_id, "tools/call", {"name": tool, "arguments": arguments})


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="mcpshield-demo-") as tmp:
        profile = Path(tmp) / "demo.toml"
        profile.write_text(DEMO_PROFILE, encoding="utf-8")
        _say(f"the profile ({profile.name}):")
        for line in DEMO_PROFILE.splitlines():
            _say(f"  | {line}")
        return _session(profile)


def _session(profile: Path) -> int:
    server = [sys.executable, "-m", "mcpshield.demo.server"]
    command = [sys.executable, "-m", "mcpshield", "run", "--profile", str(profile), "--", *server]
    _say(f"\n$ mcpshield run --profile {profile.name} -- " + " ".join(server))
    # A secret in mcpshield's own environment that the server must not see.
    env = {**os.environ, "AWS_SECRET_ACCESS_KEY": "demo-not-a-real-key"}
    proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    peer = _Peer(proc)
    started = time.monotonic()
    try:
        _script(peer)
    finally:
        assert proc.stdin and proc.stderr
        proc.stdin.close()
        status = proc.wait(timeout=ANSWER_TIMEOUT_S)
        notes = proc.stderr.read().decode("utf-8", "replace").splitlines()
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
    _say(f"client closed the pipe; mcpshield exited with the server's status {status}")
    _say(f"whole session: {1000 * (time.monotonic() - started):.0f} ms\n")
    _say("stderr (the server's own lines, and mcpshield's notes):")
    for note in notes:
        _say(f"  {note}")
    return 0 if status == 0 else 1
