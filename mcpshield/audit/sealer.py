"""Turns a recorded event into its sealed line: numbered, timestamped, hashed into the chain,
its arguments hashed (and kept if asked), secrets redacted. Runs in the writer process."""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any, Final

import orjson

from mcpshield.audit.chain import GENESIS, seal
from mcpshield.jsonrpc import arguments_hash

if TYPE_CHECKING:
    from mcpshield.policy.redact import Redactor

#: Format version of every line, for readers of older and newer files.
FORMAT: Final = 1


class Sealer:
    """Seals one session's events in order."""

    def __init__(self, session: str, redactor: Redactor | None, max_recorded_bytes: int) -> None:
        self.session = session
        self._redactor = redactor
        self._max_recorded = max_recorded_bytes
        self._prev = GENESIS
        self._seq = 0
        self._second: tuple[int, str] = (-1, "")

    def seal(self, event: dict[str, Any]) -> bytes:
        """The event's line, newline included; `event` is changed on the way."""
        event["v"] = FORMAT
        event["seq"] = self._seq
        event["session"] = self.session
        event["ts"] = self._iso(event["ts"])
        if "_args" in event:
            arguments = event.pop("_args")
            event["args_sha256"] = arguments_hash(arguments)
            if not event.pop("_hash_only", False):
                self._keep(event, "arguments", arguments)
        event.pop("_hash_only", None)
        if "_result" in event:
            self._keep(event, "result", event.pop("_result"))
        if self._redactor is not None:
            text, count = self._redactor.redact(orjson.dumps(event), json_context=True)
            if count:
                event = orjson.loads(text)
        line, self._prev = seal(event, self._prev)
        self._seq += 1
        return line

    def _keep(self, event: dict[str, Any], key: str, value: Any) -> None:
        """Records `value` redacted, or the start of its JSON text if that is over the bound."""
        try:
            text = orjson.dumps(value)
        except TypeError:  # integers beyond 64 bits, from the fallback parser
            text = json.dumps(value, separators=(",", ":")).encode()
        if self._redactor is not None:
            text, _ = self._redactor.redact(text, json_context=True)
        if len(text) <= self._max_recorded:
            event[key] = value if self._redactor is None else _loads_or_text(text)
        else:
            event[key] = text[: self._max_recorded].decode("utf-8", "ignore")
            event[f"{key}_truncated"] = True

    def _iso(self, epoch: float) -> str:
        """UTC, with microseconds: `2026-12-02T11:33:48.123456Z` (each second's text is made once:
        formatting it costs more than sealing the line)."""
        whole = int(epoch)
        if self._second[0] != whole:
            self._second = (whole, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)))
        return f"{self._second[1]}.{int((epoch - whole) * 1e6):06d}Z"


def _loads_or_text(text: bytes) -> Any:
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:  # beyond what orjson reads (huge integers): keep the text
        return text.decode("utf-8", "replace")
