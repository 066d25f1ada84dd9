"""How `mcpshield audit` prints events: table rows with every untrusted character made visible,
and JSON lines that a terminal cannot be steered by."""

from __future__ import annotations

import unicodedata
from datetime import datetime
from typing import Any, Final

from mcpshield.audit.read import Figures, Tally

#: Unicode categories a terminal does not show as themselves: controls, format characters
#: (bidi overrides, zero-width joiners, tags), surrogates, private use, unassigned, separators.
_HIDDEN_CATEGORIES: Final = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp", "Zs"})
#: Letters that render as blank space (Hangul fillers, Braille blank).
_BLANK_LETTERS: Final = frozenset({"\u115f", "\u1160", "\u2800", "\u3164", "\uffa0"})
#: Widths of the table's columns; longer values are cut, ending in `…`.
_COLUMNS: Final = (("time", 8), ("session", 8), ("from", 6), ("tool or method", 32), ("decision", 8))
_RULE_WIDTH: Final = 24
_OUTCOME_WIDTH: Final = 13
_MS_WIDTH: Final = 9
#: A refusal's reason is cut here: the table is for scanning; --json has it whole.
_REASON_WIDTH: Final = 80


def _hidden(char: str) -> bool:
    return char != " " and (unicodedata.category(char) in _HIDDEN_CATEGORIES or char in _BLANK_LETTERS)


def _escape(char: str) -> str:
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def visible(text: str) -> str:
    """`text` with every character a terminal would act on or hide written as an escape
    (`\\x1b`, `\\u202e`), and backslashes doubled so that no escape can be faked."""
    if text.isascii() and text.isprintable() and "\\" not in text:
        return text
    return "".join("\\\\" if c == "\\" else _escape(c) if _hidden(c) else c for c in text)


def json_safe(raw: bytes) -> bytes:
    """A JSON line as written in the log, except that characters a terminal would act on or
    hide are JSON escapes (`\\u202e`): the same value to a JSON reader."""
    if raw.isascii():  # orjson already escapes C0 controls; DEL is the one left
        return raw.replace(b"\x7f", b"\\u007f")
    text = raw.decode("utf-8")
    return "".join(_json_escape(c) if c != "\n" and _hidden(c) else c for c in text).encode("utf-8")


def _json_escape(char: str) -> str:
    code = ord(char)
    if code < 0x10000:
        return f"\\u{code:04x}"
    code -= 0x10000
    return f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04x}"


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _text(value: Any) -> str:
    return "-" if value is None else visible(value if isinstance(value, str) else str(value))


def header() -> str:
    cells = [name.ljust(width) for name, width in _COLUMNS]
    cells += ["rule".ljust(_RULE_WIDTH), "outcome".ljust(_OUTCOME_WIDTH), "ms".rjust(_MS_WIDTH), "reason"]
    return " ".join(cells).rstrip()


def row(event: dict[str, Any]) -> str:
    """A request or refused_input event as one table line, in local time."""
    if event.get("event") == "refused_input":
        who, what = event.get("from"), "(refused input)"
    else:
        who = {"to_server": "client", "to_client": "server"}.get(str(event.get("dir")), event.get("dir"))
        tool, target = event.get("tool"), event.get("target")  # a call is shown by its tool alone
        what = _text(tool) if tool is not None else f"{_text(event.get('method'))} {_text(target)}".removesuffix(" -")
    values = [_clock(event.get("ts")), _text(event.get("session"))[:8], _text(who), what, _text(event.get("decision"))]
    cells = [_cut(value, width).ljust(width) for value, (_, width) in zip(values, _COLUMNS, strict=True)]
    cells.append(_cut(_text(event.get("rule")), _RULE_WIDTH).ljust(_RULE_WIDTH))
    cells.append(_cut(_text(event.get("outcome")), _OUTCOME_WIDTH).ljust(_OUTCOME_WIDTH))
    latency = event.get("latency_us")
    cells.append(_ms(latency if type(latency) is int else None).rjust(_MS_WIDTH))
    cells.append(_cut(_text(event.get("reason")), _REASON_WIDTH) if event.get("reason") is not None else "")
    return " ".join(cells).rstrip()


def _clock(ts: Any) -> str:
    try:
        return datetime.fromisoformat(ts).astimezone().strftime("%H:%M:%S")
    except (TypeError, ValueError):
        return "?"


def stats_table(tally: Tally) -> list[str]:
    """`audit stats` as text: a line per tool, the totals, the sessions and refused input."""
    width = max([len("tool"), len("total"), *(len(visible(name)) for name in tally.tools)])
    width = min(width, 48)
    lines = [
        f"{'tool'.ljust(width)} {'calls':>7} {'allowed':>7} {'denied':>7} {'asked':>7} {'errors':>7}"
        f" {'p50 ms':>9} {'p99 ms':>9}"
    ]
    for name in sorted(tally.tools):
        lines.append(_stats_line(_cut(visible(name), width).ljust(width), tally.tools[name]))
    lines.append(_stats_line("total".ljust(width), tally.total))
    lines.append(f"{len(tally.sessions)} session(s), {tally.refused_input} line(s) of refused input")
    return lines


def _stats_line(label: str, figures: Figures) -> str:
    counts = " ".join(
        f"{n:>7}" for n in (figures.calls, figures.allowed, figures.denied, figures.asked, figures.errors)
    )
    p50, p99 = (figures.percentile(p) for p in (50, 99))
    return f"{label} {counts} {_ms(p50):>9} {_ms(p99):>9}"


def _ms(latency_us: int | None) -> str:
    """Milliseconds, with the decimals that matter: 0.04, 1.5, 250."""
    if latency_us is None:
        return "-"
    ms = latency_us / 1000
    return f"{ms:.2f}" if ms < 1 else f"{ms:.1f}" if ms < 100 else f"{ms:.0f}"
