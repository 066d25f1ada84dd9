"""The values a check returns, the context it is given, and the policy interface.

The relay asks a Policy about every well-formed message and applies the Decision in one
place; a check never writes, waits or reads the clock itself.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, Protocol

from mcpshield.jsonrpc import Message
from mcpshield.ledger import Entry


class Direction(enum.Enum):
    """Which way a message travels."""

    TO_SERVER = "to_server"
    TO_CLIENT = "to_client"


@dataclass(frozen=True, slots=True)
class Allow:
    """Forward the message as it arrived, byte for byte."""

    rule: str | None = None


@dataclass(frozen=True, slots=True)
class Deny:
    """Refuse the message. A refused request is answered so that its sender never hangs:
    `code` None means a tool-level refusal (a `tools/call` result with isError) where the
    request is a tool call, and a JSON-RPC error otherwise."""

    reason: str
    code: int | None = None
    rule: str | None = None


@dataclass(frozen=True, slots=True)
class Rewrite:
    """Forward `body` instead of the original message (re-encoded: the only time bytes change)."""

    body: dict[str, Any]
    rule: str | None = None


@dataclass(frozen=True, slots=True)
class Ask:
    """A human must decide before the message goes on."""

    prompt: str
    rule: str | None = None


Decision = Allow | Deny | Rewrite | Ask

#: The decision of every check that has nothing to object to.
ALLOW = Allow()


class Context:
    """What a check may know besides the message: the time, the way, the request a response
    answers (for a request: its own ledger entry; None for notifications), and how many of the
    client's tool calls are in flight, this one included. Built once per message, so a plain
    slotted class; treat it as immutable."""

    __slots__ = ("active_calls", "direction", "now", "request")

    def __init__(self, now: float, direction: Direction, request: Entry | None = None, active_calls: int = 0) -> None:
        self.now = now
        self.direction = direction
        self.request = request
        self.active_calls = active_calls


class Policy(Protocol):
    """Judges every well-formed message in both directions."""

    def check(self, msg: Message, ctx: Context) -> Decision: ...

    def catalog_needed(self, msg: Message) -> bool:
        """Whether judging this tools/call needs the server's tool list, not yet seen: the relay
        then holds the call, fetches the list itself, and asks again."""
        ...

    def approved(self, msg: Message, ctx: Context) -> Decision:
        """What a call a person approved (after `check` said Ask) must still pass before it is
        sent: Allow, a Rewrite of it, or a Deny (a rate limit, say)."""
        ...


class PassThrough:
    """The explicit no-profile policy: every well-formed message passes unchanged."""

    def check(self, msg: Message, ctx: Context) -> Decision:
        return ALLOW

    def catalog_needed(self, msg: Message) -> bool:
        return False

    def approved(self, msg: Message, ctx: Context) -> Decision:
        return ALLOW
