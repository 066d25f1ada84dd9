"""Test helpers: a real `mcpshield approvals --json` process, read and written with every wait bounded."""

from __future__ import annotations

import json
import os
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from subprocess import PIPE
from typing import Any, Final

import anyio
import anyio.abc
from anyio.streams.buffered import BufferedByteReceiveStream
from conftest import ROOT

from mcpshield.approval.client import ApproverLink, Outcome
from mcpshield.approval.protocol import Request

#: Bound on the approver starting up (imports, bind) and saying it listens.
START_TIMEOUT_S: Final = 15.0
#: Bound on one line from the approver after what causes it happened.
LINE_TIMEOUT_S: Final = 10.0
#: Bound on the approver exiting once asked to.
EXIT_TIMEOUT_S: Final = 10.0
MAX_LINE: Final = 4 * 1024 * 1024
#: Bound on a submitted request's outcome once what decides it happened.
OUTCOME_TIMEOUT_S: Final = 10.0


def approver_argv() -> list[str]:
    return [sys.executable, "-m", "mcpshield", "approvals", "--json"]


def approver_env(directory: Path) -> dict[str, str]:
    return {**os.environ, "MCPSHIELD_APPROVER_DIR": str(directory)}


class Approver:
    """A running `mcpshield approvals --json`: its stdout lines as JSON, its stderr notes as text."""

    def __init__(self, process: anyio.abc.Process) -> None:
        assert process.stdout is not None and process.stderr is not None and process.stdin is not None
        self.process = process
        self._stdin = process.stdin
        self._out = BufferedByteReceiveStream(process.stdout)
        self._err = BufferedByteReceiveStream(process.stderr)

    async def line(self) -> dict[str, Any]:
        with anyio.fail_after(LINE_TIMEOUT_S):
            raw = await self._out.receive_until(b"\n", MAX_LINE)
        body = json.loads(raw)
        assert isinstance(body, dict)
        return body

    async def note(self) -> str:
        with anyio.fail_after(LINE_TIMEOUT_S):
            return (await self._err.receive_until(b"\n", MAX_LINE)).decode()

    async def note_containing(self, needle: str) -> str:
        while True:
            text = await self.note()
            if needle in text:
                return text

    async def decide(self, request_id: str, decision: str, reason: str | None = None) -> None:
        await self.send({"id": request_id, "decision": decision, "reason": reason})

    async def send(self, body: dict[str, Any]) -> None:
        await self._stdin.send(json.dumps(body).encode() + b"\n")

    async def stop(self, signum: signal.Signals = signal.SIGTERM) -> int:
        if self.process.returncode is None:
            self.process.send_signal(signum)
        with anyio.fail_after(EXIT_TIMEOUT_S):
            return await self.process.wait()


@asynccontextmanager
async def running_approver(directory: Path) -> AsyncIterator[Approver]:
    """An approver listening in `directory`; stopped (SIGTERM, then SIGKILL) on the way out."""
    process = await anyio.open_process(
        approver_argv(), stdin=PIPE, stdout=PIPE, stderr=PIPE, env=approver_env(directory), cwd=ROOT
    )
    approver = Approver(process)
    try:
        with anyio.fail_after(START_TIMEOUT_S):
            await approver.note_containing("listening on")
        yield approver
    finally:
        with anyio.CancelScope(shield=True):
            if process.returncode is None:
                process.terminate()
                with anyio.move_on_after(EXIT_TIMEOUT_S):
                    await process.wait()
            if process.returncode is None:
                process.kill()
                await process.wait()
            await process.aclose()


async def outcome_of(link: ApproverLink, request: Request) -> tuple[anyio.Event, list[Outcome]]:
    """Submits `request`; the event is set, and the list holds the outcome, once it is decided."""
    done, box = anyio.Event(), list[Outcome]()

    def keep(outcome: Outcome) -> None:
        box.append(outcome)
        done.set()

    link.submit(request, keep)
    return done, box


async def settled(done: anyio.Event, box: list[Outcome]) -> Outcome:
    with anyio.fail_after(OUTCOME_TIMEOUT_S):
        await done.wait()
    return box[0]
