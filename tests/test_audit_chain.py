"""The hash chain finds the first line edited, removed, inserted or reordered; the writer's files
are private to their user."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any, Final

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mcpshield.audit.chain import GENESIS, check, seal, split_lines
from mcpshield.audit.writer import AuditLog
from mcpshield.errors import AuditError

_RESERVED: Final = frozenset({"v", "seq", "ts", "session", "event", "prev", "hash"})
#: Any uid but root's and ours: the owner of a folder that is not ours.
_SOMEONE_ELSE: Final = 65534

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
fields = st.dictionaries(st.text(min_size=1, max_size=10).filter(lambda k: k not in _RESERVED), json_values, max_size=4)


def sealed_session(middle: list[dict[str, Any]]) -> list[bytes]:
    """A session's lines: its start, the events given (as requests), its end."""
    kinds = ["session_start", *["request"] * len(middle), "session_end"]
    lines, prev = [], GENESIS
    for seq, (kind, extra) in enumerate(zip(kinds, [{}, *middle, {}], strict=True)):
        event = {**extra, "v": 1, "seq": seq, "ts": f"2026-01-01T00:00:{seq:02d}.000000Z", "session": "ab" * 8}
        line, prev = seal({**event, "event": kind}, prev)
        lines.append(line)
    return lines


def first_difference(original: list[bytes], changed: list[bytes]) -> int | None:
    """The 1-based number of the first line that is not the original's, None if there is none."""
    for number, (was, now) in enumerate(zip(original, changed, strict=False), start=1):
        if was != now:
            return number
    return len(original) + 1 if len(changed) > len(original) else None


@given(st.lists(fields, max_size=6))
def test_an_untouched_chain_verifies_complete(middle: list[dict[str, Any]]) -> None:
    lines = sealed_session(middle)
    checked = check(split_lines(b"".join(lines)))
    assert checked.broken is None
    assert checked.complete
    assert checked.lines == len(lines)


@settings(max_examples=300)
@given(st.lists(fields, max_size=6), st.data())
def test_the_first_changed_line_is_the_one_reported(middle: list[dict[str, Any]], data: st.DataObject) -> None:
    lines = sealed_session(middle)
    mutation = data.draw(st.sampled_from(["edit", "delete", "swap", "insert"]))
    changed = list(lines)
    if mutation == "edit":
        k = data.draw(st.integers(0, len(lines) - 1))
        event = orjson.loads(lines[k])
        key = data.draw(st.sampled_from(sorted(event.keys() - {"hash", "prev", "seq"})))
        event[key] = data.draw(json_values.filter(lambda value: value != event[key]))
        changed[k] = orjson.dumps(event, option=orjson.OPT_SORT_KEYS | orjson.OPT_APPEND_NEWLINE)
    elif mutation == "delete":
        del changed[data.draw(st.integers(0, len(lines) - 2))]  # the last one: see the test below
    elif mutation == "swap":
        i, j = sorted(data.draw(st.lists(st.integers(0, len(lines) - 1), min_size=2, max_size=2, unique=True)))
        changed[i], changed[j] = changed[j], changed[i]
    else:
        copied = data.draw(st.sampled_from(lines))
        changed.insert(data.draw(st.integers(0, len(lines))), copied)
    expected = first_difference(lines, changed)
    assert expected is not None

    checked = check(split_lines(b"".join(changed)))

    assert checked.broken is not None, mutation
    assert checked.broken.line == expected, (mutation, checked.broken)


def test_cutting_the_last_line_leaves_an_incomplete_chain_not_a_broken_one() -> None:
    # Documented limit: lines cut off the end leave a valid chain; only the missing end shows.
    lines = sealed_session([{"tool": "read"}])

    checked = check(split_lines(b"".join(lines[:-1])))

    assert checked.broken is None
    assert not checked.complete
    assert checked.lines == len(lines) - 1


def test_an_edited_line_with_its_hash_recomputed_breaks_the_next_line() -> None:
    lines = sealed_session([{"tool": "read"}, {"tool": "write"}])
    event = orjson.loads(lines[1])
    event["tool"] = "erase"
    lines[1], _ = seal(event, event["prev"])

    checked = check(split_lines(b"".join(lines)))

    assert checked.broken is not None
    assert checked.broken.line == 3
    assert "prev" in checked.broken.why


def test_an_empty_file_and_a_line_cut_short_are_broken() -> None:
    lines = sealed_session([])
    assert check(split_lines(b"")).broken is not None
    cut = check(split_lines(lines[0] + lines[1][:-1]))
    assert cut.broken is not None
    assert cut.broken.line == 2


def test_audit_files_are_0600_in_0700_folders_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        log = AuditLog(tmp_path / "log")
        log.start({"pid": os.getpid()})
        log.close({"why": "test"})
    finally:
        os.umask(old)
    assert stat.S_IMODE(log.path.stat().st_mode) == 0o600
    assert stat.S_IMODE(log.path.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE((tmp_path / "log").stat().st_mode) == 0o700
    assert check(split_lines(log.path.read_bytes())).complete


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="giving a folder away needs root")
def test_a_log_folder_owned_by_another_user_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "log"
    root.mkdir(mode=0o700)
    os.chown(root, _SOMEONE_ELSE, _SOMEONE_ELSE)

    with pytest.raises(AuditError, match="belongs to another user") as refused:
        AuditLog(root)

    assert "MCPSHIELD_LOG_DIR" in refused.value.tip
    assert list(root.iterdir()) == []
