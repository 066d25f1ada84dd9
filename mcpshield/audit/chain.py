"""The hash chain: each line is the canonical JSON of its event, then its `hash`.

A line's canonical form is the event's JSON with sorted keys and no whitespace, `prev` (the
previous line's `hash`; GENESIS on the first line) included; `hash` is the SHA-256 of that
form, added as the line's last key: `{...canonical...,"hash":"<64 hex>"}`. A line is valid
only if it is exactly what sealing its event gives, so the writer serialises each event once.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Final

import orjson

#: `prev` of a session's first line.
GENESIS: Final = "0" * 64
_SORTED: Final = orjson.OPT_SORT_KEYS
_HASH_KEY: Final = b'"hash":"'
_LINE_END: Final = b'"}\n'
#: `,"hash":"` + 64 hex digits + `"}\n`: what follows a line's canonical form, less its `}`.
_SUFFIX_BYTES: Final = 1 + len(_HASH_KEY) + 64 + len(_LINE_END)


def seal(event: dict[str, Any], prev: str) -> tuple[bytes, str]:
    """The line for `event` (newline included) chained after `prev`, and its hash. `event` gets
    a `prev` key; a `hash` key in it is ignored."""
    event["prev"] = prev
    event.pop("hash", None)
    canonical = orjson.dumps(event, option=_SORTED)
    digest = hashlib.sha256(canonical).hexdigest()
    return b"%s,%s%s%s" % (canonical[:-1], _HASH_KEY, digest.encode(), _LINE_END), digest


@dataclass(frozen=True, slots=True)
class Break:
    """Where a chain stops being trustworthy: the 1-based line number and why."""

    line: int
    why: str


@dataclass(frozen=True, slots=True)
class Checked:
    """What checking one session file found."""

    lines: int
    events: list[dict[str, Any]]
    broken: Break | None

    @property
    def complete(self) -> bool:
        """Whether the chain ends with the session's end (else the wrapper is still running,
        was killed, or lines were cut off the end: the chain alone cannot tell which)."""
        return self.broken is None and bool(self.events) and self.events[-1].get("event") == "session_end"


def check(lines: Iterable[bytes]) -> Checked:
    """Verifies a session file's lines in order; stops at the first broken one."""
    events: list[dict[str, Any]] = []
    prev = GENESIS
    count = 0
    for count, line in enumerate(lines, start=1):
        problem, event = _check_line(line, prev, count - 1)
        if problem is not None:
            return Checked(count, events, Break(count, problem))
        assert event is not None
        events.append(event)
        prev = event["hash"]
    if count == 0:
        return Checked(0, events, Break(1, "the file is empty: a session's first line is written when it starts"))
    return Checked(count, events, None)


def _check_line(line: bytes, prev: str, seq: int) -> tuple[str | None, dict[str, Any] | None]:
    if not line.endswith(b"\n"):
        return "the line is cut short (no newline at its end)", None
    try:
        event = orjson.loads(line)
    except orjson.JSONDecodeError:
        return "not JSON", None
    if type(event) is not dict or type(event.get("hash")) is not str:
        return "not an audit event (no hash)", None
    if event.get("prev") != prev:
        return "its prev is not the hash of the line before: a line was removed, inserted or reordered", None
    if event.get("seq") != seq:
        return f"its seq is {event.get('seq')!r} where {seq} was due: a line was removed, inserted or reordered", None
    claimed = event["hash"]
    canonical = line[:-_SUFFIX_BYTES] + b"}"
    if hashlib.sha256(canonical).hexdigest() != claimed:
        return "its hash does not match its content: the line was edited", None
    if seal(dict(event), prev)[0] != line:
        return "it is not in canonical form: the line was edited", None
    return None, event


def split_lines(data: bytes) -> Iterator[bytes]:
    """The lines of a file, each with its newline (the last one may lack it)."""
    start = 0
    while start < len(data):
        end = data.find(b"\n", start)
        if end < 0:
            yield data[start:]
            return
        yield data[start : end + 1]
        start = end + 1
