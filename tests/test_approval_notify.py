"""The desktop notification for a new request: which command, when, and that it is best effort."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import anyio
import pytest

from mcpshield.approval import notify
from mcpshield.approval.notify import Notifier, body, notifier_argv
from mcpshield.approval.protocol import Hello, Request

pytestmark = pytest.mark.anyio

#: Bound on the fake notifier having run.
RUN_TIMEOUT_S = 10.0
HELLO = Hello(pid=1, profile="p", server="srv --flag", client="client")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _fake(tmp_path: Path, name: str = "notify-send") -> Path:
    """A notifier on PATH that records its arguments in tmp_path/notified.json."""
    script = tmp_path / "bin" / name
    script.parent.mkdir(exist_ok=True)
    record = tmp_path / "notified.json"
    script.write_text(
        f"#!{sys.executable}\nimport json, sys\nopen({str(record)!r}, 'w').write(json.dumps(sys.argv[1:]))\n"
    )
    script.chmod(0o755)
    return record


def _request(tool: str = "write_file") -> Request:
    return Request(tool, {"secret": "never shown"}, "tools.ask", None, 30)


def test_linux_uses_notify_send_only_with_a_desktop_session(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "platform", "linux")
    _fake(tmp_path)
    path = str(tmp_path / "bin")
    assert notifier_argv("t", "b", {"PATH": path}) is None  # no display, no D-Bus session
    argv = notifier_argv("t", "-b", {"PATH": path, "DBUS_SESSION_BUS_ADDRESS": "unix:path=/x"})
    assert argv == [str(tmp_path / "bin" / "notify-send"), "--app-name=mcpshield", "--", "t", "-b"]
    assert notifier_argv("t", "b", {"PATH": str(tmp_path), "DISPLAY": ":0"}) is None  # not installed


def test_macos_passes_the_text_as_arguments_never_inside_the_script(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "platform", "darwin")
    _fake(tmp_path, "osascript")
    argv = notifier_argv("title", 'x" & do shell script "rm', {"PATH": str(tmp_path / "bin")})
    assert argv is not None and argv[-2:] == ["title", 'x" & do shell script "rm']
    assert all("rm" not in part for part in argv[:-1])


def test_the_body_names_the_call_never_its_arguments_and_escapes_markup() -> None:
    text = body(_request("<b>x</b>\u202e"), HELLO)
    assert text == "&lt;b&gt;x&lt;/b&gt;\\u202e from client (srv --flag)"
    assert "never shown" not in text


async def test_a_notifier_runs_in_the_background_once_per_burst(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    record = _fake(tmp_path)
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    monkeypatch.setenv("DISPLAY", ":99")
    monkeypatch.setattr(sys, "platform", "linux")
    async with anyio.create_task_group() as tg:
        notifier = Notifier(tg)
        notifier.new_request(_request(), HELLO)
        notifier.new_request(_request("second"), HELLO)  # while the first runs: skipped
    argv = json.loads(record.read_text())
    assert argv[-2:] == [notify.TITLE, "write_file from client (srv --flag)"]


async def test_a_disabled_notifier_runs_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    record = _fake(tmp_path)
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    monkeypatch.setenv("DISPLAY", ":99")
    async with anyio.create_task_group() as tg:
        Notifier(tg, enabled=False).new_request(_request(), HELLO)
    assert not record.exists()


async def test_a_notifier_that_hangs_is_killed_at_the_bound(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    script = tmp_path / "bin" / "notify-send"
    script.parent.mkdir()
    script.write_text(f"#!{sys.executable}\nimport time\ntime.sleep(600)\n")
    script.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    monkeypatch.setenv("DISPLAY", ":99")
    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.setattr(notify, "NOTIFY_TIMEOUT_S", 0.2)
    with anyio.fail_after(RUN_TIMEOUT_S):
        async with anyio.create_task_group() as tg:
            Notifier(tg).new_request(_request(), HELLO)


# -- Windows: no named pipe yet, so no approver: refused in one line and a Tip ------------------


def test_on_windows_approvals_refuses_in_one_line_with_a_tip(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from mcpshield.cli import main

    monkeypatch.setattr(sys, "platform", "win32")
    assert main(["approvals", "--json"]) == 3
    out, err = capsys.readouterr()
    assert out == ""
    message, tip = err.splitlines()
    assert message == "mcpshield: the terminal approver is not available on Windows yet (its named pipe is not built)"
    assert tip.startswith("Tip: ") and "elicitation" in tip


async def test_on_windows_the_wrappers_link_says_so_once_and_every_call_is_unavailable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from mcpshield.approval.client import NOT_ON_WINDOWS, ApproverLink

    monkeypatch.setattr(sys, "platform", "win32")
    said: list[str] = []
    async with anyio.create_task_group() as tg:
        link = ApproverLink(HELLO, tg, report=said.append)
        with anyio.fail_after(RUN_TIMEOUT_S):
            first = await link.ask(_request())
            second = await link.ask(_request("other"))
    assert first.decision == second.decision == "unavailable"
    assert first.reason == NOT_ON_WINDOWS and "Tip:" in NOT_ON_WINDOWS
    assert said == [NOT_ON_WINDOWS]
