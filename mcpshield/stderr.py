"""mcpshield's stderr: the server's lines passed on whole, mcpshield's own reports between them,
and injected secrets hidden from both at the one place they leave."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Final, Protocol

from mcpshield import jsonrpc
from mcpshield.jsonrpc import DecodeFailure

if TYPE_CHECKING:  # the redactor is imported only when there is something to redact
    from mcpshield.policy.redact import Redactor

#: Server stderr held back waiting for the end of its line, at most (then passed on as it
#: is; each piece is redacted alone, so a secret straddling the cut is not caught).
STDERR_HOLD_BYTES: Final = 64 * 1024

_NL: Final = b"\n"
#: Characters a terminal acts on or hides (C0 and C1 controls, bidi controls, zero-width and
#: byte-order marks), escaped in mcpshield's own lines.
_UNSAFE: Final = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200b-\u200f\u202a-\u202e\u2066-\u2069\ufeff]")


class Writer(Protocol):
    """Where the bytes go (an FdWriter on fd 2 in the relay)."""

    def write(self, data: bytes) -> None: ...


class Stderr:
    """Everything mcpshield writes to its stderr. `out` is set once the event loop runs."""

    __slots__ = ("_partial", "_redactor", "out", "redactions")

    def __init__(self, redactor: Redactor | None) -> None:
        self._redactor = redactor
        self._partial = b""
        self.out: Writer | None = None
        #: Replacements made so far in what was written here.
        self.redactions = 0

    def server_data(self, chunk: bytes) -> None:
        """Passes the server's stderr on, a whole line at a time where lines end in time."""
        data = self._partial + chunk if self._partial else chunk
        cut = data.rfind(_NL) + 1
        if cut == 0 and len(data) < STDERR_HOLD_BYTES:
            self._partial = data
            return
        if cut == 0:
            cut = len(data)
        self.write(data[:cut])
        self._partial = data[cut:]

    def server_eof(self) -> None:
        if self._partial:
            self.write(self._partial + _NL)
            self._partial = b""

    def report(self, text: str) -> None:
        """One line of mcpshield's own, said to the user. What the server named in it (a tool, a
        host) cannot act on the terminal: controls and bidi or invisible characters are escapes."""
        text = _UNSAFE.sub(lambda found: f"\\u{ord(found[0]):04x}", text)
        self.write(b"mcpshield: " + text.encode("utf-8", "replace") + _NL)

    def write(self, data: bytes) -> None:
        """Everything for stderr, the server's lines and mcpshield's own, with secrets hidden."""
        redactor = self._redactor
        if redactor is not None:
            data, count = redactor.redact(data, json_context=False)
            self.redactions += count
        assert self.out is not None
        self.out.write(data)

    def excerpt(self, failure: DecodeFailure, line: bytes) -> str:
        """The start of an offending line, for a report. With secrets to hide it is cut from the
        redacted line: cutting first could leave half a secret, which no form matches."""
        redactor = self._redactor
        if redactor is None:
            return _show(failure.excerpt)
        redacted, count = redactor.redact(line, json_context=False)
        self.redactions += count
        return _show(redacted[: jsonrpc.REPORT_EXCERPT_BYTES])


def _show(excerpt: bytes) -> str:
    """An excerpt of an offending line, safe to print: control characters escaped."""
    return repr(excerpt.decode("utf-8", "replace"))[1:-1]
