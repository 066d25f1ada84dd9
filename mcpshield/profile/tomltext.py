"""TOML text mcpshield writes into profiles by hand (tomli_w cannot keep comments): strings a
person reading the file sees exactly, whatever a server named its tools."""

from __future__ import annotations

from typing import Final

#: The short escapes TOML basic strings know.
_ESCAPES: Final = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r"}


def toml_string(text: str) -> str:
    """`text` as a TOML basic string with every control and non-ASCII character escaped, so no
    bidi override or invisible character shows in the file as something else. ValueError for a
    lone surrogate, which no TOML file can hold."""
    out = []
    for char in text:
        code = ord(char)
        if char in _ESCAPES:
            out.append(_ESCAPES[char])
        elif 0xD800 <= code <= 0xDFFF:
            raise ValueError("a lone surrogate cannot be written in TOML")
        elif code < 0x20 or code > 0x7E:
            out.append(f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}")
        else:
            out.append(char)
    return '"' + "".join(out) + '"'
