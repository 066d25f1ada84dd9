"""The wrapper's side of approvals: a call the profile says to `ask` about waits for a person.

The relay hands the broker each such tool call; the broker answers from this session's
approvals, or puts it to the terminal approver (`mcpshield approvals`) through an ApproverLink
and, if the client declared elicitation, to the client's user at once (first decision wins),
and calls the relay back with the outcome: forward the call, or refuse it with a reason the model
can act on. Nothing here blocks: the call waits, other traffic goes on.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any, Final

import anyio.abc
import orjson

from mcpshield.approval import elicit
from mcpshield.approval.client import ApproverLink, Outcome
from mcpshield.approval.elicit import Elicitor
from mcpshield.approval.protocol import Hello, Request, WithdrawReason
from mcpshield.jsonrpc import JsonId, Message, arguments_hash
from mcpshield.ledger import Entry

#: While a call that carries a progressToken waits, the client hears from it this often:
#: TypeScript-SDK clients that reset their timeout on progress then wait as long as the person.
PROGRESS_INTERVAL_S: Final = 5.0


@dataclass(frozen=True, slots=True)
class ApprovalSetup:
    """What `run` knows for the approver: the profile, the server, how long a call may wait,
    and whether the client may be asked too (MCP elicitation)."""

    profile: str | None
    server: str
    timeout_s: float
    elicitation: bool = True


#: forward(msg, entry, approval) sends the call on; refuse(msg, entry, reason, approval) answers it.
Forward = Callable[[Message, Entry, dict[str, Any]], None]
Refuse = Callable[[Message, Entry, str, dict[str, Any]], None]


@dataclass(eq=False)
class _Pending:
    """One call waiting, on the terminal and perhaps in the client: the first decision wins."""

    msg: Message
    entry: Entry
    request: Request
    started: float
    elicit_id: str | None = None
    #: Set when the terminal cannot decide (no approver): the elicitation alone may.
    terminal_out: Outcome | None = None
    timer: anyio.CancelScope | None = None
    progress: anyio.CancelScope | None = None


class Broker:
    """Puts `ask` calls to a person; remembers "session" approvals (tool + arguments hash)."""

    def __init__(
        self,
        setup: ApprovalSetup,
        forward: Forward,
        refuse: Refuse,
        report: Callable[[str], None],
        *,
        elicitor: Elicitor | None = None,
        notify: Callable[[bytes], None] | None = None,
    ) -> None:
        self._setup = setup
        self._forward = forward
        self._refuse = refuse
        self._report = report
        self._notify = notify
        self._elicitor = elicitor if setup.elicitation else None
        self._client_elicits = False
        self._hello = Hello(pid=_pid(), profile=setup.profile, server=setup.server, client=None)
        self._tg: anyio.abc.TaskGroup | None = None
        self._link: ApproverLink | None = None
        self._session: set[tuple[str, str]] = set()
        self._waiting: dict[int, _Pending] = {}  # id(entry) -> the call waiting
        self._elicited: dict[str, _Pending] = {}  # elicitation id -> the call it asks about

    def start(self, tg: anyio.abc.TaskGroup) -> None:
        self._tg = tg

    def initialize(self, params: dict[str, Any]) -> None:
        """The client's initialize: its name, shown to the person from then on, and whether it
        can be asked itself (it declared form elicitation)."""
        info = params.get("clientInfo")
        self._hello = replace(self._hello, client=info.get("name") if isinstance(info, dict) else None)
        if self._link is not None:
            self._link.hello = self._hello
        self._client_elicits = elicit.supports_form(params.get("capabilities"))

    def ask(self, msg: Message, entry: Entry, rule: str | None, prompt: str) -> None:
        tool = entry.tool or ""
        arguments = entry.arguments if type(entry.arguments) is dict else {}
        digest = arguments_hash(arguments)
        if (tool, digest) in self._session:
            self._forward(msg, entry, {"channel": "session", "approver_uid": None, "decision": "session"})
            return
        request = Request(tool, arguments, rule, prompt, self._setup.timeout_s, args_sha256=digest)
        pending = _Pending(msg, entry, request, time.monotonic())
        self._waiting[id(entry)] = pending
        if self._elicitor is not None and self._client_elicits:
            text = elicit.message(tool, arguments, self._setup.server, request.prompt)
            pending.elicit_id = self._elicitor.ask(text)
            if pending.elicit_id is not None:
                self._elicited[pending.elicit_id] = pending
                pending.timer = anyio.CancelScope()
                assert self._tg is not None, "Broker.start was not called"
                self._tg.start_soon(self._expire, pending)
        token = _progress_token(msg)
        if token is not None and self._notify is not None:
            pending.progress = anyio.CancelScope()
            assert self._tg is not None, "Broker.start was not called"
            self._tg.start_soon(self._keep_informed, pending, token)
        self._link_now().submit(request, lambda outcome: self._terminal(pending, outcome))

    def cancelled(self, entry: Entry) -> None:
        """The client withdrew the call: it is withdrawn from every channel, and never runs."""
        pending = self._waiting.get(id(entry))
        if pending is not None:
            self._end(pending)

    def elicited(self, own_id: JsonId, result: object) -> None:
        """The client's answer to one of mcpshield's elicitations (an own entry of the server
        ledger; `result` None for an error): approve once, deny, or this channel cannot decide."""
        pending = self._elicited.pop(own_id, None) if type(own_id) is str else None
        if pending is None:
            return  # withdrawn meanwhile
        pending.elicit_id = None
        verdict = elicit.verdict(result)
        if verdict == "unavailable":
            self._report(f"the client could not ask its user about {pending.request.tool}; the terminal may")
            if pending.terminal_out is not None:  # neither channel can decide
                self._finish(pending, pending.terminal_out, "terminal")
            return
        self._finish(pending, Outcome("once" if verdict == "approve" else "deny"), "elicitation")

    def _link_now(self) -> ApproverLink:
        if self._link is None:
            assert self._tg is not None, "Broker.start was not called"
            self._link = ApproverLink(self._hello, self._tg, report=self._report)
        return self._link

    async def _expire(self, pending: _Pending) -> None:
        """The call's own deadline, for when only the client is left to ask (the terminal link
        enforces the same deadline on its requests)."""
        assert pending.timer is not None
        with pending.timer:
            await anyio.sleep(pending.request.timeout_s)
            if self._waiting.get(id(pending.entry)) is pending:
                with self._guard(pending):
                    self._finish(pending, Outcome("timeout"), "terminal")

    async def _keep_informed(self, pending: _Pending, token: str | int) -> None:
        """Progress notifications for the waiting call: one at once, then every interval."""
        assert pending.progress is not None and self._notify is not None
        text = f"waiting for the user to approve {pending.request.tool} (in `mcpshield approvals` or the client)"
        with pending.progress:
            waited = 0.0
            while True:
                params = {"progressToken": token, "progress": waited, "message": text}
                note = {"jsonrpc": "2.0", "method": "notifications/progress", "params": params}
                try:
                    self._notify(orjson.dumps(note, option=orjson.OPT_APPEND_NEWLINE))
                except Exception as exc:  # progress is a courtesy: its failure stops only it
                    self._report(f"stopped progress notifications ({type(exc).__name__}: {exc})")
                    return
                await anyio.sleep(PROGRESS_INTERVAL_S)
                waited += PROGRESS_INTERVAL_S

    def _terminal(self, pending: _Pending, outcome: Outcome) -> None:
        if self._waiting.get(id(pending.entry)) is not pending or outcome.decision == "cancelled":
            return  # withdrawn (by the client, or because the client's user decided)
        if outcome.decision == "unavailable" and pending.elicit_id is not None:
            pending.terminal_out = outcome  # the client's user may still decide
            return
        with self._guard(pending):
            self._finish(pending, outcome, "terminal")

    @contextlib.contextmanager
    def _guard(self, pending: _Pending) -> Iterator[None]:
        """Runs in the link's or the timer's task, outside the relay's guard: a failure refuses
        the one call rather than ending the relay."""
        try:
            yield
        except Exception as exc:
            self._report(f"internal error ({type(exc).__name__}: {exc}) deciding a waiting call; refused")
            self._waiting.pop(id(pending.entry), None)
            self._refuse(pending.msg, pending.entry, "mcpshield refused this call: it failed to get a decision", {})

    def _end(self, pending: _Pending, why: WithdrawReason = "cancelled") -> None:
        """Stops waiting on every channel (their answers, if any, are dropped)."""
        self._waiting.pop(id(pending.entry), None)
        if pending.timer is not None:
            pending.timer.cancel()
        if pending.progress is not None:
            pending.progress.cancel()
        if pending.elicit_id is not None and self._elicitor is not None:
            self._elicited.pop(pending.elicit_id, None)
            self._elicitor.withdraw(pending.elicit_id)
            pending.elicit_id = None
        if self._link is not None:
            # A no-op if the terminal decided; else the approver prints `"resolved": "cancelled"`
            # for a call the client's user decided (see docs/approvals.md).
            self._link.withdraw(pending.request.id, why)

    def _finish(self, pending: _Pending, outcome: Outcome, channel: str) -> None:
        self._end(pending, "timeout" if outcome.decision == "timeout" else "cancelled")
        approval = {
            "channel": channel if channel == "elicitation" else outcome.channel,
            "approver_uid": outcome.approver_uid,
            "decision": outcome.decision,
            "wait_ms": int((time.monotonic() - pending.started) * 1000),
        }
        request = pending.request
        if outcome.decision in ("once", "session", "always"):
            if outcome.decision != "once":  # "always" lasts the session until rules can be written
                self._session.add((request.tool, request.args_sha256))
            self._forward(pending.msg, pending.entry, approval)
        else:
            reason = _declined(request) if channel == "elicitation" else _refusal(request, outcome)
            self._refuse(pending.msg, pending.entry, reason, approval)


def _declined(request: Request) -> str:
    return f"mcpshield refused this call to {request.tool}: the user declined in the client"


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


def _progress_token(msg: Message) -> str | int | None:
    meta = msg.params.get("_meta")
    token = meta.get("progressToken") if isinstance(meta, dict) else None
    return token if isinstance(token, str | int) and not isinstance(token, bool) else None


def _pid() -> int:
    import os

    return os.getpid()
