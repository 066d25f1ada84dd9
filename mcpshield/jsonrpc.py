"""JSON-RPC over stdio, pure: split bytes into lines, decode a line into a Message or a
DecodeFailure, and build the error answers mcpshield sends itself.

Nothing here does I/O. Decoding is strict where a lenient parser would let a message
mean one thing to mcpshield and another to the server: batches, duplicate keys, invalid
UTF-8, NaN and malformed ids are all refused.
"""

from __future__ import annotations

import enum
import hashlib
import json
import math
import re
from dataclasses import dataclass
from typing import Any, Final

import orjson

#: Largest line accepted; beyond it the line is skipped without being buffered whole.
#: Far above real payloads (the TypeScript SDK drops messages over 10 MiB) yet bounds memory.
MAX_MESSAGE_BYTES: Final = 64 * 1024 * 1024
#: Bytes kept from each end of an oversized line, enough to find its top-level id.
OVERSIZE_KEEP_BYTES: Final = 4096
#: Lines up to this size are first checked for repeated keys by re-encoding them (compact
#: senders match byte for byte, which proves no key repeats); larger ones skip that copy.
REENCODE_CHECK_BYTES: Final = 64 * 1024
#: How much of an offending line a report quotes; more floods the client's log.
REPORT_EXCERPT_BYTES: Final = 160

PARSE_ERROR: Final = -32700
INVALID_REQUEST: Final = -32600
METHOD_NOT_FOUND: Final = -32601
INVALID_PARAMS: Final = -32602
INTERNAL_ERROR: Final = -32603
#: Implementation-defined server error, outside the range 2026-07-28 reserves (-32020..-32099).
SERVER_ERROR: Final = -32000

JsonId = str | int


class Kind(enum.Enum):
    """What a well-formed JSON-RPC message is."""

    REQUEST = "request"
    NOTIFICATION = "notification"
    RESPONSE = "response"


# Module-level aliases: reading an enum member off its class costs ~70 ns, ten times a global.
REQUEST: Final = Kind.REQUEST
NOTIFICATION: Final = Kind.NOTIFICATION
RESPONSE: Final = Kind.RESPONSE


class Message:
    """A decoded, well-formed JSON-RPC message and the exact bytes it arrived as.

    A plain slotted class, not a frozen dataclass: one is built per message on the hot path,
    and a frozen dataclass's __init__ costs several times more. Treat it as immutable.
    """

    __slots__ = ("body", "id", "kind", "method", "raw")

    def __init__(self, kind: Kind, raw: bytes, body: dict[str, Any], msg_id: JsonId | None, method: str | None) -> None:
        self.kind = kind
        self.raw = raw
        self.body = body
        self.id = msg_id
        self.method = method

    @property
    def params(self) -> dict[str, Any]:
        params = self.body.get("params")
        return params if type(params) is dict else {}

    def __repr__(self) -> str:
        return f"Message({self.kind.value}, id={self.id!r}, method={self.method!r})"


@dataclass(frozen=True, slots=True)
class DecodeFailure:
    """A line that is not an acceptable message: why, and what is known of it."""

    code: int
    reason: str
    excerpt: bytes
    id: JsonId | None = None
    kind: Kind | None = None


@dataclass(frozen=True, slots=True)
class Oversized:
    """A line longer than the bound: only its ends were kept, to salvage its id."""

    size: int
    head: bytes
    tail: bytes


class LineFramer:
    """Splits a byte stream on b"\\n" only; U+2028 and U+0085 are bytes of a string."""

    __slots__ = ("_head", "_max", "_parts", "_size", "_skipping", "_tail")

    def __init__(self, max_bytes: int = MAX_MESSAGE_BYTES) -> None:
        self._max = max_bytes
        self._parts: list[bytes] = []
        self._size = 0
        self._skipping = False
        self._head = b""
        self._tail = b""

    @property
    def pending(self) -> int:
        """Bytes of an unfinished line held (or skipped) so far."""
        return self._size

    def feed(self, chunk: bytes) -> list[bytes | Oversized]:
        """Returns the lines `chunk` completes, without their newline, in order."""
        pieces = chunk.split(b"\n")
        rest = pieces.pop()
        out: list[bytes | Oversized] = []
        if pieces:
            out.append(self._finish(pieces[0]))
            limit = self._max
            for line in pieces[1:]:
                out.append(line if len(line) <= limit else _oversized(line))
        if rest:
            self._hold(rest)
        return out

    def _finish(self, first: bytes) -> bytes | Oversized:
        if self._skipping:
            self._keep_tail(first)
            done: bytes | Oversized = Oversized(self._size + len(first), self._head, self._tail)
        elif self._parts:
            self._parts.append(first)
            line = b"".join(self._parts)
            done = line if len(line) <= self._max else _oversized(line)
        else:
            done = first if len(first) <= self._max else _oversized(first)
        self._parts = []
        self._size = 0
        self._skipping = False
        self._head = self._tail = b""
        return done

    def _hold(self, rest: bytes) -> None:
        self._size += len(rest)
        if self._skipping:
            self._keep_tail(rest)
            return
        self._parts.append(rest)
        if self._size > self._max:
            # Stop buffering: keep the ends only, and drop the middle as it streams past.
            joined = b"".join(self._parts)
            self._head = joined[:OVERSIZE_KEEP_BYTES]
            self._tail = joined[-OVERSIZE_KEEP_BYTES:]
            self._parts = []
            self._skipping = True

    def _keep_tail(self, data: bytes) -> None:
        self._tail = (self._tail + data[-OVERSIZE_KEEP_BYTES:])[-OVERSIZE_KEEP_BYTES:]


def _oversized(line: bytes) -> Oversized:
    return Oversized(len(line), line[:OVERSIZE_KEEP_BYTES], line[-OVERSIZE_KEEP_BYTES:])


# A JSON string, unrolled so that long runs of plain characters stay in one fast loop.
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
# The id as the first member after "jsonrpc", or as the very first or very last member.
_ID_VALUE = rb'(-?\d{1,16}|"[^"\\]{0,256}")'
_HEAD_ID = re.compile(rb'\A\s*\{\s*(?:"jsonrpc"\s*:\s*"2\.0"\s*,\s*)?"id"\s*:\s*' + _ID_VALUE)
_TAIL_ID = re.compile(rb',\s*"id"\s*:\s*' + _ID_VALUE + rb"\s*\}\s*\Z")


def salvage_id(oversized: Oversized) -> JsonId | None:
    """The top-level id of an oversized line, when it sits where serializers put it."""
    found = _HEAD_ID.match(oversized.head) or _TAIL_ID.search(oversized.tail)
    if found is None:
        return None
    token = found.group(1)
    return token[1:-1].decode("utf-8", "replace") if token.startswith(b'"') else int(token)


def decode(line: bytes) -> Message | DecodeFailure:
    """Decodes one line into a well-formed message, or says why it is refused."""
    try:
        body = orjson.loads(line)
    except orjson.JSONDecodeError:
        parsed = _decode_fallback(line)
        if isinstance(parsed, DecodeFailure):
            return parsed
        body = parsed
    if type(body) is not dict:
        if isinstance(body, list):
            return DecodeFailure(
                INVALID_REQUEST, "JSON-RPC batches are not accepted; send one message per line", _excerpt(line)
            )
        return DecodeFailure(INVALID_REQUEST, "a message must be a JSON object", _excerpt(line))
    try:
        repeated = _has_duplicate_keys(line, body)
    except RecursionError:
        return _refused(line, body, "a message must not nest deeper than mcpshield checks")
    if repeated:
        return _refused(line, body, "a message must not repeat an object key")
    return _classify(line, body)


def _decode_fallback(line: bytes) -> Any:
    """Second opinion for what orjson cannot hold (integers beyond 64 bits); strict otherwise.

    orjson also refuses a lone UTF-16 surrogate escape ("\\ud800" without its pair), which the
    stdlib parser accepts; such a string is no Unicode text, and peers would each make something
    else of it (or fail re-encoding it), so it is refused here too."""
    try:
        text = line.decode("utf-8")
        body = json.loads(text, parse_constant=_refuse_constant, parse_float=_finite_float)
        if "\\u" in text:  # only an escape can make a lone surrogate out of valid UTF-8
            json.dumps(body, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return _lone_surrogate(line, body)
    except _InfiniteNumber:
        # Read once more with every number harmless, to learn whom to answer.
        shape = json.loads(text, parse_float=lambda _: 0.0)
        reason = "a message must not hold a number too large for a double (it would read as infinity)"
        return _refused(line, shape if type(shape) is dict else {}, reason)
    except (UnicodeDecodeError, ValueError, RecursionError):
        return DecodeFailure(PARSE_ERROR, "the line is not valid UTF-8 JSON", _excerpt(line))
    return body


def _lone_surrogate(line: bytes, body: Any) -> DecodeFailure:
    reason = "a message must not contain a lone UTF-16 surrogate (a \\ud800-\\udfff escape without its pair)"
    failure = _refused(line, body if type(body) is dict else {}, reason)
    if type(failure.id) is str and not failure.id.isascii():
        try:
            failure.id.encode("utf-8")
        except UnicodeEncodeError:  # the id itself: it cannot be sent back, so the answer gets null
            return DecodeFailure(failure.code, reason, failure.excerpt, None, failure.kind)
    return failure


class _InfiniteNumber(ValueError):
    """A number such as 1e400: JSON has no infinity, and peers would read it differently."""


def _finite_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise _InfiniteNumber(text)
    return value


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _has_duplicate_keys(line: bytes, body: dict[str, Any]) -> bool:
    """True if the text names more keys than the parsed value holds (parsers keep the last)."""
    if len(line) <= REENCODE_CHECK_BYTES:
        try:
            if orjson.dumps(body) == line:
                # The parsed value writes back to the very same bytes: nothing was dropped.
                return False
        except TypeError:  # integers beyond 64 bits, from the fallback parser
            pass
    keys = _count_keys(body)
    if line.count(b":") == keys:
        # Every colon is a key separator at most; as many as parsed keys proves none repeats.
        return False
    return _STRING.sub(b"", line).count(b":") != keys


def _count_keys(value: dict[str, Any] | list[Any]) -> int:
    """Object keys in a parsed value, nested ones included (depth bounded by the parser)."""
    if type(value) is dict:
        count = len(value)
        items: Any = value.values()
    else:
        count = 0
        items = value
    for item in items:
        kind = type(item)
        if kind is dict or kind is list:
            count += _count_keys(item)
    return count


def _classify(line: bytes, body: dict[str, Any]) -> Message | DecodeFailure:
    get = body.get
    if get("jsonrpc") != "2.0":
        return _refused(line, body, 'a message must carry "jsonrpc": "2.0"')
    params = get("params")
    if params is not None and type(params) is not dict:
        return _refused(line, body, "params must be an object")
    method = get("method")
    msg_id = get("id", _ABSENT)
    id_type = type(msg_id)
    if method is not None:
        if type(method) is not str:
            return _refused(line, body, "method must be a string")
        if "result" in body or "error" in body:
            # Peers could disagree on whether this is a request or an answer.
            return _refused(line, body, "a message is a request or a response, not both")
        if msg_id is _ABSENT:
            return Message(NOTIFICATION, line, body, None, method)
        if id_type is not str and id_type is not int:
            return _refused(line, body, "a request id must be a string or an integer")
        return Message(REQUEST, line, body, msg_id, method)
    if msg_id is _ABSENT or ("result" in body) == ("error" in body):
        return _refused(line, body, "a response needs an id and exactly one of result or error")
    if msg_id is not None and id_type is not str and id_type is not int:
        return _refused(line, body, "a response id must be a string or an integer")
    return Message(RESPONSE, line, body, msg_id, None)


_ABSENT: Final = object()


def _valid_id(value: Any) -> bool:
    return type(value) is str or type(value) is int


def _refused(line: bytes, body: dict[str, Any], reason: str) -> DecodeFailure:
    msg_id = body.get("id")
    kind = None
    if "method" in body:
        kind = Kind.REQUEST if "id" in body else Kind.NOTIFICATION
    elif "result" in body or "error" in body:
        kind = Kind.RESPONSE
    return DecodeFailure(INVALID_REQUEST, reason, _excerpt(line), msg_id if _valid_id(msg_id) else None, kind)


def _excerpt(line: bytes) -> bytes:
    return line[:REPORT_EXCERPT_BYTES]


def error_response(msg_id: JsonId | None, code: int, message: str, data: Any = None) -> bytes:
    """A JSON-RPC error answer, newline included, ready to write."""
    error: dict[str, Any] = {"code": code, "message": message}
    if data is not None:
        error["data"] = data
    return orjson.dumps({"jsonrpc": "2.0", "id": msg_id, "error": error}) + b"\n"


def arguments_hash(arguments: Any) -> str:
    """SHA-256 of the canonical form of a call's arguments (sorted keys, no spaces)."""
    try:
        canonical = orjson.dumps(arguments, option=orjson.OPT_SORT_KEYS)
    except TypeError:
        # Integers beyond 64 bits come from the fallback parser; the stdlib can write them.
        canonical = json.dumps(arguments, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(canonical).hexdigest()
