"""`mcpshield audit verify | tail | stats | prune | path`: what each does and prints, given
parsed arguments. Everything printed from an event goes through `show` first."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Final, TextIO

import orjson

from mcpshield.audit import read, show
from mcpshield.audit.chain import check
from mcpshield.audit.location import SUFFIX, log_root, session_files
from mcpshield.errors import AuditError, UsageError

#: How often `tail -f` looks for new lines: quick enough to feel live, cheap when idle.
FOLLOW_INTERVAL_S: Final = 0.2
#: What the table shows: the requests and the refused input (--json shows every event kind).
TABLE_KINDS: Final = frozenset({"request", "refused_input"})
_NO_LOG_TIP: Final = "`mcpshield audit path` prints where the log is; set MCPSHIELD_LOG_DIR to read another one"


def verify(paths: Sequence[str], all_files: bool, out: TextIO = sys.stdout) -> int:
    """Checks each file's chain: 1 if any is broken; an incomplete file is a warning only."""
    if bool(paths) == all_files:
        raise UsageError("say which files to verify: PATH... or --all", "e.g. mcpshield audit verify --all")
    targets = list(session_files(log_root())) if all_files else _files_named(paths)
    if not targets:
        out.write(f"no session files in {log_root()}\n")
        return 0
    any_broken = False
    for path in targets:
        text, broken = _verdict(path)
        out.write(text + "\n")
        any_broken = any_broken or broken
    return 1 if any_broken else 0


def _verdict(path: Path) -> tuple[str, bool]:
    """What verify says about one file, and whether its chain is broken."""
    try:
        with path.open("rb") as stream:
            live = time.time() - os.fstat(stream.fileno()).st_mtime < read.LIVE_WINDOW_S
            # A live file's last line may be half written: it is left for the next run to check.
            checked = check(_complete(stream) if live else stream)
    except OSError as exc:
        raise read.unreadable(path, exc) from None
    if checked.broken is not None and not (live and checked.lines == 0):
        return f"{path}:{checked.broken.line}: {checked.broken.why}", True
    if not checked.complete:
        why = "the wrapper is still running, was killed, or the end of the file was cut off"
        return f"{path}: incomplete: {checked.lines} line(s) and no session_end ({why})", False
    return f"{path}: ok ({checked.lines} lines)", False


def _complete(lines: Iterable[bytes]) -> Iterator[bytes]:
    """The lines that end with a newline."""
    return (line for line in lines if line.endswith(b"\n"))


def _files_named(paths: Sequence[str]) -> list[Path]:
    """The files named, and the session files inside folders named; a missing one is an error."""
    found: list[Path] = []
    for name in paths:
        path = Path(name)
        if path.is_dir():
            found.extend(sorted(p for p in path.rglob(f"*{SUFFIX}") if p.is_file()))
        elif path.is_file():
            found.append(path)
        else:
            raise AuditError(f"no such audit file: {name}", _NO_LOG_TIP)
    return found


def make_filter(
    since: str | None,
    *,
    tool: str | None = None,
    decision: str | None = None,
    session: str | None = None,
    kinds: frozenset[str] | None = None,
    now: float | None = None,
) -> read.Filter:
    cutoff = None
    if since is not None:
        seconds = read.parse_duration(since, "--since")
        cutoff = read.timestamp(max(0.0, (time.time() if now is None else now) - seconds))
    return read.Filter(cutoff, tool, decision, session, kinds)


def tail(
    filt: read.Filter,
    count: int | None,
    follow: bool,
    as_json: bool,
    out: TextIO = sys.stdout,
) -> int:
    """The last `count` matching events (all when None), then, with `follow`, new ones as they
    are written, until interrupted. The table shows requests and refused input only."""
    if not as_json:
        filt = read.Filter(filt.since, filt.tool, filt.decision, filt.session, TABLE_KINDS)
    root = log_root()
    every = read.files(root, read.Filter())  # one stat each: what is shown first ends where following starts
    found = [(path, info) for path, info in every if filt.wants_file(path, info.st_mtime)]
    follower = read.Follower(root, filt, every) if follow else None
    try:
        if not as_json:
            out.write(show.header() + "\n")
        _print(read.latest(found, filt, count), as_json, out)
        while follower is not None:
            time.sleep(FOLLOW_INTERVAL_S)
            _print(follower.poll(), as_json, out)
    except BrokenPipeError:  # the reader went away (`| head`): nothing left to do
        _detach_stdout()
    return 0


def _print(entries: Sequence[read.Entry], as_json: bool, out: TextIO) -> None:
    for entry in entries:
        out.write(show.json_safe(entry.raw).decode("utf-8") if as_json else show.row(entry.event) + "\n")
    out.flush()


def _detach_stdout() -> None:
    """Points stdout at the null device so that the interpreter's last flush cannot fail again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def stats(filt: read.Filter, as_json: bool, out: TextIO = sys.stdout) -> int:
    tally = read.tally(read.files(log_root(), filt), filt)
    if as_json:
        document = {
            "tools": {name: figures.as_json() for name, figures in sorted(tally.tools.items())},
            "total": tally.total.as_json(),
            "sessions": len(tally.sessions),
            "refused_input": tally.refused_input,
        }
        text = orjson.dumps(document, option=orjson.OPT_INDENT_2 | orjson.OPT_APPEND_NEWLINE)
        out.write(show.json_safe(text).decode("utf-8"))
    else:
        out.write("".join(line + "\n" for line in show.stats_table(tally)))
    return 0


def prune(older_than: str, dry_run: bool, out: TextIO = sys.stdout, now: float | None = None) -> int:
    """Removes the session files older than `older_than` (never one of a session still running)."""
    seconds = read.parse_duration(older_than, "--older-than")
    doomed = read.stale(log_root(), seconds, time.time() if now is None else now)
    verb = "would remove" if dry_run else "removed"
    for path, _ in doomed:
        if not dry_run:
            read.remove([path])
        out.write(f"{verb} {path}\n")
    out.write(f"{verb} {len(doomed)} file(s), {sum(size for _, size in doomed)} bytes\n")
    return 0


def path(session: str | None, out: TextIO = sys.stdout) -> int:
    """The log root, or the files of the sessions whose id starts with `session`."""
    root = log_root()
    if session is None:
        out.write(f"{root}\n")
        return 0
    matching = [p for p in session_files(root) if (read.session_of(p) or "").startswith(session)]
    if not matching:
        raise AuditError(
            f"no session in {root} has an id starting with {session!r}", "`mcpshield audit tail` shows ids"
        )
    out.write("".join(f"{p}\n" for p in matching))
    return 0
