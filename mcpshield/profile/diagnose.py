"""Turns a profile's TOML and validation errors into one ProfileError line: file:line, key, what, Tip.

Pydantic reports where an error is as a path of keys and list indexes; `locate` maps that path to a
line by scanning the TOML text for table headers and `key =` lines.
"""

from __future__ import annotations

import difflib
import json
import re
import tomllib
import types
import typing
from collections.abc import Sequence
from typing import Final

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from mcpshield.errors import ProfileError
from mcpshield.profile.model import Profile

Loc = tuple[str | int, ...]

#: Where the keys and values of every section are described.
REFERENCE: Final = "docs/profiles.md"
#: How much of an offending value an error message quotes.
QUOTE_CHARS: Final = 40

_HEADER: Final = re.compile(r"^\s*(\[\[?)([^\[\]]+)\]\]?\s*(?:#.*)?$")
_BARE_OR_QUOTED: Final = r"""(?:[A-Za-z0-9_-]+|"(?:[^"\\]|\\.)*"|'[^']*')"""
_KEY_LINE: Final = re.compile(rf"^\s*({_BARE_OR_QUOTED}(?:\s*\.\s*{_BARE_OR_QUOTED})*)\s*=")
_KEY_PART: Final = re.compile(r"""([A-Za-z0-9_-]+)|"((?:[^"\\]|\\.)*)"|'([^']*)'""")
_TOML_POSITION: Final = re.compile(r"\s*\(at line (\d+), column (\d+)\)$")


def toml_error(source: str, exc: tomllib.TOMLDecodeError) -> ProfileError:
    """A TOML syntax error as `file:line:column: invalid TOML: what`."""
    message = str(exc)
    found = _TOML_POSITION.search(message)
    where = f"{source}:{found[1]}:{found[2]}" if found else source
    what = message[: found.start()] if found else message
    return ProfileError(
        f"{where}: invalid TOML: {what}",
        'fix the syntax there: strings need quotes, lists look like ["a", "b"]; see ' + REFERENCE,
    )


def validation_error(source: str, text: str, exc: ValidationError) -> ProfileError:
    """The first problem (by line) of a failed validation, as `file:line: key: what`."""
    index = line_index(text)
    by_key: dict[Loc, list[ErrorDetails]] = {}
    for err in exc.errors():
        by_key.setdefault(_walk(err["loc"])[0], []).append(err)
    loc = min(by_key, key=lambda key: _line_of(index, key))
    errors = by_key[loc]
    if len(errors) > 1:  # one value failed every member of a union (e.g. one_of's scalars)
        message, tip = f"has the wrong type (got {_quote(errors[0]['input'])})", f"see {REFERENCE}"
    else:
        message, tip = _describe(errors[0], loc, _walk(errors[0]["loc"])[1])
    more = len(by_key) - 1
    suffix = f" (and {more} more problem{'s' if more > 1 else ''})" if more else ""
    return ProfileError(f"{source}:{_line_of(index, loc)}: {display_key(loc)}: {message}{suffix}", tip)


def display_key(loc: Loc) -> str:
    """`rules[3].args.path.within`: list positions count from 1, as a person counts tables."""
    out = ""
    for part in loc:
        out += f"[{part + 1}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out or "(top level)"


def line_index(text: str) -> dict[Loc, int]:
    """Line number (from 1) of every table header and `key =` line, by key path."""
    index: dict[Loc, int] = {}
    arrays: dict[Loc, int] = {}
    table: Loc = ()
    in_multiline = False
    for number, line in enumerate(text.splitlines(), start=1):
        toggles = (line.count('"""') + line.count("'''")) % 2 == 1
        if in_multiline:
            in_multiline = not toggles  # lines inside a multi-line string name no keys
            continue
        in_multiline = toggles  # the line that opens one (`key = """`) still names its key
        header = _HEADER.match(line)
        if header:
            table = _table_path(_key_parts(header[2]), header[1] == "[[", arrays)
            index.setdefault(table, number)
            continue
        key = _KEY_LINE.match(line)
        if key:
            index.setdefault(table + tuple(_key_parts(key[1])), number)
    return index


def _table_path(parts: list[str], is_array: bool, arrays: dict[Loc, int]) -> Loc:
    """The concrete path of a header: `[rules.args.x]` belongs to the latest `[[rules]]`."""
    path: Loc = ()
    for position, part in enumerate(parts):
        path += (part,)
        if is_array and position == len(parts) - 1:
            count = arrays.get(path, 0)
            arrays[path] = count + 1
            path += (count,)
        elif path in arrays:
            path += (arrays[path] - 1,)
    return path


def _key_parts(dotted: str) -> list[str]:
    return [bare or double or single for bare, double, single in _KEY_PART.findall(dotted)]


def _line_of(index: dict[Loc, int], loc: Loc) -> int:
    for end in range(len(loc), 0, -1):
        if loc[:end] in index:
            return index[loc[:end]]
    return 1


def _walk(raw: Sequence[str | int]) -> tuple[Loc, type[BaseModel]]:
    """The part of pydantic's error path that names keys and positions (type tags of unions
    dropped), and the model holding the last key named."""
    expect: tuple[str, type[BaseModel] | None] = ("model", Profile)
    parent: type[BaseModel] = Profile
    loc: Loc = ()
    for part in raw:
        kind, model = expect
        if kind == "model" and isinstance(part, str) and model is not None:
            loc, parent = (*loc, part), model
            field = model.model_fields.get(part)
            if field is None:
                break
            expect = _shape(field.annotation)
        elif (kind in ("models", "items") and isinstance(part, int)) or (
            kind in ("map", "entries") and isinstance(part, str)
        ):
            loc += (part,)
            expect = ("model", model) if kind in ("models", "map") else ("value", None)
        else:
            break
    return loc, parent


def _shape(annotation: object) -> tuple[str, type[BaseModel] | None]:
    """How a field's value continues an error path: a model, a list or map of them, or a value."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType) and len(args) == 1:
        annotation = args[0]
    origin = typing.get_origin(annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "model", annotation
    if origin in (tuple, dict):
        inner = typing.get_args(annotation)[0 if origin is tuple else 1]
        is_model = isinstance(inner, type) and issubclass(inner, BaseModel)
        kinds = ("models", "items") if origin is tuple else ("map", "entries")
        return (kinds[0], inner) if is_model else (kinds[1], None)
    return "value", None


def _describe(err: ErrorDetails, loc: Loc, parent: type[BaseModel]) -> tuple[str, str]:
    """What is wrong, and the tip."""
    kind = err["type"]
    if kind == "extra_forbidden":
        return _unknown_key(str(loc[-1]), parent)
    if kind == "missing":
        return "required key is missing", f"add it; {REFERENCE} says what it takes"
    if kind == "literal_error":
        choices = re.findall(r"'([^']*)'", str((err.get("ctx") or {}).get("expected", "")))
        return (
            f"must be one of {', '.join(choices)} (got {_quote(err['input'])})",
            f'write one of them in quotes, e.g. {loc[-1]} = "{choices[-1] if choices else ""}"',
        )
    message = err["msg"].removeprefix("Value error, ")
    message = re.sub(r"^Input should be ", "must be ", message)
    if kind != "value_error":
        message += f" (got {_quote(err['input'])})"
    if "regular expression" in message:
        return message, "fix the pattern (Python syntax); single-quoted TOML strings keep backslashes as written"
    return message, f"see {REFERENCE} for the keys and values each section takes"


def _unknown_key(key: str, parent: type[BaseModel]) -> tuple[str, str]:
    known = list(parent.model_fields)
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    hint = f" (did you mean `{close[0]}`?)" if close else ""
    section = _SECTIONS.get(parent.__name__, "this table")
    return f"unknown key `{key}`{hint}", f"{section} takes: {', '.join(known)}; see {REFERENCE}"


_SECTIONS: Final = {
    "Profile": "the top level",
    "ServerSection": "[server]",
    "ToolsSection": "[tools]",
    "Rule": "[[rules]]",
    "ArgCondition": "[rules.args.NAME]",
    "NamedSection": "[resources] / [prompts]",
    "ServerRequestsSection": "[server_requests]",
    "LimitsSection": "[limits]",
}


def _quote(value: object) -> str:
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list | tuple):
        return "a list"
    text = json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= QUOTE_CHARS else text[: QUOTE_CHARS - 1] + "…"
