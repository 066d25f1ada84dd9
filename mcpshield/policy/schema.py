"""Validates tool arguments against the inputSchema a server declared in tools/list.

Pure: no `$ref` is ever fetched (the registry refuses every URI, so only refs inside the schema
resolve), formats are annotations, and the work of one call is bounded (argument depth; a schema
that fails while validating refuses the call instead of raising).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Final

import referencing.exceptions
import referencing.jsonschema
from jsonschema.exceptions import SchemaError, UnknownType, ValidationError, best_match
from jsonschema.protocols import Validator
from jsonschema.validators import Draft202012Validator, validator_for
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

    __slots__ = ("_declared", "_fast", "_validator")

    def __init__(self, validator: Validator, declared: _Declared, schema: dict[str, Any] | None = None) -> None:
        self._validator = validator
        self._declared = declared
        self._fast = compile_fast(schema) if schema is not None else None

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
        if _deeper_than(arguments, MAX_ARGUMENT_DEPTH):
            return f"arguments are nested more than {MAX_ARGUMENT_DEPTH} levels deep"
        if self._fast is not None and self._fast(arguments):
            return None
        try:
            error = best_match(self._validator.iter_errors(arguments))
        except RecursionError:
            return "the tool's input schema recurses too deeply to check these arguments"
        except referencing.exceptions.Unresolvable as exc:
            return printable(f"the tool's input schema refers to something mcpshield never fetches ({exc})")
        except (UnknownType, re.error) as exc:
            return printable(f"the tool's input schema cannot be applied: {exc}")
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


def _compile(schema: dict[str, Any]) -> ToolSchema | SchemaProblem:
    cls = validator_for(schema, default=Draft202012Validator)
    cls.check_schema(schema)
    dialect = cls.META_SCHEMA.get("$id") or cls.META_SCHEMA.get("id", "")
    specification = referencing.jsonschema.specification_with(dialect, default=referencing.jsonschema.DRAFT202012)
    root = _NO_RETRIEVAL.resolver_with_root(specification.create_resource(schema))
    unresolved = _first_unresolvable(schema, root, specification)
    if unresolved is not None:
        reason = f"the tool's input schema refers to {unresolved}, which is not inside it (mcpshield fetches no schema)"
        return SchemaProblem(printable(reason))
    return ToolSchema(cls(schema, registry=_NO_RETRIEVAL), _declarations(schema, root), schema)


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


def _deeper_than(value: object, limit: int) -> bool:
    """Whether arrays and objects nest more than `limit` levels; iterative, so never recursive."""
    pending: list[tuple[object, int]] = [(value, 0)]
    while pending:
        node, depth = pending.pop()
        children: Iterable[object]
        if isinstance(node, dict):
            children = node.values()
        elif isinstance(node, list):
            children = node
        else:
            continue
        if depth >= limit:
            return True
        pending.extend((child, depth + 1) for child in children)
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
