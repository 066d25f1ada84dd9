"""Approving "always": an `[[approval.always]]` rule appended to the user's own profile file, so
the same call (tool + canonical-arguments SHA-256) runs unasked in the sessions that follow.

The rule is only consulted where the profile says `ask`: a deny list or a deny rule decides
before any approval is looked for, so no rule written here can let a denied call run. A shipped
profile is never written: its rule goes into the user's profile of the same name, created to
extend it. The file is changed atomically (a temporary file renamed over it) by appending text,
so the user's comments and layout stay as they were.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
import tempfile
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import anyio.to_thread
from pydantic import ValidationError

from mcpshield.approval.protocol import Request
from mcpshield.errors import ApprovalError, ProfileError
from mcpshield.profile import tomltext
from mcpshield.profile.model import LoadedProfile, Profile

#: Characters of the arguments shown in the comment above a rule (the hash binds them all):
#: enough to recognise the call later, short enough to keep file contents out of the profile.
MAX_PREVIEW_CHARS: Final = 200
#: Bound on waiting for another wrapper that is writing the same profile directory.
LOCK_TIMEOUT_S: Final = 2.0
LOCK_POLL_S: Final = 0.02
NEW_FILE_MODE: Final = 0o600
NEW_DIR_MODE: Final = 0o700


@dataclass(frozen=True, slots=True)
class AlwaysTarget:
    """Where "always" writes its rule: `file`, appended to; when it does not exist yet, created
    extending the shipped profile `extends` (with that profile's `match`, which is not inherited)."""

    file: Path
    extends: str | None = None
    match: tuple[str, ...] = ()


def target_for(loaded: LoadedProfile) -> AlwaysTarget | None:
    """Where "always" writes for a session of `loaded`: the profile's own file when it is the
    user's and writable; the user's profile of the same name when it is shipped; None when the
    file cannot take a rule (read-only)."""
    from mcpshield.profile.load import shipped_profiles_dir, user_profiles_dir

    source = Path(loaded.source)
    if _inside(source, shipped_profiles_dir()):
        return AlwaysTarget(user_profiles_dir() / source.name, source.stem, loaded.profile.server.match)
    try:
        info = source.stat()
        writable = os.access(source, os.W_OK) and bool(info.st_mode & stat.S_IWUSR) and info.st_uid == os.geteuid()
    except OSError:
        writable = False
    # A file made read-only, or somebody else's, is left alone, even by root.
    return AlwaysTarget(source) if writable else None


async def remember(target: AlwaysTarget | None, request: Request, approver_uid: int | None) -> dict[str, Any]:
    """Writes the rule for `request` in a worker thread (never on the event loop); what became of
    it, as the audit log records it: `{"file": …, "written": true}` or `{"file": …, "error": …}`."""
    if target is None:
        return {"file": None, "error": "this session's profile file cannot take a rule (it is read-only)"}
    args = (target, request.tool, request.args_sha256, request.arguments, approver_uid)
    try:
        path = await anyio.to_thread.run_sync(write_rule, *args)
    except ApprovalError as exc:
        return {"file": str(target.file), "error": f"{exc} (Tip: {exc.tip})"}
    except Exception as exc:
        return {"file": str(target.file), "error": f"{type(exc).__name__}: {exc}"}
    return {"file": str(path), "written": True}


def write_rule(target: AlwaysTarget, tool: str, digest: str, arguments: Any, approver_uid: int | None) -> Path:
    """Appends the rule for (tool, digest) to the target's file and returns the file written
    (the one a symbolic link points to); nothing is written when the rule is there already.
    ApprovalError says why the file cannot take it."""
    from mcpshield.profile.load import shipped_profiles_dir

    if target.file.exists():
        path = Path(os.path.realpath(target.file))
        if _inside(path, shipped_profiles_dir()):
            raise ApprovalError(
                f"{target.file} leads to a shipped profile, which mcpshield never writes",
                "make the user's profile a file of its own (extends = NAME), not a link",
            )
    elif target.extends is None:  # the user's own profile went away during the session
        raise ApprovalError(f"{target.file} is gone", "restore the profile, then approve again")
    else:
        path = target.file
        with _failing(path, "cannot create its directory"):
            path.parent.mkdir(mode=NEW_DIR_MODE, parents=True, exist_ok=True)
    with _locked(path.parent):
        exists = path.exists()
        text = _current(path) if exists else _header(target)
        if exists and (tool, digest) in _always(path, text):
            return path
        rule = rule_text(tool, digest, arguments, approver_uid)
        updated = text + ("" if not text or text.endswith("\n") else "\n") + rule
        if (tool, digest) not in _always(path, updated):
            raise ApprovalError(
                f"cannot append a rule to {path}: the file would not hold it as a rule",
                f"add it yourself, after the file's last line:\n{rule}",
            )
        _replace(path, updated, exists)
    return path


def rule_text(tool: str, digest: str, arguments: Any, approver_uid: int | None) -> str:
    """The rule as appended: a comment saying when, who and (the start of) what, then the table."""
    preview = json.dumps(arguments, ensure_ascii=True, sort_keys=True, separators=(",", ":"))
    if len(preview) > MAX_PREVIEW_CHARS:
        preview = f"{preview[:MAX_PREVIEW_CHARS]}… [{len(preview)} characters; the hash covers them all]"
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    who = "" if approver_uid is None else f" by uid {approver_uid}"
    return (
        f'\n# Approved "always" in `mcpshield approvals`{who}, {when}:\n'
        f"# {_comment(tool)} {preview}\n"
        "[[approval.always]]\n"
        f"tool = {toml_string(tool)}\n"
        f'args_sha256 = "{digest}"\n'
    )


def toml_string(text: str) -> str:
    """`text` as a TOML basic string (see profile.tomltext); an ApprovalError for what TOML cannot hold."""
    try:
        return tomltext.toml_string(text)
    except ValueError:
        raise ApprovalError(
            "the tool's name holds a lone surrogate", "a TOML file cannot hold it; approve it per session"
        ) from None


def _comment(text: str) -> str:
    """`text` safe on one comment line: JSON escapes for anything but printable ASCII."""
    return json.dumps(text, ensure_ascii=True)[1:-1]


def _header(target: AlwaysTarget) -> str:
    lines = [
        '# Written by mcpshield when you approved a call "always" in `mcpshield approvals`.',
        f"# It extends the shipped profile {target.extends!r} (it can narrow it, never widen it) and is",
        "# found before it under the same name. Edit it as you like.",
        f"extends = {toml_string(target.extends or '')}",
    ]
    if target.match:
        lines += ["", "[server]", f"match = [{', '.join(toml_string(item) for item in target.match)}]  # not inherited"]
    return "\n".join(lines) + "\n"


def _current(path: Path) -> str:
    from mcpshield.profile.load import read_profile

    try:
        return read_profile(path)[1]
    except ProfileError as exc:
        raise ApprovalError(
            f"cannot add a rule to {path}: it does not load now ({exc})", "fix the profile, then approve again"
        ) from None


def _always(path: Path, text: str) -> set[tuple[str, str]]:
    """The (tool, hash) pairs the file's own [approval] holds once `text` is its content."""
    try:
        profile = Profile.model_validate(tomllib.loads(text))
    except (tomllib.TOMLDecodeError, ValidationError) as exc:
        first = str(exc).splitlines()[0]
        raise ApprovalError(
            f"cannot add a rule to {path}: with it the file would not load ({first})",
            "write [approval] as a table ([approval] on its own line), not inline, then approve again",
        ) from None
    return {(rule.tool, rule.args_sha256) for rule in profile.approval.always}


def _replace(path: Path, text: str, exists: bool) -> None:
    """Writes `text` to a temporary file beside `path`, then renames it over `path`."""
    mode = (path.stat().st_mode & 0o7777) if exists else NEW_FILE_MODE
    with _failing(path, "cannot write it"):
        fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as file:
                file.write(text)
                file.flush()
                os.fchmod(file.fileno(), mode)
                os.fsync(file.fileno())
            os.replace(temporary, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            raise
        _sync_dir(path.parent)


def _sync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):  # not every platform lets a directory be opened and synced
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    """Holds an exclusive lock on `directory` (flock on the directory itself: no lock file is
    left), so two wrappers appending to one profile cannot lose a rule."""
    import fcntl

    with _failing(directory, "cannot open it to lock it"):
        fd = os.open(directory, os.O_RDONLY)
    try:
        deadline = time.monotonic() + LOCK_TIMEOUT_S
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise ApprovalError(
                        f"{directory} stayed locked for {LOCK_TIMEOUT_S:g} s by another mcpshield writing a rule",
                        "approve again in a moment",
                    ) from None
                time.sleep(LOCK_POLL_S)  # runs in a worker thread, never on the event loop
        yield
    finally:
        os.close(fd)


@contextlib.contextmanager
def _failing(path: Path, what: str) -> Iterator[None]:
    try:
        yield
    except OSError as exc:
        raise ApprovalError(f"{path}: {what} ({exc.strerror or exc})", "check the file and its directory") from None


def _inside(path: Path, directory: Path) -> bool:
    try:
        Path(os.path.realpath(path)).relative_to(os.path.realpath(directory))
    except ValueError:
        return False
    return True
