"""Tier 2: the relay end to end, `mcpshield run` around the fake server, real pipes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from conftest import FAKE_SERVER, INIT_PARAMS, LineClient, environ_with, fake_argv, shield_argv

Shield = Callable[..., LineClient]

# Odd spacing, key order and escapes: a relay that re-encodes would change these bytes.
ODD_REQUEST = (
    b'{ "params" : {"name":"echo","arguments":{"text":"caf\\u00e9 \xe2\x80\xa8 \xc2\x85 \\"q\\""}},'
    b' "method":"tools/call","id":7, "jsonrpc":"2.0" }\n'
)


def _direct_lines(stdin: bytes, *flags: str) -> list[bytes]:
    done = subprocess.run(fake_argv(*flags), input=stdin, capture_output=True, timeout=30, check=True)
    return done.stdout.splitlines(keepends=True)


def test_messages_pass_byte_for_byte_both_ways(shield: Shield, tmp_path: Path) -> None:
    record = tmp_path / "received.jsonl"
    init = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": INIT_PARAMS}).encode() + b"\n"
    sent = [init, b'{"jsonrpc":"2.0","method":"notifications/initialized"}\n', ODD_REQUEST]
    client = shield(*fake_argv("--record", str(record)))
    for line in sent:
        client.send_raw(line)
    wrapped = [client.read_raw(), client.read_raw()]
    client.close_stdin()
    assert client.wait() == 0
    assert wrapped == _direct_lines(b"".join(sent))
    assert record.read_bytes() == b"".join(sent)


def test_the_discover_probe_error_passes_back_untouched(shield: Shield) -> None:
    probe = b'{"jsonrpc":"2.0","id":0,"method":"server/discover","params":{}}\n'
    client = shield(*fake_argv())
    client.send_raw(probe)
    assert client.read_raw() == _direct_lines(probe)[0]
    assert client.initialize()["result"]["serverInfo"]["name"] == "fake-server"


def test_unknown_methods_and_notifications_pass(shield: Shield) -> None:
    client = shield(*fake_argv())
    client.initialize()
    client.request(5, "vendor/whatever", {"x": 1})
    assert client.answer_for(5)["error"]["code"] == -32601


def test_bad_input_from_the_client_is_answered_and_the_relay_goes_on(shield: Shield) -> None:
    client = shield(*fake_argv())
    client.initialize()
    client.send_raw(b"this is not json\n")
    assert client.read() == {
        "jsonrpc": "2.0",
        "id": None,
        "error": {"code": -32700, "message": "the line is not valid UTF-8 JSON"},
    }
    client.send_raw(b'[{"jsonrpc":"2.0","id":2,"method":"ping"}]\n')
    batch = client.read()
    assert batch["error"]["code"] == -32600
    assert "batch" in batch["error"]["message"]
    client.send_raw(b'{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"echo","name":"exit"}}\n')
    duplicate = client.read()
    assert (duplicate["id"], duplicate["error"]["code"]) == (3, -32600)
    client.send_raw(b'{"jsonrpc":"2.0","id":true,"method":"ping"}\n')
    assert client.read()["error"]["code"] == -32600
    client.call(4, "echo", {"text": "still here"})
    assert client.answer_for(4)["result"]["content"][0]["text"] == "still here"
    stderr = client.wait_stderr(b"repeat an object key")
    assert b"batches are not accepted" in stderr


def test_a_line_over_the_size_bound_is_refused_without_stopping_the_relay(shield: Shield) -> None:
    client = shield(*fake_argv())
    client.initialize()
    head = b'{"jsonrpc":"2.0","id":"huge","method":"tools/call","params":{"name":"echo","arguments":{"text":"'
    client.send_raw(head + b"x" * (64 * 1024 * 1024 + 10) + b'"}}}\n')
    refusal = client.answer_for("huge", timeout=60)
    assert refusal["error"]["code"] == -32600
    assert "limit" in refusal["error"]["message"]
    client.call(2, "echo", {"text": "after"})
    assert client.answer_for(2)["result"]["content"][0]["text"] == "after"


def test_duplicate_in_flight_ids_are_refused(shield: Shield) -> None:
    client = shield(*fake_argv())
    client.initialize()
    client.call(9, "sleep", {"ms": 300})
    client.call(9, "echo", {"text": "again"})
    refused = client.read()
    assert (refused["id"], refused["error"]["code"]) == (9, -32600)
    assert "in flight" in refused["error"]["message"]
    assert "result" in client.answer_for(9)


def test_non_json_server_output_is_kept_off_stdout_and_reported(shield: Shield) -> None:
    client = shield(*fake_argv("--banner"))
    client.initialize()
    client.call(2, "stray")
    assert client.read()["id"] == 2
    stderr = client.wait_stderr(b"stray debug print")
    assert b"fake-server starting up" in stderr
    assert b"kept non-JSON server output off the client's stdout" in stderr


def test_a_response_nobody_asked_for_is_dropped_and_reported(shield: Shield) -> None:
    client = shield(*fake_argv())
    client.initialize()
    client.call(2, "unknown_id")
    assert client.read()["id"] == 2
    assert b"987654321" in client.wait_stderr(b"which no request is waiting for")


def test_the_servers_requests_reach_the_client_and_its_answers_return(shield: Shield) -> None:
    client = shield(*fake_argv())
    client.initialize()
    for n, method in enumerate(("sampling/createMessage", "elicitation/create", "roots/list", "ping")):
        client.call(n, "ask_client", {"method": method, "params": {}})
        request = client.read()
        assert request["method"] == method
        client.send({"jsonrpc": "2.0", "id": request["id"], "result": {"answered": method}})
        text = client.answer_for(n)["result"]["content"][0]["text"]
        assert json.loads(text) == {"answered": method}


def test_an_answer_to_a_server_request_nobody_made_is_dropped(shield: Shield) -> None:
    client = shield(*fake_argv())
    client.initialize()
    client.send({"jsonrpc": "2.0", "id": "srv-999", "result": {}})
    client.wait_stderr(b"from the client to id 'srv-999', which no request is waiting for")


def test_progress_logging_and_list_changed_notifications_pass(shield: Shield) -> None:
    client = shield(*fake_argv())
    client.initialize()
    client.request(2, "tools/call", {"name": "progress", "arguments": {"steps": 3}, "_meta": {"progressToken": "p"}})
    client.answer_for(2)
    progress = [m for m in client.skipped if m.get("method") == "notifications/progress"]
    assert [m["params"]["progressToken"] for m in progress] == ["p", "p", "p"]
    client.call(3, "log", {"message": "hello log"})
    client.answer_for(3)
    assert client.skipped[0]["method"] == "notifications/message"
    client.call(4, "list_changed")
    client.answer_for(4)
    assert client.skipped[0]["method"] == "notifications/tools/list_changed"


def test_a_cancelled_request_is_never_answered(shield: Shield) -> None:
    client = shield(*fake_argv())
    client.initialize()
    client.call(2, "sleep", {"ms": 400})
    client.send({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 2}})
    client.wait_stderr(b"cancelled 2")
    client.call(3, "echo", {"text": "next"})
    assert client.read()["id"] == 3
    assert client.nothing_more(within=0.6)


def test_a_late_answer_to_a_cancelled_request_is_dropped(shield: Shield) -> None:
    client = shield(*fake_argv("--ignore-cancel"))
    client.initialize()
    client.call(2, "sleep", {"ms": 200})
    client.send({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 2}})
    client.call(3, "sleep", {"ms": 400})
    assert client.read()["id"] == 3
    assert client.nothing_more(within=0.3)


def test_when_the_server_dies_in_flight_requests_get_an_error_and_its_status(shield: Shield) -> None:
    client = shield(*fake_argv())
    client.initialize()
    client.call(2, "sleep", {"ms": 5000})
    client.call(3, "exit", {"code": 3})
    answer = client.read()
    assert answer["id"] in (2, 3)
    assert answer["error"]["code"] == -32000
    assert "exited with status 3" in answer["error"]["message"]
    second = client.read()
    assert {answer["id"], second["id"]} == {2, 3}
    assert client.read_raw() == b""
    assert client.wait() == 3


def test_the_server_gets_a_minimal_environment(shield: Shield) -> None:
    stand_in = {"AWS_SECRET_ACCESS_KEY": "not-a-real-key"}  # what the server must not see
    env = environ_with(**stand_in, PASSED_ON="yes", LC_ALL="C.UTF-8")
    client = shield(*fake_argv(), flags=["--env", "PASSED_ON", "--env", "SET_HERE=value"], env=env)
    client.initialize()
    client.call(2, "env")
    server_env = json.loads(client.answer_for(2)["result"]["content"][0]["text"])
    assert "AWS_SECRET_ACCESS_KEY" not in server_env
    assert server_env["PASSED_ON"] == "yes"
    assert server_env["SET_HERE"] == "value"
    assert server_env["LC_ALL"] == "C.UTF-8"
    assert server_env["PATH"] == os.environ["PATH"]
    allowed = {"PATH", "HOME", "USER", "LOGNAME", "SHELL", "TERM", "LANG", "TMPDIR", "TZ", "PASSED_ON", "SET_HERE"}
    allowed |= {"SSL_CERT_FILE", "SSL_CERT_DIR", "NODE_EXTRA_CA_CERTS"}
    assert {k for k in server_env if not k.startswith("LC_")} <= allowed


def test_the_servers_stderr_passes_through(shield: Shield) -> None:
    client = shield(*fake_argv())
    client.wait_stderr(b"fake-server: ready")


def test_the_exit_status_is_the_servers() -> None:
    code = "import sys; sys.stdin.read(); sys.exit(7)"
    done = subprocess.run(
        shield_argv(sys.executable, "-c", code), input=b"", capture_output=True, timeout=30, check=False
    )
    assert done.returncode == 7
    assert done.stdout == b""


def test_a_server_that_cannot_start_gets_one_line_and_a_tip() -> None:
    done = subprocess.run(
        shield_argv("no-such-mcp-server-anywhere"), input=b"", capture_output=True, timeout=30, check=False
    )
    assert done.returncode == 127
    assert done.stdout == b""
    lines = done.stderr.decode().splitlines()
    assert lines[0].startswith("mcpshield: cannot start 'no-such-mcp-server-anywhere': not found on PATH")
    assert lines[1].startswith("Tip: use the absolute path")


def test_run_without_a_command_explains_itself() -> None:
    done = subprocess.run(shield_argv(), input=b"", capture_output=True, timeout=30, check=False)
    assert done.returncode == 2
    assert b"Tip: put it after --" in done.stderr


def test_a_regular_file_as_stdin_works(tmp_path: Path) -> None:
    script = tmp_path / "session.jsonl"
    script.write_bytes(b'{"jsonrpc":"2.0","id":1,"method":"ping"}\n')
    with script.open("rb") as stdin:
        done = subprocess.run(
            shield_argv(sys.executable, FAKE_SERVER), stdin=stdin, capture_output=True, timeout=30, check=False
        )
    assert json.loads(done.stdout) == {"jsonrpc": "2.0", "id": 1, "result": {}}
    assert done.returncode == 0


def test_a_terminal_as_stdin_is_left_blocking_as_it_was() -> None:
    import pty

    controller, terminal = pty.openpty()
    try:
        proc = subprocess.Popen(
            shield_argv(sys.executable, "-c", "import time; time.sleep(0.3)"),
            stdin=terminal,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        assert proc.wait(timeout=30) == 0
        assert os.get_blocking(terminal), "mcpshield left the shared terminal non-blocking"
    finally:
        os.close(controller)
        os.close(terminal)


def test_the_profile_env_is_injected_redacted_and_wins_over_env_flags(shield: Shield, tmp_path: Path) -> None:
    profile = tmp_path / "env.toml"
    profile.write_text(
        '[tools]\nallow = ["env"]\n\n[env]\nFROM_PARENT = "env:PARENT_VALUE"\nSHARED = "profile-value-1"\n'
    )
    env = environ_with(PARENT_VALUE="parent-secret-42")
    flags = ["--profile", str(profile), "--env", "SHARED=flag-value-1", "--env", "PLAIN=plain-flag-value"]
    client = shield(*fake_argv(), flags=flags, env=env)
    client.initialize()
    client.call(2, "env")
    server_env = json.loads(client.answer_for(2)["result"]["content"][0]["text"])
    assert server_env["FROM_PARENT"] == "[REDACTED:FROM_PARENT]"
    assert server_env["SHARED"] == "[REDACTED:SHARED]"  # the profile's value, redacted on the way back
    assert server_env["PLAIN"] == "plain-flag-value"  # --env values are not redacted
    assert "PARENT_VALUE" not in server_env
    client.wait_stderr(b"mcpshield: the profile's [env] sets SHARED, over what --env passed")


def test_stdin_from_dev_null_ends_the_session_cleanly() -> None:
    with open(os.devnull, "rb") as nothing:
        done = subprocess.run(
            shield_argv(*fake_argv(), flags=["--no-audit"]),
            stdin=nothing,
            capture_output=True,
            timeout=30,
            check=False,
        )
    assert done.returncode == 0, done.stderr.decode()
    assert b"Traceback" not in done.stderr
    assert done.stdout == b""
