"""`mcpshield run` with a profile's `[sandbox]`, end to end: the fake server tries to write, read,
connect and hold resources, and the OS refuses what the profile does not grant. Every test runs
with both Linux backends, as root and as an unprivileged user."""

from __future__ import annotations

import itertools
import json
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from conftest import EXIT_TIMEOUT_S, LineClient, sandbox_unavailable, wait_all_gone
from sandboxing import (
    Who,
    environment,
    is_error,
    make_dirs,
    root,
    shield_fake,
    text,
    unprivileged,
    workdir,
    write_profile,
)

from mcpshield.sandbox import landlock

BACKENDS = ("bubblewrap", "landlock")
PEOPLE = ("root", "unprivileged")
#: The profile's open-file limit; the server tries to open many more.
OPEN_FILES = 64
_ids = itertools.count(1)


@dataclass
class Session:
    client: LineClient
    work: Path
    who: Who
    backend: str

    def call(self, tool: str, **arguments: Any) -> dict[str, Any]:
        msg_id = next(_ids)
        self.client.call(msg_id, tool, arguments)
        return self.client.answer_for(msg_id, timeout=30)


def person(name: str) -> Who:
    return root() if name == "root" else unprivileged()


def require(backend: str) -> None:
    if backend == "landlock" and landlock.abi_version() < 4:
        sandbox_unavailable(f"Landlock ABI {landlock.abi_version()} is below 4")
    if backend == "bubblewrap" and not os.path.exists("/usr/bin/bwrap"):
        sandbox_unavailable("bubblewrap is not installed")


@contextmanager
def started(
    backend: str, name: str, sandbox: Callable[[Path], str], files: Sequence[str] = (), *, initialize: bool = True
) -> Iterator[Session]:
    """A session as `name` in a fresh work folder (holding `files`, each saying "content of"
    its path), under a profile whose [sandbox] is `sandbox(work)`; initialized unless told not."""
    require(backend)
    who = person(name)
    with workdir(who) as work:
        for relative in files:
            make_dirs(who, (work / relative).parent)
            (work / relative).write_text(f"content of {relative}")
        client = shield_fake(who, work, write_profile(who, work, f'backend = "{backend}"\n{sandbox(work)}'))
        try:
            if initialize:
                client.initialize()
            yield Session(client, work, who, backend)
        finally:
            client.kill()


@contextmanager
def alone(backend: str, sandbox: str = "", *, initialize: bool = True) -> Iterator[Session]:
    """A session of its own, as root, under a profile whose [sandbox] is `sandbox`."""
    with started(backend, "root", lambda _work: sandbox, initialize=initialize) as one:
        yield one


def the_session_sandbox(work: Path) -> str:
    return f"""network = false
write = ["{work}/out"]
deny = ["~/.ssh", "{work}/secret"]
max_open_files = {OPEN_FILES}
"""


@pytest.fixture(scope="module", params=[(b, p) for b in BACKENDS for p in PEOPLE], ids="-".join)
def session(request: pytest.FixtureRequest) -> Iterator[Session]:
    files = ("out/.keep", "secret/key.txt", "public/notes.txt", "home/.ssh/id_ed25519")
    backend, name = request.param
    with started(backend, name, the_session_sandbox, files) as one:
        yield one


def test_the_server_can_write_inside_write_and_the_file_is_there_outside(session: Session) -> None:
    target = session.work / "out" / "result.txt"
    answer = session.call("write_file", path=str(target), content="made inside")
    assert not is_error(answer), answer
    assert target.read_text() == "made inside"


def test_a_write_outside_write_is_refused_by_the_os(session: Session) -> None:
    for target in (session.work / "public" / "planted.txt", session.work / "home" / ".bashrc"):
        answer = session.call("write_file", path=str(target), content="planted")
        assert is_error(answer), answer
        assert not target.exists()


def test_a_denied_folder_cannot_be_read_but_its_siblings_can(session: Session) -> None:
    denied = session.call("read_file", path=str(session.work / "secret" / "key.txt"))
    assert is_error(denied) and "content of" not in text(denied)
    kept = session.call("read_file", path=str(session.work / "public" / "notes.txt"))
    assert text(kept) == "content of public/notes.txt"


def test_a_tilde_path_in_deny_is_the_home_of_whoever_runs_mcpshield(session: Session) -> None:
    answer = session.call("read_file", path=str(session.work / "home" / ".ssh" / "id_ed25519"))
    assert is_error(answer) and "content of" not in text(answer)


def test_mcpshields_own_audit_log_is_hidden_from_the_server(session: Session) -> None:
    (log,) = (session.work / "logs").rglob("*.jsonl")
    answer = session.call("read_file", path=str(log))  # readable by the user, not by the server
    assert is_error(answer) and "session_start" not in text(answer)


def test_without_network_a_loopback_server_outside_is_unreachable(session: Session) -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        answer = session.call("connect", host="127.0.0.1", port=port)
    assert is_error(answer), answer


def test_remounting_root_writable_fails(session: Session) -> None:
    answer = session.call("run", argv=["mount", "-o", "remount,rw", "/"])
    outcome = json.loads(text(answer)) if not is_error(answer) else {"status": "not run"}
    assert outcome["status"] != 0, outcome
    probe = session.call("write_file", path="/mcpshield-remount-probe", content="x")
    assert is_error(probe)
    assert not Path("/mcpshield-remount-probe").exists()


def test_the_open_file_limit_holds(session: Session) -> None:
    answer = session.call("open_files", count=OPEN_FILES * 4)
    assert int(text(answer)) < OPEN_FILES


def test_the_audit_log_names_the_backend(session: Session) -> None:
    logs = list((session.work / "logs").rglob("*.jsonl"))
    starts = [json.loads(f.read_text().splitlines()[0]) for f in logs]
    assert any(isinstance(s.get("sandbox"), dict) and s["sandbox"]["backend"] == session.backend for s in starts)


# -- one session each ------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_killing_mcpshield_leaves_no_process_of_the_tree(backend: str) -> None:
    with alone(backend) as one:
        one.client.call(1, "spawn_grandchild", {"new_session": True})
        assert "result" in one.client.answer_for(1)
        tree = one.client.tree()
        assert len(tree) >= 3
        os.kill(one.client.proc.pid, signal.SIGKILL)
        one.client.wait()
        assert wait_all_gone(tree) == []


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_tree_over_memory_mb_is_killed_and_the_client_told_why(backend: str) -> None:
    with alone(backend, "memory_mb = 150") as one:
        answer = one.call("alloc", mb=400)
        assert "memory_mb" in answer["error"]["message"]
        assert one.client.wait(EXIT_TIMEOUT_S) != 0
        assert b"memory_mb" in one.client.stderr_text()


def test_a_required_sandbox_that_cannot_be_had_refuses_to_start() -> None:
    with alone("seatbelt", initialize=False) as one:
        assert one.client.wait(EXIT_TIMEOUT_S) == 126
        err = one.client.stderr_text().decode()
        assert "cannot be enforced here" in err and "Tip:" in err and "best_effort" in err
        assert one.client.read_raw() == b""


def test_best_effort_starts_anyway_and_says_what_is_not_enforced() -> None:
    with alone("seatbelt", 'enforcement = "best_effort"') as one:
        assert one.call("echo", text="unconfined")["result"]["content"][0]["text"] == "unconfined"
        err = one.client.wait_stderr(b"not fully enforced").decode()
        assert "filesystem" in err and "best_effort" in err


# -- a host allowlist through the egress proxy -----------------------------------------------


class _Hello(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b"hello from the host"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def web() -> Iterator[int]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Hello)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module", params=[(b, p) for b in BACKENDS for p in PEOPLE], ids="-".join)
def allowlisted(request: pytest.FixtureRequest) -> Iterator[Session]:
    backend, name = request.param
    # Under Landlock a host list is only a port fence: it runs when the profile accepts that.
    accept = '\nenforcement = "best_effort"' if backend == "landlock" else ""
    with started(backend, name, lambda _work: f'network = ["localhost"]{accept}') as one:
        yield one


def test_a_required_host_list_under_landlock_refuses_to_start_naming_the_port_fence() -> None:
    require("landlock")
    with alone("landlock", 'network = ["localhost"]', initialize=False) as one:
        assert one.client.wait(EXIT_TIMEOUT_S) == 126
        assert "port fence" in one.client.stderr_text().decode()


def test_an_allowed_host_is_reached_through_the_proxy(allowlisted: Session, web: int) -> None:
    answer = allowlisted.call("http_get", url=f"http://localhost:{web}/")
    assert text(answer) == "200 hello from the host"


def test_another_name_is_refused_by_the_proxy(allowlisted: Session, web: int) -> None:
    answer = allowlisted.call("http_get", url=f"http://127.0.0.1:{web}/")
    assert is_error(answer) and "403" in text(answer)
    answer = allowlisted.call("http_get", url="http://example.invalid/")
    assert is_error(answer) and "403" in text(answer)


def test_a_connection_around_the_proxy_fails(allowlisted: Session, web: int) -> None:
    answer = allowlisted.call("connect", host="127.0.0.1", port=web)
    assert is_error(answer), answer


def test_every_proxy_decision_is_in_the_audit_log(allowlisted: Session, web: int) -> None:
    allowlisted.call("http_get", url="http://refused.invalid/")
    deadline = time.monotonic() + EXIT_TIMEOUT_S  # the log's writer batches; poll, bounded
    while True:
        events: list[dict[str, Any]] = []
        for log in (allowlisted.work / "logs").rglob("*.jsonl"):
            events += [json.loads(line) for line in log.read_text().splitlines() if line.endswith("}")]
        refused = [e for e in events if e.get("event") == "egress" and e.get("host") == "refused.invalid"]
        if refused or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert refused and refused[0]["decision"] == "deny" and refused[0]["status"] == 403, refused


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_server_starts_in_mcpshields_working_directory(backend: str) -> None:
    with alone(backend) as one:
        answer = one.call("run", argv=["pwd"])
        assert json.loads(text(answer))["output"].strip() == str(one.work)


def test_started_from_the_hosts_tmp_the_server_starts_in_its_write_folder_instead() -> None:
    """bubblewrap gives the server a /tmp of its own: the host's cannot be its directory."""
    require("bubblewrap")
    who = root()
    with workdir(who) as work:
        make_dirs(who, work / "out")
        profile = write_profile(who, work, f'backend = "bubblewrap"\nwrite = ["{work}/out"]')
        client = shield_fake(who, work, profile, cwd=Path("/tmp"))
        try:
            client.initialize()
            client.call(1, "run", {"argv": ["pwd"]})
            assert json.loads(text(client.answer_for(1)))["output"].strip() == str(work / "out")
            assert b"cannot see /tmp" in client.stderr_text()
        finally:
            client.kill()


def test_a_package_runner_that_fails_without_network_is_told_which_registry_it_needs() -> None:
    require("bubblewrap")
    who = root()
    with workdir(who) as work:
        npx = work / "bin" / "npx"
        make_dirs(who, npx.parent)
        npx.write_text("#!/bin/sh\necho 'npm error network: getaddrinfo EAI_AGAIN' >&2\nexit 1\n")
        npx.chmod(0o755)
        profile = write_profile(who, work, 'backend = "bubblewrap"\nnetwork = false')
        argv = [who.python, "-m", "mcpshield", "run", "--profile", str(profile), "--", str(npx), "-y", "some-server"]
        client = LineClient(argv, env=environment(who, work), cwd=str(work))
        try:
            assert client.wait(EXIT_TIMEOUT_S) == 1
            err = client.stderr_text().decode()
            assert "Tip:" in err and '"registry.npmjs.org" to [sandbox] network' in err, err
        finally:
            client.kill()
