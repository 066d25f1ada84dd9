"""The approver's wire protocol: one JSON object per line over a Unix stream socket, each with a "type".

Wrapper → approver: hello (once, first), request, withdraw, remembered. Approver → wrapper: decision.
Decoding never raises: a line that is not a valid message comes back as `Malformed`.
"""

from __future__ import annotations

import json
import math
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any, Final, Literal, TypeAlias, TypeVar, get_args

import orjson

from mcpshield.jsonrpc import arguments_hash

#: Bound on one line either way: a request carries the call's arguments whole (never cut), and
#: a call too large to show in 1 MiB is too large for a person to read.
MAX_LINE_BYTES: Final = 1024 * 1024
#: Bound on a request id: the wrapper makes 32 hex digits; anything far longer is not ours.
MAX_ID_CHARS: Final = 128

Choice: TypeAlias = Literal["once", "session", "always", "deny"]
WithdrawReason: TypeAlias = Literal["cancelled", "timeout"]
CHOICES: Final[tuple[Choice, ...]] = get_args(Choice)
WITHDRAW_REASONS: Final[tuple[WithdrawReason, ...]] = get_args(WithdrawReason)


@dataclass(frozen=True)
class Hello:
    """Who is asking: sent once, first, on each connection."""

    pid: int
    profile: str | None
    server: str
    """The wrapped server's command line, as one string."""
    client: str | None
    """The MCP client's name from initialize, if it gave one."""


@dataclass(frozen=True)
class Request:
    """One call waiting for a person."""

    tool: str
    arguments: dict[str, Any]
    rule: str | None
    """Which rule of the profile asked."""
    prompt: str | None
    """The rule's own words for the person, if it has some."""
    timeout_s: float
    """How long the wrapper waits; the approver is told, the wrapper enforces it."""
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    args_sha256: str = ""
    """SHA-256 of the canonical arguments (filled in from `arguments` when left empty)."""
    late_s: float = 0.0
    """After its timeout, how long a late decision is still taken (it then pre-authorises an
    identical retry); 0: never."""
    always_file: str | None = None
    """The profile file "always" would write its rule into; None: "always" approves for the
    session only (no profile file can take the rule)."""

    def __post_init__(self) -> None:
        if not self.args_sha256:
            object.__setattr__(self, "args_sha256", arguments_hash(self.arguments))


@dataclass(frozen=True)
class Withdraw:
    """The wrapper no longer waits for this request."""

    id: str
    why: WithdrawReason


@dataclass(frozen=True)
class Remembered:
    """What became of an "always": the rule written into `file`, or `error` saying why not."""

    id: str
    file: str | None
    error: str | None


@dataclass(frozen=True)
class Decision:
    """A person's answer to a request."""

    id: str
    decision: Choice
    reason: str | None
    approver_uid: int


@dataclass(frozen=True)
class Malformed:
    """A line that is not a valid message; `why` is written for a report."""

    why: str


ToApprover: TypeAlias = Hello | Request | Withdraw | Remembered
_TYPES: Final[dict[type, str]] = {
    Hello: "hello",
    Request: "request",
    Withdraw: "withdraw",
    Remembered: "remembered",
    Decision: "decision",
}
#: Request fields an older wrapper leaves out, and what they then mean.
_REQUEST_DEFAULTS: Final = {"late_s": 0.0, "always_file": None}


def encode(message: Hello | Request | Withdraw | Remembered | Decision) -> bytes:
    """The message as one line, newline included."""
    body = {"type": _TYPES[type(message)], **asdict(message)}
    try:
        return orjson.dumps(body) + b"\n"
    except TypeError:  # integers beyond 64 bits in the arguments: the stdlib writes them
        return json.dumps(body, separators=(",", ":")).encode() + b"\n"


def decode_to_approver(line: bytes) -> ToApprover | Malformed:
    """A line a wrapper sent."""
    body = _object(line)
    if isinstance(body, Malformed):
        return body
    kind = body.get("type")
    if kind == "hello":
        return _build(Hello, body, pid=(int,), profile=(str, None), server=(str,), client=(str, None))
    if kind == "request":
        req: Request | Malformed = _build(
            Request,
            {**_REQUEST_DEFAULTS, **body},
            id=(str,),
            tool=(str,),
            arguments=(dict,),
            args_sha256=(str,),
            rule=(str, None),
            prompt=(str, None),
            timeout_s=(int, float),
            late_s=(int, float),
            always_file=(str, None),
        )
        if isinstance(req, Request) and not (math.isfinite(req.timeout_s) and req.timeout_s > 0):
            return Malformed("a request's timeout_s must be a positive number of seconds")
        if isinstance(req, Request) and not (math.isfinite(req.late_s) and req.late_s >= 0):
            return Malformed("a request's late_s must be 0 or a positive number of seconds")
        return req
    if kind == "withdraw":
        withdraw = _build(Withdraw, body, id=(str,), why=(str,))
        if isinstance(withdraw, Withdraw) and withdraw.why not in WITHDRAW_REASONS:
            return Malformed(f"a withdraw's why must be one of {', '.join(WITHDRAW_REASONS)}")
        return withdraw
    if kind == "remembered":
        return _build(Remembered, body, id=(str,), file=(str, None), error=(str, None))
    return Malformed(f"unknown message type {kind!r} (expected hello, request, withdraw or remembered)")


def decode_to_wrapper(line: bytes) -> Decision | Malformed:
    """A line the approver sent."""
    body = _object(line)
    if isinstance(body, Malformed):
        return body
    if body.get("type") != "decision":
        return Malformed(f"unknown message type {body.get('type')!r} (expected decision)")
    decision = _build(Decision, body, id=(str,), decision=(str,), reason=(str, None), approver_uid=(int,))
    if isinstance(decision, Decision) and decision.decision not in CHOICES:
        return Malformed(f"a decision must be one of {', '.join(CHOICES)}")
    return decision


def _object(line: bytes) -> dict[str, Any] | Malformed:
    try:
        body = orjson.loads(line)
    except orjson.JSONDecodeError:
        try:  # integers beyond 64 bits: orjson refuses them; lone surrogates stay refused
            body = json.loads(line, parse_constant=_no_constant)
        except (ValueError, RecursionError):
            return Malformed("not a JSON line")
    if not isinstance(body, dict):
        return Malformed("not a JSON object")
    return body


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


_Kinds: TypeAlias = tuple[type | None, ...]
_M = TypeVar("_M", Hello, Request, Withdraw, Remembered, Decision)


def _build(cls: type[_M], body: dict[str, Any], **spec: _Kinds) -> _M | Malformed:
    """`cls(**fields)` when `body` has exactly the fields `spec` names (plus "type") of the kinds
    it names (None: JSON null); else Malformed."""
    extra = set(body) - set(spec) - {"type"}
    if extra:
        return Malformed(f"unexpected field {sorted(extra)[0]!r} in a {body['type']} message")
    values: dict[str, Any] = {}
    for name, kinds in spec.items():
        if name not in body:
            return Malformed(f"a {body['type']} message needs {name!r}")
        value = body[name]
        if not any(_is(value, kind) for kind in kinds):
            return Malformed(f"{name!r} of a {body['type']} message has the wrong type")
        if name == "id" and not 0 < len(value) <= MAX_ID_CHARS:
            return Malformed(f"an id must be 1 to {MAX_ID_CHARS} characters")
        values[name] = value
    return cls(**values)


def _is(value: object, kind: type | None) -> bool:
    if kind is None:
        return value is None
    if isinstance(value, bool):  # JSON true is no number
        return False
    return isinstance(value, kind)
