"""The audit readers in-process: durations, filters, following a file written in pieces, and
how untrusted text is shown."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from mcpshield.audit import read, show
from mcpshield.audit.writer import AuditLog
from mcpshield.errors import AuditError, UsageError


@pytest.mark.parametrize(
    ("text", "seconds"), [("30s", 30), ("15m", 900), ("1h", 3600), ("2d", 172800), ("1w", 604800), (" 0s ", 0)]
)
def test_durations_are_a_number_and_one_unit(text: str, seconds: float) -> None:
    assert read.parse_duration(text, "--since") == seconds


@pytest.mark.parametrize("text", ["", "1", "h", "1.5h", "-1h", "1h30m", "1y", "1H", "1234567890s"])
def test_anything_else_is_refused_with_the_option_named(text: str) -> None:
    with pytest.raises(UsageError, match=f"--older-than {text!r} is not a duration") as refused:
        read.parse_duration(text, "--older-than")
    assert "30s, 15m, 1h, 2d or 1w" in refused.value.tip


def test_timestamps_compare_as_strings_like_the_writers() -> None:
    assert read.timestamp(0.5) == "1970-01-01T00:00:00.500000Z"
    assert read.timestamp(86399.999999) < read.timestamp(86400.0)


def test_a_filter_with_a_tool_glob_lets_through_only_matching_tools() -> None:
    glob = read.Filter(tool="read_*")
    assert glob.matches({"tool": "read_file"})
    assert not glob.matches({"tool": "Read_file"})  # case-sensitive on every platform
    assert not glob.matches({"method": "resources/read"})


def test_visible_escapes_controls_bidi_and_invisible_characters_and_backslashes() -> None:
    assert show.visible("plain text, é and 日本") == "plain text, é and 日本"
    assert show.visible("a\x1b[31mb") == r"a\x1b[31mb"
    assert show.visible("\u202eexe.txt") == r"\u202eexe.txt"
    assert show.visible("x\u200by\ufeff\u3164\x9b\U000e0041") == r"x\u200by\ufeff\u3164\x9b\U000e0041"
    assert show.visible("\t\n\x7f") == r"\x09\x0a\x7f"
    assert show.visible(r"C:\x1b") == r"C:\\x1b"  # a literal backslash cannot pose as an escape


def test_json_safe_escapes_the_same_characters_and_keeps_the_value() -> None:
    raw = json.dumps({"tool": "a\u202eb\x7f\U000e0041", "ok": "é"}, ensure_ascii=False).encode() + b"\n"

    safe = show.json_safe(raw)

    assert safe.isascii() is False  # é stays as it is
    assert "\u202e".encode() not in safe and b"\x7f" not in safe and "\U000e0041".encode() not in safe
    assert json.loads(safe) == json.loads(raw)
    assert safe.endswith(b"\n")


def test_following_a_file_waits_for_a_line_to_be_complete(tmp_path: Path) -> None:
    log = AuditLog(tmp_path)
    log.start({"pid": os.getpid()})
    log.close({"why": "test"})
    lines = log.path.read_bytes().splitlines(keepends=True)
    log.path.write_bytes(lines[0] + lines[1][:10])  # the end is being written
    found = read.files(tmp_path, read.Filter())

    shown = read.latest(found, read.Filter(), None)
    follower = read.Follower(tmp_path, read.Filter(), found)

    assert [entry.event["event"] for entry in shown] == ["session_start"]
    assert follower.poll() == []
    with log.path.open("ab") as stream:
        stream.write(lines[1][10:20])
    assert follower.poll() == []
    with log.path.open("ab") as stream:
        stream.write(lines[1][20:])
    [end] = follower.poll()
    assert (end.line, end.raw) == (2, lines[1])


def test_a_line_that_is_not_json_stops_reading_with_its_place_named(tmp_path: Path) -> None:
    log = AuditLog(tmp_path)
    log.start({"pid": os.getpid()})
    log.close({"why": "test"})
    with log.path.open("ab") as stream:
        stream.write(b"garbage\n")

    with pytest.raises(AuditError, match=f"{log.path}:3 is not an audit event") as refused:
        read.latest(read.files(tmp_path, read.Filter()), read.Filter(), 10)

    assert f"mcpshield audit verify {log.path}" in refused.value.tip
