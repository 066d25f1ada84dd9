"""The sandbox probe's answer on disk: JSON in mcpshield's cache folder beside the key it was
made under. An answer made under another key, or a file that does not parse, is no answer: the
machine is probed again (a cache is rebuilt, never trusted half-way)."""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Mapping
from typing import Any, Final

CACHE_NAME: Final = "probe.json"
FILE_MODE: Final = 0o600
DIR_MODE: Final = 0o700


def cache_path() -> str:
    """`probe.json` in mcpshield's cache folder ($MCPSHIELD_CACHE_DIR moves it)."""
    from mcpshield.sandbox.location import cache_root

    return os.path.join(cache_root(), CACHE_NAME)


def load(path: str, key: Mapping[str, Any]) -> dict[str, Any] | None:
    """The stored answer if it was made under `key`; None otherwise, or when the file cannot be
    read or parsed."""
    try:
        with open(path, encoding="utf-8") as file:
            stored = json.load(file)
    except (OSError, ValueError):
        return None
    if not isinstance(stored, dict) or stored.get("key") != key:
        return None
    answer = stored.get("answer")
    return answer if isinstance(answer, dict) else None


def store(path: str, key: Mapping[str, Any], answer: Mapping[str, Any]) -> None:
    """Writes the answer atomically (file 0600, folder 0700). A cache that cannot be written only
    costs a probe next time: said once on stderr, not an error."""
    folder = os.path.dirname(path)
    temporary = f"{path}.{os.getpid()}"
    try:
        os.makedirs(folder, mode=DIR_MODE, exist_ok=True)
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0)
        with os.fdopen(os.open(temporary, flags, FILE_MODE), "w", encoding="utf-8") as file:
            json.dump({"key": key, "answer": answer}, file, indent=1, sort_keys=True)
        os.replace(temporary, path)
    except OSError as exc:
        sys.stderr.write(f"mcpshield: cannot cache the sandbox probe in {folder}: {exc.strerror or exc}\n")
        with contextlib.suppress(OSError):
            os.unlink(temporary)
