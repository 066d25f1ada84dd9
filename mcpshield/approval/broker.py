"""The wrapper's side of approvals: a call the profile says to `ask` about waits for a person.

The relay hands the broker each such tool call. The broker answers from what is already decided
(a late approval's retry, this session's approvals, the profile's "always" rules), or puts the
call to a person, channel by channel: the terminal approver (`mcpshield approvals`) through an
ApproverLink and, if the client declared elicitation, the client's user at once (first decision
wins); in the 2026-07-28 era, when no approver answers, the client's user through an
`input_required` result; then, with `--tty`, the wrapper's terminal. It calls the relay back
with the outcome: forward the call, refuse it with a reason the model can act on, or answer it
with mcpshield's own question. Nothing here blocks: the call waits, other traffic goes on.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Final

import anyio.abc
import orjson

from mcpshield.approval import elicit, mrtr, wording
from mcpshield.approval.client import ApproverLink, Outcome
from mcpshield.approval.elicit import Elicitor
from mcpshield.approval.granted import Granted, Key
from mcpshield.approval.protocol import Hello, Request, WithdrawReason
from mcpshield.jsonrpc import JsonId, Message, arguments_hash
from mcpshield.ledger import Entry

if TYPE_CHECKING:
    from mcpshield.approval.remember import AlwaysTarget
    from mcpshield.approval.tty import TtyChannel
    from mcpshield.profile.model import LoadedProfile

#: While a call that carries a progressToken waits, the client hears from it this often:
#: TypeScript-SDK clients that reset their timeout on progress then wait as long as the person.
PROGRESS_INTERVAL_S: Final = 5.0
#: After a call timed out, the terminal approver still takes a decision on it this long: the
#: model was told to ask the user and call again, and the user may be on the way to the terminal.
LATE_DECISION_S: Final = 120.0
#: A late approval lets the same call (tool and arguments hash) run unasked this long, once: the
#: time for the user to tell the model, and the model to call again; never the stale call itself.
RETRY_WINDOW_S: Final = 120.0


@dataclass(frozen=True, slots=True)
class ApprovalSetup:
    """What `run` knows for the approver: the profile, the server, how long a call may wait,
    whether the client may be asked too (MCP elicitation), the calls the profile approves
    always and where a new "always" goes, and whether to ask on /dev/tty."""

    profile: str | None
    server: str
    timeout_s: float
    elicitation: bool = True
    always: frozenset[Key] = frozenset()
    #: Where "always" writes its rule; None: it approves for the session only.
    always_target: AlwaysTarget | None = None
    tty: bool = False

    @classmethod
    def of(cls, loaded: LoadedProfile, server: str, *, tty: bool = False) -> ApprovalSetup:
        from mcpshield.approval.remember import target_for

        section = loaded.profile.approval
        always = frozenset((rule.tool, rule.args_sha256) for rule in section.always)
        return cls(loaded.name, server, section.timeout_s, section.elicitation, always, target_for(loaded), tty)


#: forward(msg, entry, approval) sends the call on; refuse(msg, entry, reason, approval) answers
#: it with a refusal; answer(msg, entry, result, approval) answers it with `result`.
Forward = Callable[[Message, Entry, dict[str, Any]], None]
Refuse = Callable[[Message, Entry, str, dict[str, Any]], None]
Answer = Callable[[Message, Entry, dict[str, Any], dict[str, Any]], None]


@dataclass(eq=False)
class _Pending:
    """One call waiting, on the terminal and perhaps in the client: the first decision wins."""

    msg: Message
    entry: Entry
    request: Request
    started: float
    stateless: bool = False
    elicit_id: str | None = None
    #: Set when the terminal cannot decide (no approver): another channel alone may.
    terminal_out: Outcome | None = None
    on_tty: bool = False
    timer: anyio.CancelScope | None = None
    progress: anyio.CancelScope | None = None

    @property
    def key(self) -> Key:
        return (self.request.tool, self.request.args_sha256)


class Broker:
    """Puts `ask` calls to a person; remembers approvals for the session and beyond."""

    def __init__(
        self,
        setup: ApprovalSetup,
        forward: Forward,
        refuse: Refuse,
        report: Callable[[str], None],
        *,
        answer: Answer | None = None,
        elicitor: Elicitor | None = None,
        notify: Callable[[bytes], None] | None = None,
    ) -> None:
        self._setup = setup
        self._forward = forward
        self._refuse = refuse
        self._answer = answer
        self._report = report
        self._notify = notify
        self._elicitor = elicitor if setup.elicitation else None
        self._client_elicits = False
        self._hello = Hello(pid=os.getpid(), profile=setup.profile, server=setup.server, client=None)
        self._tg: anyio.abc.TaskGroup | None = None
        self._link: ApproverLink | None = None
        self._tty: TtyChannel | None = None
        self._granted = Granted(always=set(setup.always))
        self._rounds = mrtr.InputRounds()
        self._waiting: dict[int, _Pending] = {}  # id(entry) -> the call waiting
        self._elicited: dict[str, _Pending] = {}  # elicitation id -> the call it asks about

    def start(self, tg: anyio.abc.TaskGroup) -> None:
        self._tg = tg

    def close(self) -> None:
        """Gives back what the broker holds outside the event loop (the terminal of `--tty`)."""
        if self._tty is not None:
            self._tty.close()

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
        key = (tool, arguments_hash(arguments))
        stateless = mrtr.stateless(msg)
        if stateless:
            if self._hello.client is None:  # no initialize in this era: each request names its client
                self._hello = replace(self._hello, client=mrtr.client_name(msg))
            msg, answered = self._rounds.retry(msg, key)
            if answered is not None:
                self._came_back(msg, entry, key, answered)
                return
        granted = self._granted.take(key)
        if granted is not None:
            if stateless:
                entry.approved = True
            self._forward(msg, entry, granted)
            return
        target = self._setup.always_target
        request = Request(
            tool, arguments, rule, prompt, self._setup.timeout_s, args_sha256=key[1], late_s=LATE_DECISION_S,
            always_file=None if target is None else str(target.file),
        )  # fmt: skip
        pending = _Pending(msg, entry, request, time.monotonic(), stateless)
        self._waiting[id(entry)] = pending
        if self._elicitor is not None and self._client_elicits and not stateless:
            text = elicit.message(tool, arguments, self._setup.server, request.prompt)
            pending.elicit_id = self._elicitor.ask(text)
            if pending.elicit_id is not None:
                self._elicited[pending.elicit_id] = pending
                self._start_timer(pending)
        token = _progress_token(msg)
        if token is not None and self._notify is not None:
            pending.progress = anyio.CancelScope()
            self._task(self._keep_informed, pending, token)
        self._link_now().submit(request, lambda outcome: self._terminal(pending, outcome), self._late)

    def cancelled(self, entry: Entry) -> None:
        """The client withdrew the call: it is withdrawn from every channel, and never runs."""
        pending = self._waiting.get(id(entry))
        if pending is not None:
            self._end(pending)

    def answered(self, entry: Entry, msg: Message) -> None:
        """The server's answer to a stateless call that was approved (`entry.approved`): its own
        `input_required` round continues the approved call."""
        arguments = entry.arguments if type(entry.arguments) is dict else {}
        self._rounds.server_asked((entry.tool or "", arguments_hash(arguments)), msg.body.get("result"))

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
            if pending.terminal_out is not None and not self._on_tty(pending):  # no channel can decide
                self._finish(pending, pending.terminal_out, "terminal")
            return
        self._finish(pending, Outcome("once" if verdict == "approve" else "deny"), "elicitation")

    # -- channels -------------------------------------------------------------------------

    def _link_now(self) -> ApproverLink:
        if self._link is None:
            assert self._tg is not None, "Broker.start was not called"
            self._link = ApproverLink(self._hello, self._tg, report=self._report)
        return self._link

    def _terminal(self, pending: _Pending, outcome: Outcome) -> None:
        if self._waiting.get(id(pending.entry)) is not pending or outcome.decision == "cancelled":
            return  # withdrawn (by the client, or because the client's user decided)
        with self._guard(pending):
            if outcome.decision == "unavailable":
                pending.terminal_out = outcome
                if pending.elicit_id is not None:
                    return  # the client's user may still decide
                if pending.stateless and self._ask_in_result(pending):
                    return
                if self._on_tty(pending):
                    return
            self._finish(pending, outcome, "terminal")

    def _ask_in_result(self, pending: _Pending) -> bool:
        """The 2026-07-28 era: answers the call with mcpshield's question for the client's user,
        if the client can ask it; its retry carries the answer (see mcpshield.approval.mrtr)."""
        if self._elicitor is None or self._answer is None or not mrtr.client_elicits(pending.msg):
            return False
        request = pending.request
        text = elicit.message(request.tool, request.arguments, self._setup.server, request.prompt)
        result = self._rounds.ask(pending.key, text)
        self._end(pending)
        approval = self._approval(pending, Outcome("unavailable"), "elicitation") | {"decision": "input_required"}
        self._answer(pending.msg, pending.entry, result, approval)
        return True

    def _came_back(self, msg: Message, entry: Entry, key: Key, answered: mrtr.Answered) -> None:
        """A stateless retry carrying the client user's answer, or continuing an approved call."""
        wait_ms = int((time.monotonic() - answered.asked_at) * 1000)
        if answered.verdict is None:
            entry.approved = True
            self._forward(msg, entry, {"channel": "continued", "approver_uid": None, "decision": "once"})
            return
        decision = "once" if answered.verdict == "approve" else answered.verdict
        approval = {"channel": "elicitation", "approver_uid": None, "decision": decision, "wait_ms": wait_ms}
        if answered.verdict == "approve":
            entry.approved = True
            self._forward(msg, entry, approval)
            return
        request = Request(key[0], {}, None, None, self._setup.timeout_s, args_sha256=key[1])
        reason = wording.declined(request) if answered.verdict == "deny" else wording.refusal(
            request, Outcome("unavailable", "the client gave no answer"), retry_window_s=RETRY_WINDOW_S
        )  # fmt: skip
        self._refuse(msg, entry, reason, approval)

    def _on_tty(self, pending: _Pending) -> bool:
        """Channel 4 (`--tty`): the wrapper's terminal; False when it is off or unusable."""
        if not self._setup.tty:
            return False
        if self._tty is None:
            from mcpshield.approval.tty import TtyChannel

            self._tty = TtyChannel(self._report)
        pending.on_tty = self._tty.ask(pending.request, self._hello, lambda outcome: self._by_tty(pending, outcome))
        if pending.on_tty:
            self._start_timer(pending)
        return pending.on_tty

    def _by_tty(self, pending: _Pending, outcome: Outcome) -> None:
        if self._waiting.get(id(pending.entry)) is pending:
            with self._guard(pending):
                if outcome.decision == "unavailable":  # the terminal failed: refused as if never asked
                    outcome = pending.terminal_out or outcome
                self._finish(pending, outcome, "tty")

    def _late(self, request: Request, outcome: Outcome) -> None:
        """A decision on a call that already timed out: it pre-authorises the same call's retry
        (once, within RETRY_WINDOW_S); the stale call never runs."""
        key = (request.tool, request.args_sha256)
        if outcome.decision not in ("once", "session", "always"):
            self._report(f"the user denied {request.tool} after it had timed out; nothing more happens")
            return
        self._granted.late[key] = (time.monotonic() + RETRY_WINDOW_S, outcome)
        if outcome.decision != "once":
            self._granted.session.add(key)
        if outcome.decision == "always":
            self._task(self._remember, request, outcome, None)
        self._report(
            f"{request.tool} was approved ({outcome.decision}) after it had timed out: the same call runs "
            f"if it comes again within {RETRY_WINDOW_S:g} s"
        )

    # -- timers and progress --------------------------------------------------------------

    def _start_timer(self, pending: _Pending) -> None:
        if pending.timer is None:
            pending.timer = anyio.CancelScope()
            self._task(self._expire, pending)

    def _task(self, func: Callable[..., Any], *args: Any) -> None:
        assert self._tg is not None, "Broker.start was not called"
        self._tg.start_soon(func, *args)

    async def _expire(self, pending: _Pending) -> None:
        """The call's own deadline, for when only the client or the terminal of `--tty` is left
        to ask (the terminal link enforces the same deadline on its requests)."""
        assert pending.timer is not None
        with pending.timer:
            left = pending.request.timeout_s - (time.monotonic() - pending.started)
            await anyio.sleep(max(left, 0))
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

    # -- endings --------------------------------------------------------------------------

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
        if pending.on_tty and self._tty is not None:
            self._tty.withdraw(pending.request.id, why)
        if self._link is not None:
            # A no-op if the terminal decided; else the approver prints `"resolved": "cancelled"`
            # for a call the client's user decided (see docs/approvals.md).
            self._link.withdraw(pending.request.id, why)

    def _approval(self, pending: _Pending, outcome: Outcome, channel: str) -> dict[str, Any]:
        """How the call was decided, for the audit log."""
        return {
            "channel": channel if channel in ("elicitation", "tty") else outcome.channel,
            "approver_uid": outcome.approver_uid,
            "decision": outcome.decision,
            "wait_ms": int((time.monotonic() - pending.started) * 1000),
        }

    def _finish(self, pending: _Pending, outcome: Outcome, channel: str) -> None:
        self._end(pending, "timeout" if outcome.decision == "timeout" else "cancelled")
        approval = self._approval(pending, outcome, channel)
        request = pending.request
        if outcome.decision not in ("once", "session", "always"):
            if outcome.decision == "deny":  # a late approval of the same call is withdrawn with it
                self._granted.late.pop(pending.key, None)
            if channel == "elicitation":
                reason = wording.declined(request)
            else:
                reached = pending.terminal_out is None and outcome.decision == "timeout"  # late decisions possible
                shown = request if reached else replace(request, late_s=0.0)
                reason = wording.refusal(shown, outcome, retry_window_s=RETRY_WINDOW_S)
            self._refuse(pending.msg, pending.entry, reason, approval)
            return
        if outcome.decision != "once":
            self._granted.session.add(pending.key)
        if pending.stateless:
            pending.entry.approved = True
        if outcome.decision == "always":
            self._task(self._remember, request, outcome, pending, approval)
        else:
            self._forward(pending.msg, pending.entry, approval)

    async def _remember(
        self, request: Request, outcome: Outcome, pending: _Pending | None, approval: dict[str, Any] | None = None
    ) -> None:
        """Writes the "always" rule, says what became of it, and then lets the call it approved
        run (when it is still waiting: not for a late approval)."""
        from mcpshield.approval.remember import remember

        note = await remember(self._setup.always_target, request, outcome.approver_uid)
        error = note.get("error")
        if error is None:
            self._granted.always.add((request.tool, request.args_sha256))
            self._report(f"approved {request.tool} always: the rule is in {note['file']}")
        else:
            self._report(f"approved {request.tool} always, but for this session only: {error}")
        if self._link is not None:
            self._link.remembered(request.id, note["file"] if error is None else None, error)
        if pending is not None and approval is not None:
            with self._guard(pending):
                self._forward(pending.msg, pending.entry, approval | {"always": note})


def _progress_token(msg: Message) -> str | int | None:
    meta = msg.params.get("_meta")
    token = meta.get("progressToken") if isinstance(meta, dict) else None
    return token if isinstance(token, str | int) and not isinstance(token, bool) else None
