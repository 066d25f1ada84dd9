"""`mcpshield doctor`: a table (or JSON) of what this machine can enforce and whether the keyring,
the approver and the audit log can work, with fixes; exit 0 only when any `[sandbox]` is
enforced here and the audit log and the approver can work."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Final

import pytest
from conftest import sandbox_unavailable
from sandboxing import environment, unprivileged, workdir

from mcpshield.sandbox.doctor import WIDTH, Check, render, sandbox_check, userns_check
from mcpshield.sandbox.probe import FIX_APPARMOR, Capabilities, find_bwrap

LINUX: Final = Capabilities("linux", "6.18", 1000, "/usr/bin/bwrap", "0.8.0", True, landlock_abi=7, seccomp=True)
NO_BWRAP: Final = replace(LINUX, bwrap_works=False, bwrap_problem="uid map", bwrap_fix=FIX_APPARMOR)
#: Bound on one `mcpshield doctor` (it runs a trial sandbox).
DOCTOR_TIMEOUT_S: Final = 60
ROWS: Final = ("sandbox (auto)", "bubblewrap", "landlock", "seccomp", "user namespaces", "seatbelt")
OTHER_ROWS: Final = ("keyring", "approver socket", "audit log")


def run_doctor(tmp_path: Path, *flags: str, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {**os.environ, "MCPSHIELD_CACHE_DIR": str(tmp_path / "cache"), **env}
    return subprocess.run(
        [sys.executable, "-m", "mcpshield", "doctor", *flags],
        capture_output=True,
        text=True,
        env=environ,
        timeout=DOCTOR_TIMEOUT_S,
        check=False,
    )


def require_working_bwrap(tmp_path: Path) -> None:
    if sys.platform != "linux" or find_bwrap() is None:
        sandbox_unavailable("bubblewrap is not installed")
    done = run_doctor(tmp_path, "--json")
    report = json.loads(done.stdout)
    if not report["capabilities"]["bwrap_works"]:
        sandbox_unavailable(f"bubblewrap does not work here: {report['capabilities']['bwrap_problem']}")


def test_doctor_prints_every_check_in_a_plain_table_and_exits_0_where_everything_works(tmp_path: Path) -> None:
    require_working_bwrap(tmp_path)
    done = run_doctor(tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert lines[2].split() == ["CHECK", "STATE", "DETAIL"]
    for name in (*ROWS, *OTHER_ROWS):
        assert any(line.startswith(name + " ") for line in lines), name
    assert "\x1b" not in done.stdout  # no colour when not a terminal
    assert lines[-1].startswith("result: ok")


def test_doctor_json_has_the_checks_the_capabilities_and_the_exit_status(tmp_path: Path) -> None:
    require_working_bwrap(tmp_path)
    done = run_doctor(tmp_path, "--json")
    report = json.loads(done.stdout)
    assert report["exit_status"] == done.returncode == 0
    assert [row["name"] for row in report["checks"]] == [*ROWS, *OTHER_ROWS]
    assert {row["state"] for row in report["checks"]} <= {"ok", "warn", "no", "n/a"}
    assert report["capabilities"]["bwrap_works"] is True
    assert (tmp_path / "cache" / "probe.json").exists()  # the answer `run` will use


def test_doctor_as_an_unprivileged_user_finds_bubblewrap_working_with_user_namespaces(tmp_path: Path) -> None:
    require_working_bwrap(tmp_path)
    who = unprivileged()
    with workdir(who) as work:
        done = subprocess.run(
            [who.python, "-m", "mcpshield", "doctor", "--json"],
            capture_output=True,
            text=True,
            env=environment(who, work),
            cwd=work,
            timeout=DOCTOR_TIMEOUT_S,
            check=False,
            **who.popen_options(),
        )
    report = json.loads(done.stdout)
    assert report["uid"] == who.uid
    if not report["capabilities"]["bwrap_works"]:
        sandbox_unavailable(f"bubblewrap does not work for {who.name}: {report['capabilities']['bwrap_problem']}")
    assert done.returncode == report["exit_status"] == 0, done.stdout


def test_doctor_exits_1_when_the_audit_log_cannot_be_written(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    done = run_doctor(tmp_path, "--json", MCPSHIELD_LOG_DIR=str(blocker))
    report = json.loads(done.stdout)
    (audit,) = [row for row in report["checks"] if row["name"] == "audit log"]
    assert (audit["state"], audit["blocking"]) == ("no", True)
    assert "MCPSHIELD_LOG_DIR" in audit["fix"]
    assert done.returncode == 1


def test_doctor_exits_1_when_the_approvers_folder_is_not_private(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    done = run_doctor(tmp_path, MCPSHIELD_APPROVER_DIR=str(shared))
    assert done.returncode == 1
    assert "approver socket   no" in done.stdout
    assert "other users can open it" in done.stdout


def test_the_table_fits_100_columns() -> None:
    rows = [
        Check("sandbox (auto)", "ok", "word " * 60, "fix " * 40),
        Check("user namespaces", "warn", "restricted by AppArmor " * 5, FIX_APPARMOR),
    ]
    text = render(rows)
    assert all(len(line) <= WIDTH for line in text.splitlines()), text
    assert "fix: " in text


def test_colour_marks_only_the_state_and_only_when_asked() -> None:
    rows = [Check("seccomp", "no", "none here")]
    assert "\x1b" not in render(rows)
    coloured = render(rows, colour=True)
    assert "\x1b[31mno\x1b[0m" in coloured
    assert coloured.replace("\x1b[31m", "").replace("\x1b[0m", "") == render(rows)


def test_landlock_without_tcp_rules_is_reported_as_unable_to_enforce_a_host_list() -> None:
    row = sandbox_check(replace(NO_BWRAP, landlock_abi=3))
    assert (row.state, row.blocking) == ("no", True)
    assert "not a host list" in row.detail and "ABI 4" in row.fix


def test_the_sandbox_row_is_ok_where_bubblewrap_works() -> None:
    row = sandbox_check(LINUX)
    assert (row.state, row.blocking) == ("ok", False)
    assert row.detail.startswith("bubblewrap 0.8.0")


def test_windows_is_reported_as_limits_only() -> None:
    row = sandbox_check(Capabilities("win32", "10", None))
    assert (row.state, row.blocking) == ("no", True)
    assert "Job Object" in row.fix


def test_apparmors_restriction_is_a_warning_with_its_fix_when_bubblewrap_fails() -> None:
    restricted = {"kernel.apparmor_restrict_unprivileged_userns": 1, "user.max_user_namespaces": 100}
    row = userns_check(replace(NO_BWRAP, userns=restricted))
    assert row.state == "warn" and row.fix == FIX_APPARMOR
    assert userns_check(replace(LINUX, userns=restricted)).fix == ""


def test_the_doctor_function_writes_to_the_stream_it_is_given(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mcpshield.sandbox import doctor as module

    for variable in ("XDG_RUNTIME_DIR", "DBUS_SESSION_BUS_ADDRESS"):  # the keyring check may recover them
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setattr(module, "probe", lambda refresh: LINUX)
    out = io.StringIO()
    assert module.doctor(out=out) == 0
    assert out.getvalue().startswith("mcpshield doctor: linux 6.18, uid 1000")
