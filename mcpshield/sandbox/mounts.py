"""The mount table of a bubblewrap sandbox, planned before bwrap runs: which host paths are bound
where (read-only or writable), which symbolic links lead to them, what is hidden, and where a
path leads inside the sandbox. Pure except for looking at the host's filesystem."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Final, Literal

from mcpshield.errors import SandboxError
from mcpshield.sandbox.spec import inside

Kind = Literal["ro", "rw", "own", "link"]

#: Made by bwrap itself in every sandbox (its own /dev and /proc): host paths under them are
#: never bound, whatever a list names.
BWRAP_OWNED: Final = ("/dev", "/proc")
#: Symbolic links followed while resolving a path before it counts as a loop (Linux's MAXSYMLINKS).
MAX_LINK_HOPS: Final = 40


@dataclass(frozen=True, slots=True)
class Mount:
    """One entry of the table: a host path bound at the same path ("ro"/"rw"), a filesystem of
    the sandbox's own ("own": /tmp, /dev, /proc, or a hidden path, `target` "dir" or "file"), or
    a symbolic link ("link", `target` being its text)."""

    kind: Kind
    dest: str
    target: str = ""

    @property
    def shows_host(self) -> bool:
        return self.kind in ("ro", "rw")


@dataclass
class MountPlan:
    """The table as it grows. `binds` are applied parents first, then `links`, then `hidden`;
    a later mount at or above a path hides what was there."""

    binds: list[Mount] = field(default_factory=list)
    links: list[Mount] = field(default_factory=list)
    hidden: list[Mount] = field(default_factory=list)
    #: (path as given, its real path): given paths that must lead to their real path inside.
    _wanted_links: list[tuple[str, str]] = field(default_factory=list)

    def own(self, dest: str) -> None:
        """A filesystem of the sandbox's own at `dest` (tmpfs, bwrap's /dev or /proc)."""
        self.binds.append(Mount("own", dest))

    def expose(self, path: str, kind: Literal["ro", "rw"], *, required: bool = False) -> None:
        """Binds the real path of `path` at that real path, and makes `path` lead there; a
        missing path is skipped, or with `required` a SandboxError."""
        path = os.path.normpath(path)
        if _under_any(path, BWRAP_OWNED):
            return
        real = os.path.realpath(path)
        if not os.path.exists(real):
            if required:
                raise SandboxError(
                    f"the sandbox's write path {path} does not exist",
                    "create it, or remove it from the profile's [sandbox] write",
                )
            return
        top = self.covering(real)
        # a path already shown as (or more) writable needs no bind of its own: a write path
        # wins over a read path inside it
        if top is None or top.kind not in ("rw", kind):
            self.binds = [m for m in self.binds if not (m.dest == real and m.shows_host)]
            self.binds.append(Mount(kind, real))
        if path != real:
            self._wanted_links.append((path, real))

    def hide(self, path: str) -> None:
        """Hides the real path of `path`, and so whatever is bound beneath it (skipped when it
        is missing on the host or in the sandbox, or already hidden)."""
        path = os.path.normpath(path)
        if _under_any(path, BWRAP_OWNED):
            return
        real = os.path.realpath(path)
        if not os.path.lexists(real) or self._node(real) is not True:
            return
        self.hidden = [h for h in self.hidden if not inside(h.dest, real)]
        self.hidden.append(Mount("own", real, "dir" if os.path.isdir(real) else "file"))

    def settle_links(self) -> None:
        """Adds a symbolic link at each given path that would not otherwise lead to its real path
        inside the sandbox; a SandboxError when one cannot be made there."""
        self.binds.sort(key=lambda m: _depth(m.dest))  # stable: parents first, later wins on ties
        for path, real in sorted(self._wanted_links, key=lambda pair: _depth(pair[0])):
            if self.resolve(path) == real:
                continue
            if not self._can_link(path):
                raise SandboxError(
                    f"{path} leads to {real}, and the sandbox cannot reproduce that link",
                    f"name the real path {real} in the profile's [sandbox] instead",
                )
            self.links.append(Mount("link", path, _link_text(path, real)))

    def ordered_binds(self) -> list[Mount]:
        """The binds and own filesystems, parents first (a later one wins on a tie)."""
        return sorted(self.binds, key=lambda m: _depth(m.dest))

    def ordered_hidden(self) -> list[Mount]:
        return sorted(self.hidden, key=lambda m: _depth(m.dest))

    def covering(self, path: str) -> Mount | None:
        """The mount that decides what `path` (a path without links) is inside: the deepest bind
        or own filesystem at or above it (the last one made, on a tie); None: bwrap's empty root."""
        best: Mount | None = None
        for mount in self.binds:
            if inside(path, mount.dest) and (best is None or _depth(mount.dest) >= _depth(best.dest)):
                best = mount
        return best

    def visible(self, path: str) -> bool:
        """Whether the host's `path` (a path without links) can be seen inside, not hidden."""
        top = self.covering(path)
        return top is not None and top.shows_host and not any(inside(path, h.dest) for h in self.hidden)

    def resolve(self, path: str) -> str | None:
        """Where `path` leads inside the sandbox, following its links as the kernel would; None
        when it does not exist there."""
        pending = [part for part in reversed(path.split("/")) if part]
        current, hops = "/", 0
        while pending:
            part = pending.pop()
            if part == ".":
                continue
            if part == "..":
                current = os.path.dirname(current)
                continue
            candidate = os.path.join(current, part)
            node = self._node(candidate)
            if node is None:
                return None
            if isinstance(node, str):  # a link: walk its text from where it is
                hops += 1
                if hops > MAX_LINK_HOPS:
                    return None
                current = "/" if node.startswith("/") else current
                pending.extend(part for part in reversed(node.split("/")) if part)
                continue
            current = candidate
        return current

    def _node(self, path: str) -> str | bool | None:
        """What is at `path` (a path without links) inside: a link's text, True for anything
        else, None for nothing."""
        for link in self.links:
            if link.dest == path:
                return link.target
        for hidden in self.hidden:
            if inside(path, hidden.dest):
                return True if path == hidden.dest else None
        top = self.covering(path)
        if top is not None and top.shows_host:
            try:
                info = os.lstat(path)
            except OSError:
                return None
            return os.readlink(path) if stat.S_ISLNK(info.st_mode) else True
        # bwrap's root or an own filesystem: only what bwrap made there exists
        made = [m.dest for m in self.binds] + [m.dest for m in self.links]
        return True if any(inside(dest, path) for dest in made) else None

    def _can_link(self, path: str) -> bool:
        """bwrap can make a link at `path`: nothing is there yet, and every folder above it is
        one bwrap makes itself (not the host's, not a link)."""
        if any(inside(m.dest, path) for m in (*self.binds, *self.links)):
            return False
        for step in (*_parents(path), path):
            top = self.covering(step)
            if (top is not None and top.shows_host) or any(link.dest == step for link in self.links):
                return False
        return True


def _link_text(path: str, real: str) -> str:
    """The host's own link text when `path` is itself the only link on the way (so /bin stays
    `usr/bin`), else the absolute real path."""
    parent = os.path.dirname(path)
    if os.path.realpath(parent) == parent and os.path.islink(path):
        text = os.readlink(path)
        if os.path.normpath(os.path.join(parent, text)) == real:
            return text
    return real


def _parents(path: str) -> Iterator[str]:
    """The folders above `path`, from the top, without "/"."""
    parts = [p for p in path.split("/") if p][:-1]
    for i in range(1, len(parts) + 1):
        yield "/" + "/".join(parts[:i])


def _depth(path: str) -> int:
    return 0 if path == "/" else path.count("/")


def _under_any(path: str, trees: tuple[str, ...]) -> bool:
    return any(inside(path, tree) for tree in trees)
