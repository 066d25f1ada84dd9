"""Reading the audit log for `mcpshield audit`: events across session files, their filters, the
per-tool figures of `stats`, and which files `prune` removes. The clock comes in as `now`."""

from __future__ import annotations

import calendar
import fnmatch
import math
import os
import re
import time
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Final

import orjson

from mcpshield.audit.location import SUFFIX, session_files
from mcpshield.errors import AuditError, UsageError

_UNITS: Final = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
#: Nine digits of weeks is already far past any log's age; more is a typo.
_DURATION: Final = re.compile(r"\s*(\d{1,9})\s*([smhdw])\s*")
_DAY: Final = re.compile(r"\d{4}-\d{2}-\d{2}")
_NAME: Final = re.compile(r"(\d{6})-([0-9a-f]+)" + re.escape(SUFFIX))
#: A file written this recently may belong to a wrapper still running: prune never removes it.
LIVE_WINDOW_S: Final = 60.0
#: File times come from the kernel's coarse clock, which can trail the `ts` of the events just
#: written by a few milliseconds; an mtime is trusted to bound a file's events only this loosely.
MTIME_SLACK_S: Final = 2.0
#: `tail -f` reads at most this much of one file per poll, so a huge append cannot take all memory at once.
FOLLOW_CHUNK_BYTES: Final = 1 << 20


def parse_duration(text: str, option: str) -> float:
    """Seconds in `30s`, `15m`, `1h`, `2d` or `1w`; a UsageError naming `option` otherwise."""
    found = _DURATION.fullmatch(text)
    if found is None:
        raise UsageError(f"{option} {text!r} is not a duration", "write a number and one unit: 30s, 15m, 1h, 2d or 1w")
    return float(int(found[1]) * _UNITS[found[2]])


def timestamp(epoch: float) -> str:
    """An event's `ts` form (UTC, microseconds), so that cut-offs compare with `ts` as strings."""
    whole = math.floor(epoch)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)) + f".{int((epoch - whole) * 1e6):06d}Z"


def session_of(path: Path) -> str | None:
    """The session id in a session file's name, or None for a file not named like one."""
    named = _NAME.fullmatch(path.name)
    return named[2] if named else None


@dataclass(frozen=True, slots=True)
class Entry:
    """One line of a session file: where it is, its bytes (newline included) and its event."""

    path: Path
    line: int
    raw: bytes
    event: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Filter:
    """Which events a command shows. Every field left None lets everything through."""

    since: str | None = None
    """The earliest `ts` shown (see `timestamp`)."""
    tool: str | None = None
    """A glob (fnmatch, case-sensitive) the event's `tool` must match."""
    decision: str | None = None
    """The `decision` the event must carry."""
    session: str | None = None
    """A prefix of the session id."""
    kinds: frozenset[str] | None = None
    """The `event` kinds shown."""

    def matches(self, event: dict[str, Any]) -> bool:
        if self.kinds is not None and event.get("event") not in self.kinds:
            return False
        if self.since is not None and not (isinstance(event.get("ts"), str) and event["ts"] >= self.since):
            return False
        if self.tool is not None:
            tool = event.get("tool")
            if not isinstance(tool, str) or not fnmatch.fnmatchcase(tool, self.tool):
                return False
        if self.decision is not None and event.get("decision") != self.decision:
            return False
        session = event.get("session")
        return self.session is None or (isinstance(session, str) and session.startswith(self.session))

    def wants_file(self, path: Path, mtime: float) -> bool:
        """Whether the file may hold a matching event: its session's id, and its last write (no
        event in it is younger than that) against `since`."""
        if self.session is not None and not (session_of(path) or "").startswith(self.session):
            return False
        return self.since is None or timestamp(mtime) >= self.since


def files(root: Path, filt: Filter) -> list[tuple[Path, os.stat_result]]:
    """The session files under `root` the filter may want, oldest session first, with their stat."""
    found = []
    for path in session_files(root):
        try:
            info = path.stat()
        except FileNotFoundError:  # pruned meanwhile
            continue
        if filt.wants_file(path, info.st_mtime):
            found.append((path, info))
    return found


def unreadable(path: Path, exc: OSError) -> AuditError:
    return AuditError(f"cannot read {path}: {exc.strerror or exc}", "check that the file and its folder are yours")


def parse(path: Path, line: int, raw: bytes) -> Entry:
    """The event on a line; a line that is not a JSON object is an AuditError, never skipped."""
    try:
        event = orjson.loads(raw)
    except orjson.JSONDecodeError:
        event = None
    if type(event) is not dict:
        raise AuditError(
            f"{path}:{line} is not an audit event", f"`mcpshield audit verify {path}` says what is wrong with the file"
        )
    return Entry(path, line, raw, event)


def entries(path: Path, end: int | None = None) -> Iterator[Entry]:
    """The complete lines of a file, up to byte `end`; a last line without its newline is still
    being written and left out."""
    try:
        with path.open("rb") as stream:
            for number, raw in enumerate(stream, start=1):
                if end is not None:
                    end -= len(raw)
                    if end < 0:
                        return
                if not raw.endswith(b"\n"):
                    return
                yield parse(path, number, raw)
    except OSError as exc:
        raise unreadable(path, exc) from None


def latest(found: Iterable[tuple[Path, os.stat_result]], filt: Filter, count: int | None) -> list[Entry]:
    """The last `count` matching events (all when None), oldest first, ordered by `ts` across
    sessions that ran at the same time. Files are read newest-written first and reading stops
    once no older file can hold a newer event than those kept (a file's events predate its mtime)."""
    if count == 0:
        return []
    kept: list[Entry] = []
    for path, info in sorted(found, key=lambda pair: pair[1].st_mtime, reverse=True):
        if count is not None and len(kept) >= count and timestamp(info.st_mtime + MTIME_SLACK_S) < _ts(kept[0]):
            break
        matching: deque[Entry] = deque(maxlen=count)
        matching.extend(entry for entry in entries(path, info.st_size) if filt.matches(entry.event))
        kept = sorted([*kept, *matching], key=_ts)
        if count is not None:
            kept = kept[-count:]
    return kept


def _ts(entry: Entry) -> str:
    ts = entry.event.get("ts")
    return ts if isinstance(ts, str) else ""


@dataclass
class _Cursor:
    offset: int  # where the next unread line starts
    line: int | None = 0  # lines before `offset`; None: not counted yet
    partial: bytes = b""


class Follower:
    """New lines in the session files under a root, poll by poll: in the files there now after
    what was already shown (their complete lines up to the sizes given), and in files that
    appear, from their start."""

    def __init__(self, root: Path, filt: Filter, shown: Iterable[tuple[Path, os.stat_result]]) -> None:
        self._root = root
        self._filter = filt
        self._cursors: dict[Path, _Cursor] = {}
        for path, info in shown:
            try:
                self._cursors[path] = _Cursor(_complete_end(path, info.st_size), None)
            except FileNotFoundError:  # pruned meanwhile
                continue
            except OSError as exc:
                raise unreadable(path, exc) from None

    def poll(self) -> list[Entry]:
        """The matching events written since the last poll, file by file."""
        new: list[Entry] = []
        for path in session_files(self._root):
            if self._filter.session is not None and not (session_of(path) or "").startswith(self._filter.session):
                continue
            cursor = self._cursors.setdefault(path, _Cursor(0))
            new.extend(entry for entry in self._read(path, cursor) if self._filter.matches(entry.event))
        return sorted(new, key=_ts)  # sessions running side by side, interleaved as they happened

    def _read(self, path: Path, cursor: _Cursor) -> Iterator[Entry]:
        try:
            with path.open("rb") as stream:
                stream.seek(cursor.offset + len(cursor.partial))
                data = stream.read(FOLLOW_CHUNK_BYTES)
                if data and cursor.line is None:  # counted only for files that grow: live ones
                    cursor.line = _count_lines(stream, cursor.offset)
        except FileNotFoundError:  # pruned meanwhile
            return
        except OSError as exc:
            raise AuditError(f"cannot read {path}: {exc.strerror or exc}", "check that the file is yours") from None
        *lines, cursor.partial = (cursor.partial + data).split(b"\n")
        for raw in lines:
            cursor.offset += len(raw) + 1
            cursor.line = (cursor.line or 0) + 1
            yield parse(path, cursor.line, raw + b"\n")


def _complete_end(path: Path, size: int) -> int:
    """Where the last complete line before byte `size` ends (0 if there is none)."""
    with path.open("rb") as stream:
        end = size
        while end > 0:
            start = max(0, end - FOLLOW_CHUNK_BYTES)
            stream.seek(start)
            newline = stream.read(end - start).rfind(b"\n")
            if newline >= 0:
                return start + newline + 1
            end = start
    return 0


def _count_lines(stream: BinaryIO, end: int) -> int:
    stream.seek(0)
    count = 0
    while end > 0:
        block = stream.read(min(end, FOLLOW_CHUNK_BYTES))
        if not block:
            break
        count += block.count(b"\n")
        end -= len(block)
    return count


# -- stats ---------------------------------------------------------------------------------


@dataclass
class Figures:
    """What `stats` counts for one tool (or method, or all of them)."""

    calls: int = 0
    allowed: int = 0  # allow, or rewrite: the request went on, changed
    denied: int = 0
    asked: int = 0
    errors: int = 0  # went on and came back as an error
    latencies_us: list[int] = field(default_factory=list)

    def add(self, event: dict[str, Any]) -> None:
        self.calls += 1
        decision = event.get("decision")
        self.allowed += decision in ("allow", "rewrite")
        self.denied += decision == "deny"
        self.asked += decision == "ask"
        self.errors += event.get("is_error") is True and event.get("outcome") != "refused"
        latency = event.get("latency_us")
        if type(latency) is int:
            self.latencies_us.append(latency)

    def percentile(self, p: float) -> int | None:
        """The nearest-rank percentile of the latencies, None without any."""
        if not self.latencies_us:
            return None
        ordered = sorted(self.latencies_us)
        return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]

    def as_json(self) -> dict[str, Any]:
        counts = {k: getattr(self, k) for k in ("calls", "allowed", "denied", "asked", "errors")}
        return {**counts, "p50_us": self.percentile(50), "p99_us": self.percentile(99)}


@dataclass
class Tally:
    """`stats` over a set of events: figures per tool (other methods in parentheses) and in all."""

    tools: dict[str, Figures] = field(default_factory=dict)
    total: Figures = field(default_factory=Figures)
    sessions: set[str] = field(default_factory=set)
    refused_input: int = 0

    def add(self, event: dict[str, Any]) -> None:
        if isinstance(event.get("session"), str):
            self.sessions.add(event["session"])
        kind = event.get("event")
        if kind == "refused_input":
            self.refused_input += 1
        if kind != "request":
            return
        tool, method = event.get("tool"), event.get("method")
        name = tool if isinstance(tool, str) else f"({method if isinstance(method, str) else '?'})"
        self.tools.setdefault(name, Figures()).add(event)
        self.total.add(event)


def tally(found: Iterable[tuple[Path, os.stat_result]], filt: Filter) -> Tally:
    result = Tally()
    for path, info in found:
        for entry in entries(path, info.st_size):
            if filt.matches(entry.event):
                result.add(entry.event)
    return result


# -- prune ---------------------------------------------------------------------------------


def started(path: Path) -> float | None:
    """When a session started (epoch seconds, from its day folder and name), None for a file
    not named like a session's."""
    named = _NAME.fullmatch(path.name)
    if named is None or not _DAY.fullmatch(path.parent.name):
        return None
    try:
        moment = time.strptime(f"{path.parent.name} {named[1]}", "%Y-%m-%d %H%M%S")
    except ValueError:
        return None
    return float(calendar.timegm(moment))


def stale(root: Path, older_than_s: float, now: float) -> list[tuple[Path, int]]:
    """The session files (and sizes) prune removes: the session started and the file was last
    written before `now - older_than_s`, so a session still running is kept, and never a file
    written within LIVE_WINDOW_S."""
    cutoff = min(now - older_than_s, now - LIVE_WINDOW_S)
    found = []
    for path in session_files(root):
        began = started(path)
        if began is None or began >= cutoff:
            continue
        try:
            info = path.stat()
        except FileNotFoundError:
            continue
        if info.st_mtime < cutoff:
            found.append((path, info.st_size))
    return found


def remove(paths: Iterable[Path]) -> None:
    """Removes the files, then their day folders left empty."""
    folders = set()
    for path in paths:
        try:
            path.unlink(missing_ok=True)
        except OSError as exc:
            raise AuditError(f"cannot remove {path}: {exc.strerror or exc}", "check that the file is yours") from None
        folders.add(path.parent)
    for folder in sorted(folders):
        if _DAY.fullmatch(folder.name) and not any(folder.iterdir()):
            folder.rmdir()
