"""How a path argument is read: every way the server or the OS might resolve it.

A server may collapse `..` before following symlinks (Node's path.resolve), the OS follows them
first, and some servers map a name that does not exist to a Unicode-equivalent one that does
(server-filesystem's NFC matching). A path is checked under each of these readings. Reading the
filesystem (symlinks, directory entries) is the one I/O a policy check does; the resolver is
injected so tests can see it. The model chooses the path, so every reading is bounded: a path
too long, too deep or too costly to read is refused with the reason, never read slowly.
"""

from __future__ import annotations

import errno
import os
import stat
import unicodedata
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Final
from urllib.parse import unquote, urlsplit

PathResolver = Callable[[str], str]
#: Each reading of a path, with how it was read where that differs from the path as given.
Readings = tuple[tuple[str, str | None], ...]

#: Directory entries scanned for a Unicode-equivalent name; a larger directory makes the path
#: unusable rather than slow.
MAX_SCANNED_ENTRIES: Final = 10_000
#: Unicode-equivalent spellings followed per path; more is an attack, not a file name.
MAX_EQUIVALENTS: Final = 8
#: Linux's PATH_MAX: the kernel refuses a longer path (ENAMETOOLONG), so no server can use one.
MAX_PATH_BYTES: Final = 4096
#: Real paths have a few dozen components; each may cost a lookup or a directory scan.
MAX_PATH_COMPONENTS: Final = 256
#: Linux's MAXSYMLINKS: past this many symlinks in one lookup the kernel refuses with ELOOP.
MAX_SYMLINK_HOPS: Final = 40
#: The filesystem work one path may cost (names looked up plus directory entries read, each
#: directory read once): a real path costs tens, a Unicode lookup in a big directory thousands.
MAX_READ_WORK: Final = 25_000
#: A longer value cannot decode to a path within MAX_PATH_BYTES (`%XX` is three characters for
#: one byte), so it is refused before it is parsed.
_MAX_VALUE_CHARS: Final = 3 * MAX_PATH_BYTES + len("file://localhost")


@dataclass(frozen=True, slots=True)
class Unreadable:
    """A path that is refused rather than read, and why."""

    reason: str


class _Refused(ValueError):  # readings() turns it into Unreadable
    """Stops a reading that went over a bound; a ValueError to any other caller of realpath."""


class ReadBudget:
    """The work left for one check, and the directories it has listed. A fresh one per path by
    default; a caller reading several paths for one check (the elements of a list) may share one,
    so the whole check is bounded and each directory is listed once."""

    __slots__ = ("left", "listings")

    def __init__(self) -> None:
        self.left = MAX_READ_WORK
        self.listings: dict[tuple[int, int], dict[str, list[str]]] | None = None

    def spend(self, work: int) -> None:
        self.left -= work
        if self.left < 0:
            raise _Refused(f"reading the path would take more than {MAX_READ_WORK} filesystem lookups")


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


def realpath(path: str) -> str:
    """os.path.realpath of an absolute path, bounded: Python 3.11's recurses once per symlink
    (a chain of ~1,000 raises RecursionError) and leaves a loop unresolved. Raises OSError ELOOP
    past MAX_SYMLINK_HOPS symlinks, as the kernel would, and ValueError past MAX_READ_WORK."""
    return _realpath(path, ReadBudget())


def _realpath(path: str, budget: ReadBudget) -> str:
    pending = path.split("/")[::-1]  # the components still to resolve, the next one last
    resolved = "/"
    hops = 0
    while pending:
        name = pending.pop()
        if not name or name == ".":
            continue
        if name == "..":
            resolved = os.path.dirname(resolved)  # the prefix holds no symlink: textual is right
            continue
        budget.spend(1)
        here = os.path.join(resolved, name)
        try:
            is_link = stat.S_ISLNK(os.lstat(here).st_mode)
        except OSError:  # missing (or unreadable): kept as spelt, like realpath(strict=False)
            is_link = False
        if not is_link:
            resolved = here
            continue
        hops += 1
        if hops > MAX_SYMLINK_HOPS:
            raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), path)
        target = os.readlink(here)
        if target.startswith("/"):
            resolved = "/"
        pending.extend(reversed(target.split("/")))
    return resolved


def _equivalents(path: str, budget: ReadBudget) -> list[str]:
    """Where a server that matches names by NFC might land for `path`, if some component of it
    does not exist as spelt: each missing component replaced by a directory entry with the same
    NFC form. [] when every component exists (or none has an equivalent)."""
    if os.path.lexists(path):
        return []
    target = lexical(path)
    parts = [c for c in path.split("/") if c]
    found: list[str] = []
    pending = [("/", 0)]  # (directory reached, index of the next component): a depth-first walk
    while pending and len(found) < MAX_EQUIVALENTS:
        base, index = pending.pop()
        while index < len(parts):
            head = parts[index]
            here = os.path.join(base, head)
            if head not in (".", ".."):
                budget.spend(1)
                if not os.path.lexists(here):
                    break
            base, index = here, index + 1
        if index < len(parts):
            head = parts[index]
            matches = [e for e in _by_nfc(base, budget).get(_nfc(head), ()) if e != head]
            if matches:
                pending.extend((os.path.join(base, match), index + 1) for match in reversed(matches[:MAX_EQUIVALENTS]))
                continue
            base = os.path.join(base, *parts[index:])
        if lexical(base) != target:
            found.append(base)
    return found


def _nfc(name: str) -> str:
    # ASCII is its own NFC form; checking is far cheaper than normalising.
    return name if name.isascii() else unicodedata.normalize("NFC", name)


def _by_nfc(directory: str, budget: ReadBudget) -> dict[str, list[str]]:
    """The entries of `directory` by NFC form, read once per check however it is spelt."""
    budget.spend(1)
    try:
        status = os.stat(directory)
    except OSError:  # not a directory, or unreadable: nothing to map to
        return {}
    if budget.listings is None:
        budget.listings = {}
    key = (status.st_dev, status.st_ino)
    listing = budget.listings.get(key)
    if listing is None:
        listing = budget.listings[key] = _scan(directory, budget)
    return listing


def _scan(directory: str, budget: ReadBudget) -> dict[str, list[str]]:
    listing: dict[str, list[str]] = {}
    count = 0
    try:
        with os.scandir(directory) as scan:
            for entry in scan:
                count += 1
                if count > MAX_SCANNED_ENTRIES:
                    raise _Refused(f"the path passes a directory of more than {MAX_SCANNED_ENTRIES} entries to compare")
                budget.spend(1)
                listing.setdefault(_nfc(entry.name), []).append(entry.name)
    except OSError:  # not a directory, or unreadable: nothing to map to
        return {}
    return listing


def _oversized(raw: str) -> str | None:
    """Why `raw` is too big to read, if it is; cheap for the usual short path."""
    if len(raw) > MAX_PATH_BYTES // 4 and len(raw.encode("utf-8", "surrogatepass")) > MAX_PATH_BYTES:
        return f"the path is longer than {MAX_PATH_BYTES} bytes"
    if raw.count("/") > MAX_PATH_COMPONENTS and sum(1 for c in raw.split("/") if c) > MAX_PATH_COMPONENTS:
        return f"the path has more than {MAX_PATH_COMPONENTS} components"
    return None


class PathReader:
    """Turns an argument into its readings: lexical, as the OS resolves it, and as a server
    matching Unicode-equivalent names would. A relative path is unusable: the server resolves it
    against a directory of its own (server-filesystem: its allowed directories), not mcpshield's."""

    __slots__ = ("_home", "_resolve")

    def __init__(self, resolve: PathResolver, home: str) -> None:
        # os.path.realpath is the usual resolver: the bounded one reads paths as it does, within
        # the budget of the check.
        self._resolve = None if resolve is os.path.realpath or resolve is realpath else resolve
        self._home = home

    def absolute(self, value: object) -> str | None:
        if not isinstance(value, str) or not value:
            return None
        path: str | None = file_uri_path(value) if value[:5].lower() == "file:" else value
        if path is None or "\x00" in path:
            return None
        path = expand_home(path, self._home)
        return path if path is not None and os.path.isabs(path) else None

    def read(self, value: object, budget: ReadBudget | None = None) -> Readings | None:
        """The readings of `value`; None when it cannot be read, for whatever reason."""
        readings = self.readings(value, budget)
        return None if isinstance(readings, Unreadable) else readings

    def readings(self, value: object, budget: ReadBudget | None = None) -> Readings | Unreadable | None:
        """The readings of `value`; None when it is not a path (see `absolute`), Unreadable when
        it is one but reading it would go over a bound (of `budget`, when given)."""
        if isinstance(value, str) and len(value) > _MAX_VALUE_CHARS:
            return Unreadable(f"the path is longer than {MAX_PATH_BYTES} bytes")
        raw = self.absolute(value)
        if raw is None:
            return None
        oversized = _oversized(raw)
        if oversized is not None:
            return Unreadable(oversized)
        if budget is None:
            budget = ReadBudget()
        try:
            resolved = self._resolved(raw, budget)
            mapped = [self._resolved(path, budget) for path in _equivalents(raw, budget)]
        except _Refused as exc:
            return Unreadable(str(exc))
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                return Unreadable(f"the path goes through more than {MAX_SYMLINK_HOPS} symlinks (or a loop of them)")
            return None
        except ValueError:  # a name the OS cannot encode
            return None
        flat = lexical(raw)
        readings = [
            (flat, None if flat == value else f"which is {flat}"),
            (resolved, None if resolved == flat else f"which resolves to {resolved}"),
        ]
        readings += [(path, f"which a server may read as {path}") for path in mapped]
        return tuple(readings)

    def _resolved(self, path: str, budget: ReadBudget) -> str:
        return lexical(_realpath(path, budget) if self._resolve is None else self._resolve(path))


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
