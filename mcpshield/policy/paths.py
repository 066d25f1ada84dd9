"""How a path argument is read: every way the server or the OS might resolve it.

A server may collapse `..` before following symlinks (Node's path.resolve), the OS follows them
first, and some servers map a name that does not exist to a Unicode-equivalent one that does
(server-filesystem's NFC matching). A path is checked under each of these readings. Reading the
filesystem (symlinks, directory entries) is the one I/O a policy check does; the resolver is
injected so tests can see it.
"""

from __future__ import annotations

import os
import unicodedata
from collections.abc import Callable, Iterable
from typing import Final
from urllib.parse import unquote, urlsplit

PathResolver = Callable[[str], str]

#: Directory entries scanned for a Unicode-equivalent name; a larger directory makes the path
#: unusable rather than slow.
MAX_SCANNED_ENTRIES: Final = 10_000
#: Unicode-equivalent spellings followed per path; more is an attack, not a file name.
MAX_EQUIVALENTS: Final = 8


def expand_home(path: str, home: str) -> str | None:
    """`~` and `~/x` against `home`; `~user` is None, as servers disagree on it."""
    if path == "~" or path.startswith("~/"):
        return home + path[1:]
    return None if path.startswith("~") else path


def lexical(path: str) -> str:
    """`..` collapsed textually, as Node's path.resolve does; `//x` is `/x` on Linux and macOS."""
    normal = os.path.normpath(path)
    return "/" + normal.lstrip("/") if normal.startswith("//") else normal


def file_uri_path(uri: str) -> str | None:
    """The local path a `file:` URI names, or None for a remote host or an undecodable path."""
    try:
        parts = urlsplit(uri)
        path = unquote(parts.path, errors="strict")
    except (ValueError, UnicodeDecodeError):
        return None
    if parts.scheme != "file" or parts.netloc.lower() not in ("", "localhost"):
        return None
    return path if path.startswith("/") else None


def unicode_equivalents(path: str) -> list[str] | None:
    """Where a server that matches names by NFC might land for `path`, if some component of it
    does not exist as spelt: each missing component replaced by a directory entry with the same
    NFC form. [] when every component exists (or none has an equivalent); None when a directory
    is too large to scan."""
    if os.path.lexists(path):
        return []
    found: list[str] = []
    for candidate in _equivalent_walk("/", [c for c in path.split("/") if c]):
        if candidate is None:
            return None
        if lexical(candidate) != lexical(path):
            found.append(candidate)
        if len(found) >= MAX_EQUIVALENTS:
            break
    return found


def _equivalent_walk(base: str, parts: list[str]) -> Iterable[str | None]:
    if not parts:
        yield base
        return
    head, rest = parts[0], parts[1:]
    here = os.path.join(base, head)
    if os.path.lexists(here) or head in (".", ".."):
        yield from _equivalent_walk(here, rest)
        return
    entries = _entries(base)
    if entries is None:
        yield None
        return
    wanted = unicodedata.normalize("NFC", head)
    matches = [e for e in entries if e != head and unicodedata.normalize("NFC", e) == wanted]
    if not matches:
        yield os.path.join(here, *rest)
    for match in matches[:MAX_EQUIVALENTS]:
        yield from _equivalent_walk(os.path.join(base, match), rest)


def _entries(directory: str) -> list[str] | None:
    try:
        with os.scandir(directory) as scan:
            names = []
            for entry in scan:
                names.append(entry.name)
                if len(names) > MAX_SCANNED_ENTRIES:
                    return None
            return names
    except OSError:  # not a directory, or unreadable: nothing to map to
        return []


class PathReader:
    """Turns an argument into its readings: lexical, as the OS resolves it, and as a server
    matching Unicode-equivalent names would. A relative path is unusable: the server resolves it
    against a directory of its own (server-filesystem: its allowed directories), not mcpshield's."""

    __slots__ = ("_home", "_resolve")

    def __init__(self, resolve: PathResolver, home: str) -> None:
        self._resolve = resolve
        self._home = home

    def absolute(self, value: object) -> str | None:
        if not isinstance(value, str) or not value:
            return None
        path: str | None = file_uri_path(value) if value[:5].lower() == "file:" else value
        if path is None or "\x00" in path:
            return None
        path = expand_home(path, self._home)
        return path if path is not None and os.path.isabs(path) else None

    def read(self, value: object) -> tuple[tuple[str, str | None], ...] | None:
        raw = self.absolute(value)
        if raw is None:
            return None
        flat = lexical(raw)
        try:
            resolved = lexical(self._resolve(raw))
            equivalents = unicode_equivalents(raw)
            if equivalents is None:
                return None
            mapped = [lexical(self._resolve(path)) for path in equivalents]
        except (OSError, ValueError):
            return None
        readings = [
            (flat, None if flat == value else f"which is {flat}"),
            (resolved, None if resolved == flat else f"which resolves to {resolved}"),
        ]
        readings += [(path, f"which a server may read as {path}") for path in mapped]
        return tuple(readings)


class Roots:
    """Directories, each counted in its lexical and its resolved form."""

    __slots__ = ("_prefixes", "shown")

    def __init__(self, roots: Iterable[str], resolve: PathResolver, home: str, show: Callable[[str], str]) -> None:
        forms: list[str] = []
        shown: list[str] = []
        for root in roots:
            expanded = expand_home(root, home)
            if not expanded or "\x00" in expanded or not os.path.isabs(expanded):
                raise ValueError(f"{root!r} is not a directory mcpshield can check against (use /..., ~ or ~/...)")
            flat = lexical(expanded)
            shown.append(show(flat))
            forms += [flat, lexical(resolve(expanded))]
        self._prefixes = tuple(dict.fromkeys((form, form.rstrip("/") + "/") for form in forms))
        self.shown = tuple(shown) or ("(no directory)",)

    def contain(self, path: str) -> bool:
        """Component-wise: `/a/b` contains `/a/b` and `/a/b/c`, not `/a/bc`."""
        return any(path == root or path.startswith(prefix) for root, prefix in self._prefixes)
