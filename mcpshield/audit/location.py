"""Where audit files live: `<log root>/YYYY-MM-DD/HHMMSS-<session>.jsonl`, folders 0700, files 0600.

The log root is $MCPSHIELD_LOG_DIR if set, else the platform's per-user log directory
(platformdirs: ~/.local/state/mcpshield/log on Linux, ~/Library/Logs/mcpshield on macOS).
"""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Final

from mcpshield.errors import AuditError

#: Overrides the log root (tests, or a user who keeps logs elsewhere).
LOG_DIR_ENV: Final = "MCPSHIELD_LOG_DIR"
DIR_MODE: Final = 0o700
FILE_MODE: Final = 0o600
SUFFIX: Final = ".jsonl"


def log_root() -> Path:
    override = os.environ.get(LOG_DIR_ENV)
    if override:
        return Path(override).expanduser()
    import platformdirs

    return Path(platformdirs.user_log_dir("mcpshield", appauthor=False))


def session_path(root: Path, session: str, started: float) -> Path:
    """The file of a session that started at `started` (epoch seconds), in the UTC day's folder."""
    day = time.strftime("%Y-%m-%d", time.gmtime(started))
    return root / day / f"{time.strftime('%H%M%S', time.gmtime(started))}-{session}{SUFFIX}"


def create_session_file(path: Path) -> int:
    """Creates the session's file (0600, never an existing one) and its folders (0700); returns
    an fd open for appending. An AuditError says what could not be created and why."""
    try:
        _private_dir(path.parent.parent, follow=True)  # the root may be a link the user made
        _private_dir(path.parent)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | getattr(os, "O_CLOEXEC", 0)
        fd = os.open(path, flags | getattr(os, "O_NOFOLLOW", 0), FILE_MODE)
    except OSError as exc:
        raise AuditError(
            f"cannot create the audit log {path}: {exc.strerror or exc}",
            f"make {path.parent} writable by you, or point {LOG_DIR_ENV} at a directory that is; "
            'a profile may set [audit] on_log_failure = "continue" to run without a log',
        ) from None
    os.fchmod(fd, FILE_MODE)  # whatever the umask did
    return fd


def _private_dir(path: Path, follow: bool = False) -> None:
    """Makes `path` (and its parents) if missing; a folder of ours is made 0700. One owned by
    someone else is refused: they could read or replace the log."""
    path.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)  # new parents get 0700 too (umask permitting)
    info = path.stat() if follow else path.lstat()
    if stat.S_ISLNK(info.st_mode):
        raise OSError(0, f"{path} is a symbolic link, where mcpshield makes its own folders")
    if not stat.S_ISDIR(info.st_mode):
        raise OSError(0, f"{path} is not a directory")
    if hasattr(os, "getuid") and info.st_uid != os.getuid():
        raise OSError(0, f"{path} belongs to another user")
    # The root may be a folder the user chose for other things too: its mode is theirs. The day
    # folders inside, and the files, are private whatever it is.
    if not follow and stat.S_IMODE(info.st_mode) != DIR_MODE:
        path.chmod(DIR_MODE)


def session_files(root: Path) -> Iterator[Path]:
    """Every session file under `root`, oldest first (day folders and names sort by time)."""
    if not root.is_dir():
        return
    for day in sorted(root.iterdir()):
        if day.is_dir() and not day.is_symlink():
            yield from sorted(p for p in day.iterdir() if p.name.endswith(SUFFIX) and p.is_file())
