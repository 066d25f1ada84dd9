"""The interactive approver driven for real: `mcpshield approvals` in a tmux pane, read with
capture-pane and typed at with send-keys, answering ApproverLinks run on the test's event loop."""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Final

import anyio
import pytest
from approvers import outcome_of, settled
from conftest import ROOT

from mcpshield.approval.client import ApproverLink, Outcome
from mcpshield.approval.protocol import Hello, Request

pytestmark = pytest.mark.anyio

#: Bound on the pane showing what the test waits for (start-up included).
SCREEN_TIMEOUT_S: Final = 10.0
#: Pause between two looks at the pane while waiting (polling, bounded by SCREEN_TIMEOUT_S).
POLL_S: Final = 0.05
#: Bound on an outcome reaching the link once the key is sent.
#: Bound on one tmux command.
TMUX_TIMEOUT_S: Final = 10.0
#: Long enough never to expire during a test.
PATIENT_S: Final = 60.0
HELLO: Final = Hello(pid=4242, profile="everything", server="npx -y server-everything", client="tui-test")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def tmux() -> str:
    found = shutil.which("tmux")
    if found is None:
        if os.environ.get("MCPSHIELD_REQUIRE_TMUX") == "1":
            pytest.fail("tmux is missing and MCPSHIELD_REQUIRE_TMUX=1: run scripts/setup --dev")
        pytest.skip("tmux is not installed: the interactive approver is tested in a tmux pane")
    return found


@pytest.fixture
def place() -> Iterator[Path]:
    """A short private directory for the socket (AF_UNIX paths are limited to ~104 bytes)."""
    with tempfile.TemporaryDirectory(prefix="mcps-") as tmp:
        yield Path(tmp) / "approver"


class Pane:
    """One tmux pane on a private tmux server (its own socket), running the approver."""

    def __init__(self, tmux: str, socket: Path) -> None:
        self._base = [tmux, "-S", str(socket), "-f", os.devnull]
        self.name = "approver"

    async def tmux(self, *args: str) -> str:
        with anyio.fail_after(TMUX_TIMEOUT_S):
            done = await anyio.run_process([*self._base, *args], check=True)
        return done.stdout.decode("utf-8", "replace")

    async def screen(self) -> str:
        return await self.tmux("capture-pane", "-p", "-t", self.name)

    async def shows(self, *needles: str) -> str:
        """Waits until the pane shows every needle; returns the screen."""
        return await self.until(lambda text: all(needle in text for needle in needles), needles)

    async def until(self, ready: Callable[[str], bool], what: object) -> str:
        text = ""
        try:
            with anyio.fail_after(SCREEN_TIMEOUT_S):
                while True:  # tmux tells no one when a pane changes: look again, bounded above
                    text = await self.screen()
                    if ready(text):
                        return text
                    await anyio.sleep(POLL_S)
        except TimeoutError:
            pytest.fail(f"the pane never showed {what!r}; it shows:\n{text}")

    async def kill(self) -> None:
        """Ends the private tmux server, and with it the approver (SIGHUP)."""
        with anyio.CancelScope(shield=True):
            await anyio.run_process([*self._base, "kill-server"], check=False)

    async def keys(self, *keys: str, literal: bool = False) -> None:
        await self.tmux("send-keys", "-t", self.name, *(["-l"] if literal else []), *keys)


@asynccontextmanager
async def approver_in_tmux(tmux: str, place: Path, *, env: str = "", flags: str = "") -> AsyncIterator[Pane]:
    pane = Pane(tmux, place.parent / f"tmux-{uuid.uuid4().hex[:8]}")  # removed with the directory
    command = f"env MCPSHIELD_APPROVER_DIR={place} {env} {sys.executable} -m mcpshield approvals {flags}"
    try:
        await pane.tmux("new-session", "-d", "-s", pane.name, "-x", "120", "-y", "40", "-c", str(ROOT), command)
        await pane.shows("listening on")
        yield pane
    finally:
        await pane.kill()


@asynccontextmanager
async def wrapper(place: Path) -> AsyncIterator[ApproverLink]:
    async with anyio.create_task_group() as tg:
        yield ApproverLink(HELLO, tg, directory=place, report=lambda _text: None)
        tg.cancel_scope.cancel()


def write_file(**arguments: object) -> Request:
    return Request("write_file", dict(arguments), "tools.ask", "Write a file?", PATIENT_S)


async def test_o_approves_the_shown_request_once(tmux: str, place: Path) -> None:
    async with approver_in_tmux(tmux, place) as pane, wrapper(place) as link:
        done, box = await outcome_of(link, write_file(path="/etc/hosts", content="127.0.0.1 x"))
        await pane.shows("write_file", '"path": "/etc/hosts"', "tools.ask", "tui-test")
        await pane.keys("o")
        outcome = await settled(done, box)
        assert (outcome.decision, outcome.reason, outcome.channel) == ("once", None, "terminal")
        screen = await pane.shows("approved once")
        assert "nothing waiting" in screen


async def test_d_denies_with_the_reason_typed(tmux: str, place: Path) -> None:
    async with approver_in_tmux(tmux, place) as pane, wrapper(place) as link:
        done, box = await outcome_of(link, write_file(path="/etc/passwd"))
        await pane.shows("write_file", '"path": "/etc/passwd"')
        await pane.keys("d")
        await pane.shows("reason (optional)")
        await pane.keys("not on a Friday", literal=True)
        await pane.shows("not on a Friday")
        await pane.keys("Enter")
        outcome = await settled(done, box)
        assert (outcome.decision, outcome.reason) == ("deny", "not on a Friday")


async def test_a_asks_for_confirmation_naming_the_file_and_the_rule_before_approving_always(
    tmux: str, place: Path
) -> None:
    async with approver_in_tmux(tmux, place) as pane, wrapper(place) as link:
        mine = place.parent / "mine.toml"
        mine.write_text("")
        request = replace(write_file(path="/tmp/a"), always_file=str(mine))
        done, box = await outcome_of(link, request)
        await pane.shows('"path": "/tmp/a"')
        await pane.keys("a")
        await pane.shows("y/n", f"This appends to {mine}:", "[[approval.always]]", 'tool = "write_file"')
        await pane.shows(f'args_sha256 = "{request.args_sha256}"')
        await pane.keys("n")
        await pane.shows("nothing was decided")
        assert not done.is_set()
        await pane.keys("a")
        await pane.shows("y/n")
        await pane.keys("y")
        assert (await settled(done, box)).decision == "always"


async def test_always_under_a_shipped_profile_says_the_users_profile_is_created(tmux: str, place: Path) -> None:
    async with approver_in_tmux(tmux, place) as pane, wrapper(place) as link:
        new = place.parent / "profiles" / "filesystem.toml"
        await outcome_of(link, replace(write_file(path="/tmp/c"), always_file=str(new)))
        await pane.shows('"path": "/tmp/c"')
        await pane.keys("a")
        await pane.shows(f"This creates {new}", "(extending the shipped profile 'filesystem') with:")


async def test_always_is_not_offered_when_no_profile_file_can_take_the_rule(tmux: str, place: Path) -> None:
    async with approver_in_tmux(tmux, place) as pane, wrapper(place) as link:
        done, _box = await outcome_of(link, write_file(path="/tmp/ro"))  # always_file None: read-only
        await pane.shows('"path": "/tmp/ro"')
        await pane.keys("a")
        await pane.shows("approve always is not available")
        assert not done.is_set()


async def test_control_and_bidi_characters_are_shown_escaped(tmux: str, place: Path) -> None:
    async with approver_in_tmux(tmux, place) as pane, wrapper(place) as link:
        await outcome_of(link, write_file(note="red \x1b[31mALERT\x1b[0m and \u202eevil"))
        screen = await pane.shows("ALERT")
        assert "\\u001b[31mALERT\\u001b[0m" in screen
        assert "\\u202eevil" in screen
        assert "\u202e" not in screen


async def test_a_withdrawn_request_disappears_with_a_status_line(tmux: str, place: Path) -> None:
    async with approver_in_tmux(tmux, place) as pane, wrapper(place) as link:
        request = write_file(path="/tmp/w")
        done, box = await outcome_of(link, request)
        await pane.shows('"path": "/tmp/w"')
        assert link.withdraw(request.id)
        screen = await pane.shows("cancelled by the client")
        assert "/tmp/w" not in screen and "nothing waiting" in screen
        assert (await settled(done, box)).decision == "cancelled"


async def test_a_long_argument_is_wrapped_and_scrollable_never_cut(tmux: str, place: Path) -> None:
    lines = {f"key{n:03d}": f"value-{n:03d}" for n in range(80)}
    async with approver_in_tmux(tmux, place) as pane, wrapper(place) as link:
        await outcome_of(link, write_file(**lines))
        screen = await pane.shows("PgUp/PgDn to scroll", '"key000"')
        assert '"key079"' not in screen
        for _ in range(6):
            await pane.keys("NPage")
        await pane.shows('"key079": "value-079"')


async def test_a_terminal_too_small_shows_a_message_and_recovers(tmux: str, place: Path) -> None:
    async with approver_in_tmux(tmux, place) as pane, wrapper(place) as link:
        done, box = await outcome_of(link, write_file(path="/tmp/small"))
        await pane.tmux("resize-window", "-t", pane.name, "-x", "30", "-y", "8")
        await pane.shows("terminal too small")
        await pane.tmux("resize-window", "-t", pane.name, "-x", "120", "-y", "40")
        await pane.shows('"path": "/tmp/small"')
        await pane.keys("o")
        assert (await settled(done, box)).decision == "once"


def fake_notify_send(directory: Path) -> Path:
    """A `notify-send` that records its arguments (as JSON) in `directory`/notified.json."""
    script = directory / "bin" / "notify-send"
    script.parent.mkdir()
    record = directory / "notified.json"
    script.write_text(
        f"#!{sys.executable}\nimport json, sys\nopen({str(record)!r}, 'w').write(json.dumps(sys.argv[1:]))\n"
    )
    script.chmod(0o755)
    return record


async def test_a_new_request_also_sends_a_desktop_notification(tmux: str, place: Path) -> None:
    record = fake_notify_send(place.parent)
    env = f"PATH={place.parent / 'bin'}:{os.environ['PATH']} DISPLAY=:99"
    async with approver_in_tmux(tmux, place, env=env) as pane, wrapper(place) as link:
        await outcome_of(link, write_file(path="/tmp/n"))
        await pane.shows('"path": "/tmp/n"')
        await pane.until(lambda _screen: record.exists() and record.read_text() != "", "a notification")
        argv = json.loads(record.read_text())
        assert argv[:2] == ["--app-name=mcpshield", "--"]
        assert argv[2] == "mcpshield: a call waits for your approval"
        assert argv[3] == "write_file from tui-test (npx -y server-everything)"


async def test_no_notify_sends_none(tmux: str, place: Path) -> None:
    record = fake_notify_send(place.parent)
    env = f"PATH={place.parent / 'bin'}:{os.environ['PATH']} DISPLAY=:99"
    async with approver_in_tmux(tmux, place, env=env, flags="--no-notify") as pane, wrapper(place) as link:
        request = write_file(path="/tmp/quiet")
        done, box = await outcome_of(link, request)
        await pane.shows('"path": "/tmp/quiet"')
        await pane.keys("o")  # decided after the notifier would have been started, had it been
        await settled(done, box)
        assert not record.exists()


async def test_a_timed_out_request_stays_marked_late_and_o_approves_its_retry(tmux: str, place: Path) -> None:
    async with approver_in_tmux(tmux, place) as pane, wrapper(place) as link:
        request = replace(write_file(path="/tmp/late"), timeout_s=0.5, late_s=PATIENT_S)
        late, box = anyio.Event(), list[Outcome]()

        def on_late(_request: Request, outcome: Outcome) -> None:
            box.append(outcome)
            late.set()

        link.submit(request, lambda _outcome: None, on_late)
        await pane.shows("TIMED OUT: the call was refused", '"path": "/tmp/late"', "late  write_file")
        await pane.keys("o")
        with anyio.fail_after(SCREEN_TIMEOUT_S):
            await late.wait()
        assert box[0].decision == "once"
        await pane.shows("approved once, late: the same call runs when the model makes it again", "nothing waiting")


async def test_a_key_meant_for_a_request_that_went_away_decides_no_other(tmux: str, place: Path) -> None:
    async with approver_in_tmux(tmux, place) as pane, wrapper(place) as link:
        first_done, _ = await outcome_of(link, replace(write_file(path="/tmp/first"), timeout_s=1.0))
        await pane.shows('"path": "/tmp/first"')  # shown and selected: the only one
        second_done, second = await outcome_of(link, write_file(path="/tmp/second"))
        await pane.shows("nothing is selected now")  # the first timed out while selected
        assert first_done.is_set()
        await pane.keys("o")  # meant for the first: decides nothing
        await pane.keys("j")
        await pane.shows('"path": "/tmp/second"')
        assert not second_done.is_set()
        await pane.keys("o")
        assert (await settled(second_done, second)).decision == "once"
