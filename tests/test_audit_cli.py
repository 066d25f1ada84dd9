"""`mcpshield audit verify | tail | stats | prune | path` as a user runs them: real subprocesses
reading session files that the real writer (AuditLog) wrote under $MCPSHIELD_LOG_DIR."""

from __future__ import annotations

import json
import os
import queue
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any, Final

import pytest
from conftest import ROOT

from mcpshield.audit.chain import GENESIS, seal
from mcpshield.audit.location import create_session_file, session_path
from mcpshield.audit.writer import AuditLog

#: Bound on one `mcpshield audit` command (start-up and reading a few small files).
COMMAND_TIMEOUT_S: Final = 30.0
#: Bound on `tail -f` showing a line after it was written.
FOLLOW_TIMEOUT_S: Final = 10.0
DAY_S: Final = 86400.0


def audit(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mcpshield", "audit", *args],
        capture_output=True,
        text=True,
        env={**os.environ, "MCPSHIELD_LOG_DIR": str(root)},
        cwd=ROOT,
        timeout=COMMAND_TIMEOUT_S,
        check=False,
    )


def call(tool: str, decision: str = "allow", latency_us: int = 1000, **extra: Any) -> tuple[str, dict[str, Any]]:
    rule = {"allow": "tools.allow", "deny": "tools.default", "ask": "tools.ask"}.get(decision, "rules[0]")
    outcome = "refused" if decision in ("deny", "ask") else "answered"
    fields = {"dir": "to_server", "id": 1, "method": "tools/call", "tool": tool, "decision": decision}
    return "request", {**fields, "rule": rule, "outcome": outcome, "latency_us": latency_us, **extra}


def session(root: Path, *events: tuple[str, dict[str, Any]]) -> AuditLog:
    """A whole session written by the real writer: start, the events, end."""
    log = AuditLog(root)
    log.start({"pid": os.getpid(), "command": ["server"]})
    for kind, fields in events:
        log.record(kind, dict(fields))
    log.hand_over()
    log.close({"exit_status": 0, "why": "test"})
    return log


def forged(root: Path, started: float, *events: tuple[str, dict[str, Any]]) -> Path:
    """A whole session as the writer would have written it at `started` (epoch seconds), with
    its file's mtime set to then."""
    sid = secrets.token_hex(8)
    path = session_path(root, sid, started)
    fd = create_session_file(path)
    prev, lines = GENESIS, []
    kinds = [("session_start", {"pid": 1}), *events, ("session_end", {"why": "test"})]
    for seq, (kind, fields) in enumerate(kinds):
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(started)) + f".{seq:06d}Z"
        line, prev = seal({**fields, "event": kind, "v": 1, "seq": seq, "ts": ts, "session": sid}, prev)
        lines.append(line)
    os.write(fd, b"".join(lines))
    os.close(fd)
    os.utime(path, (started, started))
    return path


def table_rows(output: str) -> list[str]:
    lines = output.splitlines()
    assert lines[0].startswith("time ")
    return lines[1:]


# -- verify ------------------------------------------------------------------------------------


def test_verify_all_says_ok_for_each_untouched_session(tmp_path: Path) -> None:
    first = session(tmp_path, call("read"))
    second = session(tmp_path, call("read"), call("write", "deny"))

    done = audit(tmp_path, "verify", "--all")

    assert done.returncode == 0, done.stderr
    assert f"{first.path}: ok (3 lines)" in done.stdout
    assert f"{second.path}: ok (4 lines)" in done.stdout


def test_verify_names_the_edited_line_and_exits_1(tmp_path: Path) -> None:
    log = session(tmp_path, call("read"), call("write", "deny"))
    data = log.path.read_bytes()
    log.path.write_bytes(data.replace(b'"decision":"deny"', b'"decision":"allow"'))

    done = audit(tmp_path, "verify", str(log.path))

    assert done.returncode == 1
    assert done.stdout == f"{log.path}:3: its hash does not match its content: the line was edited\n"


def test_verify_names_the_first_line_after_one_was_removed(tmp_path: Path) -> None:
    log = session(tmp_path, call("read"), call("write", "deny"), call("list"))
    lines = log.path.read_bytes().splitlines(keepends=True)
    log.path.write_bytes(b"".join(lines[:2] + lines[3:]))

    done = audit(tmp_path, "verify", str(tmp_path))  # a folder: every session file in it

    assert done.returncode == 1
    assert done.stdout.startswith(f"{log.path}:3: its prev is not the hash of the line before")


def test_verify_warns_about_a_session_without_its_end_but_exits_0(tmp_path: Path) -> None:
    log = session(tmp_path, call("read"))
    lines = log.path.read_bytes().splitlines(keepends=True)
    log.path.write_bytes(b"".join(lines[:-1]))

    done = audit(tmp_path, "verify", str(log.path))

    assert done.returncode == 0
    assert done.stdout.startswith(f"{log.path}: incomplete: 2 line(s) and no session_end")


def test_verify_leaves_a_half_written_last_line_for_later_only_in_a_live_file(tmp_path: Path) -> None:
    log = session(tmp_path, call("read"))
    data = log.path.read_bytes()
    log.path.write_bytes(data[:-20])  # the writer is in the middle of the last line

    live = audit(tmp_path, "verify", str(log.path))
    os.utime(log.path, (time.time() - 3600, time.time() - 3600))
    cold = audit(tmp_path, "verify", str(log.path))

    assert live.returncode == 0
    assert live.stdout.startswith(f"{log.path}: incomplete: 2 line(s)")
    assert cold.returncode == 1
    assert cold.stdout == f"{log.path}:3: the line is cut short (no newline at its end)\n"


def test_verify_of_a_missing_file_is_an_error_with_a_tip(tmp_path: Path) -> None:
    done = audit(tmp_path, "verify", str(tmp_path / "nope.jsonl"))

    assert done.returncode == 4
    assert done.stderr.startswith(f"mcpshield: no such audit file: {tmp_path / 'nope.jsonl'}\nTip: ")


def test_verify_needs_paths_or_all(tmp_path: Path) -> None:
    done = audit(tmp_path, "verify")

    assert done.returncode == 2
    assert "PATH... or --all" in done.stderr


# -- tail --------------------------------------------------------------------------------------


def test_tail_shows_requests_and_refused_input_in_a_table(tmp_path: Path) -> None:
    log = session(
        tmp_path,
        call("read_file", latency_us=1500),
        call("write_file", "deny", latency_us=40, reason="write_file is not allowed"),
        ("refused_input", {"from": "client", "reason": "not JSON", "excerpt": "{oops"}),
    )

    done = audit(tmp_path, "tail")

    assert done.returncode == 0, done.stderr
    rows = table_rows(done.stdout)
    assert len(rows) == 3  # session_start and session_end are not requests
    assert rows[0].split()[1:] == [log.session[:8], "client", "read_file", "allow", "tools.allow", "answered", "1.5"]
    assert rows[1].split()[4:8] == ["deny", "tools.default", "refused", "0.04"]
    assert rows[1].endswith("write_file is not allowed")
    assert "(refused input)" in rows[2]
    assert rows[2].endswith("not JSON")


def test_tail_shows_the_last_n_across_sessions_oldest_first(tmp_path: Path) -> None:
    session(tmp_path, *(call(f"first{i}") for i in range(5)))
    session(tmp_path, *(call(f"second{i}") for i in range(5)))

    done = audit(tmp_path, "tail", "-n", "3")

    assert [row.split()[3] for row in table_rows(done.stdout)] == ["second2", "second3", "second4"]
    assert len(table_rows(audit(tmp_path, "tail", "-n", "all").stdout)) == 10


def test_tail_filters_by_tool_glob_decision_and_session(tmp_path: Path) -> None:
    session(tmp_path, call("read_file"), call("read_dir", "deny"), call("write_file", "deny"))
    other = session(tmp_path, call("read_file"), call("Read_secret", "deny"))

    def tools(*args: str) -> list[str]:
        done = audit(tmp_path, "tail", *args)
        assert done.returncode == 0, done.stderr
        return [row.split()[3] for row in table_rows(done.stdout)]

    assert tools("--tool", "read_*") == ["read_file", "read_dir", "read_file"]
    assert tools("--decision", "deny") == ["read_dir", "write_file", "Read_secret"]
    assert tools("--tool", "read_*", "--decision", "deny") == ["read_dir"]
    assert tools("--session", other.session[:6]) == ["read_file", "Read_secret"]


def test_tail_since_leaves_out_older_events(tmp_path: Path) -> None:
    forged(tmp_path, time.time() - 2 * 3600, call("two_hours_ago"))
    forged(tmp_path, time.time() - 3 * DAY_S, call("three_days_ago"))
    session(tmp_path, call("just_now"))

    def tools(since: str) -> list[str]:
        return [row.split()[3] for row in table_rows(audit(tmp_path, "tail", "--since", since).stdout)]

    assert tools("1h") == ["just_now"]
    assert tools("3h") == ["two_hours_ago", "just_now"]
    assert tools("1w") == ["three_days_ago", "two_hours_ago", "just_now"]


def test_tail_json_prints_every_matching_event_as_a_json_line(tmp_path: Path) -> None:
    log = session(tmp_path, call("read"), call("write", "deny"))

    done = audit(tmp_path, "tail", "--json", "-n", "all")
    denied = audit(tmp_path, "tail", "--json", "--decision", "deny")

    assert done.returncode == 0, done.stderr
    assert done.stdout.encode() == log.path.read_bytes()
    events = [json.loads(line) for line in done.stdout.splitlines()]
    assert [e["event"] for e in events] == ["session_start", "request", "request", "session_end"]
    assert [json.loads(line)["tool"] for line in denied.stdout.splitlines()] == ["write"]


def test_tail_makes_control_and_invisible_characters_visible(tmp_path: Path) -> None:
    tool = "rd\x1b[2J\u202egnp.exe\u200b\\x"  # 31 characters once escaped: not cut
    session(tmp_path, call(tool, "deny", reason="no\r\nsuch\x07tool"))

    table = audit(tmp_path, "tail").stdout
    as_json = audit(tmp_path, "tail", "--json").stdout

    assert "\x1b" not in table and "\u202e" not in table and "\u200b" not in table and "\x07" not in table
    assert r"rd\x1b[2J\u202egnp.exe\u200b\\x " in table
    assert r"no\x0d\x0asuch\x07tool" in table
    assert "\u202e" not in as_json and "\u200b" not in as_json
    assert [json.loads(line).get("tool") for line in as_json.splitlines()] == [None, tool, None]


def test_tail_follow_prints_events_written_after_it_started(tmp_path: Path) -> None:
    live = AuditLog(tmp_path)
    live.start({"pid": os.getpid()})
    proc = subprocess.Popen(
        [sys.executable, "-m", "mcpshield", "audit", "tail", "-f"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "MCPSHIELD_LOG_DIR": str(tmp_path)},
        cwd=ROOT,
    )
    try:
        lines = _lines_of(proc.stdout)
        assert next(lines).startswith("time ")  # the header comes once the files are measured
        kind, fields = call("appended_to_a_live_file")
        live.record(kind, fields)
        live.hand_over()
        assert "appended_to_a_live_file" in next(lines)
        session(tmp_path, call("in_a_new_session"))
        assert "in_a_new_session" in next(lines)

        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=COMMAND_TIMEOUT_S) == 130
        assert proc.stderr is not None
        assert "Traceback" not in proc.stderr.read()
    finally:
        live.close({"why": "test"})
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=COMMAND_TIMEOUT_S)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


def _pump(stream: IO[str], lines: queue.Queue[str]) -> None:
    for line in stream:
        lines.put(line)


def _lines_of(stream: IO[str] | None) -> Iterator[str]:
    """The stream's lines, read in a thread so that waiting for each one is bounded."""
    assert stream is not None
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=_pump, args=(stream, lines), daemon=True).start()
    while True:
        try:
            yield lines.get(timeout=FOLLOW_TIMEOUT_S)
        except queue.Empty:
            pytest.fail(f"tail -f printed nothing for {FOLLOW_TIMEOUT_S} s")


# -- stats -------------------------------------------------------------------------------------


def test_stats_counts_decisions_errors_and_latency_percentiles_per_tool(tmp_path: Path) -> None:
    session(tmp_path, *(call("read", latency_us=1000 * i) for i in range(1, 51)))
    session(
        tmp_path,
        *(call("read", latency_us=1000 * i) for i in range(51, 100)),
        call("read", latency_us=100_000, outcome="error", is_error=True),
        call("write", "deny", latency_us=30, is_error=True),
        call("write", "ask", latency_us=50),
        ("request", {"dir": "to_client", "method": "sampling/createMessage", "decision": "deny", "latency_us": 10}),
        ("refused_input", {"from": "server", "reason": "not JSON"}),
    )

    done = audit(tmp_path, "stats", "--json")

    assert done.returncode == 0, done.stderr
    figures = json.loads(done.stdout)
    assert figures["tools"]["read"] == {
        "calls": 100,
        "allowed": 100,
        "denied": 0,
        "asked": 0,
        "errors": 1,
        "p50_us": 50_000,
        "p99_us": 99_000,
    }
    assert figures["tools"]["write"] == {
        "calls": 2,
        "allowed": 0,
        "denied": 1,
        "asked": 1,
        "errors": 0,  # a refusal is counted as denied, not as an error
        "p50_us": 30,
        "p99_us": 50,
    }
    assert figures["tools"]["(sampling/createMessage)"]["denied"] == 1
    assert figures["total"]["calls"] == 103
    assert (figures["sessions"], figures["refused_input"]) == (2, 1)

    table = audit(tmp_path, "stats").stdout.splitlines()
    assert table[1].split() == ["(sampling/createMessage)", "1", "0", "1", "0", "0", "0.01", "0.01"]
    assert table[2].split() == ["read", "100", "100", "0", "0", "1", "50.0", "99.0"]
    assert table[-1] == "2 session(s), 1 line(s) of refused input"


def test_stats_respects_session_and_since(tmp_path: Path) -> None:
    forged(tmp_path, time.time() - 2 * DAY_S, call("old"))
    log = session(tmp_path, call("new"), call("new"))
    session(tmp_path, call("other"))

    recent = json.loads(audit(tmp_path, "stats", "--json", "--since", "1d").stdout)
    mine = json.loads(audit(tmp_path, "stats", "--json", "--session", log.session).stdout)

    assert sorted(recent["tools"]) == ["new", "other"]
    assert list(mine["tools"]) == ["new"]
    assert mine["tools"]["new"]["calls"] == 2


# -- prune and path ----------------------------------------------------------------------------


def test_prune_removes_sessions_older_than_the_age_and_keeps_the_others(tmp_path: Path) -> None:
    old = forged(tmp_path, time.time() - 40 * DAY_S, call("old"))
    older = forged(tmp_path, time.time() - 41 * DAY_S, call("older"))
    still_writing = forged(tmp_path, time.time() - 40 * DAY_S, call("long_running"))
    os.utime(still_writing)  # written just now: a session still running
    recent = forged(tmp_path, time.time() - 2 * DAY_S, call("recent"))
    today = session(tmp_path, call("now")).path
    size = old.stat().st_size + older.stat().st_size

    dry = audit(tmp_path, "prune", "--older-than", "30d", "--dry-run")

    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.splitlines()[-1] == f"would remove 2 file(s), {size} bytes"
    assert old.exists() and older.exists()

    done = audit(tmp_path, "prune", "--older-than", "30d")

    assert done.returncode == 0, done.stderr
    assert set(done.stdout.splitlines()[:-1]) == {f"removed {old}", f"removed {older}"}
    assert done.stdout.splitlines()[-1] == f"removed 2 file(s), {size} bytes"
    assert not old.exists() and not older.exists()
    assert not older.parent.exists()  # its day folder was left empty
    assert still_writing.exists() and recent.exists() and today.exists()
    assert audit(tmp_path, "verify", "--all").returncode == 0


def test_prune_never_removes_a_file_written_in_the_last_minute(tmp_path: Path) -> None:
    live = forged(tmp_path, time.time() - 3600, call("live"))
    os.utime(live)

    done = audit(tmp_path, "prune", "--older-than", "1s")

    assert done.stdout == "removed 0 file(s), 0 bytes\n"
    assert live.exists()


def test_prune_refuses_an_age_it_cannot_read(tmp_path: Path) -> None:
    done = audit(tmp_path, "prune", "--older-than", "30 days")

    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        "mcpshield: --older-than '30 days' is not a duration",
        "Tip: write a number and one unit: 30s, 15m, 1h, 2d or 1w",
    ]


def test_path_prints_the_log_root_and_a_sessions_file(tmp_path: Path) -> None:
    log = session(tmp_path)

    assert audit(tmp_path, "path").stdout == f"{tmp_path}\n"
    assert audit(tmp_path, "path", "--session", log.session[:5]).stdout == f"{log.path}\n"
    missing = audit(tmp_path, "path", "--session", "zz")
    assert missing.returncode == 4
    assert "Tip: " in missing.stderr
