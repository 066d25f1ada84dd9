"""Tool calls held until mcpshield has seen the server's tool list, and the requests that fetch it.

A client may call a tool before it listed the tools (or after the server said the list changed);
the input schema to check the arguments against comes only from the server's tools/list. So the
relay holds such a call, asks the server for its tool list itself (every page), and judges the
call once the answers are in. Only tools/call waits; every other message keeps flowing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

import orjson

from mcpshield import jsonrpc
from mcpshield.jsonrpc import JsonId, Message
from mcpshield.ledger import Entry, Ledger

#: Pages of tools/list fetched at most; a server paging forever is not waited for.
MAX_PAGES: Final = 100
#: How long held calls wait for the server's whole tool list (every page) before they are judged
#: without it; well inside the ~60 s a client gives a call.
FETCH_TIMEOUT_S: Final = 10.0
#: Held calls at most; past it further calls are refused until the list is in.
MAX_HELD: Final = 1000
#: Bytes of held calls at most (a call may be up to 64 MiB): what a client can make mcpshield
#: keep in memory while the server is slow to list its tools.
MAX_HELD_BYTES: Final = 16 * 1024 * 1024
#: `_meta` keys a stateless-era (2026-07-28) server needs on every request; copied from the call.
_ERA_META: Final = ("io.modelcontextprotocol/protocolVersion", "io.modelcontextprotocol/clientCapabilities")


class CatalogFetch:
    """The calls held for the tool list, and mcpshield's own tools/list request in flight.

    Held calls are marked in the ledger (`Entry.held`): the server never received them, so an
    answer to one of their ids is a guess, and they are no tool calls running there yet."""

    def __init__(self, ledger: Ledger, send: Callable[[bytes], None]) -> None:
        self._ledger = ledger  # the client's: our ids live there, so a client cannot reuse them
        self._send = send
        self._held: list[tuple[Message, Entry]] = []
        self._held_bytes = 0
        self._pending: JsonId | None = None
        self._seq = 0
        self._pages = 0
        self._meta: dict[str, Any] = {}
        #: Counts fetches (not pages): a timeout set for one fetch ends that fetch only.
        self.generation = 0

    @property
    def pending(self) -> JsonId | None:
        """The id of mcpshield's own tools/list request in flight, if any."""
        return self._pending

    def fetching(self, generation: int) -> bool:
        """True while fetch number `generation` is still waiting for a page."""
        return self._pending is not None and generation == self.generation

    def no_room(self, msg: Message) -> str | None:
        """Why one more call cannot be held, or None if it can."""
        if len(self._held) >= MAX_HELD:
            return f"{MAX_HELD} tool calls are already waiting"
        if self._held_bytes + len(msg.raw) > MAX_HELD_BYTES:
            return f"the tool calls waiting already take {self._held_bytes} of {MAX_HELD_BYTES} bytes"
        return None

    def hold(self, msg: Message, entry: Entry, now: float) -> bool:
        """Keeps the call until the list is in, starting to fetch it unless that is under way
        (a new fetch increments `generation`); False (nothing held) if no request can be sent."""
        if self._pending is None:
            meta = msg.params.get("_meta")
            self._meta = {k: meta[k] for k in _ERA_META if k in meta} if type(meta) is dict else {}
            self._pages = 0
            if not self._request(None, now):
                return False
            self.generation += 1
        self._ledger.hold(entry)
        self._held.append((msg, entry))
        self._held_bytes += len(msg.raw)
        return True

    def owns(self, msg_id: JsonId | None) -> bool:
        pending = self._pending
        return pending is not None and msg_id == pending and type(msg_id) is type(pending)

    def answered(self, msg: Message, now: float) -> list[tuple[Message, Entry]]:
        """Takes the answer to our request: asks for the next page, or releases the held calls."""
        self._pending = None
        result = msg.body.get("result")
        cursor = result.get("nextCursor") if type(result) is dict else None
        if type(cursor) is str and self._pages < MAX_PAGES and self._request(cursor, now):
            return []
        return self.release()

    def release(self) -> list[tuple[Message, Entry]]:
        """Gives up waiting: every held call, for judging now (each still marked held in the
        ledger until the caller releases it there)."""
        self._pending = None
        held, self._held = self._held, []
        self._held_bytes = 0
        return held

    def _request(self, cursor: str | None, now: float) -> bool:
        self._pages += 1
        while True:
            self._seq += 1
            own_id = f"mcpshield-tools-list-{self._seq}"
            if own_id not in self._ledger:
                break
        params: dict[str, Any] = {} if cursor is None else {"cursor": cursor}
        if self._meta:
            params["_meta"] = self._meta
        raw = orjson.dumps({"jsonrpc": "2.0", "id": own_id, "method": "tools/list", "params": params})
        msg = jsonrpc.decode(raw)
        assert isinstance(msg, Message)
        entry = self._ledger.open(msg, now)
        if entry is None:  # the ledger is full: judge the held calls without the list
            return False
        entry.own = True
        self._pending = own_id
        self._send(raw + b"\n")
        return True
