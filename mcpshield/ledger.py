"""The ledger: requests in flight in one direction, so each answer is judged by its request."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

from mcpshield.jsonrpc import JsonId, Message, arguments_hash

#: Requests one peer may keep in flight; past it a peer is flooding, not working.
MAX_IN_FLIGHT: Final = 10_000


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

    @property
    def args_hash(self) -> str | None:
        """SHA-256 of the canonical arguments of a tool call; computed when asked for, since
        most entries are closed without anyone asking."""
        return None if self.tool is None else arguments_hash(self.arguments)


class Ledger:
    """Requests sent by one peer and not yet answered, keyed by id.

    Ids are only ever strings or integers (the decoder refuses booleans and fractions), and a
    string never equals an integer, so the id itself is the key: "1" and 1 stay apart."""

    __slots__ = ("_entries", "active_tool_calls")

    def __init__(self) -> None:
        self._entries: dict[JsonId, Entry] = {}
        #: Tool calls in flight that their sender has not withdrawn (for concurrency limits).
        self.active_tool_calls = 0

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, msg_id: JsonId) -> bool:
        return msg_id in self._entries

    def open(self, msg: Message, now: float) -> Entry | None:
        """Records a request; None if its id is already in flight or the ledger is full."""
        assert msg.id is not None and msg.method is not None
        key = msg.id
        if key in self._entries or len(self._entries) >= MAX_IN_FLIGHT:
            return None
        tool = None
        arguments = None
        if msg.method == "tools/call":
            params = msg.params
            name = params.get("name")
            tool = name if type(name) is str else None
            arguments = params.get("arguments", {})
            self.active_tool_calls += 1
        entry = Entry(msg.id, msg.method, tool, arguments, now)
        self._entries[key] = entry
        return entry

    def close(self, msg_id: JsonId) -> Entry | None:
        """Removes and returns the request an answer belongs to; None if nobody sent it."""
        entry = self._entries.pop(msg_id, None)
        if entry is not None and entry.method == "tools/call" and not entry.cancelled:
            self.active_tool_calls -= 1
        return entry

    def get(self, msg_id: JsonId) -> Entry | None:
        return self._entries.get(msg_id)

    def cancel(self, msg_id: JsonId) -> Entry | None:
        """Marks a request withdrawn by its sender, whose late answer is then dropped."""
        entry = self._entries.get(msg_id)
        if entry is not None and not entry.cancelled and not entry.own:
            entry.cancelled = True
            if entry.method == "tools/call":
                self.active_tool_calls -= 1
        return entry

    def drain(self) -> list[Entry]:
        """Empties the ledger, returning what was still in flight."""
        entries = list(self._entries.values())
        self._entries.clear()
        self.active_tool_calls = 0
        return entries
