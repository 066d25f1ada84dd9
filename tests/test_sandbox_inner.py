"""The in-sandbox launcher for real: it takes its plan out of the environment, sets the limits,
relays a loopback port to a Unix socket, mirrors how the server ended, and refuses to start a
server it cannot confine as required."""

from __future__ import annotations

import hashlib
import json
import os
import select
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

import psutil
import pytest
from conftest import sandbox_unavailable, wait_all_gone

from mcpshield.sandbox import inner, landlock, seccomp
from mcpshield.sandbox.spec import INNER_PLAN_ENV, InnerPlan

#: Bound on one sandboxed Python start-up and what it does.
RUN_TIMEOUT_S: Final = 30.0
INNER: Final = (sys.executable, "-m", "mcpshield.sandbox.inner")


def plan_env(**plan: Any) -> dict[str, str]:
    return {**os.environ, INNER_PLAN_ENV: json.dumps(plan)}


def run_plan(**plan: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        INNER, env=plan_env(**plan), capture_output=True, text=True, timeout=RUN_TIMEOUT_S, check=False
    )


def python(code: str) -> list[str]:
    return [sys.executable, "-I", "-c", code]


def free_port() -> int:
    with socket.create_server(("127.0.0.1", 0)) as probe:
        port: int = probe.getsockname()[1]
    return port


def first_line(proc: subprocess.Popen[str]) -> str:
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], RUN_TIMEOUT_S)
    assert ready, "the server never wrote its first line"
    return proc.stdout.readline().strip()


class DigestServer:
    """A stand-in for the egress proxy: on its Unix socket, answers each connection with the
    SHA-256 of everything it received before the client's half-close."""

    def __init__(self, path: Path) -> None:
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(str(path))
        self.listener.listen(1)
        self.listener.settimeout(RUN_TIMEOUT_S)
        self.thread = threading.Thread(target=self._serve_one, daemon=True)
        self.thread.start()

    def _serve_one(self) -> None:
        conn, _ = self.listener.accept()
        with conn:
            conn.settimeout(RUN_TIMEOUT_S)
            digest = hashlib.sha256()
            while data := conn.recv(65536):
                digest.update(data)
            conn.sendall(digest.hexdigest().encode())

    def close(self) -> None:
        self.thread.join(RUN_TIMEOUT_S)
        self.listener.close()


@pytest.fixture
def proxy(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "proxy.sock"
    server = DigestServer(path)
    yield path
    server.close()


SEND_MIB: Final = """
import hashlib, os, socket, sys
payload = os.urandom(1 << 20)
with socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=20) as conn:
    conn.sendall(payload)
    conn.shutdown(socket.SHUT_WR)
    answer = b"".join(iter(lambda: conn.recv(65536), b""))
print("relayed" if answer.decode() == hashlib.sha256(payload).hexdigest() else f"mangled: {answer!r}")
"""


def test_the_forwarder_relays_bytes_to_the_unix_socket_both_ways(proxy: Path) -> None:
    port = free_port()
    result = run_plan(argv=[*python(SEND_MIB), str(port)], forward={"port": port, "unix_path": str(proxy)})
    assert result.stdout.strip() == "relayed", result.stderr
    assert result.returncode == 0


def test_a_connection_is_closed_when_the_proxy_is_not_there(tmp_path: Path) -> None:
    port = free_port()
    probe = f"import socket\nc = socket.create_connection(('127.0.0.1', {port}), timeout=20)\nprint(c.recv(1) == b'')"
    result = run_plan(argv=python(probe), forward={"port": port, "unix_path": str(tmp_path / "absent.sock")})
    assert result.stdout.strip() == "True", result.stderr


def test_the_plan_is_gone_from_the_environment_the_server_sees() -> None:
    result = run_plan(argv=python(f"import os; print({INNER_PLAN_ENV!r} in os.environ)"))
    assert result.stdout.strip() == "False", result.stderr


@pytest.mark.parametrize("forward", [False, True])
def test_the_exit_status_of_the_server_is_mirrored(forward: bool, tmp_path: Path) -> None:
    via = {"forward": {"port": free_port(), "unix_path": str(tmp_path / "p.sock")}} if forward else {}
    assert run_plan(argv=python("raise SystemExit(7)"), **via).returncode == 7


@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGTERM, signal.SIGINT])
@pytest.mark.parametrize("forward", [False, True])
def test_a_server_killed_by_a_signal_ends_the_launcher_by_the_same_signal(
    forward: bool, signum: signal.Signals, tmp_path: Path
) -> None:
    via = {"forward": {"port": free_port(), "unix_path": str(tmp_path / "p.sock")}} if forward else {}
    default = "" if signum == signal.SIGKILL else f"signal.signal({signum}, signal.SIG_DFL)\n"
    suicide = python(f"import os, signal\n{default}os.kill(os.getpid(), {signum})")
    assert run_plan(argv=suicide, **via).returncode == -signum


WAIT_FOR_TERM: Final = """
import os, signal
signal.signal(signal.SIGTERM, lambda *_: os._exit(os.write(1, b"terminated\\n") and 3))
print("ready", flush=True)
signal.pause()
"""


def test_sigterm_to_the_relaying_launcher_reaches_the_server(tmp_path: Path) -> None:
    plan = plan_env(argv=python(WAIT_FOR_TERM), forward={"port": free_port(), "unix_path": str(tmp_path / "p.sock")})
    with subprocess.Popen(INNER, env=plan, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as proc:
        try:
            assert first_line(proc) == "ready"
            proc.send_signal(signal.SIGTERM)
            out, err = proc.communicate(timeout=RUN_TIMEOUT_S)
        finally:
            proc.kill()
    assert out.strip() == "terminated", err
    assert proc.returncode == 3


PRINT_PID: Final = """
import os, signal
print(os.getpid(), flush=True)
signal.pause()
"""


def test_killing_the_relaying_launcher_takes_the_server_with_it(tmp_path: Path) -> None:
    plan = plan_env(argv=python(PRINT_PID), forward={"port": free_port(), "unix_path": str(tmp_path / "p.sock")})
    with subprocess.Popen(INNER, env=plan, stdout=subprocess.PIPE, text=True) as proc:
        try:
            server = psutil.Process(int(first_line(proc)))
            proc.kill()
            proc.wait(timeout=RUN_TIMEOUT_S)
            assert wait_all_gone([server]) == []
        finally:
            proc.kill()


def test_the_open_file_limit_holds() -> None:
    opens = "import resource\nfiles = []\ntry:\n    while True: files.append(open('/dev/null'))\nexcept OSError: pass\n"
    probe = opens + "print(resource.getrlimit(resource.RLIMIT_NOFILE), len(files) < 64)"
    result = run_plan(argv=python(probe), rlimit_nofile=64)
    assert result.stdout.strip() == "(64, 64) True", result.stderr


def test_the_cpu_limit_is_set() -> None:
    probe = "import resource; print(resource.getrlimit(resource.RLIMIT_CPU))"
    assert run_plan(argv=python(probe), rlimit_cpu=30).stdout.strip() == "(30, 30)"


def test_a_limit_is_never_raised_above_the_hard_limit_it_had() -> None:
    lowered = python(
        "import os, resource, sys\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (50, 50))\n"
        f"os.execv(sys.executable, {list(INNER)!r})"
    )
    probe = python("import resource; print(resource.getrlimit(resource.RLIMIT_NOFILE))")
    result = subprocess.run(
        lowered,
        env=plan_env(argv=probe, rlimit_nofile=4096),
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
        check=False,
    )
    assert result.stdout.strip() == "(50, 50)", result.stderr


def test_all_three_confinements_apply_together(tmp_path: Path) -> None:
    if landlock.abi_version() < landlock.TCP_ABI or not seccomp.available():
        sandbox_unavailable("this machine lacks Landlock ABI 4 or seccomp")
    probe = python(
        "import resource, socket\n"
        "try:\n    socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\nexcept PermissionError:\n    print('no-udp')\n"
        f"try:\n    open({str(tmp_path / 'x')!r}, 'w')\nexcept PermissionError:\n    print('no-write')\n"
        "print(resource.getrlimit(resource.RLIMIT_NOFILE)[0])"
    )
    result = run_plan(
        argv=probe,
        landlock_read=["/"],
        tcp_connect_ports=[],
        seccomp="tcp_only",
        rlimit_nofile=100,
        required=["filesystem", "network", "limits"],
    )
    assert result.stdout.split() == ["no-udp", "no-write", "100"], result.stderr
    assert result.stderr == ""


def capabilities(**plan: Any) -> dict[str, int]:
    """The capability sets `grep` sees in /proc/self/status: sandboxed by `plan`, or outside
    without one."""
    grep = ["grep", "^Cap", "/proc/self/status"]
    if plan:
        result = run_plan(argv=grep, **plan)
    else:
        result = subprocess.run(grep, capture_output=True, text=True, timeout=RUN_TIMEOUT_S, check=True)
    return {line.split(":")[0]: int(line.split()[1], 16) for line in result.stdout.splitlines()}


def test_a_confined_server_has_no_capabilities_even_as_root(tmp_path: Path) -> None:
    sets = capabilities(landlock_write=[str(tmp_path)])
    assert sets == {"CapInh": 0, "CapPrm": 0, "CapEff": 0, "CapBnd": 0, "CapAmb": 0}


def test_a_confined_root_server_cannot_give_a_file_away(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        sandbox_unavailable("only root can give a file away to begin with")
    (tmp_path / "mine").write_text("x")
    chown = f"os.chown({str(tmp_path / 'mine')!r}, 12345, 12345)"
    probe = f"import os\ntry:\n    {chown}\nexcept PermissionError:\n    print('refused')"
    result = run_plan(argv=python(probe), landlock_write=[str(tmp_path)])
    assert result.stdout.strip() == "refused", result.stderr


def test_an_unconfined_plan_leaves_capabilities_alone() -> None:
    assert capabilities(rlimit_nofile=512)["CapEff"] == capabilities()["CapEff"]


def test_a_missing_command_exits_127_with_a_tip() -> None:
    result = run_plan(argv=["mcpshield-no-such-server"])
    assert result.returncode == inner.EXIT_NOT_FOUND
    assert "mcpshield-no-such-server: not found. Tip:" in result.stderr


def test_a_malformed_plan_exits_126_with_a_tip() -> None:
    result = run_plan(argv=[], seccomp="none")
    assert result.returncode == inner.EXIT_CANNOT_CONFINE
    assert result.stderr.startswith("mcpshield: sandbox: the sandbox plan is malformed")
    assert "Tip:" in result.stderr


def test_without_a_plan_the_launcher_exits_126() -> None:
    env = {k: v for k, v in os.environ.items() if k != INNER_PLAN_ENV}
    result = subprocess.run(INNER, env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT_S, check=False)
    assert result.returncode == inner.EXIT_CANNOT_CONFINE
    assert INNER_PLAN_ENV in result.stderr


def test_a_required_dimension_the_kernel_cannot_enforce_stops_the_launch(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    plan = {"argv": ["true"], "tcp_connect_ports": [443], "required": ["network"]}
    monkeypatch.setenv(INNER_PLAN_ENV, json.dumps(plan))
    monkeypatch.setattr(landlock, "abi_version", lambda: 3)
    with pytest.raises(SystemExit) as ended:
        inner.main()  # decides before it changes anything, so it can run in this process
    assert ended.value.code == inner.EXIT_CANNOT_CONFINE
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("mcpshield: sandbox: Landlock ABI 3 cannot restrict TCP connections")
    assert "Tip: use Linux 6.7 or newer" in line


def test_an_unrequired_dimension_that_falls_short_is_a_warning(capsys: pytest.CaptureFixture[str]) -> None:
    plan = InnerPlan(argv=("true",), tcp_connect_ports=(443,), required=("filesystem",))
    inner.settle(plan, inner.shortfalls(plan, abi=3, seccomp_available=True))
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("mcpshield: sandbox: warning: Landlock ABI 3 cannot restrict TCP")
    assert line.endswith("network is not restricted (best effort)")


def test_each_missing_feature_is_named_for_its_dimension() -> None:
    plan = InnerPlan(argv=("true",), landlock_write=("/tmp",), tcp_connect_ports=(), seccomp="no_inet")
    found = inner.shortfalls(plan, abi=0, seccomp_available=False)
    assert [gap.dimension for gap in found] == ["filesystem", "network", "network"]
    assert inner.shortfalls(plan, abi=7, seccomp_available=True) == []


def test_a_plan_without_landlock_paths_asks_nothing_of_landlock() -> None:
    plan = InnerPlan(argv=("true",), required=("filesystem", "network", "limits"))
    assert inner.shortfalls(plan, abi=0, seccomp_available=False) == []
    assert not inner.wants_filesystem(plan)
    assert inner.wants_filesystem(InnerPlan(argv=("true",), landlock_deny=("/root/.ssh",)))
