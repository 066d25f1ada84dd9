"""The ledger: requests in flight in one direction, so each answer is judged by its request."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any, Final

from mcpshield.jsonrpc import JsonId, Message, arguments_hash

#: Requests one peer may keep in flight; past it a peer is flooding, not working. Cancelled
#: requests do not count: their sender is no longer waiting for them.
MAX_IN_FLIGHT: Final = 10_000
#: How long a cancelled request stays, so that its late answer is recognised and dropped; a
#: server that answers a cancellation at all does so within moments, one that never answers
#: must not keep the entry (and its id) forever.
CANCELLED_GRACE_S: Final = 30.0
#: Cancelled requests remembered at most; past it the oldest are forgotten before their grace
#: ends, so a peer cancelling in a loop cannot grow the ledger without bound.
MAX_CANCELLED: Final = MAX_IN_FLIGHT


@dataclass(slots=True)
class Entry:
    """One request in flight: what it asked, and when it was sent."""

    id: JsonId
    method: str
    tool: str | None
    arguments: Any
    started: float
    cancelled: bool = False
    #: mcpshield's own request (its answer is for mcpshield, never forwarded).
    own: bool = False
    #: Held by mcpshield (see mcpshield.catalog): the other side has not received it yet.
    held: bool = False
    #: Counted in Ledger.active_tool_calls: a tool call sent on, neither held nor withdrawn.
    counted: bool = False
    #: Its audit event, once decided, until it is over (see mcpshield.audit.trail).
    audit: list[Any] | None = None
    #: A stateless (2026-07-28) tool call that runs on a person's approval: the server's own
    #: `input_required` answer to it lets the client's retry continue it (see approval.mrtr).
    approved: bool = False

    @property
    def args_hash(self) -> str | None:
        """SHA-256 of the canonical arguments of a tool call; computed when asked for, since
        most entries are closed without anyone asking."""
        return None if self.tool is None else arguments_hash(self.arguments)


class Ledger:
    """Requests sent by one peer and not yet answered, keyed by id.

    Ids are only ever strings or integers (the decoder refuses booleans and fractions), and a
    string never equals an integer, so the id itself is the key: "1" and 1 stay apart.

    A cancelled request stays for CANCELLED_GRACE_S, then is forgotten the next time a request
    opens or one is cancelled (no timer per entry). Its id may be reused at once: the new request
    takes the id over, and the next answer with that id is taken as the new request's answer."""

    __slots__ = ("_cancelled", "_entries", "_withdrawn", "active_tool_calls")

    def __init__(self) -> None:
        self._entries: dict[JsonId, Entry] = {}
        #: (when, entry) for each cancelled request, oldest first; some may have left already.
        self._cancelled: deque[tuple[float, Entry]] = deque()
        #: Cancelled entries still in _entries (they do not count toward MAX_IN_FLIGHT).
        self._withdrawn = 0
        #: Tool calls sent on that their sender has not withdrawn (for concurrency limits).
        self.active_tool_calls = 0

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, msg_id: JsonId) -> bool:
        return msg_id in self._entries

    def open(self, msg: Message, now: float) -> Entry | None:
        """Records a request; None if its id is already in flight or the ledger is full."""
        assert msg.id is not None and msg.method is not None
        key = msg.id
        if self._cancelled:
            self._expire(now)
        entries = self._entries
        if key in entries:
            if not entries[key].cancelled:
                return None
            self._forget(entries[key])  # a withdrawn request's id, reused: the new one takes it
        if len(entries) - self._withdrawn >= MAX_IN_FLIGHT:
            return None
        if msg.method == "tools/call":
            params = msg.params
            name = params.get("name")
            tool = name if type(name) is str else None
            entry = Entry(key, "tools/call", tool, params.get("arguments", {}), now, counted=True)
            self.active_tool_calls += 1
        else:
            entry = Entry(key, msg.method, None, None, now)
        entries[key] = entry
        return entry

    def close(self, msg_id: JsonId) -> Entry | None:
        """Removes and returns the request an answer belongs to; None if nobody sent it."""
        entry = self._entries.pop(msg_id, None)
        if entry is not None:
            if entry.counted:
                self.active_tool_calls -= 1
            elif entry.cancelled:
                self._withdrawn -= 1
        return entry

    def answer(self, msg_id: JsonId) -> Entry | None:
        """As close, for an answer from the other side; but a held request stays (the other side
        never received it, so the answer is a guess) and is returned with `held` set."""
        entry = self._entries.get(msg_id)
        if entry is None or entry.held:
            return entry
        del self._entries[msg_id]
        if entry.counted:
            self.active_tool_calls -= 1
        elif entry.cancelled:
            self._withdrawn -= 1
        return entry

    def discard(self, entry: Entry) -> None:
        """Closes exactly this request, if its id has not been taken over since."""
        if self._entries.get(entry.id) is entry:
            self.close(entry.id)

    def get(self, msg_id: JsonId) -> Entry | None:
        return self._entries.get(msg_id)

    def hold(self, entry: Entry) -> None:
        """Marks a request kept back from the other side: it is not running there yet."""
        entry.held = True
        if entry.counted:
            entry.counted = False
            self.active_tool_calls -= 1

    def release(self, entry: Entry) -> None:
        """Marks a held request as about to be judged and sent on."""
        entry.held = False
        if entry.method == "tools/call" and not entry.cancelled and self._entries.get(entry.id) is entry:
            entry.counted = True
            self.active_tool_calls += 1

    def cancel(self, msg_id: JsonId, now: float) -> Entry | None:
        """Marks a request withdrawn by its sender, whose late answer is then dropped."""
        entry = self._entries.get(msg_id)
        if entry is not None and not entry.cancelled and not entry.own:
            entry.cancelled = True
            self._withdrawn += 1
            if entry.counted:
                entry.counted = False
                self.active_tool_calls -= 1
            self._expire(now)
            cancelled = self._cancelled
            cancelled.append((now, entry))
            if len(cancelled) > MAX_CANCELLED:
                self._forget(cancelled.popleft()[1])
        return entry

    def drain(self) -> list[Entry]:
        """Empties the ledger, returning what was still in flight."""
        entries = list(self._entries.values())
        self._entries.clear()
        self._cancelled.clear()
        self._withdrawn = 0
        self.active_tool_calls = 0
        return entries

    def _expire(self, now: float) -> None:
        cancelled = self._cancelled
        cutoff = now - CANCELLED_GRACE_S
        while cancelled and cancelled[0][0] <= cutoff:
            self._forget(cancelled.popleft()[1])

    def _forget(self, entry: Entry) -> None:
        """Drops a cancelled request, if it is still the one holding its id."""
        if self._entries.get(entry.id) is entry:
            del self._entries[entry.id]
            self._withdrawn -= 1
