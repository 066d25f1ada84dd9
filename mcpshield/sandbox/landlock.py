"""Landlock through ctypes: the running kernel's ABI, and a process restricting itself (and what
it execs) to the filesystem trees and TCP ports it was given, with no extra dependency."""

from __future__ import annotations

import ctypes
import errno
import os
import stat
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Final, Literal

from mcpshield.sandbox.spec import inside

# The three Landlock syscalls share one number on every Linux architecture but alpha.
_SYS_CREATE_RULESET: Final = 444
_SYS_ADD_RULE: Final = 445
_SYS_RESTRICT_SELF: Final = 446
_CREATE_RULESET_VERSION: Final = 1 << 0
_RULE_PATH_BENEATH: Final = 1
_RULE_NET_PORT: Final = 2
_PR_SET_NO_NEW_PRIVS: Final = 38

# Filesystem rights, by the ABI that introduced them.
FS_EXECUTE: Final = 1 << 0
FS_WRITE_FILE: Final = 1 << 1
FS_READ_FILE: Final = 1 << 2
FS_READ_DIR: Final = 1 << 3
_FS_ABI1: Final = (1 << 13) - 1  # EXECUTE .. MAKE_SYM
FS_REFER: Final = 1 << 13  # ABI 2: link and rename across directories
FS_TRUNCATE: Final = 1 << 14  # ABI 3
FS_IOCTL_DEV: Final = 1 << 15  # ABI 5
#: What a read-only tree grants.
READ_RIGHTS: Final = FS_EXECUTE | FS_READ_FILE | FS_READ_DIR
#: What a rule grants: a read tree, a write tree (every handled right), or only listing.
Access = Literal["read", "write", "list"]
_RIGHTS: Final = {"read": READ_RIGHTS, "list": FS_READ_DIR}
#: The only rights the kernel accepts on a rule for a file (not a directory).
FILE_RIGHTS: Final = FS_EXECUTE | FS_WRITE_FILE | FS_READ_FILE | FS_TRUNCATE | FS_IOCTL_DEV

NET_BIND_TCP: Final = 1 << 0  # ABI 4; not handled: see `restrict`
NET_CONNECT_TCP: Final = 1 << 1  # ABI 4
SCOPE_ABSTRACT_UNIX_SOCKET: Final = 1 << 0  # ABI 6
SCOPE_SIGNAL: Final = 1 << 1  # ABI 6

#: The first ABI with TCP rules (Linux 6.7) and with scoping (Linux 6.12).
#: The ABI from which truncate(2) is governed (Linux 6.2).
TRUNCATE_ABI: Final = 3
TCP_ABI: Final = 4
SCOPE_ABI: Final = 6
#: Bound on the rules one restriction adds: expanding the ancestors of denied paths lists
#: directories, and a denied path under a huge directory must fail rather than crawl.
MAX_RULES: Final = 20_000


class _RulesetAttr(ctypes.Structure):
    _fields_ = (
        ("handled_access_fs", ctypes.c_uint64),
        ("handled_access_net", ctypes.c_uint64),  # ABI 4
        ("scoped", ctypes.c_uint64),  # ABI 6
    )


class _PathBeneathAttr(ctypes.Structure):
    _pack_ = 1  # __attribute__((packed)) in the kernel's header
    _fields_ = (("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32))


class _NetPortAttr(ctypes.Structure):
    _fields_ = (("allowed_access", ctypes.c_uint64), ("port", ctypes.c_uint64))


@dataclass(frozen=True, slots=True)
class LandlockResult:
    """What a `restrict` call achieved: the kernel's ABI and which parts took effect."""

    abi: int
    #: The filesystem is restricted to the trees given.
    fs: bool = False
    #: TCP connect is restricted to the ports given.
    tcp: bool = False
    #: Abstract Unix sockets and signals are scoped to the sandbox (ABI 6).
    scope: bool = False
    #: Why the restriction did not take effect at all ("" when it did or nothing was asked).
    problem: str = ""
    #: Paths that got no rule although allowed (unlistable ancestors of a denied path, rules the
    #: kernel refused): they stay out of reach, which is safe but may surprise.
    skipped: tuple[str, ...] = ()


def abi_version() -> int:
    """The Landlock ABI of the running kernel; 0 when Landlock is unavailable, disabled or this
    is not Linux. Never raises."""
    if not sys.platform.startswith("linux") or os.uname().machine == "alpha":
        return 0
    try:
        version = _syscall(_SYS_CREATE_RULESET, 0, 0, _CREATE_RULESET_VERSION)
    except (OSError, AttributeError):
        return 0
    return max(version, 0)


def fs_rights(abi: int) -> int:
    """Every filesystem right the given ABI knows (and so handles, i.e. denies unless granted)."""
    if abi < 1:
        return 0
    rights = _FS_ABI1
    if abi >= 2:
        rights |= FS_REFER
    if abi >= TRUNCATE_ABI:
        rights |= FS_TRUNCATE
    if abi >= 5:
        rights |= FS_IOCTL_DEV
    return rights


def restrict(
    read: Sequence[str] | None,
    write: Sequence[str],
    deny: Sequence[str],
    tcp_connect_ports: Sequence[int] | None,
    *,
    scope: bool = True,
    filesystem: bool = True,
) -> LandlockResult:
    """Sets no_new_privs and restricts this process and everything it execs, for good.

    Filesystem (`filesystem=True`): every right the ABI knows is handled; `read` trees (None:
    "/") get READ_FILE, READ_DIR and EXECUTE, `write` trees every right; a rule on a file (not a
    directory) gets only the file rights. Missing paths are skipped. Landlock can only allow, so
    a `deny` path inside an allowed tree is carved out: along each ancestor of it the tree is
    replaced by that directory's entries but the one leading to it (read "/" deny "/root/.ssh":
    every entry of "/" but "root", every entry of "/root" but ".ssh"). This cannot cover:
    entries created later in those ancestor directories (they get no rule: neither readable nor,
    under a write tree, writable); the ancestors get READ_DIR only, so they can be listed — and
    so can the denied directory, whose names (never its files' contents) show — but, under a
    write tree, entries cannot be created or removed directly in them, since a right on a
    directory reaches the denied path beneath it;
    another way to the same file (a hard link, a bind mount); symlinks met while expanding are
    skipped, their targets being governed by their own rules. A denied path that does not exist
    yet stays unreachable if created later.

    TCP (ABI 4, `tcp_connect_ports` not None): connect() reaches only those ports, on any
    address. bind() is not restricted: listening reaches nothing by itself, and inbound traffic
    is the network namespace's (or the host firewall's) business. UDP is not Landlock's: that is
    seccomp's part.

    Scope (ABI 6, `scope=True`): no connecting to abstract Unix sockets and no signals to
    processes outside the sandbox.
    """
    if tcp_connect_ports is not None and any(not 0 <= port <= 65535 for port in tcp_connect_ports):
        raise ValueError(f"TCP ports must be within 0..65535: {tuple(tcp_connect_ports)}")
    abi = abi_version()
    if abi == 0:
        return LandlockResult(0, problem="Landlock is not available on this kernel")
    attr = _RulesetAttr(
        fs_rights(abi) if filesystem else 0,
        NET_CONNECT_TCP if tcp_connect_ports is not None and abi >= TCP_ABI else 0,
        SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL if scope and abi >= SCOPE_ABI else 0,
    )
    if not (attr.handled_access_fs or attr.handled_access_net or attr.scoped):
        return LandlockResult(abi)
    try:
        ruleset = _syscall(_SYS_CREATE_RULESET, ctypes.addressof(attr), _attr_size(abi), 0)
    except OSError as exc:
        return LandlockResult(abi, problem=f"the kernel refused a Landlock ruleset: {_explain(exc)}")
    try:
        skipped: list[str] = []
        if attr.handled_access_fs:
            _add_path_rules(ruleset, rule_paths(read, write, deny, skipped), attr.handled_access_fs, skipped)
        if attr.handled_access_net:
            _add_port_rules(ruleset, tcp_connect_ports or ())
        no_new_privs()
        _syscall(_SYS_RESTRICT_SELF, ruleset, 0)
    except OSError as exc:
        return LandlockResult(abi, problem=f"Landlock could not restrict the process: {_explain(exc)}")
    finally:
        os.close(ruleset)
    return LandlockResult(
        abi,
        fs=bool(attr.handled_access_fs),
        tcp=bool(attr.handled_access_net),
        scope=bool(attr.scoped),
        skipped=tuple(skipped),
    )


def no_new_privs() -> None:
    """Sets PR_SET_NO_NEW_PRIVS: nothing this process execs can gain privileges (setuid, file
    capabilities). Landlock and seccomp both require it of an unprivileged process."""
    libc = _libc()
    if libc.prctl(_PR_SET_NO_NEW_PRIVS, ctypes.c_ulong(1), ctypes.c_ulong(0), ctypes.c_ulong(0), ctypes.c_ulong(0)):
        code = ctypes.get_errno()
        raise OSError(code, f"PR_SET_NO_NEW_PRIVS: {os.strerror(code)}")


def rule_paths(
    read: Sequence[str] | None, write: Sequence[str], deny: Sequence[str], unlistable: list[str] | None = None
) -> list[tuple[str, Access]]:
    """The (path, access) pairs that get a rule: the existing `read` and `write` trees with every
    `deny` path carved out as `restrict` describes (its ancestors get "list" only). Directories
    that had to be listed but could not be are appended to `unlistable` (nothing beneath them
    gets a rule)."""
    denied = [os.path.realpath(path) for path in deny]
    pairs: list[tuple[str, Access]] = []
    trees: tuple[tuple[Access, Sequence[str]], ...] = (("read", ("/",) if read is None else read), ("write", write))
    for access, roots in trees:
        for root in roots:
            path = os.path.realpath(root)
            if os.path.lexists(path):
                pairs.extend(_allowed_beneath(path, access, denied, unlistable))
                if len(pairs) > MAX_RULES:
                    raise OSError(errno.E2BIG, f"more than {MAX_RULES} rules needed to carve out {deny}")
    return pairs


def _allowed_beneath(
    path: str, access: Access, denied: Sequence[str], unlistable: list[str] | None
) -> Iterator[tuple[str, Access]]:
    if any(inside(path, d) for d in denied):
        return
    if not any(inside(d, path) for d in denied):
        yield path, access
        return
    yield path, "list"  # an ancestor of a denied path: any other right would reach into it
    try:
        with os.scandir(path) as entries:
            children = [entry.path for entry in entries if not entry.is_symlink()]
    except OSError:
        if unlistable is not None:
            unlistable.append(path)
        return
    for child in sorted(children):
        yield from _allowed_beneath(child, access, denied, unlistable)


def _add_path_rules(ruleset: int, pairs: Sequence[tuple[str, Access]], handled: int, skipped: list[str]) -> None:
    for path, kind in pairs:
        try:
            fd = os.open(path, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            continue  # gone since it was listed: nothing to allow
        try:
            access = handled & _RIGHTS[kind] if kind != "write" else handled
            if not stat.S_ISDIR(os.fstat(fd).st_mode):
                access &= FILE_RIGHTS
            rule = _PathBeneathAttr(access, fd)
            _syscall(_SYS_ADD_RULE, ruleset, _RULE_PATH_BENEATH, ctypes.addressof(rule), 0)
        except OSError:
            skipped.append(path)
        finally:
            os.close(fd)


def _add_port_rules(ruleset: int, ports: Sequence[int]) -> None:
    for port in ports:
        rule = _NetPortAttr(NET_CONNECT_TCP, port)
        _syscall(_SYS_ADD_RULE, ruleset, _RULE_NET_PORT, ctypes.addressof(rule), 0)


def _attr_size(abi: int) -> int:
    """The ruleset attribute as this ABI knows it: an older kernel refuses a bigger struct."""
    fields = 3 if abi >= SCOPE_ABI else 2 if abi >= TCP_ABI else 1
    return fields * ctypes.sizeof(ctypes.c_uint64)


def _explain(exc: OSError) -> str:
    reasons = {
        errno.ENOSYS: "this kernel was built without Landlock",
        errno.EOPNOTSUPP: "Landlock is disabled (add landlock to the kernel's lsm= boot parameter)",
        errno.EPERM: "not permitted (no_new_privs is not set and the process lacks CAP_SYS_ADMIN)",
        errno.E2BIG: f"more than {MAX_RULES} paths to carve the denied ones out of, or more than 16 nested domains",
    }
    return reasons.get(exc.errno or 0, exc.strerror or str(exc))


_LIBC: list[ctypes.CDLL] = []


def _libc() -> ctypes.CDLL:
    if not _LIBC:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.syscall.restype = ctypes.c_long
        _LIBC.append(libc)
    return _LIBC[0]


def _syscall(number: int, *args: int) -> int:
    """syscall(2) with every argument (pointers as addresses) passed at full register width, as
    the variadic call needs; OSError on failure."""
    result: int = _libc().syscall(ctypes.c_long(number), *(ctypes.c_long(arg) for arg in args))
    if result < 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))
    return result
