"""Tier 2, as a property: whatever garbage a client sends, the relay answers it and goes on."""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import LineClient, fake_argv, shield_argv
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

_ids = itertools.count()

_json_like = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)
# Lines a confused or hostile client might send: raw bytes, JSON of any shape, near-JSON-RPC.
_garbage = st.one_of(
    st.binary(max_size=60).map(lambda b: b.replace(b"\n", b"")),
    _json_like.map(lambda v: json.dumps(v).encode()),
    st.fixed_dictionaries(
        {"jsonrpc": st.sampled_from(["2.0", "1.0", 2]), "id": _json_like, "method": _json_like},
        optional={"params": _json_like, "result": _json_like, "error": _json_like},
    ).map(lambda d: json.dumps(d).encode()),
)


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz") / "received.jsonl"


@pytest.fixture(scope="module")
def relay(recorded: Path) -> Iterator[LineClient]:
    client = LineClient(shield_argv(*fake_argv("--record", str(recorded))))
    client.initialize()
    yield client
    client.kill()


def _pairs_without_repeats(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [key for key, _ in pairs]
    assert len(keys) == len(set(keys)), f"a message with a repeated key reached the server: {keys}"
    return dict(pairs)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(_garbage, max_size=5))
def test_garbage_never_stops_the_relay_or_reaches_either_side(
    relay: LineClient, recorded: Path, lines: list[bytes]
) -> None:
    probe = f"probe-{next(_ids)}"
    for line in lines:
        relay.send_raw(line + b"\n")
    relay.request(probe, "ping")
    while True:
        answer = relay.read()  # every line on stdout is JSON: nothing malformed reaches the client
        assert answer.get("jsonrpc") == "2.0"
        if answer.get("id") == probe:
            assert answer["result"] == {}
            break
    assert relay.proc.poll() is None
    for line in recorded.read_bytes().splitlines():
        message = json.loads(line, object_pairs_hook=_pairs_without_repeats)
        assert type(message) is dict
        assert message["jsonrpc"] == "2.0"
        assert ("method" in message) != ("result" in message or "error" in message)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(_garbage, max_size=5))
def test_garbage_from_the_server_never_reaches_the_client(relay: LineClient, lines: list[bytes]) -> None:
    probe = f"emit-{next(_ids)}"
    relay.call(probe, "emit", {"lines": [line.hex() for line in lines]})
    while True:
        answer = relay.read()
        assert answer.get("jsonrpc") == "2.0"
        assert ("method" in answer) != ("result" in answer or "error" in answer)
        if answer.get("id") == probe and "method" not in answer:
            assert answer["result"]["content"][0]["text"] == f"emitted {len(lines)}"
            break
        if "method" in answer and "id" in answer:
            # A garbage line that happens to be a well-formed request from the server: answer it.
            relay.send({"jsonrpc": "2.0", "id": answer["id"], "result": {}})
    assert relay.proc.poll() is None
