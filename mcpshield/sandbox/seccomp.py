"""A seccomp-BPF filter, assembled by hand and installed through ctypes, for the network that
Landlock cannot restrict: UDP, raw and packet sockets, and io_uring (which makes sockets without
calling socket())."""

from __future__ import annotations

import ctypes
import errno
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, Literal

from mcpshield.sandbox.landlock import no_new_privs

Mode = Literal["no_inet", "tcp_only"]


@dataclass(frozen=True, slots=True)
class Arch:
    """The numbers a filter needs for one architecture."""

    audit: int
    socket: int
    io_uring_setup: int
    seccomp: int
    #: x86-64 also answers the x32 ABI's syscalls (nr | 0x40000000), a second table to refuse.
    x32: bool


ARCHES: Final = {
    "x86_64": Arch(audit=0xC000003E, socket=41, io_uring_setup=425, seccomp=317, x32=True),
    "aarch64": Arch(audit=0xC00000B7, socket=198, io_uring_setup=425, seccomp=277, x32=False),
}

# Kernel ABI constants (linux/filter.h, linux/seccomp.h, linux/socket.h).
_BPF_LD_W_ABS: Final = 0x20
_BPF_ALU_AND_K: Final = 0x54
_BPF_JEQ_K: Final = 0x15
_BPF_JSET_K: Final = 0x45
_BPF_RET_K: Final = 0x06
_RET_KILL_PROCESS: Final = 0x80000000
_RET_ERRNO: Final = 0x00050000
_RET_ALLOW: Final = 0x7FFF0000
_OFFSET_NR: Final = 0
_OFFSET_ARCH: Final = 4
_OFFSET_ARGS: Final = 16  # args[i] at 16 + 8 i; the low 32 bits first (little-endian only)
_X32_SYSCALL_BIT: Final = 0x40000000
_PR_SET_SECCOMP: Final = 22
_SECCOMP_MODE_FILTER: Final = 2
_SECCOMP_GET_ACTION_AVAIL: Final = 2
_AF_UNIX: Final = 1
_AF_INET: Final = 2
_AF_INET6: Final = 10
_AF_NETLINK: Final = 16
_SOCK_STREAM: Final = 1
_SOCK_FLAGS: Final = 0o4000 | 0o2000000  # SOCK_NONBLOCK | SOCK_CLOEXEC
_IPPROTO_TCP: Final = 6

#: What a refused socket() says: permission denied, as an LSM would; not a kill.
SOCKET_REFUSED: Final = errno.EACCES
#: What io_uring_setup and x32 syscalls say: absent, so that libraries fall back (libuv does).
ABSENT: Final = errno.ENOSYS


class _SockFilter(ctypes.Structure):
    _fields_ = (("code", ctypes.c_uint16), ("jt", ctypes.c_uint8), ("jf", ctypes.c_uint8), ("k", ctypes.c_uint32))


class _SockFprog(ctypes.Structure):
    _fields_ = (("len", ctypes.c_ushort), ("filter", ctypes.POINTER(_SockFilter)))


@dataclass(frozen=True, slots=True)
class _Op:
    """One BPF instruction; a jump names its targets by label (None: the next instruction)."""

    code: int
    k: int
    yes: str | None = None
    no: str | None = None
    label: str | None = None


def available() -> bool:
    """True where `install` can work: Linux on x86-64 or aarch64 (64-bit Python, little-endian),
    with seccomp filters (and the kill-process action) in the kernel."""
    arch = _arch()
    if arch is None:
        return False
    try:
        libc = _libc()
        action = ctypes.c_uint32(_RET_KILL_PROCESS)
        answer = libc.syscall(
            ctypes.c_long(arch.seccomp),
            ctypes.c_long(_SECCOMP_GET_ACTION_AVAIL),
            ctypes.c_long(0),
            ctypes.c_long(ctypes.addressof(action)),
        )
    except (OSError, AttributeError):
        return False
    return bool(answer == 0)


def install(mode: Mode) -> bool:
    """Sets no_new_privs and installs the filter for `mode` on this thread and what it execs;
    False when seccomp is not available here. OSError when the kernel refuses the filter.

    Both modes kill the process on a syscall of another architecture (i386 through int 0x80
    would bypass every number below), refuse x32 syscalls and io_uring_setup with ENOSYS, and
    allow socket() only for AF_UNIX, AF_NETLINK and (by mode) AF_INET/AF_INET6: every other
    family (AF_PACKET, AF_VSOCK, AF_BLUETOOTH, ...) gets EACCES. "no_inet" refuses
    AF_INET/AF_INET6 altogether; "tcp_only" allows them as SOCK_STREAM with protocol 0 or
    IPPROTO_TCP only, so no UDP, raw, SCTP or MPTCP socket."""
    if not available():
        return False
    arch = _arch()
    assert arch is not None
    ops = program(mode, arch)
    filters = (_SockFilter * len(ops))(*(_SockFilter(*op) for op in ops))
    prog = _SockFprog(len(ops), filters)
    no_new_privs()
    zero = ctypes.c_ulong(0)
    if _libc().prctl(_PR_SET_SECCOMP, ctypes.c_ulong(_SECCOMP_MODE_FILTER), ctypes.byref(prog), zero, zero):
        code = ctypes.get_errno()
        raise OSError(code, f"the kernel refused the seccomp filter: {os.strerror(code)}")
    return True


def program(mode: Mode, arch: Arch) -> list[tuple[int, int, int, int]]:
    """The filter for `mode` on `arch` as (code, jt, jf, k) instructions."""
    if mode == "no_inet":
        inet = [_Op(_BPF_RET_K, _RET_ERRNO | SOCKET_REFUSED, label="inet")]
    elif mode == "tcp_only":
        inet = [
            _Op(_BPF_LD_W_ABS, _OFFSET_ARGS + 8, label="inet"),  # type
            _Op(_BPF_ALU_AND_K, ~_SOCK_FLAGS & 0xFFFFFFFF),
            _Op(_BPF_JEQ_K, _SOCK_STREAM, no="refuse"),
            _Op(_BPF_LD_W_ABS, _OFFSET_ARGS + 16),  # protocol
            _Op(_BPF_JEQ_K, 0, yes="allow"),
            _Op(_BPF_JEQ_K, _IPPROTO_TCP, yes="allow", no="refuse"),
        ]
    else:
        raise ValueError(f"unknown seccomp mode {mode!r}")
    return _assemble(
        [
            _Op(_BPF_LD_W_ABS, _OFFSET_ARCH),
            _Op(_BPF_JEQ_K, arch.audit, no="kill"),
            _Op(_BPF_LD_W_ABS, _OFFSET_NR),
            *([_Op(_BPF_JSET_K, _X32_SYSCALL_BIT, yes="absent")] if arch.x32 else []),
            _Op(_BPF_JEQ_K, arch.io_uring_setup, yes="absent"),
            _Op(_BPF_JEQ_K, arch.socket, no="allow"),
            _Op(_BPF_LD_W_ABS, _OFFSET_ARGS),  # domain
            _Op(_BPF_JEQ_K, _AF_UNIX, yes="allow"),
            _Op(_BPF_JEQ_K, _AF_NETLINK, yes="allow"),
            _Op(_BPF_JEQ_K, _AF_INET, yes="inet"),
            _Op(_BPF_JEQ_K, _AF_INET6, yes="inet", no="refuse"),
            *inet,
            _Op(_BPF_RET_K, _RET_ALLOW, label="allow"),
            _Op(_BPF_RET_K, _RET_ERRNO | SOCKET_REFUSED, label="refuse"),
            _Op(_BPF_RET_K, _RET_ERRNO | ABSENT, label="absent"),
            _Op(_BPF_RET_K, _RET_KILL_PROCESS, label="kill"),
        ]
    )


def _assemble(ops: Sequence[_Op]) -> list[tuple[int, int, int, int]]:
    """Resolves labels into the forward offsets BPF jumps take."""
    where = {op.label: index for index, op in enumerate(ops) if op.label}

    def offset(index: int, label: str | None) -> int:
        return 0 if label is None else where[label] - index - 1

    return [(op.code, offset(i, op.yes), offset(i, op.no), op.k) for i, op in enumerate(ops)]


def _libc() -> ctypes.CDLL:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    return libc


def _arch() -> Arch | None:
    if not sys.platform.startswith("linux") or sys.byteorder != "little" or ctypes.sizeof(ctypes.c_void_p) != 8:
        return None
    return ARCHES.get(os.uname().machine)
