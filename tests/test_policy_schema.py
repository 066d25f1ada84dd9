"""Tier 1: validating tool arguments against the inputSchema a server declared, never fetching."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jsonschema._utils import equal

from mcpshield import jsonrpc
from mcpshield.ledger import Ledger
from mcpshield.policy import Context, Deny, Direction
from mcpshield.policy.args import MAX_MESSAGE_CHARS
from mcpshield.policy.engine import ProfilePolicy, single
from mcpshield.policy.schema import (
    MAX_ARGUMENT_DEPTH,
    MAX_UNIQUE_ITEMS,
    SchemaProblem,
    ToolSchema,
    compile_tool_schema,
)
from mcpshield.profile.model import Profile

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


# -- bounded work: whatever the arguments, judging them is quick and never raises ------------------

UNIQUE_TAGS = {"type": "object", "properties": {"tags": {"type": "array", "uniqueItems": True}}}


def _items(kind: str, count: int) -> list[Any]:
    if kind == "objects":
        return [{"id": i} for i in range(count)]
    if kind == "mixed":
        return [i if i % 2 else str(i) for i in range(count)]
    return [[i, str(i)] for i in range(count)]


KINDS = ["objects", "mixed", "arrays"]


@pytest.mark.parametrize("kind", KINDS)
def test_an_array_of_20000_items_under_unique_items_is_refused_in_well_under_100_ms(kind: str) -> None:
    schema, arguments = _compiled(UNIQUE_TAGS), {"tags": _items(kind, 20_000)}
    started = time.perf_counter()
    message = schema.validate(arguments, strict=True)
    assert time.perf_counter() - started < 0.5  # generous: a guard against quadratic work, not a speed target
    assert message is not None and f"more than {MAX_UNIQUE_ITEMS} items" in message and "unique" in message


@pytest.mark.parametrize("kind", KINDS)
def test_unique_items_up_to_the_bound_is_checked_in_linear_time(kind: str) -> None:
    """jsonschema compares unsortable items pair by pair: 1,000 objects took about 2 s."""
    schema, items = _compiled(UNIQUE_TAGS), _items(kind, MAX_UNIQUE_ITEMS - 1)
    started = time.perf_counter()
    assert schema.validate({"tags": items}, strict=True) is None
    message = schema.validate({"tags": [*items, items[123]]}, strict=True)
    assert time.perf_counter() - started < 1.0  # pairwise, this took about 2 s; linear, ~10 ms
    assert message == f"argument tags: items 123 and {len(items)} are equal, and the schema asks for unique items"


def test_long_arrays_are_validated_when_the_schema_asks_for_no_unique_items() -> None:
    schema = _compiled({"properties": {"tags": {"type": "array", "items": {"type": "integer"}}}})
    assert schema.validate({"tags": list(range(20_000))}, strict=True) is None


def test_unique_items_inside_data_keywords_is_not_asked_for() -> None:
    schema = _compiled({"properties": {"tags": {"type": "array", "default": {"uniqueItems": True}}}})
    assert schema.validate({"tags": list(range(20_000))}, strict=True) is None


JSON_VALUES = st.recursive(
    st.one_of(
        st.none(), st.booleans(), st.integers(-2, 2), st.sampled_from([0.0, 1.0, -0.0, 1.5]), st.text(max_size=2)
    ),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=2), inner, max_size=3)),
    max_leaves=8,
)


@settings(max_examples=300, deadline=None)
@given(items=st.lists(JSON_VALUES, max_size=6))
def test_unique_items_agrees_with_json_schema_equality(items: list[Any]) -> None:
    """1 and 1.0 are equal, true and 1 are not, object members have no order: jsonschema's
    pairwise `equal` is the definition."""
    duplicated = any(equal(a, b) for i, a in enumerate(items) for b in items[i + 1 :])
    message = _compiled(UNIQUE_TAGS).validate({"tags": items}, strict=True)
    assert (message is not None) == duplicated, message


def test_a_metaschema_unique_items_check_is_linear_too() -> None:
    draft4 = {"$schema": "http://json-schema.org/draft-04/schema#", "enum": [{"id": i} for i in range(20_000)]}
    started = time.perf_counter()
    _compiled(draft4)
    assert time.perf_counter() - started < 2.0  # pairwise would take minutes
    assert "unique" in _problem({**draft4, "enum": [{"id": 1}, {"id": 1}]}).reason


def test_thousands_of_wrong_items_are_judged_quickly() -> None:
    schema = _compiled({"properties": {"a": {"type": "array", "items": {"type": "string"}}}})
    started = time.perf_counter()
    message = schema.validate({"a": list(range(20_000))}, strict=True)
    assert time.perf_counter() - started < 1.0  # generous: a guard against one error per item, not a speed target
    assert message is not None and "is not of type 'string'" in message


@pytest.mark.parametrize(
    ("schema", "reason"),
    [
        ({"$id": "http://[::1", "type": "object"}, "ValueError"),
        ({"$id": "https://example.com/", "$defs": {"a": {"$id": "http://[::1"}}}, "ValueError"),
        ({"properties": {"a": {"pattern": "(?<"}}}, "is invalid"),
        ({"properties": {"a": {"pattern": "x{2,1}"}}}, "is invalid"),
        ({"$schema": "https://example.com/unknown", "$ref": "#/$defs/a/b/c"}, "refers to"),
    ],
)
def test_compiling_a_schema_never_raises_it_becomes_a_problem_for_that_tool(schema: object, reason: str) -> None:
    assert reason in _problem(schema).reason


def test_a_schema_that_refers_to_itself_in_a_cycle_compiles_and_refuses_calls() -> None:
    cyclic = {"$ref": "#/$defs/a", "$defs": {"a": {"$ref": "#/$defs/b"}, "b": {"$ref": "#/$defs/a"}}}
    message = _compiled(cyclic).validate({}, strict=True)
    assert message is not None and "recurses too deeply" in message


@pytest.mark.parametrize(
    ("schema", "arguments"),
    [
        ({"properties": {"a": {"$ref": "#/properties/b/type"}, "b": {"type": "string"}}}, {"a": 1}),
        ({"properties": {"a": {"multipleOf": 0.1}}}, {"a": 10**400}),
    ],
    ids=["ref-to-a-string", "multipleOf-overflow"],
)
def test_a_schema_that_fails_while_validating_refuses_the_call(schema: dict[str, Any], arguments: object) -> None:
    message = _compiled(schema).validate(arguments, strict=False)
    assert message is not None and message.startswith("the tool's input schema cannot be applied to these arguments")


def test_ten_thousand_nested_lists_are_refused_not_raised() -> None:
    value: Any = []
    for _ in range(10_000):
        value = [value]
    for schema in ({"type": "object"}, {"type": "object", "properties": {"a": {"type": "array"}}}, UNIQUE_TAGS):
        message = _compiled(schema).validate({"a": value, "tags": value}, strict=False)
        assert message == f"arguments are nested more than {MAX_ARGUMENT_DEPTH} levels deep"


JSON_SCHEMAS = st.recursive(
    st.one_of(st.booleans(), st.none(), st.integers(), st.text(max_size=4), st.just("#"), st.just("(")),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(
            st.sampled_from(
                [
                    *("type", "properties", "items", "$ref", "$id", "$defs", "pattern", "enum", "uniqueItems"),
                    *("anyOf", "multipleOf", "minimum", "required", "additionalProperties", "$schema", "const", "not"),
                ]
            ),
            inner,
            max_size=4,
        ),
    ),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(schema=JSON_SCHEMAS, arguments=st.dictionaries(st.sampled_from(["a", "b"]), JSON_VALUES, max_size=2))
def test_no_schema_and_no_arguments_make_the_check_raise(schema: object, arguments: dict[str, Any]) -> None:
    compiled = compile_tool_schema(schema)
    message = compiled.validate(arguments, strict=True)
    assert message is None or (len(message) <= MAX_MESSAGE_CHARS and message.isprintable())


def test_the_deepest_call_the_decoder_lets_through_is_refused_by_the_policy() -> None:
    """The decoder refuses nesting near Python's recursion limit; anything shallower reaches the
    schema check, which refuses what jsonschema could not descend into safely."""
    policy = ProfilePolicy(single(Profile.model_validate({"tools": {"allow": ["t"]}})))
    ask = jsonrpc.decode(b'{"jsonrpc":"2.0","id":1,"method":"tools/list"}')
    schema = b'{"type":"object","properties":{"a":{"type":"array"}}}'
    listed = jsonrpc.decode(b'{"jsonrpc":"2.0","id":1,"result":{"tools":[{"name":"t","inputSchema":' + schema + b"}]}}")
    assert isinstance(ask, jsonrpc.Message) and isinstance(listed, jsonrpc.Message)
    policy.check(listed, Context(0.0, Direction.TO_CLIENT, Ledger().open(ask, 0.0)))
    deepest = None
    for depth in range(100, 2000, 50):
        value = b"[" * depth + b"]" * depth
        line = b'{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"t","arguments":{"a":' + value + b"}}}"
        msg = jsonrpc.decode(line)
        if not isinstance(msg, jsonrpc.Message):
            break
        deepest = msg
    assert deepest is not None
    decision = policy.check(deepest, Context(0.0, Direction.TO_SERVER, None))
    assert isinstance(decision, Deny) and f"more than {MAX_ARGUMENT_DEPTH} levels deep" in decision.reason
