"""Tier 1: framing and decoding as tables and properties, no processes."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mcpshield import jsonrpc
from mcpshield.jsonrpc import DecodeFailure, Kind, LineFramer, Message, Oversized
from mcpshield.ledger import Ledger


def _decoded(line: bytes) -> Message:
    msg = jsonrpc.decode(line)
    assert isinstance(msg, Message), msg
    return msg


def _refused(line: bytes) -> DecodeFailure:
    failure = jsonrpc.decode(line)
    assert isinstance(failure, DecodeFailure), failure
    return failure


# -- framing ----------------------------------------------------------------------------


def test_lines_split_on_newline_only_so_unicode_separators_stay_inside_a_message() -> None:
    message = json.dumps({"jsonrpc": "2.0", "method": "x", "params": {"t": "a\u2028b\u0085c\rd"}}, ensure_ascii=False)
    raw = message.encode() + b"\n"
    assert LineFramer().feed(raw) == [message.encode()]


def test_a_line_split_across_chunks_is_joined() -> None:
    framer = LineFramer()
    assert framer.feed(b'{"a":') == []
    assert framer.feed(b"1}\n{") == [b'{"a":1}']
    assert framer.feed(b"}\n") == [b"{}"]


@given(st.lists(st.binary(max_size=40).map(lambda b: b.replace(b"\n", b"")), max_size=12), st.data())
def test_any_chunking_yields_the_same_lines(lines: list[bytes], data: st.DataObject) -> None:
    stream = b"".join(line + b"\n" for line in lines)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=8)))
    framer = LineFramer()
    out: list[bytes | Oversized] = []
    start = 0
    for cut in [*cuts, len(stream)]:
        out.extend(framer.feed(stream[start:cut]))
        start = cut
    assert out == lines


def test_an_oversized_line_is_skipped_without_being_buffered_whole() -> None:
    framer = LineFramer(max_bytes=100)
    assert framer.feed(b'{"jsonrpc":"2.0","id":7,"method":"x","params":{"p":"' + b"y" * 80) == []
    for _ in range(50):
        assert framer.feed(b"y" * 1000) == []
    held = sum(len(p) for p in framer._parts) + len(framer._head) + len(framer._tail)
    assert held <= 2 * jsonrpc.OVERSIZE_KEEP_BYTES
    done = framer.feed(b'"}}\n{"next":1}\n')
    assert isinstance(done[0], Oversized)
    assert done[0].size > 50_000
    assert jsonrpc.salvage_id(done[0]) == 7
    assert done[1] == b'{"next":1}'


def test_a_complete_oversized_line_in_one_chunk_is_reported_too() -> None:
    line = b'{"method":"x","params":{},"jsonrpc":"2.0","id":"abc"}'
    (out,) = LineFramer(max_bytes=10).feed(line + b"\n")
    assert isinstance(out, Oversized)
    assert jsonrpc.salvage_id(out) == "abc"


@pytest.mark.parametrize(
    ("head", "tail", "expected"),
    [
        (b'{"jsonrpc":"2.0","id":5,"method":"x"', b"", 5),
        (b'{"id":"r-1","jsonrpc":"2.0"', b"", "r-1"),
        (b'{"jsonrpc":"2.0","method":"x","params":{"id":3', b'"}}', None),
        (b'{"method":"x","params":{"a":1', b'"a"},"jsonrpc":"2.0","id":0}', 0),
        (b'{"method":"x","params":{"a":1', b'"a","id":9}}', None),
    ],
)
def test_only_a_top_level_id_is_salvaged(head: bytes, tail: bytes, expected: object) -> None:
    assert jsonrpc.salvage_id(Oversized(1, head, tail)) == expected


# -- decoding ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "kind", "msg_id", "method"),
    [
        (b'{"jsonrpc":"2.0","id":1,"method":"tools/list"}', Kind.REQUEST, 1, "tools/list"),
        (b'{"jsonrpc":"2.0","id":0,"method":"ping"}', Kind.REQUEST, 0, "ping"),
        (b'{"jsonrpc":"2.0","id":9007199254740991,"method":"ping"}', Kind.REQUEST, 2**53 - 1, "ping"),
        (b'{"jsonrpc":"2.0","id":"a:b","method":"server/discover"}', Kind.REQUEST, "a:b", "server/discover"),
        (
            b'{"jsonrpc":"2.0","method":"notifications/initialized"}',
            Kind.NOTIFICATION,
            None,
            "notifications/initialized",
        ),
        (b'{"jsonrpc":"2.0","id":1,"result":{}}', Kind.RESPONSE, 1, None),
        (b'{"jsonrpc":"2.0","id":"x","error":{"code":-32601,"message":"no"}}', Kind.RESPONSE, "x", None),
        (b'{"jsonrpc":"2.0","id":null,"error":{"code":-32700,"message":"parse"}}', Kind.RESPONSE, None, None),
        (b' {"jsonrpc" : "2.0", "id" : 2, "method" : "x"}\r', Kind.REQUEST, 2, "x"),
        (b'{"jsonrpc":"2.0","id":3,"method":"x","params":{"n":123456789012345678901234567890}}', Kind.REQUEST, 3, "x"),
    ],
)
def test_well_formed_messages_decode(line: bytes, kind: Kind, msg_id: object, method: str | None) -> None:
    msg = _decoded(line)
    assert (msg.kind, msg.id, msg.method) == (kind, msg_id, method)
    assert msg.raw is line


@pytest.mark.parametrize(
    ("line", "code"),
    [
        (b"not json", jsonrpc.PARSE_ERROR),
        (b'{"jsonrpc":"2.0","id":1,"method":"x"', jsonrpc.PARSE_ERROR),
        (b'{"jsonrpc":"2.0","id":1,"method":"\xff"}', jsonrpc.PARSE_ERROR),
        (b'{"jsonrpc":"2.0","id":1,"method":"x","params":{"a":NaN}}', jsonrpc.PARSE_ERROR),
        (b'{"jsonrpc":"2.0","id":1,"method":"x","params":{"a":Infinity}}', jsonrpc.PARSE_ERROR),
        (b'\xef\xbb\xbf{"jsonrpc":"2.0","id":1,"method":"x"}', jsonrpc.PARSE_ERROR),
        (b'[{"jsonrpc":"2.0","id":1,"method":"x"}]', jsonrpc.INVALID_REQUEST),
        (b"[]", jsonrpc.INVALID_REQUEST),
        (b'"hello"', jsonrpc.INVALID_REQUEST),
        (b"42", jsonrpc.INVALID_REQUEST),
        (b'{"id":1,"method":"x"}', jsonrpc.INVALID_REQUEST),
        (b'{"jsonrpc":"1.0","id":1,"method":"x"}', jsonrpc.INVALID_REQUEST),
        (b'{"jsonrpc":"2.0","id":true,"method":"x"}', jsonrpc.INVALID_REQUEST),
        (b'{"jsonrpc":"2.0","id":1.5,"method":"x"}', jsonrpc.INVALID_REQUEST),
        (b'{"jsonrpc":"2.0","id":null,"method":"x"}', jsonrpc.INVALID_REQUEST),
        (b'{"jsonrpc":"2.0","id":{},"method":"x"}', jsonrpc.INVALID_REQUEST),
        (b'{"jsonrpc":"2.0","id":1,"method":7}', jsonrpc.INVALID_REQUEST),
        (b'{"jsonrpc":"2.0","id":1,"method":"x","params":[1,2]}', jsonrpc.INVALID_REQUEST),
        (b'{"jsonrpc":"2.0","id":1,"result":{},"error":{}}', jsonrpc.INVALID_REQUEST),
        (b'{"jsonrpc":"2.0","id":1,"method":"x","result":{}}', jsonrpc.INVALID_REQUEST),
        (b'{"jsonrpc":"2.0","method":"x","error":{}}', jsonrpc.INVALID_REQUEST),
        (b'{"jsonrpc":"2.0","result":{}}', jsonrpc.INVALID_REQUEST),
        (b'{"jsonrpc":"2.0"}', jsonrpc.INVALID_REQUEST),
    ],
)
def test_malformed_messages_are_refused_with_the_right_code(line: bytes, code: int) -> None:
    assert _refused(line).code == code


@pytest.mark.parametrize(
    "line",
    [
        b'{"jsonrpc":"2.0","id":1,"method":"tools/call","method":"ping"}',
        b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"read","name":"write"}}',
        b'{"jsonrpc":"2.0","id":1,"method":"x","params":{"url":"http://a:b","a":{"k":1,"k":2}}}',
        b'{"jsonrpc":"2.0","id":1,"method":"x","params":{"s":"\\"q:\\"","a":1,"a":1}}',
        b'{"jsonrpc":"2.0","id":1,"method":"x","params":{"a":1,"\\u0061":2}}',
        b'{"jsonrpc":"2.0","id":1,"id":2,"method":"x"}',
    ],
)
def test_a_repeated_key_anywhere_is_refused(line: bytes) -> None:
    failure = _refused(line)
    assert failure.code == jsonrpc.INVALID_REQUEST
    assert "repeat" in failure.reason


def test_colons_inside_strings_are_not_mistaken_for_keys() -> None:
    line = b'{"jsonrpc":"2.0","id":"urn:x:1","method":"resources/read","params":{"uri":"file:///a:b","t":"12:00"}}'
    assert _decoded(line).params["uri"] == "file:///a:b"


def test_a_refused_request_keeps_its_id_and_kind_for_the_answer() -> None:
    failure = _refused(b'{"jsonrpc":"2.0","id":"k","method":"x","params":[]}')
    assert (failure.id, failure.kind) == ("k", Kind.REQUEST)
    failure = _refused(b'{"jsonrpc":"2.0","id":4,"result":1,"result":2}')
    assert (failure.id, failure.kind) == (4, Kind.RESPONSE)


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=20,
)


@given(st.dictionaries(st.text(max_size=6), _json_values, max_size=5))
def test_any_object_without_repeats_decodes(params: dict[str, Any]) -> None:
    line = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "m", "params": params}, ensure_ascii=False).encode()
    assert _decoded(line).params == params


@given(st.dictionaries(st.text(max_size=6), _json_values, min_size=1, max_size=5), st.data())
def test_any_repeated_key_is_detected(params: dict[str, Any], data: st.DataObject) -> None:
    key = data.draw(st.sampled_from(sorted(params)))
    text = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "m", "params": params}, ensure_ascii=False)
    # Append the same key once more at the end of params, so the object names it twice.
    extra = json.dumps(key, ensure_ascii=False) + ":" + json.dumps(params[key])
    assert text.endswith("}}")
    line = (text[:-2] + "," + extra + "}}").encode()
    assert "repeat" in _refused(line).reason


@pytest.mark.parametrize(
    ("line", "msg_id", "kind"),
    [
        (rb'{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"\ud800"}}', 7, Kind.REQUEST),
        (rb'{"jsonrpc":"2.0","id":7,"result":{"text":"a\udc00b"}}', 7, Kind.RESPONSE),
        (rb'{"jsonrpc":"2.0","method":"note","params":{"\udfff":1}}', None, Kind.NOTIFICATION),
        (rb'{"jsonrpc":"2.0","id":"\ud83d","method":"ping"}', None, Kind.REQUEST),  # no id to answer with
    ],
)
def test_a_lone_surrogate_escape_is_refused(line: bytes, msg_id: object, kind: Kind) -> None:
    failure = _refused(line)
    assert failure.code == jsonrpc.INVALID_REQUEST
    assert "lone UTF-16 surrogate" in failure.reason
    assert (failure.id, failure.kind) == (msg_id, kind)
    json.loads(jsonrpc.error_response(failure.id, failure.code, failure.reason))  # an answer can be written


def test_a_surrogate_pair_still_decodes() -> None:
    assert _decoded(rb'{"jsonrpc":"2.0","id":1,"method":"x","params":{"s":"\ud83d\ude00"}}').params == {
        "s": "\U0001f600"
    }


def test_error_answers_are_one_line_json_rpc() -> None:
    raw = jsonrpc.error_response("a", jsonrpc.INVALID_PARAMS, "Unknown tool: x")
    assert raw.endswith(b"\n")
    assert raw.count(b"\n") == 1
    assert json.loads(raw) == {"jsonrpc": "2.0", "id": "a", "error": {"code": -32602, "message": "Unknown tool: x"}}


def test_arguments_hash_ignores_key_order_and_spacing() -> None:
    assert jsonrpc.arguments_hash({"a": 1, "b": [1, 2]}) == jsonrpc.arguments_hash({"b": [1, 2], "a": 1})
    assert jsonrpc.arguments_hash({"a": 1}) != jsonrpc.arguments_hash({"a": 2})
    assert len(jsonrpc.arguments_hash({"n": 2**70})) == 64


def test_the_ledger_keeps_string_and_number_ids_apart() -> None:
    ledger = Ledger()
    number = _decoded(b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a","arguments":{"x":1}}}')
    string = _decoded(b'{"jsonrpc":"2.0","id":"1","method":"ping"}')
    assert ledger.open(number, 0.0) is not None
    assert ledger.open(string, 0.0) is not None
    assert ledger.open(number, 0.0) is None, "an id already in flight is refused"
    entry = ledger.close(1)
    assert entry is not None
    assert (entry.method, entry.tool) == ("tools/call", "a")
    assert entry.args_hash == jsonrpc.arguments_hash({"x": 1})
    assert ledger.close(1) is None
    assert "1" in ledger
    ledger.cancel("1", 0.0)
    (left,) = ledger.drain()
    assert left.cancelled


def test_a_number_too_large_for_a_double_is_refused() -> None:
    failure = jsonrpc.decode(b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"arguments":{"n":1e400}}}')
    assert isinstance(failure, jsonrpc.DecodeFailure)
    assert "infinity" in failure.reason
    assert (failure.id, failure.kind, failure.code) == (1, jsonrpc.Kind.REQUEST, jsonrpc.INVALID_REQUEST)
