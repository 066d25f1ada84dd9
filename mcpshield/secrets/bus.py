"""Recovers the user's D-Bus session bus when a GUI client started mcpshield with a stripped
environment: Linux keyrings (Secret Service, KWallet) are reached over that bus."""

from __future__ import annotations

import os
import stat
import string
import sys
from collections.abc import Callable, MutableMapping
from pathlib import Path
from typing import Final

BUS_ENV: Final = "DBUS_SESSION_BUS_ADDRESS"
RUNTIME_ENV: Final = "XDG_RUNTIME_DIR"
#: Where systemd-logind makes each user's runtime directory, `<base>/<uid>`.
RUNTIME_BASE: Final = Path("/run/user")
#: The session bus socket's name inside the runtime directory (dbus-broker and dbus-daemon agree).
BUS_SOCKET: Final = "bus"
#: Group and other permission bits: a runtime directory that has any is not private to its user.
_SHARED_BITS: Final = 0o077
#: Bytes a D-Bus address value may carry unescaped (the D-Bus specification, "Server Addresses").
_ADDRESS_SAFE: Final = frozenset((string.ascii_letters + string.digits + "-_/.\\*").encode())


def recover_session_bus(
    environ: MutableMapping[str, str], *, base: Path = RUNTIME_BASE, uid: int | None = None
) -> tuple[str, ...]:
    """Sets XDG_RUNTIME_DIR and DBUS_SESSION_BUS_ADDRESS in `environ` where they are unset and
    `<base>/<uid>` holds them for this user; returns the names it set.

    The runtime directory counts only if it is ours with no group or other bits, the bus only
    if it is a socket we own inside a directory we own: another user's socket would hand our
    secrets to whoever listens on it."""
    uid = os.getuid() if uid is None else uid
    runtime = base / str(uid)
    recovered: list[str] = []
    if not environ.get(RUNTIME_ENV) and _is_private_dir(runtime, uid):
        environ[RUNTIME_ENV] = str(runtime)
        recovered.append(RUNTIME_ENV)
    bus = runtime / BUS_SOCKET
    if not environ.get(BUS_ENV) and _owned_by(runtime, uid, stat.S_ISDIR) and _owned_by(bus, uid, stat.S_ISSOCK):
        environ[BUS_ENV] = "unix:path=" + _address_escape(str(bus))
        recovered.append(BUS_ENV)
    return tuple(recovered)


def recover_for_this_platform(environ: MutableMapping[str, str]) -> tuple[str, ...]:
    """`recover_session_bus` on Linux; elsewhere keyrings need no session bus, so nothing."""
    if sys.platform != "linux":
        return ()
    return recover_session_bus(environ)


def _is_private_dir(path: Path, uid: int) -> bool:
    try:
        info = path.lstat()
    except OSError:
        return False
    return stat.S_ISDIR(info.st_mode) and info.st_uid == uid and not info.st_mode & _SHARED_BITS


def _owned_by(path: Path, uid: int, kind: Callable[[int], bool]) -> bool:
    """`path` itself (a symlink is not followed) is of `kind` (a stat.S_IS* test) and is `uid`'s."""
    try:
        info = path.lstat()
    except OSError:
        return False
    return kind(info.st_mode) and info.st_uid == uid


def _address_escape(value: str) -> str:
    return "".join(chr(byte) if byte in _ADDRESS_SAFE else f"%{byte:02x}" for byte in os.fsencode(value))
