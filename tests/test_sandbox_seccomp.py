"""seccomp for real: a process started by `python -m mcpshield.sandbox.inner` with a seccomp mode
cannot make the sockets that mode refuses, nor reach for io_uring."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from typing import Any, Final

import pytest
from conftest import sandbox_unavailable

from mcpshield.sandbox import seccomp
from mcpshield.sandbox.spec import INNER_PLAN_ENV

#: Bound on one sandboxed Python start-up and the few syscalls it tries.
RUN_TIMEOUT_S: Final = 30.0

UDP: Final = "socket.socket(socket.AF_INET, socket.SOCK_DGRAM).close()"
TCP: Final = "socket.socket(socket.AF_INET, socket.SOCK_STREAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC).close()"
TCP6: Final = "socket.socket(socket.AF_INET6, socket.SOCK_STREAM).close()"
EXPLICIT_TCP: Final = "socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP).close()"
SCTP: Final = "socket.socket(socket.AF_INET, socket.SOCK_STREAM, 132).close()"
RAW: Final = "socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP).close()"
PACKET: Final = "socket.socket(socket.AF_PACKET, socket.SOCK_RAW).close()"
UNIX: Final = "socket.socket(socket.AF_UNIX, socket.SOCK_STREAM).close()"
NETLINK: Final = "socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0).close()"


def needs_seccomp() -> None:
    if not seccomp.available():
        sandbox_unavailable("seccomp filters are not available on this machine")


def run_plan(**plan: Any) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, INNER_PLAN_ENV: json.dumps(plan)}
    argv = [sys.executable, "-m", "mcpshield.sandbox.inner"]
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT_S, check=False)


def outcomes(mode: str, *statements: str) -> list[str]:
    """Runs each statement in a Python under `mode`: "allowed", or "refused" on a PermissionError."""
    tries = [f"try:\n    {s}\n    print('allowed')\nexcept PermissionError:\n    print('refused')" for s in statements]
    result = run_plan(argv=[sys.executable, "-I", "-c", "\n".join(["import socket", *tries])], seccomp=mode)
    assert result.returncode == 0, result.stderr
    return result.stdout.split()


def errno_of_syscall(mode: str, number: int) -> int:
    """The errno a bare syscall(number, 0, 0) gets under `mode`."""
    code = (
        "import ctypes\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        f"print(libc.syscall(ctypes.c_long({number}), ctypes.c_long(0), ctypes.c_long(0)), ctypes.get_errno())"
    )
    result = run_plan(argv=[sys.executable, "-I", "-c", code], seccomp=mode)
    assert result.returncode == 0, result.stderr
    answer, code_ = result.stdout.split()
    assert answer == "-1"
    return int(code_)


def test_no_inet_refuses_internet_sockets_but_not_unix_ones() -> None:
    needs_seccomp()
    assert outcomes("no_inet", TCP, TCP6, UDP, PACKET, UNIX, NETLINK) == [
        "refused",
        "refused",
        "refused",
        "refused",
        "allowed",
        "allowed",
    ]


def test_tcp_only_allows_tcp_and_refuses_udp() -> None:
    needs_seccomp()
    assert outcomes("tcp_only", TCP, TCP6, EXPLICIT_TCP, UDP) == ["allowed", "allowed", "allowed", "refused"]


def test_tcp_only_refuses_raw_packet_and_other_stream_protocols() -> None:
    needs_seccomp()
    assert outcomes("tcp_only", RAW, PACKET, SCTP) == ["refused", "refused", "refused"]


def test_io_uring_looks_absent_under_either_mode() -> None:
    needs_seccomp()
    io_uring_setup = 425
    assert errno_of_syscall("no_inet", io_uring_setup) == errno.ENOSYS
    assert errno_of_syscall("tcp_only", io_uring_setup) == errno.ENOSYS


def test_x32_syscalls_are_refused_on_x86_64() -> None:
    needs_seccomp()
    if os.uname().machine != "x86_64":
        pytest.skip("x32 exists on x86-64 only")
    x32_getpid = 0x40000000 | 39
    assert errno_of_syscall("tcp_only", x32_getpid) == errno.ENOSYS


def test_the_filter_is_installed_in_filter_mode_with_no_new_privs() -> None:
    needs_seccomp()
    result = run_plan(argv=["grep", "-E", "^(Seccomp|NoNewPrivs):", "/proc/self/status"], seccomp="no_inet")
    assert result.stdout.split() == ["NoNewPrivs:", "1", "Seccomp:", "2"], result.stderr


@pytest.mark.parametrize("mode", ["no_inet", "tcp_only"])
def test_every_filter_checks_the_architecture_before_anything_else(mode: seccomp.Mode) -> None:
    arch = seccomp.ARCHES["x86_64"]
    program = seccomp.program(mode, arch)
    load_arch, check_arch = program[0], program[1]
    assert load_arch == (0x20, 0, 0, 4)
    code, on_match, on_mismatch, value = check_arch
    assert (code, on_match, value) == (0x15, 0, arch.audit)
    assert program[1 + 1 + on_mismatch] == (0x06, 0, 0, 0x80000000)


@pytest.mark.parametrize("machine", ["x86_64", "aarch64"])
@pytest.mark.parametrize("mode", ["no_inet", "tcp_only"])
def test_every_jump_lands_inside_the_program(machine: str, mode: seccomp.Mode) -> None:
    program = seccomp.program(mode, seccomp.ARCHES[machine])
    for index, (code, on_match, on_mismatch, _) in enumerate(program):
        if code & 0x07 == 0x05:  # BPF_JMP
            assert index + 1 + max(on_match, on_mismatch) < len(program)
    assert program[-1][0] == 0x06  # it ends with a return


def test_an_unknown_mode_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown seccomp mode"):
        seccomp.program("udp_only", seccomp.ARCHES["x86_64"])  # type: ignore[arg-type]
