"""Tier 1: the fast schema check says "valid" only where jsonschema says so too."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jsonschema.validators import Draft7Validator, Draft202012Validator

from mcpshield.policy.fastschema import compile_fast

TYPES = ["string", "integer", "number", "boolean", "null", "array", "object"]
SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(-3, 3), st.floats(-3, 3, allow_nan=False), st.text(max_size=3)
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.one_of(st.lists(inner, max_size=2), st.dictionaries(st.text(max_size=2), inner, max_size=2)),
    max_leaves=4,
)
NAMES = st.sampled_from(["a", "b", "c"])

PROPERTY = st.fixed_dictionaries(
    {},
    optional={
        "type": st.one_of(
            st.sampled_from(TYPES), st.lists(st.sampled_from(TYPES), min_size=1, max_size=3, unique=True)
        ),
        "enum": st.lists(SCALARS, min_size=1, max_size=3),
        "description": st.text(max_size=5),
    },
)
SCHEMA = st.fixed_dictionaries(
    {"type": st.just("object"), "properties": st.dictionaries(NAMES, PROPERTY, max_size=3)},
    optional={"required": st.lists(NAMES, max_size=3, unique=True), "additionalProperties": st.booleans()},
)


@settings(max_examples=400, deadline=None)
@given(schema=SCHEMA, arguments=st.dictionaries(NAMES, VALUES, max_size=3), draft7=st.booleans())
def test_fast_valid_implies_jsonschema_valid(schema: dict[str, Any], arguments: dict[str, Any], draft7: bool) -> None:
    check = compile_fast(schema)
    assert check is not None  # every generated schema is in the fast subset
    validator = (Draft7Validator if draft7 else Draft202012Validator)(schema)
    if check(arguments):
        assert validator.is_valid(arguments), (schema, arguments)


def test_the_usual_flat_schema_is_fast_and_agrees() -> None:
    schema = {
        "type": "object",
        "properties": {"path": {"type": "string", "description": "where"}, "n": {"type": "integer"}},
        "required": ["path"],
    }
    check = compile_fast(schema)
    assert check is not None
    assert check({"path": "/x", "n": 3})
    assert not check({"n": 3})  # missing: left to jsonschema, which refuses it
    assert not check({"path": "/x", "n": True})  # a bool is no integer
    assert not check({"path": "/x", "n": 1.0})  # unsure (2020-12 says integer): left to jsonschema


@pytest.mark.parametrize(
    "schema",
    [
        {"type": "object", "properties": {"a": {"type": "string", "minLength": 1}}},
        {"type": "object", "properties": {"a": {"$ref": "#/$defs/x"}}, "$defs": {"x": {}}},
        {"type": "object", "patternProperties": {"^x": {}}},
        {"type": "object", "additionalProperties": {"type": "string"}},
        {"type": "object", "properties": {"a": {"type": "array", "items": {"type": "string"}}}},
        {"type": "object", "allOf": [{}]},
        {"type": "array"},
        {"type": "object", "properties": {"a": {"type": "any"}}},
        {"type": "object", "properties": {"a": {"enum": [[1]]}}},
    ],
)
def test_anything_beyond_the_flat_subset_is_left_to_jsonschema(schema: dict[str, Any]) -> None:
    assert compile_fast(schema) is None


def test_the_fast_check_never_descends_into_a_value() -> None:
    """It judges top-level types only, so no nesting can make it recurse."""
    value: Any = []
    for _ in range(10_000):
        value = [value]
    check = compile_fast({"type": "object", "properties": {"a": {"type": "array"}, "b": {"enum": ["x"]}}})
    assert check is not None
    assert check({"a": value})
    assert not check({"b": value})
