"""A fast yes for the input schemas most tools declare: flat objects of typed properties.

jsonschema costs several microseconds per call even for `{"text": {"type": "string"}}`. For a
schema made only of `type`, `properties` (each with a `type` and maybe an `enum`), `required`
and a boolean `additionalProperties`, plus annotations, this checker answers "valid" in a
fraction of that. It is only ever trusted for "valid", and only where the answer is certainly
jsonschema's too; anything else — any other keyword, a value it is unsure of — falls back to
jsonschema, which also words the refusal.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Final

#: Keywords that never change whether a value is valid (formats are annotations here too).
_ANNOTATIONS: Final = frozenset(
    {
        "$schema",
        "$id",
        "$comment",
        "title",
        "description",
        "default",
        "examples",
        "deprecated",
        "readOnly",
        "writeOnly",
        "format",
    }
)
_TOP: Final = _ANNOTATIONS | {"type", "properties", "required", "additionalProperties"}
_PROPERTY: Final = _ANNOTATIONS | {"type", "enum"}
_SCALARS: Final = (str, int, float, bool, type(None))


def _is(kind: str) -> Callable[[object], bool] | None:
    """Exact type tests: a bool is never an integer, and 1.0 is left to jsonschema."""
    tests: dict[str, Callable[[object], bool]] = {
        "string": lambda v: type(v) is str,
        "integer": lambda v: type(v) is int,
        "number": lambda v: type(v) is int or type(v) is float,
        "boolean": lambda v: type(v) is bool,
        "null": lambda v: v is None,
        "array": lambda v: type(v) is list,
        "object": lambda v: type(v) is dict,
    }
    return tests.get(kind)


Check = Callable[[object], bool]


def _property(schema: object) -> Check | None:
    if type(schema) is not dict or not set(schema) <= _PROPERTY:
        return None
    kinds = schema.get("type", [])
    names = [kinds] if type(kinds) is str else kinds
    if type(names) is not list or ("type" in schema and not names) or not all(type(n) is str for n in names):
        return None
    tests = [_is(name) for name in names]
    if any(test is None for test in tests):
        return None
    typed = [test for test in tests if test is not None]
    enum = schema.get("enum")
    if enum is not None and (type(enum) is not list or not all(type(item) in _SCALARS for item in enum)):
        return None
    allowed = {(type(item), item) for item in enum} if enum is not None else None

    def check(value: object) -> bool:
        if typed and not any(test(value) for test in typed):
            return False
        return allowed is None or (type(value) in _SCALARS and (type(value), value) in allowed)

    return check


def compile_fast(schema: Mapping[str, Any]) -> Callable[[dict[str, Any]], bool] | None:
    """A checker that returns True only for arguments jsonschema would find valid; None when the
    schema uses more than this understands."""
    if not set(schema) <= _TOP or schema.get("type", "object") != "object":
        return None
    properties = schema.get("properties", {})
    required = schema.get("required", [])
    closed = schema.get("additionalProperties", True)
    if type(properties) is not dict or type(required) is not list or type(closed) is not bool:
        return None
    if not all(type(name) is str for name in required):
        return None
    checks = {name: _property(sub) for name, sub in properties.items()}
    if any(check is None for check in checks.values()):
        return None
    needed = tuple(required)

    def valid(arguments: dict[str, Any]) -> bool:
        for name in needed:
            if name not in arguments:
                return False
        for name, value in arguments.items():
            check = checks.get(name)
            if check is None:
                if not closed:
                    return False
            elif not check(value):
                return False
        return True

    return valid
