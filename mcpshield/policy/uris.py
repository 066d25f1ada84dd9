"""Resource URIs in one spelling, so a glob cannot be dodged by writing the same URI differently.

`FILE:///home/u/%2essh/x`, `file://localhost/home/u/a/../.ssh/x` and `file:///home/u/.ssh/x`
all name one file to a server that resolves URIs (Node's fileURLToPath, Python's urllib); the
profile's globs are matched against the normal form.
"""

from __future__ import annotations

import re
from typing import Final
from urllib.parse import SplitResult, urlsplit, urlunsplit

#: Percent-escapes of unreserved characters (RFC 3986 2.3), which mean the character itself.
_UNRESERVED_ESCAPE: Final = re.compile(r"%(2[dDeE]|5[fF]|7[eE]|3[0-9]|[46][1-9a-fA-F]|[57][0-9aA])")
#: Longer URIs are not normalised (and so are refused): no real resource URI is this long.
MAX_URI_CHARS: Final = 8192


def normalize_uri(uri: str) -> str | None:
    """The normal form of `uri`, or None when it cannot be read one way only (then it is refused)."""
    if len(uri) > MAX_URI_CHARS or any(ch in uri for ch in "\\\x00") or uri != uri.strip():
        return None
    try:
        parts = urlsplit(uri)
    except ValueError:
        return None
    if not parts.scheme:
        return None
    netloc = parts.netloc.lower()
    scheme = parts.scheme.lower()
    if scheme == "file" and netloc == "localhost":
        netloc = ""
    path = _remove_dot_segments(_decode_unreserved(parts.path))
    query = _decode_unreserved(parts.query)
    return urlunsplit(SplitResult(scheme, netloc, path, query, parts.fragment)) if path is not None else None


def _decode_unreserved(text: str) -> str:
    return _UNRESERVED_ESCAPE.sub(lambda m: chr(int(m.group(1), 16)), text)


def _remove_dot_segments(path: str) -> str | None:
    """RFC 3986 5.2.4, keeping a trailing slash; None if `..` would climb above the root."""
    if not path:
        return path
    out: list[str] = []
    segments = path.split("/")
    for index, segment in enumerate(segments):
        last = index == len(segments) - 1
        if segment == ".":
            if last:
                out.append("")
        elif segment == "..":
            if len(out) <= 1:
                return None
            out.pop()
            if last:
                out.append("")
        else:
            out.append(segment)
    return "/".join(out)
