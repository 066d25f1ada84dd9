"""Where the sandbox keeps what outlives a session: the probe's cache and each server's private
caches; $MCPSHIELD_CACHE_DIR moves all of it."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Final

#: Moves mcpshield's cache folder (tests, or a home on a slow network filesystem).
CACHE_DIR_ENV: Final = "MCPSHIELD_CACHE_DIR"


def cache_root() -> Path:
    """mcpshield's cache folder: $MCPSHIELD_CACHE_DIR, else the platform's user cache dir."""
    override = os.environ.get(CACHE_DIR_ENV)
    if override:
        return Path(override)
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("mcpshield", appauthor=False))


def server_dir(name: str) -> Path:
    """The private folder of one server's caches (created 0700 with its parents)."""
    path = cache_root() / "servers" / name
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    return path
