"""What the server may use, only ever lowered before the exec: resource limits (open files, CPU
seconds; a hard limit is never raised) and capabilities (all dropped, for a server run as root)."""

from __future__ import annotations

import ctypes
import errno
import os
import resource
from typing import Final, NoReturn

_PR_CAPBSET_DROP: Final = 24
_PR_CAP_AMBIENT: Final = 47
_PR_CAP_AMBIENT_CLEAR_ALL: Final = 4
_CAP_SETPCAP: Final = 8
_LINUX_CAPABILITY_VERSION_3: Final = 0x20080522
#: Capability numbers fit in two 32-bit words; the kernel says EINVAL past its last one.
_CAP_SLOTS: Final = 64


class _CapHeader(ctypes.Structure):
    _fields_ = (("version", ctypes.c_uint32), ("pid", ctypes.c_int))


class _CapData(ctypes.Structure):
    _fields_ = (("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32))


def apply(nofile: int = 0, cpu_seconds: int = 0) -> None:
    """Lowers RLIMIT_NOFILE and RLIMIT_CPU (soft and hard) to the given values, or to the current
    hard limit where that is lower already; 0 leaves a limit as it is. OSError or ValueError when
    the kernel refuses."""
    for which, value in ((resource.RLIMIT_NOFILE, nofile), (resource.RLIMIT_CPU, cpu_seconds)):
        if value < 0:
            raise ValueError(f"a resource limit cannot be negative: {value}")
        if value:
            limit = lowered(resource.getrlimit(which)[1], value)
            resource.setrlimit(which, (limit, limit))


def lowered(hard: int, wanted: int) -> int:
    """`wanted`, unless the current hard limit is lower (RLIM_INFINITY is never lower)."""
    return wanted if hard == resource.RLIM_INFINITY else min(hard, wanted)


def drop_capabilities() -> None:
    """Empties this process's capability sets (effective, permitted, inheritable, ambient) and,
    where it may (CAP_SETPCAP), the bounding set, so that what it execs has none, even as root:
    with no_new_privs an exec never grants more than the permitted set held before it. Without
    this a root server keeps CAP_SYS_MODULE, CAP_NET_ADMIN, CAP_SYS_RESOURCE and the like, which
    Landlock, seccomp and rlimits do not stop. OSError when the kernel refuses."""
    libc = ctypes.CDLL(None, use_errno=True)
    zero = ctypes.c_ulong(0)
    if _effective(libc) >> _CAP_SETPCAP & 1:
        for cap in range(_CAP_SLOTS):
            if libc.prctl(_PR_CAPBSET_DROP, ctypes.c_ulong(cap), zero, zero, zero):
                if ctypes.get_errno() == errno.EINVAL:
                    break  # past the kernel's last capability
                _raise("PR_CAPBSET_DROP")
    cleared = libc.prctl(_PR_CAP_AMBIENT, ctypes.c_ulong(_PR_CAP_AMBIENT_CLEAR_ALL), zero, zero, zero) == 0
    if not cleared and ctypes.get_errno() != errno.EINVAL:  # EINVAL: a kernel before ambient sets (4.3)
        _raise("PR_CAP_AMBIENT_CLEAR_ALL")
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    if libc.capset(ctypes.byref(header), (_CapData * 2)()):
        _raise("capset")


def _effective(libc: ctypes.CDLL) -> int:
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    if libc.capget(ctypes.byref(header), data):
        _raise("capget")
    return int(data[0].effective) | int(data[1].effective) << 32


def _raise(call: str) -> NoReturn:
    code = ctypes.get_errno()
    raise OSError(code, f"{call}: {os.strerror(code)}")
