"""Validates tool arguments against the inputSchema a server declared in tools/list.

Pure: no `$ref` is ever fetched (the registry refuses every URI, so only refs inside the schema
resolve), formats are annotations, and the work of one call is bounded (argument depth, linear
uniqueItems, errors weighed; a schema that fails to compile or while validating refuses the
tool's calls instead of raising).
"""

from __future__ import annotations

import functools
import itertools
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Final, cast

import referencing.exceptions
import referencing.jsonschema
from jsonschema.exceptions import SchemaError, UnknownType, ValidationError, best_match
from jsonschema.protocols import Validator
from jsonschema.validators import Draft202012Validator, extend, validator_for
from referencing import Registry, Resource
from referencing._core import Resolver  # referencing exports no public name for the class

from mcpshield.policy.args import MAX_MESSAGE_CHARS, printable
from mcpshield.policy.fastschema import compile_fast

#: Deeper than any real tool's arguments; keeps jsonschema's recursive descent far from
#: Python's recursion limit.
MAX_ARGUMENT_DEPTH: Final = 64
#: How far strict mode follows allOf/anyOf/oneOf/$ref to learn which argument names a schema
#: declares; real schemas wrap their properties once or twice at most.
MAX_DECLARATION_DEPTH: Final = 8
#: Longest array in the arguments of a tool whose schema uses uniqueItems: checking an array's
#: items for duplicates costs a walk of every item, and a real tool's unique list is far shorter.
MAX_UNIQUE_ITEMS: Final = 1000
#: Errors weighed to pick the one a refusal names: each costs a repr of the failing value, and
#: 20,000 wrong array items would otherwise take 20,000 of them (about 0.4 s).
MAX_ERRORS_WEIGHED: Final = 32
#: Keywords whose values are data, not schemas: a "$ref" inside one is just a string.
_DATA_KEYWORDS: Final = frozenset({"const", "default", "enum", "examples"})
#: Keywords whose string value the validator resolves.
_REF_KEYWORDS: Final = ("$ref", "$dynamicRef", "$recursiveRef")


def _refuse(uri: str) -> Resource[Any]:
    """Every URI the schema itself does not contain stays unresolved: no network, no disk."""
    raise referencing.exceptions.NoSuchResource(ref=uri)  # type: ignore[call-arg]  # an attrs class


#: The only registry a tool schema is validated with.
_NO_RETRIEVAL: Final[Registry[Any]] = Registry(retrieve=_refuse)  # type: ignore[call-arg]  # attrs alias


@dataclass(frozen=True, slots=True)
class SchemaProblem:
    """A tool's input schema that cannot be used to validate its arguments: every call of the
    tool is refused with the reason."""

    reason: str

    def validate(self, arguments: object, strict: bool) -> str:
        return self.reason


@dataclass(frozen=True, slots=True)
class _Declared:
    """The top-level argument names a schema declares, for strict mode."""

    names: frozenset[str]
    patterns: tuple[re.Pattern[str], ...]
    open: bool
    """additionalProperties (or unevaluatedProperties) is a schema: every name is declared."""

    def allows(self, name: str) -> bool:
        # patternProperties matches anywhere in the name, as jsonschema applies it (re.search).
        return self.open or name in self.names or any(p.search(name) for p in self.patterns)

    def describe(self) -> str:
        listed = sorted(self.names) + [f"names matching {p.pattern}" for p in self.patterns]
        return f"the tool declares: {', '.join(listed)}" if listed else "the tool declares no arguments"


class ToolSchema:
    """A compiled inputSchema: `validate` is cheap to call again and again."""

    __slots__ = ("_declared", "_fast", "_longest", "_validator")

    def __init__(self, validator: Validator, declared: _Declared, schema: dict[str, Any] | None = None) -> None:
        self._validator = validator
        self._declared = declared
        self._fast = compile_fast(schema) if schema is not None else None
        self._longest = MAX_UNIQUE_ITEMS if schema is not None and _uses_unique_items(schema) else None

    def validate(self, arguments: object, strict: bool) -> str | None:
        """None when `arguments` are valid; otherwise one short message naming what is wrong.
        `strict` also refuses top-level argument names the schema does not declare."""
        if not isinstance(arguments, dict):
            return f"arguments must be a JSON object (got {_kind(arguments)})"
        if strict:
            for name in arguments:
                if not self._declared.allows(name):
                    shown = printable(name, 60)
                    return printable(f'unexpected argument "{shown}" ({self._declared.describe()})')
        problem = _oversized(arguments, self._longest)
        if problem is not None:
            return problem
        if self._fast is not None and self._fast(arguments):
            return None
        try:
            error = best_match(itertools.islice(self._validator.iter_errors(arguments), MAX_ERRORS_WEIGHED))
        except RecursionError:
            return "the tool's input schema recurses too deeply to check these arguments"
        except referencing.exceptions.Unresolvable as exc:
            return printable(f"the tool's input schema refers to something mcpshield never fetches ({exc})")
        except (UnknownType, re.error) as exc:
            return printable(f"the tool's input schema cannot be applied: {exc}")
        except Exception as exc:  # jsonschema on odd input (a $ref to a string, 10**400 / 0.1): refuse
            return printable(f"the tool's input schema cannot be applied to these arguments ({_failure(exc)})")
        return None if error is None else _describe(error)


def compile_tool_schema(schema: object) -> ToolSchema | SchemaProblem:
    """Compiles the inputSchema of one tool; the caller caches it per (tool, schema).

    The dialect comes from `$schema` (Draft 2020-12, MCP's default, when it is absent or unknown).
    """
    if not isinstance(schema, dict):
        return SchemaProblem(f"the tool's input schema is not a JSON object (it is {_kind(schema)})")
    if not isinstance(schema.get("$schema", ""), str):
        return SchemaProblem("the tool's input schema has a $schema that is not a string")
    try:
        return _compile(schema)
    except SchemaError as exc:
        return SchemaProblem(printable(f"the tool's input schema is invalid: {exc.message}"))
    except RecursionError:
        return SchemaProblem("the tool's input schema is nested too deeply to check")
    except re.error as exc:
        return SchemaProblem(printable(f"the tool's input schema has a pattern Python cannot compile: {exc}"))
    except referencing.exceptions.Unresolvable as exc:
        return SchemaProblem(printable(f"the tool's input schema refers to something outside it: {exc}"))
    except Exception as exc:  # one tool's odd schema refuses that tool, never the policy
        return SchemaProblem(printable(f"the tool's input schema cannot be used ({_failure(exc)})"))


def _compile(schema: dict[str, Any]) -> ToolSchema | SchemaProblem:
    cls = validator_for(schema, default=Draft202012Validator)
    _check_schema(cls, schema)
    dialect = cls.META_SCHEMA.get("$id") or cls.META_SCHEMA.get("id", "")
    specification = referencing.jsonschema.specification_with(dialect, default=referencing.jsonschema.DRAFT202012)
    root = _NO_RETRIEVAL.resolver_with_root(specification.create_resource(schema))
    unresolved = _first_unresolvable(schema, root, specification)
    if unresolved is not None:
        reason = f"the tool's input schema refers to {unresolved}, which is not inside it (mcpshield fetches no schema)"
        return SchemaProblem(printable(reason))
    validator = _linear_unique(cls)(schema, registry=_NO_RETRIEVAL)
    return ToolSchema(validator, _declarations(schema, root), schema)


def _check_schema(cls: type[Validator], schema: dict[str, Any]) -> None:
    """`cls.check_schema`, with the metaschema applied by a linear-uniqueItems validator: a
    draft-04 `enum` of thousands of objects is checked for duplicates."""
    meta = _linear_unique(validator_for(cls.META_SCHEMA, default=cls))
    for error in meta(cls.META_SCHEMA, format_checker=meta.FORMAT_CHECKER).iter_errors(schema):
        raise SchemaError.create_from(error)


@functools.cache
def _linear_unique(cls: type[Validator]) -> type[Validator]:
    """The dialect's validator with uniqueItems checked in linear time: jsonschema compares items
    pair by pair when they do not sort (objects, mixed types), 8 s for 2,000 objects."""
    return cast("type[Validator]", extend(cls, {"uniqueItems": _unique_items}))  # type: ignore[no-untyped-call]


def _unique_items(validator: Validator, unique: object, instance: Any, schema: object) -> Iterator[ValidationError]:
    if not unique or not validator.is_type(instance, "array"):
        return
    seen: dict[object, int] = {}
    for index, item in enumerate(instance):
        earlier = seen.setdefault(_json_key(item), index)
        if earlier != index:
            yield ValidationError(f"items {earlier} and {index} are equal, and the schema asks for unique items")
            return


def _json_key(value: Any) -> object:
    """A hashable stand-in for a JSON value, equal to another's exactly when JSON Schema calls the
    values equal: 1 and 1.0 are, true and 1 are not, and object members have no order. Recurses
    as deep as the value, which `validate` has bounded."""
    kind = type(value)
    if kind is bool:
        return (0, value)
    if kind is list:
        return (1, tuple(map(_json_key, value)))
    if kind is dict:
        return (2, frozenset((key, _json_key(item)) for key, item in value.items()))
    return value  # a string, number or null: Python's equality is JSON's


def _failure(exc: Exception) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _first_unresolvable(
    schema: dict[str, Any], root: Resolver[Any], specification: referencing.Specification[Any]
) -> str | None:
    """The first ref the schema makes to something outside itself; refs in data are skipped."""
    pending: list[tuple[object, Resolver[Any]]] = [(schema, root)]
    while pending:
        node, resolver = pending.pop()
        if isinstance(node, list):
            pending.extend((item, resolver) for item in node)
            continue
        if not isinstance(node, dict):
            continue
        if isinstance(node.get("$id"), str) or isinstance(node.get("id"), str):
            resolver = resolver.in_subresource(specification.create_resource(node))
        for keyword in _REF_KEYWORDS:
            ref = node.get(keyword)
            if isinstance(ref, str):
                try:
                    resolver.lookup(ref)
                except referencing.exceptions.Unresolvable:
                    return ref
        pending.extend((value, resolver) for key, value in node.items() if key not in _DATA_KEYWORDS)
    return None


def _declarations(schema: dict[str, Any], root: Resolver[Any]) -> _Declared:
    """What strict mode accepts: the properties of the schema and of what it wraps them in."""
    names: set[str] = set()
    patterns: list[re.Pattern[str]] = []
    is_open = False
    pending: list[tuple[object, Resolver[Any], int]] = [(schema, root, 0)]
    while pending:
        node, resolver, depth = pending.pop()
        if not isinstance(node, dict) or depth > MAX_DECLARATION_DEPTH:
            continue
        if isinstance(node.get("properties"), dict):
            names.update(node["properties"])
        if isinstance(node.get("patternProperties"), dict):
            patterns.extend(re.compile(pattern) for pattern in node["patternProperties"])
        is_open = is_open or any(
            isinstance(node.get(k), dict) for k in ("additionalProperties", "unevaluatedProperties")
        )
        for keyword in ("allOf", "anyOf", "oneOf"):
            if isinstance(node.get(keyword), list):
                pending.extend((sub, resolver, depth + 1) for sub in node[keyword])
        if isinstance(node.get("$ref"), str):
            resolved = resolver.lookup(node["$ref"])
            pending.append((resolved.contents, resolved.resolver, depth + 1))
    return _Declared(frozenset(names), tuple(patterns), is_open)


def _oversized(arguments: dict[str, Any], longest: int | None) -> str | None:
    """Why the arguments are too big to validate: nested more than MAX_ARGUMENT_DEPTH levels, or
    holding an array longer than `longest` (when not None). Level by level, so never recursive."""
    level: list[object] = [arguments]
    depth = 0
    while level:
        below: list[object] = []
        for node in level:
            if type(node) is dict:
                below.extend(node.values())
            elif type(node) is list:
                if longest is not None and len(node) > longest:
                    return (
                        f"an array in the arguments has more than {longest} items, and the tool's input schema "
                        "asks for unique items: mcpshield checks that only for shorter arrays"
                    )
                below.extend(node)
            else:
                continue
            if depth >= MAX_ARGUMENT_DEPTH:
                return f"arguments are nested more than {MAX_ARGUMENT_DEPTH} levels deep"
        level = below
        depth += 1
    return None


def _uses_unique_items(schema: dict[str, Any]) -> bool:
    """Whether uniqueItems is asked for anywhere in the schema (values of data keywords aside)."""
    pending: list[object] = [schema]
    while pending:
        node = pending.pop()
        if isinstance(node, list):
            pending.extend(node)
        elif isinstance(node, dict):
            if node.get("uniqueItems") is True:
                return True
            pending.extend(value for key, value in node.items() if key not in _DATA_KEYWORDS)
    return False


def _describe(error: ValidationError) -> str:
    """`argument items[0].name: 3 is not of type 'string'`, cut to a message's length."""
    where = ""
    for step in error.absolute_path:
        if isinstance(step, int):
            where += f"[{step}]"
        elif step.isidentifier():
            where += f".{step}" if where else step
        else:
            where += f'["{step}"]'
    prefix = f"argument {where}" if where else "arguments"
    return printable(f"{prefix}: {error.message}", MAX_MESSAGE_CHARS)


def _kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    names = {str: "a string", int: "a number", float: "a number", list: "an array", dict: "an object"}
    return names.get(type(value), f"a {type(value).__name__}")
