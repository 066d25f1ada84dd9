"""Where the terminal approver listens: `approver.sock` in a 0700 directory only this user owns.

$MCPSHIELD_APPROVER_DIR if set; else `mcpshield/` in the user's runtime directory
($XDG_RUNTIME_DIR, or /run/user/<uid> on Linux) when it is private to the user; else
`<user cache dir>/run`. Never a shared /tmp: anyone could create the directory there first.
"""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path
from typing import Final

from mcpshield.errors import ApprovalError

#: Overrides the approver's directory (tests; people who run approvers side by side).
APPROVER_DIR_ENV: Final = "MCPSHIELD_APPROVER_DIR"
SOCKET_NAME: Final = "approver.sock"
#: Held (flock) by the live approver, so two starting at once cannot both clear a stale socket.
LOCK_NAME: Final = "approver.lock"
DIR_MODE: Final = 0o700
#: AF_UNIX paths must fit sun_path: 104 bytes on macOS, 108 on Linux, both counting a final NUL.
MAX_SOCKET_PATH_BYTES: Final = 103
_PRIVATE_BITS: Final = 0o077


def require_unix_sockets() -> None:
    """Refuses, with a Tip, where the approver's transport is not built (Windows: a named pipe)."""
    if sys.platform == "win32":
        from mcpshield.errors import UnsupportedPlatform

        raise UnsupportedPlatform(
            "the terminal approver is not available on Windows yet (its named pipe is not built)",
            "approve in a client that supports MCP elicitation, or run mcpshield under WSL",
        )


def approver_dir(*, create: bool = True) -> Path:
    """The approver's directory, made private (0700) when `create`; a directory that is a
    symbolic link, not a directory, or owned by another user raises ApprovalError. Without
    `create` a missing directory is returned as is (nobody listens there)."""
    directory = _chosen_dir()
    if create:
        try:
            directory.parent.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
            directory.mkdir(mode=DIR_MODE, exist_ok=True)
        except OSError as exc:
            raise _unusable(directory, exc.strerror or str(exc)) from None
    _check_private(directory, fix_mode=create)
    return directory


def checked_dir(directory: Path) -> Path:
    """`directory` as given, if it may hold the approver's socket (a missing one may: nobody
    listens there); else ApprovalError."""
    _check_private(directory, fix_mode=False)
    return directory


def socket_path(directory: Path) -> Path:
    path = directory / SOCKET_NAME
    if len(os.fsencode(path)) > MAX_SOCKET_PATH_BYTES:
        raise ApprovalError(
            f"the approver's socket path {path} is too long for a Unix socket",
            f"point {APPROVER_DIR_ENV} at a shorter directory",
        )
    return path


def _chosen_dir() -> Path:
    override = os.environ.get(APPROVER_DIR_ENV)
    if override:
        return Path(override).expanduser()
    runtime = _runtime_dir()
    if runtime is not None:
        return runtime / "mcpshield"
    import platformdirs

    return Path(platformdirs.user_cache_dir("mcpshield", appauthor=False)) / "run"


def _runtime_dir() -> Path | None:
    """The user's runtime directory, if it exists and nobody else can write or read it."""
    candidates = [os.environ.get("XDG_RUNTIME_DIR", "")]
    if sys.platform.startswith("linux"):
        candidates.append(f"/run/user/{os.getuid()}")
    for candidate in candidates:
        if not candidate:
            continue
        try:
            info = os.stat(candidate)  # the runtime dir itself may be a link the system made
        except OSError:
            continue
        if stat.S_ISDIR(info.st_mode) and info.st_uid == os.getuid() and not info.st_mode & _PRIVATE_BITS:
            return Path(candidate)
    return None


def _check_private(directory: Path, *, fix_mode: bool) -> None:
    try:
        info = directory.lstat()
    except FileNotFoundError:
        if fix_mode:
            raise _unusable(directory, "it vanished while being made") from None
        return
    except OSError as exc:
        raise _unusable(directory, exc.strerror or str(exc)) from None
    if stat.S_ISLNK(info.st_mode):
        raise _unusable(directory, "it is a symbolic link")
    if not stat.S_ISDIR(info.st_mode):
        raise _unusable(directory, "it is not a directory")
    if info.st_uid != os.getuid():
        raise _unusable(directory, f"it belongs to uid {info.st_uid}, not to you")
    if info.st_mode & _PRIVATE_BITS:
        if not fix_mode:
            raise _unusable(directory, "other users can open it")
        directory.chmod(DIR_MODE)  # ours: make it private whatever the umask did


def _unusable(directory: Path, why: str) -> ApprovalError:
    return ApprovalError(
        f"cannot use {directory} for the approver's socket: {why}",
        f"remove it (mcpshield makes it, 0700), or point {APPROVER_DIR_ENV} at a directory of yours",
    )
