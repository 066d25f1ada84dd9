"""Finding and loading profiles: the search path, `extends` chains, and picking one by command line.

Search path for a NAME: `<user config dir>/profiles/NAME.toml`, then the shipped `NAME.toml`. The
user config dir is `$MCPSHIELD_CONFIG_DIR`, else the platform's (`~/.config/mcpshield` on Linux).
"""

from __future__ import annotations

import fnmatch
import importlib.resources
import os
import re
import shlex
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

from pydantic import ValidationError

from mcpshield.errors import ProfileError
from mcpshield.profile.diagnose import line_index, toml_error, validation_error
from mcpshield.profile.merge import merge
from mcpshield.profile.model import LoadedProfile, Profile

#: Overrides where user profiles live (tests, and users who keep their config elsewhere).
CONFIG_DIR_ENV: Final = "MCPSHIELD_CONFIG_DIR"
#: The profile reference `--profile` takes to run without any profile.
NO_PROFILE: Final = "none"
SUFFIX: Final = ".toml"
#: Longest `extends` chain; real chains are two or three deep, a longer one is a mistake.
MAX_EXTENDS_DEPTH: Final = 8
#: A profile is a few KiB; anything near this is not a profile.
MAX_PROFILE_BYTES: Final = 1 << 20
#: What a profile NAME may look like (a file stem; no path tricks).
NAME_PATTERN: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_GLOB_CHARS: Final = frozenset("*?[")

Tier = Literal["user", "shipped"]


@dataclass(frozen=True, slots=True)
class ProfileFile:
    """A profile file on the search path: the NAME that finds it, where it is, and its tier."""

    name: str
    path: Path
    tier: Tier
    shadowed: bool = False
    """A shipped profile hidden by a user profile of the same name."""


def user_config_dir() -> Path:
    configured = os.environ.get(CONFIG_DIR_ENV)
    if configured:
        return Path(configured).expanduser()
    import platformdirs

    return Path(platformdirs.user_config_dir("mcpshield"))


def user_profiles_dir() -> Path:
    return user_config_dir() / "profiles"


def shipped_profiles_dir() -> Path:
    return Path(str(importlib.resources.files("mcpshield.profiles")))


def is_path_ref(ref: str) -> bool:
    """A reference is a path if it has a directory separator or ends in .toml; otherwise a NAME."""
    return ref.endswith(SUFFIX) or os.sep in ref or (os.altsep is not None and os.altsep in ref)


def available() -> list[ProfileFile]:
    """Every profile on the search path, user tier first, each tier sorted by name."""
    user = _tier(user_profiles_dir(), "user")
    taken = {entry.name for entry in user}
    shipped = [
        ProfileFile(entry.name, entry.path, "shipped", shadowed=entry.name in taken)
        for entry in _tier(shipped_profiles_dir(), "shipped")
    ]
    return user + shipped


def _tier(directory: Path, tier: Tier) -> list[ProfileFile]:
    if not directory.is_dir():
        return []
    return [
        ProfileFile(path.stem, path, tier)
        for path in sorted(directory.glob("*" + SUFFIX))
        if NAME_PATTERN.fullmatch(path.stem)
    ]


def find_name(name: str, *, skip: Path | None = None) -> Path | None:
    """The first file on the search path for NAME, passing over `skip` (an extending file)."""
    for directory in (user_profiles_dir(), shipped_profiles_dir()):
        candidate = directory / (name + SUFFIX)
        if candidate.is_file() and (skip is None or not _same_file(candidate, skip)):
            return candidate
    return None


def resolve(ref: str) -> LoadedProfile | None:
    """What `--profile REF` names: None for `none`, a file for a path, else a NAME on the search path."""
    path = locate(ref)
    return None if path is None else load_file(path)


def locate(ref: str) -> Path | None:
    """The file `--profile REF` names, without loading it; None for `none`."""
    if ref == NO_PROFILE:
        return None
    if is_path_ref(ref):
        return Path(ref).expanduser()
    if not NAME_PATTERN.fullmatch(ref):
        raise ProfileError(
            f"{ref!r} is neither a profile name nor a path",
            "names are letters, digits, '.', '_' and '-'; a path needs a '/' or a .toml ending",
        )
    found = find_name(ref)
    if found is None:
        raise _not_found(ref)
    return found


def _not_found(name: str) -> ProfileError:
    names = sorted({entry.name for entry in available()})
    return ProfileError(
        f"no profile named {name!r} (looked in {user_profiles_dir()} and the shipped profiles; "
        f"available: {', '.join(names) or 'none'})",
        "`mcpshield profile list` shows them all; `mcpshield profile init NAME -- CMD` creates one",
    )


def load_file(path: Path) -> LoadedProfile:
    """Reads, validates and resolves the `extends` chain of one profile file."""
    return load_with_bases(path)[-1]


def load_with_bases(path: Path) -> list[LoadedProfile]:
    """The profile at `path` and every profile it extends, root base first, this one last."""
    return _load(path, ())


def _load(path: Path, stack: tuple[Path, ...]) -> list[LoadedProfile]:
    own, text = read_profile(path)
    name = own.server.name or path.stem
    if own.extends is None:
        return [LoadedProfile(name, str(path), (own,))]
    if len(stack) >= MAX_EXTENDS_DEPTH:
        raise _extends_error(path, text, f"extends more than {MAX_EXTENDS_DEPTH} profiles deep", "shorten the chain")
    base_path = _base_path(path, text, own.extends)
    resolved = base_path.resolve()
    if resolved in stack or _same_file(base_path, path):
        cycle = " -> ".join(p.name for p in (*stack, path.resolve(), resolved))
        raise _extends_error(path, text, f"extends itself in a cycle ({cycle})", "remove one of the extends")
    bases = _load(base_path, (*stack, path.resolve()))
    effective = merge(bases[-1].profile, own)
    return [*bases, LoadedProfile(name, str(path), (*bases[-1].chain, effective))]


def _base_path(path: Path, text: str, ref: str) -> Path:
    """Where `extends = ref` in `path` points: a path relative to `path`, or a NAME (not `path`)."""
    if is_path_ref(ref):
        target = (path.parent / Path(ref).expanduser()).absolute()
        if not target.is_file():
            raise _extends_error(
                path, text, f"extends {ref!r}, which does not exist", "fix the path (relative to this file)"
            )
        return target
    found = find_name(ref, skip=path) if NAME_PATTERN.fullmatch(ref) else None
    if found is None:
        raise _extends_error(
            path, text, f"extends {ref!r}, and no such profile exists", "`mcpshield profile list` shows the names"
        )
    return found


def _extends_error(path: Path, text: str, what: str, tip: str) -> ProfileError:
    line = line_index(text).get(("extends",), 1)
    return ProfileError(f"{path}:{line}: extends: {what}", tip)


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.samefile(b)
    except OSError:
        return False


def read_profile(path: Path) -> tuple[Profile, str]:
    """One file, parsed and validated on its own (no `extends`), and its text."""
    text = _read_text(path)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise toml_error(str(path), exc) from None
    try:
        return Profile.model_validate(data), text
    except ValidationError as exc:
        raise validation_error(str(path), text, exc) from None


def _read_text(path: Path) -> str:
    try:
        with path.open("rb") as file:
            raw = file.read(MAX_PROFILE_BYTES + 1)
    except FileNotFoundError:
        raise ProfileError(
            f"{path}: no such profile file", "check the path, or give a NAME from `mcpshield profile list`"
        ) from None
    except OSError as exc:
        raise ProfileError(f"{path}: cannot read it ({exc.strerror})", "check the path and its permissions") from None
    if len(raw) > MAX_PROFILE_BYTES:
        raise ProfileError(f"{path}: larger than {MAX_PROFILE_BYTES} bytes", "a profile is a short TOML file")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ProfileError(f"{path}: not UTF-8 text (byte {exc.start})", "save it as UTF-8") from None


def match_command(argv: Sequence[str]) -> LoadedProfile | None:
    """The profile whose `[server] match` fits `argv` best, or None if none does.

    A user profile beats a shipped one; within a tier the longest matching pattern wins; two
    different profiles tied at the top are an error. Every candidate is loaded, so a malformed
    profile is reported rather than passed over.
    """
    scored: list[tuple[tuple[int, int], LoadedProfile]] = []
    for entry in available():
        if entry.shadowed:
            continue
        loaded = load_file(entry.path)
        length = _best_match(loaded.profile.server.match, argv)
        if length is not None:
            scored.append(((1 if entry.tier == "user" else 0, length), loaded))
    if not scored:
        return None
    scored.sort(key=lambda pair: pair[0], reverse=True)
    (top, best), rest = scored[0], scored[1:]
    rivals = [loaded for score, loaded in rest if score == top]
    if rivals:
        raise ProfileError(
            f"this server's command matches profiles {best.source} and {rivals[0].source} equally well",
            f"pick one with --profile {best.name} (or --profile {rivals[0].name}), or make one's match more specific",
        )
    return best


def _best_match(patterns: Sequence[str], argv: Sequence[str]) -> int | None:
    """The length of the longest pattern that matches, or None."""
    line = " ".join(argv)
    lengths = [
        len(pattern)
        for pattern in patterns
        if pattern
        and (any(fnmatch.fnmatchcase(arg, pattern) for arg in argv) if _GLOB_CHARS & set(pattern) else pattern in line)
    ]
    return max(lengths, default=None)


def no_profile_error(argv: Sequence[str]) -> ProfileError:
    """What `run` says when no profile matches; names only the program (arguments may hold secrets)."""
    program = os.path.basename(argv[0]) if argv else "?"
    return ProfileError(
        f"no profile matches this server's command ({program} ...)",
        f"create one with `mcpshield profile init NAME -- {shlex.quote(program)} ...`, pick one with "
        "`--profile NAME`, or run without one with `--profile none`",
    )
