"""Real keyring backends for the secrets tests, registered the supported ways: `keyring.set_keyring`
in-process, or `PYTHON_KEYRING_BACKEND=file_keyring.FileKeyring` with tests/ on PYTHONPATH for a
subprocess. No test reaches the user's own keyring."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Final

import keyring
from keyring.backend import KeyringBackend
from keyring.compat import properties
from keyring.errors import KeyringLocked, PasswordDeleteError

#: The JSON file FileKeyring keeps its items in; without it the backend is not viable.
KEYRING_FILE_ENV: Final = "MCPSHIELD_TEST_KEYRING_FILE"
#: The value PYTHON_KEYRING_BACKEND takes to load FileKeyring in a subprocess.
BACKEND_NAME: Final = "file_keyring.FileKeyring"
TESTS_DIR: Final = Path(__file__).resolve().parent


class FileKeyring(KeyringBackend):
    """Items as {"service": {"username": "password"}} in the file KEYRING_FILE_ENV names."""

    @properties.classproperty
    def priority(cls) -> float:
        if not os.environ.get(KEYRING_FILE_ENV):
            raise RuntimeError(f"{KEYRING_FILE_ENV} is not set")
        return 1

    def get_password(self, service: str, username: str) -> str | None:
        return self._items().get(service, {}).get(username)

    def set_password(self, service: str, username: str, password: str) -> None:
        items = self._items()
        items.setdefault(service, {})[username] = password
        self._path().write_text(json.dumps(items), encoding="utf-8")

    def delete_password(self, service: str, username: str) -> None:
        items = self._items()
        if username not in items.get(service, {}):
            raise PasswordDeleteError("no such item")
        del items[service][username]
        self._path().write_text(json.dumps(items), encoding="utf-8")

    def _path(self) -> Path:
        return Path(os.environ[KEYRING_FILE_ENV])

    def _items(self) -> dict[str, dict[str, str]]:
        path = self._path()
        if not path.exists():
            return {}
        items: dict[str, dict[str, str]] = json.loads(path.read_text(encoding="utf-8"))
        return items


class LowPriorityKeyring(FileKeyring):
    """FileKeyring with the priority keyring gives backends it does not recommend."""

    @properties.classproperty
    def priority(cls) -> float:
        return 0


class LockedKeyring(KeyringBackend):
    """A keyring that is locked, and whose errors (carelessly) quote the value they were given."""

    @properties.classproperty
    def priority(cls) -> float:
        return 1

    def get_password(self, service: str, username: str) -> str | None:
        raise KeyringLocked("the collection is locked")

    def set_password(self, service: str, username: str, password: str) -> None:
        raise KeyringLocked(f"cannot store {password!r}: the collection is locked")

    def delete_password(self, service: str, username: str) -> None:
        raise KeyringLocked("the collection is locked")


def new(backend_class: type[KeyringBackend]) -> KeyringBackend:
    """An instance of a backend class; called through `type[KeyringBackend]`, whose constructor mypy
    accepts (a direct call of keyring's unannotated one it refuses)."""
    return backend_class()


def use(backend_class: type[KeyringBackend]) -> None:
    """Makes a new `backend_class` the active keyring of this process."""
    keyring.set_keyring(new(backend_class))


def subprocess_env(tmp_path: Path, backend: str = BACKEND_NAME, **extra: str) -> dict[str, str]:
    """A minimal environment for `python -m mcpshield secret ...`: the test keyring (or `backend`),
    the config directory in tmp_path, and nothing of the user's."""
    return {
        "PATH": os.environ.get("PATH", os.defpath),
        "HOME": str(tmp_path),
        "PYTHONPATH": str(TESTS_DIR),
        "PYTHON_KEYRING_BACKEND": backend,
        KEYRING_FILE_ENV: str(tmp_path / "keyring.json"),
        "MCPSHIELD_CONFIG_DIR": str(tmp_path / "config"),
        **extra,
    }
