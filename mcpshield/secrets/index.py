"""The non-secret index of the secrets mcpshield stored (keyring cannot list its items):
`<user config dir>/secrets.json`, each secret's NAME and when it was set. Never a value."""

from __future__ import annotations

import json
import os
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from mcpshield.errors import SecretError
from mcpshield.profile import load
from mcpshield.profile.model import SECRET_NAME

INDEX_FILE: Final = "secrets.json"
#: Bumped when the file's shape changes; a file of another version is refused, not guessed at.
FORMAT_VERSION: Final = 1
#: An entry is under 100 bytes; an index near this size is not one mcpshield wrote.
MAX_INDEX_BYTES: Final = 1 << 20
_PRIVATE_DIR: Final = 0o700
_CORRUPT_TIP: Final = (
    "it holds no secret values: fix it, or move it away and `mcpshield secret set` each secret "
    "again (`mcpshield secret list` then shows which ones your profiles need)"
)


def index_path() -> Path:
    return load.user_config_dir() / INDEX_FILE


def read() -> dict[str, datetime]:
    """Each indexed secret's NAME and when it was set; empty if there is no index yet. A file that
    cannot be read or is not a valid index is an error, never an empty index."""
    path = index_path()
    try:
        with path.open("rb") as file:
            raw = file.read(MAX_INDEX_BYTES + 1)
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise SecretError(f"cannot read the secrets index {path}: {exc.strerror}", "check its permissions") from exc
    if len(raw) > MAX_INDEX_BYTES:
        raise _corrupt(path, f"it is larger than {MAX_INDEX_BYTES} bytes")
    try:
        document = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _corrupt(path, f"it is not JSON ({exc})") from exc
    return _entries(path, document)


def record(name: str, when: datetime | None = None) -> None:
    """Notes that `name` was set (now, unless `when` says otherwise)."""
    entries = read()
    entries[name] = when or datetime.now(UTC)
    _write(entries)


def forget(name: str) -> bool:
    """Drops `name` from the index; False if it was not there."""
    entries = read()
    if entries.pop(name, None) is None:
        return False
    _write(entries)
    return True


def _entries(path: Path, document: Any) -> dict[str, datetime]:
    if not isinstance(document, dict) or document.get("version") != FORMAT_VERSION:
        raise _corrupt(path, f'it is not an object with "version": {FORMAT_VERSION}')
    secrets = document.get("secrets")
    if not isinstance(secrets, dict):
        raise _corrupt(path, 'its "secrets" is not an object')
    entries: dict[str, datetime] = {}
    for name, entry in secrets.items():
        if not SECRET_NAME.fullmatch(name):
            raise _corrupt(path, f"{name!r} is not a secret name")
        when = entry.get("set_at") if isinstance(entry, dict) else None
        if not isinstance(when, str):
            raise _corrupt(path, f'the secret {name!r} has no "set_at" time')
        try:
            parsed = datetime.fromisoformat(when)
        except ValueError as exc:
            raise _corrupt(path, f"the secret {name!r} has an invalid set_at time ({exc})") from exc
        entries[name] = parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    return entries


def _write(entries: dict[str, datetime]) -> None:
    path = index_path()
    document = {
        "version": FORMAT_VERSION,
        "secrets": {name: {"set_at": when.isoformat(timespec="seconds")} for name, when in sorted(entries.items())},
    }
    try:
        _replace(path, json.dumps(document, indent=2) + "\n")
    except OSError as exc:
        raise SecretError(f"cannot write the secrets index {path}: {exc.strerror}", "check the permissions") from exc


def _replace(path: Path, text: str) -> None:
    """Replaces `path` in one rename, from a temporary file in the same directory (0700 if new):
    a reader sees the old index or the new one, never half of one."""
    path.parent.mkdir(mode=_PRIVATE_DIR, parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{INDEX_FILE}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as file:  # mkstemp makes it 0600, readable by us only
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise


def _corrupt(path: Path, why: str) -> SecretError:
    return SecretError(f"the secrets index {path} is corrupt: {why}", _CORRUPT_TIP)
