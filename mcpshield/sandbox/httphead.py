"""HTTP/1.x heads as the egress proxy reads and writes them: strict parsing (what every parser
reads alike, or a refusal), hop-by-hop fields dropped, the proxy's own short answers. Pure."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

#: A host or reason as shown in a decision or an answer.
MAX_SHOWN_CHARS: Final = 200

_TCHAR: Final = rb"[!#$%&'*+.^_`|~0-9A-Za-z-]"
#: One space between the parts, a target of visible ASCII, HTTP/1.0 or 1.1.
_REQUEST_LINE: Final = re.compile(rb"(%s+) ([\x21-\x7e]+) HTTP/(1\.[01])" % _TCHAR)
_STATUS_LINE: Final = re.compile(rb"HTTP/1\.[01] ([1-9][0-9]{2})(?: [\t\x20-\x7e\x80-\xff]*)?")
#: No space before the colon, no control characters, no obs-fold (RFC 9112 §5): what parsers
#: read alike. A lone CR or LF inside a line fails here too.
_FIELD_LINE: Final = re.compile(rb"(%s+):([\t\x20-\x7e\x80-\xff]*)" % _TCHAR)
#: Fields about one connection, never passed on (RFC 9110 §7.6.1), besides those `Connection` lists.
_HOP_BY_HOP: Final = frozenset(
    {"connection", "proxy-connection", "keep-alive", "proxy-authorization", "proxy-authenticate", "te", "upgrade"}
)
#: Kept even when `Connection` lists them: bodies are relayed as they were framed.
_FRAMING: Final = frozenset({"content-length", "transfer-encoding"})
_REASONS: Final = {
    400: "Bad Request",
    403: "Forbidden",
    405: "Method Not Allowed",
    408: "Request Timeout",
    431: "Request Header Fields Too Large",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}
#: What a refused request's answer tells the one who reads it (a model, a person).
TIP_403: Final = "To allow a host, add it to `[sandbox] network` in the profile (and keep it out of `network_deny`)."

#: (lower-case name, value without surrounding whitespace, the line as received)
Field = tuple[str, bytes, bytes]


class HeadError(ValueError):
    """A head the proxy will not read; the message says why (the proxy answers 400)."""


@dataclass(frozen=True, slots=True)
class Request:
    method: str
    target: str
    version: str
    fields: list[Field]


def parse_request(head: bytes) -> Request:
    """The head (without its blank line) read strictly; raises HeadError."""
    line, *lines = head.split(b"\r\n")
    match = _REQUEST_LINE.fullmatch(line)
    fields = _fields(lines)
    if match is None or fields is None:
        raise HeadError("the request head is malformed")
    names = [name for name, _, _ in fields]
    if (
        names.count("host") > 1
        or names.count("content-length") > 1
        or ("content-length" in names and "transfer-encoding" in names)
    ):
        raise HeadError(
            "the request has two Host or Content-Length fields, or both Content-Length and Transfer-Encoding"
        )
    method, target, version = (part.decode("ascii") for part in match.groups())
    return Request(method, target, version, fields)


def connect_authority(target: str) -> tuple[str, int]:
    """The host (as written) and port of a CONNECT target, `host:port` or `[IPv6]:port`; raises
    HeadError."""
    if target.startswith("["):
        host, sep, port = target[1:].partition("]:")
        host_ok = ":" in host  # brackets hold an IPv6 address and nothing else
    else:
        host, sep, port = target.rpartition(":")
        host_ok = ":" not in host
    if not (sep and host and host_ok and port.isdigit() and len(port) <= 5 and 0 < int(port) < 65536):
        raise HeadError("CONNECT needs host:port (an IPv6 address in brackets)")
    return host, int(port)


def upstream_head(request: Request, authority: str, path: str) -> bytes:
    """The request in origin form for the host: `Host` from the URL's authority, hop-by-hop
    fields dropped, `Connection: close` (one request per connection)."""
    dropped = _dropped(request.fields) | {"host"}
    lines = [f"{request.method} {path} HTTP/{request.version}".encode("ascii"), b"Host: " + authority.encode("ascii")]
    lines += [line for name, _, line in request.fields if name not in dropped]
    lines.append(b"Connection: close")
    return b"\r\n".join(lines) + b"\r\n\r\n"


def response_head(head: bytes) -> tuple[int, bytes] | None:
    """(status, the head to relay: hop-by-hop fields dropped, `Connection: close` on a final
    one); None for a head that is not HTTP/1.x."""
    line, *lines = head.split(b"\r\n")
    match = _STATUS_LINE.fullmatch(line)
    fields = _fields(lines)
    if match is None or fields is None:
        return None
    status = int(match[1])
    dropped = _dropped(fields)
    out = [line, *(kept for name, _, kept in fields if name not in dropped)]
    if is_final(status):
        out.append(b"Connection: close")
    return status, b"\r\n".join(out) + b"\r\n\r\n"


def is_final(status: int) -> bool:
    """Whether a response with `status` ends the heads (1xx ones are interim, but 101 switches)."""
    return status >= 200 or status == 101


def answer(status: int, reason: str) -> bytes:
    """One of the proxy's own answers: a short text naming mcpshield and why."""
    tip = f"\n{TIP_403}" if status == 403 else ""
    body = f"mcpshield's egress proxy refused this request: {shown(reason)}.{tip}\n".encode()
    head = (
        f"HTTP/1.1 {status} {_REASONS[status]}\r\nContent-Type: text/plain; charset=utf-8\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode("ascii") + body


def shown(text: str) -> str:
    """`text` escaped where it is not printable, cut to MAX_SHOWN_CHARS."""
    if not text.isprintable():
        text = text.encode("unicode_escape").decode("ascii")
    return text if len(text) <= MAX_SHOWN_CHARS else text[: MAX_SHOWN_CHARS - 1] + "…"


def _fields(lines: list[bytes]) -> list[Field] | None:
    out = []
    for line in lines:
        match = _FIELD_LINE.fullmatch(line)
        if match is None:
            return None
        out.append((match[1].decode("ascii").lower(), match[2].strip(b" \t"), line))
    return out


def _dropped(fields: list[Field]) -> frozenset[str]:
    listed = {
        token.strip().lower()
        for name, value, _ in fields
        if name in ("connection", "proxy-connection")
        for token in value.decode("latin-1").split(",")
    }
    return (_HOP_BY_HOP | listed) - _FRAMING
