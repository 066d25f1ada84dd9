"""Host names out of URLs, read the one way every URL parser agrees on, for `hosts` conditions."""

from __future__ import annotations

import ipaddress
import re
from typing import Final
from urllib.parse import urlsplit

#: The URL schemes a host condition understands; others (file, data, ftp, ...) name no web host.
WEB_SCHEMES: Final = frozenset({"http", "https", "ws", "wss"})
#: URL parsers disagree on these: WHATWG drops tabs and newlines and reads `\` as `/`.
_AMBIGUOUS_URL: Final = re.compile(r"[\s\\\x00-\x1f\x7f]")
#: What a host may consist of once IDNA-encoded; anything else is read differently by some parser.
_HOST_CHARS: Final = re.compile(r"[a-z0-9_-]+(\.[a-z0-9_-]+)*")
#: WHATWG reads a host whose last label is a number as IPv4 (`127.1`, `0x7f.1`, `2130706433`).
_NUMERIC_LABEL: Final = re.compile(r"[0-9]+|0x[0-9a-f]*")


def canonical_host(host: str) -> str | None:
    """A host as compared: lower case, no trailing dot, IDNA-encoded, IPv6 compressed; None for
    a host that parsers could read differently."""
    host = host.lower()
    if "%" in host:
        return None
    if ":" in host:
        try:
            return ipaddress.IPv6Address(host).compressed
        except ValueError:
            return None
    host = host.removesuffix(".")
    if not host.isascii():
        try:
            encoded = host.encode("idna")
            # IDNA 2003 maps ß, full-width letters and zero-width characters where WHATWG's
            # UTS 46 keeps or refuses them: only a host that round-trips means one thing.
            if encoded.decode("idna") != host:
                return None
        except UnicodeError:
            return None
        host = encoded.decode("ascii")
    if not _HOST_CHARS.fullmatch(host):
        return None
    if _NUMERIC_LABEL.fullmatch(host.rsplit(".", 1)[-1]):
        return host if is_dotted_quad(host) else None
    return host


def is_dotted_quad(host: str) -> bool:
    try:
        return str(ipaddress.IPv4Address(host)) == host
    except ValueError:
        return False


def url_host(value: object) -> str | None:
    """The canonical host of a plain web URL, or None when the URL is unusable.

    Unusable because URL parsers disagree on them (WHATWG, Python, curl, Node's legacy parser):
    backslashes, whitespace or control characters anywhere, userinfo (`user@host`), a malformed
    port, `%` in the host, a numeric host that is not a canonical dotted quad (`127.1`,
    `0x7f.0.0.1`), and a non-ASCII host that IDNA would map rather than encode (`ß`, full-width
    letters, zero-width characters). Only http, https, ws and wss URLs name a web host.
    """
    if not isinstance(value, str) or _AMBIGUOUS_URL.search(value):
        return None
    try:
        parts = urlsplit(value)
        hostname = parts.hostname
        parts.port  # noqa: B018 -- a malformed port makes the URL unusable
    except ValueError:
        return None
    if parts.scheme not in WEB_SCHEMES or "@" in parts.netloc or not hostname:
        return None
    return canonical_host(hostname)


def host_glob(glob: str) -> tuple[bool, str]:
    """(whether `*.` leads, the canonical host): `*.example.com`, `example.com`, `[::1]` or `::1`."""
    wildcard = glob.startswith("*.")
    body = glob[2:] if wildcard else glob
    if body.startswith("[") and body.endswith("]") and ":" in body:
        body = body[1:-1]
    host = None if "*" in body or (wildcard and ":" in body) else canonical_host(body)
    if host is None:
        raise ValueError(f"{glob!r} is not a host name, `*.` and a host name, `[IPv6]`, or `*`")
    return wildcard, host
