"""Host names out of URLs, read the one way every URL parser agrees on, for `hosts` conditions;
the entries of a `hosts` list (host names, `*.` globs, CIDR ranges, `*`) and `HostSet`, which
matches hosts against them (for rules and for the sandbox's egress proxy)."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
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
#: A CIDR entry: an address, `/` and a prefix length; no netmask form, no IPv6 zone.
_CIDR: Final = re.compile(r"[0-9a-fA-F:.]+/[0-9]{1,3}")
#: IPv6 addresses that carry an IPv4 one in their last 32 bits and reach it: IPv4-translated
#: (::ffff:0:0:0/96, RFC 2765) and NAT64's well-known prefix (64:ff9b::/96, RFC 6052). IPv4-mapped
#: (::ffff:0:0/96) and IPv4-compatible (::/96) are recognised separately below.
_EMBEDDING_PREFIXES: Final = frozenset(
    {int(ipaddress.IPv6Address("::ffff:0:0:0")) >> 32, int(ipaddress.IPv6Address("64:ff9b::")) >> 32}
)
_IPV4_MAPPED_PREFIX: Final = 0xFFFF

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


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


def embedded_ipv4(host: str) -> str | None:
    """The IPv4 address a canonical IPv6 host carries and reaches (IPv4-mapped `::ffff:a.b.c.d`,
    IPv4-compatible `::a.b.c.d`, IPv4-translated, NAT64 `64:ff9b::a.b.c.d`), else None.

    `::` and `::1` are IPv6's own unspecified and loopback addresses, not IPv4 ones."""
    try:
        number = int(ipaddress.IPv6Address(host))
    except ValueError:
        return None
    prefix = number >> 32
    if prefix == _IPV4_MAPPED_PREFIX or prefix in _EMBEDDING_PREFIXES or (prefix == 0 and number > 1):
        return str(ipaddress.IPv4Address(number & 0xFFFFFFFF))
    return None


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


def cidr(entry: str) -> Network | None:
    """The range a `hosts` entry such as `10.0.0.0/8` or `fd00::/8` names; None for an entry
    without `/`. Raises ValueError for a malformed range or one with host bits set (`10.0.0.1/8`
    is more likely a typo than a range)."""
    if "/" not in entry:
        return None
    try:
        if not _CIDR.fullmatch(entry):
            raise ValueError("not ADDRESS/PREFIX")
        return ipaddress.ip_network(entry, strict=True)
    except ValueError as exc:
        raise ValueError(f"{entry!r} is not a CIDR range such as 10.0.0.0/8 or fd00::/8 ({exc})") from None


def check_host_entry(entry: str) -> None:
    """Raises ValueError for a `hosts` entry that is none of `*`, a host, `*.` and a host, or a CIDR
    range; called when a profile loads, so the mistake is reported with its line."""
    if entry != "*" and cidr(entry) is None:
        host_glob(entry)


def host_glob(glob: str) -> tuple[bool, str]:
    """(whether `*.` leads, the canonical host): `*.example.com`, `example.com`, `[::1]` or `::1`."""
    wildcard = glob.startswith("*.")
    body = glob[2:] if wildcard else glob
    if body.startswith("[") and body.endswith("]") and ":" in body:
        body = body[1:-1]
    host = None if "*" in body or (wildcard and ":" in body) else canonical_host(body)
    if host is None:
        raise ValueError(f"{glob!r} is not a host name, `*.` and a host name, `[IPv6]`, a CIDR range, or `*`")
    return wildcard, host


def host_readings(host: str) -> tuple[str, ...]:
    """The ways a canonical host reaches a machine: itself, and for an IPv6 address that carries
    an IPv4 one (`::ffff:169.254.169.254`), that IPv4 address too."""
    ipv4 = embedded_ipv4(host) if ":" in host else None
    return (host,) if ipv4 is None else (host, ipv4)


class HostSet:
    """A `hosts` list compiled for matching: exact hosts, `*.` suffixes, CIDR ranges and `*`.

    Pure and immutable once built. Hosts given to it are canonical (`canonical_host`, `url_host`).
    A name never matches an address nor an address a name: `*.example.com` says nothing about the
    addresses example.com resolves to, and only `*`, an address or a range matches an address."""

    __slots__ = ("_any", "_exact", "_ranges", "_suffixes")

    def __init__(self, entries: Iterable[str]) -> None:
        """Raises ValueError for an entry that `check_host_entry` refuses."""
        self._any = False
        exact: set[str] = set()
        suffixes: list[str] = []
        ranges: list[tuple[int, int, int]] = []
        for entry in entries:
            if entry == "*":
                self._any = True
                continue
            network = cidr(entry)
            if network is not None:
                ranges.append((network.version, int(network.network_address), int(network.broadcast_address)))
                continue
            wildcard, host = host_glob(entry)
            if wildcard:
                suffixes.append("." + host)
            else:
                exact.add(host)
        self._exact = frozenset(exact)
        self._suffixes = tuple(suffixes)
        self._ranges = tuple(ranges)

    def matches(self, host: str) -> bool:
        """Whether the canonical `host`, read as it is written, is in the set."""
        if self._any or host in self._exact or host.endswith(self._suffixes):
            return True
        if not self._ranges or not (":" in host or host[-1:].isdigit()):  # cheap: not an address
            return False
        try:
            address = ipaddress.ip_address(host)
        except ValueError:  # a name such as `host1`
            return False
        number = int(address)
        return any(version == address.version and low <= number <= high for version, low, high in self._ranges)

    def matches_every_reading(self, host: str) -> bool:
        """What an allow list asks: the host is in the set however it is read (`host_readings`)."""
        return all(self.matches(reading) for reading in host_readings(host))

    def matches_some_reading(self, host: str) -> bool:
        """What a deny list asks: the host is in the set under some reading (`host_readings`)."""
        return any(self.matches(reading) for reading in host_readings(host))

    def __repr__(self) -> str:
        return (
            f"HostSet(any={self._any}, exact={len(self._exact)}, "
            f"suffixes={len(self._suffixes)}, ranges={len(self._ranges)})"
        )
