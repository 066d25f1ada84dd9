"""Tier 1: validating tool arguments against the inputSchema a server declared, never fetching."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mcpshield.policy.args import MAX_MESSAGE_CHARS
from mcpshield.policy.schema import MAX_ARGUMENT_DEPTH, SchemaProblem, ToolSchema, compile_tool_schema

WRITE_FILE = {
    "type": "object",
    "properties": {
        "path": {"type": "string"},
        "content": {"type": "string"},
        "mode": {"$ref": "#/$defs/mode"},
        "items": {"type": "array", "items": {"type": "object", "properties": {"name": {"type": "string"}}}},
    },
    "required": ["path"],
    "$defs": {"mode": {"enum": ["overwrite", "append"]}},
}


class NetworkUsed(AssertionError):
    """Raised by a socket that was asked to connect."""


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every test here would fail loudly if anything tried to open a connection."""

    def refuse(self: socket.socket, *args: Any) -> None:
        raise NetworkUsed(f"a connection was attempted to {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    yield


def _compiled(schema: object) -> ToolSchema:
    compiled = compile_tool_schema(schema)
    assert isinstance(compiled, ToolSchema), compiled
    return compiled


def _problem(schema: object) -> SchemaProblem:
    compiled = compile_tool_schema(schema)
    assert isinstance(compiled, SchemaProblem), compiled
    return compiled


@pytest.mark.parametrize(
    "arguments",
    [
        {"path": "a.txt"},
        {"path": "a.txt", "content": "", "mode": "append"},
        {"path": "a.txt", "items": [{"name": "x"}, {}]},
    ],
)
def test_arguments_that_fit_the_schema_are_valid(arguments: dict[str, Any]) -> None:
    assert _compiled(WRITE_FILE).validate(arguments, strict=True) is None


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({}, "arguments: 'path' is a required property"),
        ({"path": 3}, "argument path: 3 is not of type 'string'"),
        ({"path": "a", "mode": "truncate"}, "argument mode: 'truncate' is not one of ['overwrite', 'append']"),
        ({"path": "a", "items": [{}, {"name": 3}]}, "argument items[1].name: 3 is not of type 'string'"),
    ],
)
def test_invalid_arguments_are_refused_with_the_path_and_the_reason(arguments: dict[str, Any], message: str) -> None:
    assert _compiled(WRITE_FILE).validate(arguments, strict=False) == message


@pytest.mark.parametrize(("arguments", "kind"), [([1], "an array"), (None, "null"), ("a", "a string"), (1, "a number")])
def test_arguments_that_are_not_an_object_are_refused(arguments: object, kind: str) -> None:
    assert _compiled(WRITE_FILE).validate(arguments, strict=False) == f"arguments must be a JSON object (got {kind})"


def test_strict_mode_refuses_an_argument_the_tool_does_not_declare() -> None:
    schema = _compiled(WRITE_FILE)
    arguments = {"path": "a.txt", "overwrite_everything": True}
    assert schema.validate(arguments, strict=False) is None
    message = 'unexpected argument "overwrite_everything" (the tool declares: content, items, mode, path)'
    assert schema.validate(arguments, strict=True) == message


def test_strict_mode_says_when_a_tool_declares_no_arguments() -> None:
    message = _compiled({"type": "object"}).validate({"x": 1}, strict=True)
    assert message == 'unexpected argument "x" (the tool declares no arguments)'


def test_strict_mode_accepts_names_matching_pattern_properties() -> None:
    schema = _compiled({"type": "object", "patternProperties": {"^env_": {"type": "string"}}})
    assert schema.validate({"env_HOME": "/home/u"}, strict=True) is None
    assert schema.validate({"env_HOME": 1}, strict=True) == "argument env_HOME: 1 is not of type 'string'"
    assert schema.validate({"home": "/"}, strict=True) == (
        'unexpected argument "home" (the tool declares: names matching ^env_)'
    )


def test_strict_mode_accepts_any_name_when_additional_properties_is_a_schema() -> None:
    schema = _compiled({"type": "object", "additionalProperties": {"type": "string"}})
    assert schema.validate({"anything": "x"}, strict=True) is None
    assert schema.validate({"anything": 1}, strict=True) == "argument anything: 1 is not of type 'string'"


def test_strict_mode_is_not_opened_by_additional_properties_true() -> None:
    schema = _compiled({"type": "object", "properties": {"a": {}}, "additionalProperties": True})
    assert schema.validate({"b": 1}, strict=False) is None
    assert schema.validate({"b": 1}, strict=True) == 'unexpected argument "b" (the tool declares: a)'


def test_strict_mode_finds_properties_behind_a_ref_and_all_of() -> None:
    schema = _compiled(
        {
            "$ref": "#/$defs/Args",
            "$defs": {"Args": {"type": "object", "properties": {"q": {}}, "allOf": [{"properties": {"limit": {}}}]}},
        }
    )
    assert schema.validate({"q": "x", "limit": 3}, strict=True) is None
    assert schema.validate({"offset": 3}, strict=True) == 'unexpected argument "offset" (the tool declares: limit, q)'


@pytest.mark.parametrize(
    "schema",
    [
        {"type": "object", "properties": {"a": {"$ref": "https://example.com/x.json"}}},
        {"$id": "https://example.com/root.json", "properties": {"a": {"$ref": "other.json"}}},
        {"properties": {"a": {"$ref": "file:///etc/passwd"}}},
        {"properties": {"a": {"$ref": "#/$defs/missing"}}},
        {"allOf": [{"$dynamicRef": "https://example.com/meta#x"}]},
    ],
)
def test_a_schema_that_refers_outside_itself_is_a_problem_and_nothing_is_fetched(schema: dict[str, Any]) -> None:
    assert "refers to" in _problem(schema).reason


def test_a_remote_ref_the_compile_step_cannot_see_is_still_never_fetched() -> None:
    # A property named "enum" holds a schema, but the scan for refs skips it as data.
    schema = _compiled({"type": "object", "properties": {"enum": {"$ref": "https://example.com/x.json"}}})
    message = schema.validate({"enum": 1}, strict=False)
    assert message is not None and "never fetches" in message


def test_a_local_ref_to_defs_is_resolved() -> None:
    schema = _compiled({"properties": {"n": {"$ref": "#/$defs/positive"}}, "$defs": {"positive": {"minimum": 1}}})
    assert schema.validate({"n": 1}, strict=True) is None
    assert schema.validate({"n": 0}, strict=True) == "argument n: 0 is less than the minimum of 1"


def test_an_embedded_resource_with_its_own_id_is_resolved_without_fetching() -> None:
    schema = _compiled(
        {
            "$id": "https://example.com/root.json",
            "properties": {"n": {"$ref": "item.json"}},
            "$defs": {"item": {"$id": "item.json", "type": "integer"}},
        }
    )
    assert schema.validate({"n": 1}, strict=True) is None
    assert schema.validate({"n": "1"}, strict=True) == "argument n: '1' is not of type 'integer'"


def test_a_draft_07_schema_is_read_in_its_own_dialect() -> None:
    draft7 = {
        "$schema": "http://json-schema.org/draft-07/schema#",
        "type": "object",
        "properties": {"pair": {"type": "array", "items": [{"type": "string"}, {"type": "integer"}]}},
        "definitions": {"unused": {}},
    }
    schema = _compiled(draft7)
    assert schema.validate({"pair": ["a", 1]}, strict=True) is None
    assert schema.validate({"pair": ["a", "b"]}, strict=True) == "argument pair[1]: 'b' is not of type 'integer'"
    # Without $schema it is Draft 2020-12, where `items` must be a single schema.
    assert "invalid" in _problem({k: v for k, v in draft7.items() if k != "$schema"}).reason


def test_an_unknown_dialect_is_read_as_draft_2020_12() -> None:
    schema = _compiled({"$schema": "https://example.com/dialect", "prefixItems": [{"type": "string"}]})
    assert schema.validate({}, strict=False) is None


def test_formats_are_annotations_not_checks() -> None:
    schema = _compiled({"properties": {"email": {"type": "string", "format": "email"}}})
    assert schema.validate({"email": "not an address"}, strict=True) is None


@pytest.mark.parametrize(
    ("schema", "reason"),
    [
        ([{"type": "object"}], "not a JSON object (it is an array)"),
        (True, "not a JSON object (it is true)"),
        ({"type": "strng"}, "is invalid"),
        ({"$schema": 7}, "$schema that is not a string"),
        ({"properties": {"a": {"pattern": "(unclosed"}}}, "is invalid"),
    ],
)
def test_a_schema_that_cannot_be_used_is_a_problem(schema: object, reason: str) -> None:
    assert reason in _problem(schema).reason


def test_a_deeply_nested_argument_is_refused_without_descending_into_it() -> None:
    deep: dict[str, Any] = {}
    node = deep
    for _ in range(10 * MAX_ARGUMENT_DEPTH):
        node["a"] = {}
        node = node["a"]
    message = _compiled({"type": "object"}).validate(deep, strict=False)
    assert message == f"arguments are nested more than {MAX_ARGUMENT_DEPTH} levels deep"


def test_an_argument_just_within_the_depth_limit_is_validated() -> None:
    value: object = 1
    for _ in range(MAX_ARGUMENT_DEPTH - 1):
        value = [value]
    assert _compiled({"type": "object"}).validate({"a": value}, strict=False) is None


def test_a_schema_that_recurses_forever_refuses_instead_of_raising() -> None:
    message = _compiled({"$ref": "#"}).validate({}, strict=False)
    assert message is not None and "recurses too deeply" in message


def test_a_schema_nested_too_deeply_to_check_is_a_problem() -> None:
    schema: dict[str, Any] = {}
    node = schema
    for _ in range(3000):
        node["not"] = {}
        node = node["not"]
    assert "nested too deeply" in _problem(schema).reason


@given(value=st.text())
def test_a_refusal_is_short_and_printable_whatever_the_value(value: str) -> None:
    schema = _compiled({"properties": {"a": {"enum": ["x"]}, "b": {"type": "integer"}}})
    for message in (schema.validate({"a": value}, strict=True), schema.validate({value: 1}, strict=True)):
        if message is not None:
            assert len(message) <= MAX_MESSAGE_CHARS
            assert message.isprintable()


def test_the_network_guard_would_notice_a_fetch() -> None:
    with socket.socket() as sock, pytest.raises(NetworkUsed):
        sock.connect(("127.0.0.1", 9))
