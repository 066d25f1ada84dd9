"""The terminal approver end to end: a real `mcpshield approvals --json` process, driven through its
stdin and stdout, answering ApproverLinks run on the test's own event loop."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Final

import anyio
import anyio.abc
import pytest
from approvers import (
    EXIT_TIMEOUT_S,
    OUTCOME_TIMEOUT_S,
    START_TIMEOUT_S,
    approver_argv,
    approver_env,
    outcome_of,
    running_approver,
    settled,
)
from conftest import ROOT

from mcpshield.approval.client import CONNECT_TIMEOUT_S, ApproverLink
from mcpshield.approval.protocol import MAX_LINE_BYTES, Hello, Request, encode
from mcpshield.errors import ApprovalError

pytestmark = pytest.mark.anyio

#: Long enough never to expire in a test that does not wait for it.
PATIENT_S: Final = 60.0
#: Short enough for the timeout test to be quick; the link's own clock decides, not the test's.
IMPATIENT_S: Final = 0.5
#: Bound on an outcome reaching the link once the approver has the decision.
#: Bound on the stranger's own socket calls (its process is not under the test's event loop).
STRANGER_TIMEOUT_S: Final = 10.0
HELLO: Final = Hello(
    pid=4242, profile="everything", server="npx -y @modelcontextprotocol/server-everything", client="t"
)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def place() -> Iterator[Path]:
    """A short private directory for the socket (AF_UNIX paths are limited to ~104 bytes)."""
    with tempfile.TemporaryDirectory(prefix="mcps-") as tmp:
        yield Path(tmp) / "approver"


@asynccontextmanager
async def wrapper(place: Path, hello: Hello = HELLO) -> AsyncIterator[ApproverLink]:
    """An ApproverLink, as a wrapper would hold one; its tasks end when the block does."""
    async with anyio.create_task_group() as tg:
        yield ApproverLink(hello, tg, directory=place, report=lambda _text: None)
        tg.cancel_scope.cancel()


def call(timeout_s: float = PATIENT_S, **arguments: object) -> Request:
    return Request("write_file", dict(arguments) or {"path": "/tmp/x", "content": "hi"}, "tools.ask", None, timeout_s)


async def test_pending_request_is_printed_with_the_contract_fields(place: Path) -> None:
    async with running_approver(place) as approver, wrapper(place) as link:
        request = Request("write_file", {"path": "/etc/x", "n": 2**70}, "rules[2]", "Write a file?", PATIENT_S)
        await outcome_of(link, request)
        line = await approver.line()
        assert line["id"] == request.id
        assert line["tool"] == "write_file"
        assert line["arguments"] == {"path": "/etc/x", "n": 2**70}
        assert line["server"] == HELLO.server
        assert line["rule"] == "rules[2]"
        assert line["prompt"] == "Write a file?"
        assert (line["profile"], line["client"], line["pid"]) == ("everything", "t", 4242)
        assert line["args_sha256"] == request.args_sha256


@pytest.mark.parametrize(("decision", "reason"), [("once", None), ("session", None), ("always", None), ("deny", "no")])
async def test_each_decision_reaches_the_wrapper_that_asked(place: Path, decision: str, reason: str | None) -> None:
    async with running_approver(place) as approver, wrapper(place) as link:
        done, box = await outcome_of(link, call())
        request_id = (await approver.line())["id"]
        await approver.decide(request_id, decision, reason)
        assert await approver.line() == {"id": request_id, "resolved": decision}
        outcome = await settled(done, box)
        assert (outcome.decision, outcome.reason) == (decision, reason)
        assert (outcome.approver_uid, outcome.channel) == (os.getuid(), "terminal")


async def test_unanswered_request_times_out_on_both_sides(place: Path) -> None:
    async with running_approver(place) as approver, wrapper(place) as link:
        done, box = await outcome_of(link, call(IMPATIENT_S))
        request_id = (await approver.line())["id"]
        outcome = await settled(done, box)
        assert outcome.decision == "timeout"
        assert outcome.reason is not None and "mcpshield approvals" in outcome.reason
        assert await approver.line() == {"id": request_id, "resolved": "timeout"}


async def test_withdrawn_request_is_resolved_cancelled(place: Path) -> None:
    async with running_approver(place) as approver, wrapper(place) as link:
        done, box = await outcome_of(link, call())
        request_id = (await approver.line())["id"]
        assert link.withdraw(request_id)
        assert (await settled(done, box)).decision == "cancelled"
        assert await approver.line() == {"id": request_id, "resolved": "cancelled"}
        await approver.decide(request_id, "once")  # too late: the approver says so and goes on
        assert await approver.line() == {"id": request_id, "error": "no pending request has this id"}


async def test_cancelled_ask_withdraws_its_request(place: Path) -> None:
    async with running_approver(place) as approver, wrapper(place) as link:
        request = call()
        async with anyio.create_task_group() as tg:
            tg.start_soon(link.ask, request)
            assert (await approver.line())["id"] == request.id
            tg.cancel_scope.cancel()
        assert await approver.line() == {"id": request.id, "resolved": "cancelled"}


async def test_request_waits_across_an_approver_restart(place: Path) -> None:
    async with wrapper(place) as link:
        async with running_approver(place) as first:
            done, box = await outcome_of(link, call())
            request_id = (await first.line())["id"]
            await first.stop(signal.SIGKILL)  # leaves its socket file behind, as a crash would
        async with running_approver(place) as second:
            again = await second.line()
            assert again["id"] == request_id
            assert 0 < again["timeout_s"] < PATIENT_S
            await second.decide(request_id, "session")
            assert (await settled(done, box)).decision == "session"


async def test_two_wrappers_are_served_at_once(place: Path) -> None:
    other = Hello(pid=7, profile="git", server="uvx mcp-server-git", client=None)
    async with running_approver(place) as approver, wrapper(place) as one, wrapper(place, other) as two:
        done_one, box_one = await outcome_of(one, call())
        first = await approver.line()
        done_two, box_two = await outcome_of(two, call())
        second = await approver.line()
        assert (first["server"], second["server"]) == (HELLO.server, other.server)
        await approver.decide(second["id"], "deny", "not now")
        await approver.decide(first["id"], "once")
        assert (await settled(done_two, box_two)).reason == "not now"
        assert (await settled(done_one, box_one)).decision == "once"


async def test_wrapper_going_away_withdraws_its_requests(place: Path) -> None:
    async with running_approver(place) as approver:
        async with wrapper(place) as link:
            await outcome_of(link, call())
            request_id = (await approver.line())["id"]
        assert await approver.line() == {"id": request_id, "resolved": "withdrawn"}


async def test_without_an_approver_the_request_is_unavailable_at_once(place: Path) -> None:
    async with wrapper(place) as link:
        with anyio.fail_after(CONNECT_TIMEOUT_S):
            outcome = await link.ask(call())
    assert outcome.decision == "unavailable"
    assert outcome.reason is not None and "mcpshield approvals" in outcome.reason


async def test_an_approver_directory_others_can_open_is_refused(place: Path) -> None:
    async with running_approver(place):
        open_to_everyone(place, True)
        texts: list[str] = []
        async with anyio.create_task_group() as tg:
            link = ApproverLink(HELLO, tg, directory=place, report=texts.append)
            with anyio.fail_after(CONNECT_TIMEOUT_S):
                outcome = await link.ask(call())
            tg.cancel_scope.cancel()
        assert outcome.decision == "unavailable"
        assert texts and "other users can open it" in texts[0]


async def test_decision_for_an_unknown_id_is_an_error_line(place: Path) -> None:
    async with running_approver(place) as approver:
        await approver.decide("nope", "once")
        assert await approver.line() == {"id": "nope", "error": "no pending request has this id"}
        await approver.send({"id": "nope", "decision": "maybe"})
        assert "must be one of" in (await approver.line())["error"]


async def test_malformed_line_closes_only_that_connection(place: Path) -> None:
    async with running_approver(place) as approver, wrapper(place) as link:
        with anyio.fail_after(CONNECT_TIMEOUT_S):
            raw = await anyio.connect_unix(place / "approver.sock")
        async with raw:
            await raw.send(encode(HELLO) + b'{"type": "request", "id": 3}\n')
            assert "broke the protocol" in await approver.note_containing("connection closed")
            with anyio.fail_after(OUTCOME_TIMEOUT_S), pytest.raises(anyio.EndOfStream):
                await raw.receive()
        done, box = await outcome_of(link, call())
        await approver.decide((await approver.line())["id"], "once")
        assert (await settled(done, box)).decision == "once"


async def test_a_line_over_the_bound_closes_that_connection(place: Path) -> None:
    async with running_approver(place) as approver:
        with anyio.fail_after(CONNECT_TIMEOUT_S):
            raw = await anyio.connect_unix(place / "approver.sock")
        async with raw:
            with anyio.fail_after(OUTCOME_TIMEOUT_S):
                with contextlib.suppress(anyio.BrokenResourceError):  # hung up on mid-line
                    await raw.send(encode(HELLO) + b"x" * (MAX_LINE_BYTES + 1))
                assert f"over {MAX_LINE_BYTES} bytes" in await approver.note_containing("connection closed")


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to connect as another user (uid 65534)")
async def test_another_users_connection_is_refused(place: Path) -> None:
    async with running_approver(place) as approver, wrapper(place) as link:
        open_to_everyone(place, True)
        with anyio.fail_after(START_TIMEOUT_S):
            status = await anyio.to_thread.run_sync(connect_as_stranger, place / "approver.sock")
        assert status == 0, "the stranger's connection was not closed by the approver"
        assert "uid 65534" in await approver.note_containing("refused a connection")
        open_to_everyone(place, False)
        ours = call()
        await outcome_of(link, ours)
        assert (await approver.line())["id"] == ours.id  # the stranger's request was never shown


def open_to_everyone(place: Path, is_open: bool) -> None:
    """Opens the approver's directory and socket on purpose (or closes it again), so that the peer
    uid check is what stops a stranger."""
    place.parent.chmod(0o711 if is_open else 0o700)
    place.chmod(0o711 if is_open else 0o700)
    (place / "approver.sock").chmod(0o666 if is_open else 0o600)


def leave_stale_socket(place: Path) -> None:
    """A socket file nobody answers on, as a killed approver leaves it."""
    place.mkdir(mode=0o700)
    dead = socket.socket(socket.AF_UNIX)
    dead.bind(str(place / "approver.sock"))
    dead.close()


def connect_as_stranger(path: Path) -> int:
    """Forks a child that becomes uid 65534, connects, asks, and exits 0 if the approver hangs up."""
    pid = os.fork()
    if pid == 0:
        code = 2
        try:
            os.setgid(65534)
            os.setuid(65534)
            with socket.socket(socket.AF_UNIX) as sock:
                sock.settimeout(STRANGER_TIMEOUT_S)
                sock.connect(str(path))
                try:
                    sock.sendall(encode(HELLO) + encode(call()))
                    code = 0 if sock.recv(1) == b"" else 1
                except (BrokenPipeError, ConnectionResetError):  # hung up on before it finished asking
                    code = 0
        except OSError as exc:
            os.write(2, f"the stranger could not connect: {exc}\n".encode())
        finally:
            os._exit(code)
    _pid, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


async def test_stale_socket_file_is_replaced(place: Path) -> None:
    leave_stale_socket(place)
    async with running_approver(place) as approver, wrapper(place) as link:
        done, box = await outcome_of(link, call())
        await approver.decide((await approver.line())["id"], "once")
        assert (await settled(done, box)).decision == "once"


async def test_second_approver_refuses_to_start(place: Path) -> None:
    async with running_approver(place):
        with anyio.fail_after(START_TIMEOUT_S):
            second = await anyio.run_process(approver_argv(), env=approver_env(place), cwd=ROOT, check=False)
    assert second.returncode == ApprovalError.exit_code
    message, tip = second.stderr.decode().splitlines()
    assert "another approver is already running" in message
    assert tip.startswith("Tip: ")
    assert second.stdout == b""


async def test_sigint_exits_0_and_removes_the_socket(place: Path) -> None:
    async with running_approver(place) as approver:
        assert (place / "approver.sock").exists()
        assert await approver.stop(signal.SIGINT) == 0
    assert not (place / "approver.sock").exists()


async def test_end_of_stdin_keeps_the_approver_serving(place: Path) -> None:
    async with running_approver(place) as approver, wrapper(place) as link:
        await approver.process.stdin.aclose()  # type: ignore[union-attr]
        await approver.note_containing("stdin ended")
        request = call(IMPATIENT_S)
        await outcome_of(link, request)
        assert (await approver.line())["id"] == request.id
        assert await approver.line() == {"id": request.id, "resolved": "timeout"}
        assert await approver.stop() == 0


def test_without_json_or_a_terminal_the_approver_refuses_to_start(place: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "mcpshield", "approvals"],
        env=approver_env(place),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=EXIT_TIMEOUT_S,
        check=False,
    )
    assert done.returncode == 2
    assert "interactive approver needs a terminal" in done.stderr
    assert "--json" in done.stderr
    assert not place.exists()
