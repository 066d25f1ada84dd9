"""Redaction of injected secrets: each value, and the forms encoders give it, becomes `[REDACTED:NAME]`.

Pure: a Redactor is built once from name -> value and rewrites bytes. In a JSON-RPC line it never
breaks the JSON or the message's structure (see `Redactor.redact` for the argument).
"""

from __future__ import annotations

import base64
import bisect
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Final
from urllib.parse import quote, quote_plus

import orjson

#: Shorter values are not redacted: they would match ordinary text (and are no real secret).
MIN_SECRET_CHARS: Final = 8
#: A family of needles is looked for by one substring they all share, if it is at least this long;
#: shorter ones would send ordinary text to the slow path too often.
MIN_ANCHOR_BYTES: Final = 8
#: What a label may hold: the replacement text must need no escaping in JSON or a terminal.
LABEL: Final = re.compile(r"[A-Za-z0-9._-]+")

# Bytes that can sit outside every string of a valid JSON text: whitespace, punctuation, numbers,
# true, false, null. A needle made of these alone could match a number or a literal.
_OUTSIDE_STRINGS: Final = frozenset(b" \t\r\n{}[],:0123456789+-.eEtrufalsn")
# Characters no encoder here changes: runs of them are shared by every form of a value.
_PLAIN_RUN: Final = re.compile(rb"[A-Za-z0-9]+")
_WIDE_RUN: Final = re.compile(rb"[A-Za-z0-9_.~-]+")
# A JSON string, unrolled so that long runs of plain characters stay in one fast loop.
_JSON_STRING: Final = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
# Escape tokens of a JSON string body: `\\` first, so a literal backslash before `u` is not read as `\u`.
_ESCAPE_TOKEN: Final = re.compile(rb"\\\\|\\u[0-9a-f]{4}")
_PERCENT_HEX: Final = re.compile(r"%[0-9A-F]{2}")
# What JavaScript's encodeURIComponent leaves as it is, beyond what `quote` does.
_URI_COMPONENT_SAFE: Final = "!'()*"
# Go's encoding/json escapes these even inside strings (HTML safety).
_GO_ESCAPES: Final = {b"<": b"\\u003c", b">": b"\\u003e", b"&": b"\\u0026"}
_GO_LINE_SEPARATORS: Final = {"\u2028": b"\\u2028", "\u2029": b"\\u2029"}
_URLSAFE: Final = bytes.maketrans(b"+/", b"-_")
_BACKSLASH: Final = ord("\\")
_LETTER_U: Final = ord("u")
_JSON_UNICODE_ESCAPE_BYTES: Final = 6  # \uXXXX


@dataclass(frozen=True, slots=True)
class _Needle:
    """One form of one secret, and what replaces it."""

    text: bytes = field(repr=False)
    replacement: bytes
    #: Every byte could also sit outside a JSON string: a match must be shown to be inside one.
    ambiguous: bool


@dataclass(frozen=True, slots=True)
class _Family:
    """Needles sharing one substring, `anchor`: where it is absent, none of them is there."""

    anchor: bytes = field(repr=False)
    needles: tuple[_Needle, ...] = field(repr=False)


class Redactor:
    """Replaces every injected value, in every form it knows, by `[REDACTED:NAME]`.

    Forms of a value: the raw UTF-8 bytes; JSON-escaped as orjson, `json.dumps` (ASCII, also with
    upper-case hex) and Go write it, with `/` also as `\\/`, and escaped twice (JSON text inside a
    JSON string); URL-encoded (`quote`, `quote_plus`, encodeURIComponent, upper and lower hex);
    base64, standard and URL-safe, at each of the three byte alignments, inside a longer text or
    ending it (with and without padding).
    """

    __slots__ = ("_any", "_any_anchors", "_json", "_json_anchors", "_labels")

    def __init__(self, secrets: Mapping[str, str]) -> None:
        """`secrets` maps a label (a secret's or variable's name) to its value; values shorter than
        MIN_SECRET_CHARS are ignored."""
        self._labels = tuple(label for label, value in secrets.items() if len(value) >= MIN_SECRET_CHARS)
        self._any: tuple[_Family, ...] = ()
        self._json: tuple[_Family, ...] = ()
        seen: set[bytes] = set()
        for label, value in secrets.items():
            if not LABEL.fullmatch(label):
                raise ValueError(f"a redaction label is letters, digits, '.', '_' and '-' (got {label!r})")
            if len(value) < MIN_SECRET_CHARS:
                continue
            replacement = b"[REDACTED:" + label.encode() + b"]"
            for forms, json_forms in _form_families(value):
                fresh = [form for form in forms if form not in seen]
                seen.update(fresh)
                self._any += _families(fresh, replacement)
                self._json += _families([form for form in fresh if form in json_forms], replacement)
        # Looked for on every call: a plain tuple of bytes is the cheapest thing to loop over.
        self._any_anchors = tuple(family.anchor for family in self._any)
        self._json_anchors = tuple(family.anchor for family in self._json)

    @property
    def active(self) -> bool:
        """False when there is nothing to redact: `redact` then returns its input at once."""
        return bool(self._any)

    def __repr__(self) -> str:
        return f"Redactor({', '.join(self._labels)})"

    def redact(self, data: bytes, json_context: bool) -> tuple[bytes, int]:
        """`data` with every occurrence replaced, and how many replacements were made; `data`
        itself when nothing matched.

        json_context: `data` is one or more JSON texts, one per line (JSON-RPC messages). Then the
        result is as valid as the input, with the same structure: only the text of strings changes.
        Each form used there is a complete JSON string body (no bare `"`, no control character, no
        half escape), so a match that starts on a character boundary inside a string (checked:
        not after an odd run of backslashes, not within `\\uXXXX`) ends inside the same string: it
        cannot cross the closing quote, which would need a bare `"`. It cannot start outside a
        string either, where no backslash is allowed, unless every byte of it could stand outside
        a string; such forms (all digits, say) are replaced only where the match is inside a
        string. The replacement needs no escaping. Otherwise (stderr, mcpshield's own lines) the
        raw value and every form are replaced wherever they are.
        """
        for anchor in self._json_anchors if json_context else self._any_anchors:
            if anchor in data:
                break
        else:
            return data, 0
        return _replace(data, self._json if json_context else self._any, json_context)


# -- the forms of a value ------------------------------------------------------------------------


def _form_families(value: str) -> list[tuple[set[bytes], set[bytes]]]:
    """The forms of `value`, in families that share text (raw, JSON and URL forms; base64 at each
    alignment), each with the subset safe in JSON context."""
    raw = _raw(value)
    # No JSON encoder writes a lone surrogate (see _raw): such a value has no JSON forms.
    escapes = _json_escapes(value) if raw == value.encode("utf-8", "replace") else set()
    text = {raw, *escapes, *_url_forms(raw)}
    json_text = {form for form in text if form != raw or raw in escapes}
    families = [(text, json_text)]
    for skip in range(3):
        forms = _base64_forms(raw, skip)
        families.append((forms, forms))
    return [(forms, {form for form in safe if _is_string_body(form)}) for forms, safe in families]


def _raw(value: str) -> bytes:
    """The bytes the child gets: a value from the environment may hold undecodable bytes, which
    Python keeps as lone surrogates."""
    try:
        return value.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return value.encode("utf-8", "surrogatepass")


def _json_escapes(value: str) -> set[bytes]:
    """`value` inside a JSON string as common encoders write it, and as JSON text inside one."""
    compact, ascii_only = _escaped(value)
    forms = {compact, ascii_only, _upper_hex(ascii_only), _go_escaped(compact)}
    for inner in (compact, ascii_only):
        forms.update(_escaped(inner.decode()))
    # `/` is a plain character in every form above, so escaping it cannot split an escape.
    return forms | {form.replace(b"/", b"\\/") for form in forms}


def _escaped(value: str) -> tuple[bytes, bytes]:
    """`value` in a JSON string as orjson (and `json.dumps` without ensure_ascii) writes it, and
    as `json.dumps` does by default (ASCII only)."""
    return orjson.dumps(value)[1:-1], json.dumps(value)[1:-1].encode()


def _upper_hex(escaped: bytes) -> bytes:
    return _ESCAPE_TOKEN.sub(lambda m: m[0] if m[0] == b"\\\\" else b"\\u" + m[0][2:].upper(), escaped)


def _go_escaped(compact: bytes) -> bytes:
    for char, escape in _GO_ESCAPES.items():
        compact = compact.replace(char, escape)
    for separator, escape in _GO_LINE_SEPARATORS.items():
        compact = compact.replace(separator.encode(), escape)
    return compact


def _url_forms(raw: bytes) -> set[bytes]:
    forms = {quote(raw, safe=""), quote_plus(raw, safe=""), quote(raw, safe=_URI_COMPONENT_SAFE)}
    forms |= {_PERCENT_HEX.sub(lambda m: m[0].lower(), form) for form in forms}
    return {form.encode() for form in forms}


def _base64_forms(raw: bytes, skip: int) -> set[bytes]:
    """`raw` base64-encoded after `skip` other bytes: only characters its bits alone decide, inside
    a longer text, or ending the text (then its last character too, padded or not)."""
    encoded = base64.b64encode(bytes(skip) + raw)
    first = (8 * skip + 5) // 6  # the first character with no bit of the bytes before
    whole = 8 * (skip + len(raw)) // 6  # characters made of whole bits of `raw`
    standard = {encoded[first:whole], encoded[first:], encoded.rstrip(b"=")[first:]}
    # JSON encoders that escape `/` write `\/` inside a string.
    return standard | {form.translate(_URLSAFE) for form in standard} | {f.replace(b"/", b"\\/") for f in standard}


def _is_string_body(form: bytes) -> bool:
    """True if `form` between quotes is one valid JSON string: whole escapes, no bare quote."""
    try:
        return type(orjson.loads(b'"' + form + b'"')) is str
    except orjson.JSONDecodeError:
        return False


def _families(forms: Iterable[bytes], replacement: bytes) -> tuple[_Family, ...]:
    """The forms as needles, in one family under a shared anchor, or one family each without one."""
    needles = tuple(_Needle(form, replacement, _OUTSIDE_STRINGS.issuperset(form)) for form in forms)
    if not needles:
        return ()
    anchor = _shared_run([needle.text for needle in needles])
    if anchor is None:
        return tuple(_Family(needle.text, (needle,)) for needle in needles)
    return (_Family(anchor, needles),)


def _shared_run(forms: list[bytes]) -> bytes | None:
    """The longest run of unchanging characters found in every form, if long enough."""
    shortest = min(forms, key=len)
    runs: list[bytes] = sorted({*_PLAIN_RUN.findall(shortest), *_WIDE_RUN.findall(shortest)}, key=len, reverse=True)
    for run in runs:
        if len(run) < MIN_ANCHOR_BYTES:
            return None
        if all(run in form for form in forms):
            return run
    return None


# -- replacing -----------------------------------------------------------------------------------


def _replace(data: bytes, families: tuple[_Family, ...], json_context: bool) -> tuple[bytes, int]:
    """The slow path, once an anchor was seen: every occurrence found, checked and merged."""
    hits: list[tuple[int, int, _Needle]] = []
    for family in families:
        if family.anchor in data:
            for needle in family.needles:
                _find_all(data, needle, hits)
    if json_context:
        hits = _inside_strings(data, hits)
    if not hits:
        return data, 0
    hits.sort(key=lambda hit: (hit[0], -hit[1]))
    spans = _merged(hits)
    out: list[bytes] = []
    done = 0
    for start, end, replacement in spans:
        out.append(data[done:start])
        out.append(replacement)
        done = end
    out.append(data[done:])
    return b"".join(out), len(spans)


def _find_all(data: bytes, needle: _Needle, hits: list[tuple[int, int, _Needle]]) -> None:
    """Every occurrence, overlapping ones included."""
    text = needle.text
    size = len(text)
    at = data.find(text)
    while at >= 0:
        hits.append((at, at + size, needle))
        at = data.find(text, at + 1)


def _merged(hits: list[tuple[int, int, _Needle]]) -> list[tuple[int, int, bytes]]:
    """Overlapping occurrences become one span, so no fragment of a secret survives; it takes the
    label of the longest occurrence in it. `hits` is sorted by start."""
    spans: list[tuple[int, int, bytes]] = []
    longest = 0
    for start, end, needle in hits:
        if spans and start < spans[-1][1]:
            first, last, replacement = spans[-1]
            if end - start > longest:
                longest, replacement = end - start, needle.replacement
            spans[-1] = (first, max(last, end), replacement)
        else:
            spans.append((start, end, needle.replacement))
            longest = end - start
    return spans


def _inside_strings(data: bytes, hits: list[tuple[int, int, _Needle]]) -> list[tuple[int, int, _Needle]]:
    """The occurrences that start on a character of a JSON string's text (see `Redactor.redact`)."""
    kept = []
    bounds: tuple[list[int], list[int]] | None = None
    for hit in hits:
        start = hit[0]
        if not _on_character(data, start):
            continue
        if hit[2].ambiguous:
            bounds = bounds or _string_bounds(data)
            if not _in_string(bounds, start):
                continue
        kept.append(hit)
    return kept


def _on_character(data: bytes, at: int) -> bool:
    """False if `at` is inside an escape: after an odd run of backslashes, or within `\\uXXXX`."""
    if _backslashes_before(data, at) % 2:
        return False
    for escape in range(max(at - _JSON_UNICODE_ESCAPE_BYTES + 1, 0), at - 1):
        unicode_escape = data[escape] == _BACKSLASH and data[escape + 1] == _LETTER_U
        if unicode_escape and _backslashes_before(data, escape) % 2 == 0:
            return False
    return True


def _backslashes_before(data: bytes, at: int) -> int:
    count = 0
    while at > count and data[at - count - 1] == _BACKSLASH:
        count += 1
    return count


def _string_bounds(data: bytes) -> tuple[list[int], list[int]]:
    """Where each JSON string starts and ends (quotes included), in valid JSON texts."""
    starts: list[int] = []
    ends: list[int] = []
    for match in _JSON_STRING.finditer(data):
        starts.append(match.start())
        ends.append(match.end())
    return starts, ends


def _in_string(bounds: tuple[list[int], list[int]], at: int) -> bool:
    starts, ends = bounds
    index = bisect.bisect_right(starts, at) - 1
    return index >= 0 and starts[index] < at < ends[index] - 1
