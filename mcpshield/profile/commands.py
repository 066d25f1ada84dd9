"""`mcpshield profile list | show | check | init`: what each prints, given already-parsed arguments."""

from __future__ import annotations

import os
import sys
import tempfile
import unicodedata
from collections.abc import Sequence
from pathlib import Path
from typing import Final, TextIO

import tomli_w

from mcpshield.errors import ProfileError, ShieldError
from mcpshield.profile import load
from mcpshield.profile.model import LoadedProfile

#: Widest match and description columns `profile list` prints before truncating.
LIST_MATCH_CHARS: Final = 44
LIST_DESCRIPTION_CHARS: Final = 60
_PRIVATE_FILE: Final = 0o600
_PRIVATE_DIR: Final = 0o700


def list_profiles(out: TextIO = sys.stdout) -> int:
    """A table of every profile on the search path; a malformed one is listed and then reported."""
    rows = [("NAME", "WHERE", "MATCH", "DESCRIPTION")]
    broken: list[ShieldError] = []
    for entry in load.available():
        where = "shipped (shadowed)" if entry.shadowed else entry.tier
        try:
            server = load.load_file(entry.path).profile.server
        except ShieldError as err:
            broken.append(err)
            rows.append((entry.name, where, "(invalid)", "run `mcpshield profile check` on it"))
            continue
        match = _cut(_clean(", ".join(server.match)) or "-", LIST_MATCH_CHARS)
        rows.append((entry.name, where, match, _cut(_clean(server.description or ""), LIST_DESCRIPTION_CHARS)))
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    for row in rows:
        out.write("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=False)) + "  " + row[3] + "\n")
    out.write(f"\nuser profiles:    {load.user_profiles_dir()}\nshipped profiles: {load.shipped_profiles_dir()}\n")
    if broken:
        raise ProfileError(f"{len(broken)} profile(s) are invalid; the first: {broken[0]}", broken[0].tip)
    return 0


def show(ref: str, out: TextIO = sys.stdout) -> int:
    """The effective profile as TOML, after a comment header naming its source and `extends` chain."""
    chain = _chain(ref)
    this = chain[-1]
    out.write(f"# profile {_clean(this.name)}: {this.source}\n")
    if len(chain) > 1:
        out.write("# extends, root first: " + " -> ".join(f"{_clean(p.name)} ({p.source})" for p in chain) + "\n")
        out.write("# below: the effective profile (the chain merged); every base still holds what it denies or asks\n")
    out.write("# every key is shown, defaults included; `extends` is already resolved, so it is left out\n\n")
    out.write(tomli_w.dumps(this.profile.model_dump(mode="python", exclude_none=True, exclude={"extends"})))
    return 0


def check(ref: str, out: TextIO = sys.stdout) -> int:
    """Validates a profile and the profiles it extends, compiling every condition as `run`
    would; prints `ok: SOURCE (profile NAME)`."""
    from mcpshield.policy.engine import build_policy

    loaded = _chain(ref)[-1]
    build_policy(loaded)
    out.write(f"ok: {loaded.source} (profile {_clean(loaded.name)})\n")
    return 0


def _chain(ref: str) -> list[LoadedProfile]:
    if ref == load.NO_PROFILE:
        raise ProfileError(f"{ref!r} is not a profile: it means running without one", "give a profile NAME or PATH")
    path = load.locate(ref)
    assert path is not None  # `none` was handled above
    return load.load_with_bases(path)


def init(
    name: str, command: Sequence[str], env: dict[str, str], *, output: str | None, force: bool, out: TextIO = sys.stdout
) -> int:
    """Starts the server, lists its tools, and writes a starter profile for it."""
    from mcpshield.profile import probe, starter
    from mcpshield.supervisor import LaunchSpec

    if not load.NAME_PATTERN.fullmatch(name) or name == load.NO_PROFILE:
        raise ProfileError(
            f"{name!r} cannot be a profile name", "use letters, digits, '.', '_' and '-' (and not `none`)"
        )
    target = Path(output).expanduser() if output else load.user_profiles_dir() / (name + load.SUFFIX)
    if target.exists() and not force:
        raise ProfileError(f"{target} already exists", "pass --force to replace it, or --output to write elsewhere")
    report = probe.probe(LaunchSpec(tuple(command), env))
    text = starter.render(name, command, report)
    _write_private(target, text, replace=force, user_dir=output is None)
    allowed = len(load.read_profile(target)[0].tools.allow)
    out.write(f"wrote {target}: {len(report.tools)} tools, {allowed} allowed, the rest ask, unlisted ones denied\n")
    ref = name if output is None else str(target)
    out.write(f"next: review it, then `mcpshield profile check {ref}` and `mcpshield run --profile {ref} -- ...`\n")
    return 0


def _write_private(target: Path, text: str, *, replace: bool, user_dir: bool) -> None:
    """Writes `text` to `target` as a 0600 file, making missing directories 0700. Without `replace`
    the file is created exclusively, so one that appeared meanwhile is never overwritten; with it,
    the new file replaces the old in one rename."""
    directories = (load.user_config_dir(), load.user_profiles_dir()) if user_dir else (target.parent,)
    try:
        for directory in directories:
            directory.mkdir(mode=_PRIVATE_DIR, parents=True, exist_ok=True)
        if replace:
            _replace(target, text)
        else:
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, _PRIVATE_FILE)
            with os.fdopen(fd, "w", encoding="utf-8") as file:
                file.write(text)
    except FileExistsError:
        raise ProfileError(f"{target} already exists", "pass --force to replace it") from None
    except OSError as exc:
        raise ProfileError(f"cannot write {target}: {exc.strerror}", "check the directory's permissions") from None


def _replace(target: Path, text: str) -> None:
    fd, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as file:  # mkstemp makes it 0600
            file.write(text)
        os.replace(temporary, target)
    except BaseException:
        os.unlink(temporary)
        raise


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _clean(text: str) -> str:
    """Text from a profile, safe for the terminal: control and format characters removed."""
    return "".join(ch for ch in text if unicodedata.category(ch) not in ("Cc", "Cf"))
