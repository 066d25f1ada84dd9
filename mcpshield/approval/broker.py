"""The wrapper's side of approvals: a call the profile says to `ask` about waits for a person.

The relay hands the broker each such tool call; the broker answers from this session's
approvals, or puts it to the terminal approver (`mcpshield approvals`) through an ApproverLink,
and calls the relay back with the outcome: forward the call, or refuse it with a reason the model
can act on. Nothing here blocks: the call waits, other traffic goes on.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import anyio.abc

from mcpshield.approval.client import ApproverLink, Outcome
from mcpshield.approval.protocol import Hello, Request
from mcpshield.jsonrpc import Message, arguments_hash
from mcpshield.ledger import Entry


@dataclass(frozen=True, slots=True)
class ApprovalSetup:
    """What `run` knows for the approver: the profile, the server, how long a call may wait."""

    profile: str | None
    server: str
    timeout_s: float


#: forward(msg, entry, approval) sends the call on; refuse(msg, entry, reason, approval) answers it.
Forward = Callable[[Message, Entry, dict[str, Any]], None]
Refuse = Callable[[Message, Entry, str, dict[str, Any]], None]


class Broker:
    """Puts `ask` calls to a person; remembers "session" approvals (tool + arguments hash)."""

    def __init__(self, setup: ApprovalSetup, forward: Forward, refuse: Refuse, report: Callable[[str], None]) -> None:
        self._setup = setup
        self._forward = forward
        self._refuse = refuse
        self._report = report
        self._hello = Hello(pid=_pid(), profile=setup.profile, server=setup.server, client=None)
        self._tg: anyio.abc.TaskGroup | None = None
        self._link: ApproverLink | None = None
        self._session: set[tuple[str, str]] = set()
        self._waiting: dict[int, str] = {}  # id(entry) -> approval request id

    def start(self, tg: anyio.abc.TaskGroup) -> None:
        self._tg = tg

    def client_is(self, name: str | None) -> None:
        """The client's name from initialize, shown to the person from then on."""
        self._hello = replace(self._hello, client=name)
        if self._link is not None:
            self._link.hello = self._hello

    def ask(self, msg: Message, entry: Entry, rule: str | None, prompt: str) -> None:
        tool = entry.tool or ""
        arguments = entry.arguments if type(entry.arguments) is dict else {}
        digest = arguments_hash(arguments)
        if (tool, digest) in self._session:
            self._forward(msg, entry, {"channel": "session", "approver_uid": None, "decision": "session"})
            return
        request = Request(tool, arguments, rule, prompt, self._setup.timeout_s, args_sha256=digest)
        started = time.monotonic()
        self._waiting[id(entry)] = request.id
        self._link_now().submit(request, lambda outcome: self._decided(msg, entry, request, outcome, started))

    def cancelled(self, entry: Entry) -> None:
        """The client withdrew the call: it is withdrawn from the approver too, and never runs."""
        request_id = self._waiting.pop(id(entry), None)
        if request_id is not None and self._link is not None:
            self._link.withdraw(request_id, "cancelled")

    def _link_now(self) -> ApproverLink:
        if self._link is None:
            assert self._tg is not None, "Broker.start was not called"
            self._link = ApproverLink(self._hello, self._tg, report=self._report)
        return self._link

    def _decided(self, msg: Message, entry: Entry, request: Request, outcome: Outcome, started: float) -> None:
        if self._waiting.pop(id(entry), None) is None or outcome.decision == "cancelled":
            return  # withdrawn by the client meanwhile: nobody waits for an answer
        approval = {
            "channel": outcome.channel,
            "approver_uid": outcome.approver_uid,
            "decision": outcome.decision,
            "wait_ms": int((time.monotonic() - started) * 1000),
        }
        if outcome.decision in ("once", "session", "always"):
            if outcome.decision != "once":  # "always" lasts the session until rules can be written
                self._session.add((request.tool, request.args_sha256))
            self._forward(msg, entry, approval)
        else:
            self._refuse(msg, entry, _refusal(request, outcome), approval)


def _refusal(request: Request, outcome: Outcome) -> str:
    """Why the call did not run, in words the model can pass on to the user."""
    if outcome.decision == "deny":
        said = f": {outcome.reason}" if outcome.reason else ""
        return f"mcpshield refused this call: the user denied {request.tool} in `mcpshield approvals`{said}"
    if outcome.decision == "timeout":
        return (
            f"mcpshield refused this call: the user did not answer within {request.timeout_s:g} s. Ask the user to "
            f"approve {request.tool} in `mcpshield approvals`, then call it again"
        )
    why = f" ({outcome.reason})" if outcome.reason else ""
    return (
        f"mcpshield refused this call: the profile says a person must approve {request.tool}, and no approver "
        f"is available{why}. Ask the user to run `mcpshield approvals` in a terminal, then call it again"
    )


def _pid() -> int:
    import os

    return os.getpid()
