"""Tier 1: the Redactor finds every form of a secret and never breaks a JSON-RPC line."""

from __future__ import annotations

import base64
import json
import re
from typing import Any
from urllib.parse import quote, quote_plus

import orjson
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from mcpshield.policy.redact import MIN_SECRET_CHARS, Redactor

TOKEN = "ghp_R2d2C3po0123456789abcdefXYZ"  # noqa: S105  made up, shaped like a GitHub token
# Quotes, a backslash, a slash, non-ASCII in and beyond the BMP, an HTML character.
AWKWARD = 'p"a\\ss/wörd€😀<&'


def redacted(value: str, data: bytes, json_context: bool = False) -> tuple[bytes, int]:
    return Redactor({"SECRET": value}).redact(data, json_context)


def b64(data: bytes, urlsafe: bool = False, padded: bool = True) -> str:
    encoded = (base64.urlsafe_b64encode if urlsafe else base64.b64encode)(data).decode()
    return encoded if padded else encoded.rstrip("=")


def json_forms(value: str) -> dict[str, str]:
    """`value` written into a JSON string by different encoders (the whole string value)."""
    return {
        "orjson": orjson.dumps(value).decode(),
        "json.dumps ascii": json.dumps(value),
        "json.dumps utf-8": json.dumps(value, ensure_ascii=False),
        "slash escaped": json.dumps(value).replace("/", "\\/"),
        "upper-case hex": re.sub(r"\\u[0-9a-f]{4}", lambda m: "\\u" + m[0][2:].upper(), json.dumps(value)),
        "json text in a string": json.dumps(json.dumps({"token": value})),
        "orjson text in a string": orjson.dumps(orjson.dumps({"token": value}).decode()).decode(),
    }


# -- each form, in a line of JSON ----------------------------------------------------------------


@pytest.mark.parametrize("value", [TOKEN, AWKWARD])
@pytest.mark.parametrize("encoder", list(json_forms(TOKEN)))
def test_a_json_escaped_secret_is_replaced_and_the_line_still_parses(value: str, encoder: str) -> None:
    line = b'{"jsonrpc":"2.0","id":1,"result":{"text":' + json_forms(value)[encoder].encode() + b"}}"
    out, count = redacted(value, line, json_context=True)
    assert count == 1
    text = orjson.loads(out)["result"]["text"]
    assert "[REDACTED:SECRET]" in text
    assert value not in text
    assert "ss/w" not in text


@pytest.mark.parametrize("value", [TOKEN, AWKWARD])
@pytest.mark.parametrize(
    "encode",
    [
        lambda v: quote(v, safe=""),
        lambda v: quote_plus(v, safe=""),
        lambda v: re.sub("%[0-9A-F]{2}", lambda m: m[0].lower(), quote(v, safe="")),
        lambda v: quote(v, safe="!'()*"),
    ],
    ids=["quote", "quote_plus", "lower-case hex", "encodeURIComponent"],
)
def test_a_url_encoded_secret_is_replaced(value: str, encode: Any) -> None:
    url = "https://api.example.com/v1/items?token=" + encode(value) + "&page=2"
    out, count = redacted(value, orjson.dumps({"url": url}), json_context=True)
    assert count == 1
    assert orjson.loads(out) == {"url": "https://api.example.com/v1/items?token=[REDACTED:SECRET]&page=2"}


@pytest.mark.parametrize("value", [TOKEN, AWKWARD, "abcdefgh"])
@pytest.mark.parametrize("prefix", ["", "u:", "user:", "a longer prefix!"])
@pytest.mark.parametrize("suffix", ["", "x", "xy", ":and more after it"])
@pytest.mark.parametrize("urlsafe", [False, True])
@pytest.mark.parametrize("padded", [False, True])
def test_a_base64_secret_is_replaced_at_every_alignment(
    value: str, prefix: str, suffix: str, urlsafe: bool, padded: bool
) -> None:
    encoded = b64((prefix + value + suffix).encode(), urlsafe, padded)
    out, count = redacted(value, orjson.dumps({"text": encoded}), json_context=True)
    assert count == 1
    text = orjson.loads(out)["text"]
    assert "[REDACTED:SECRET]" in text
    # Left: the text around it, at most one character on each side sharing bits with the
    # secret, and padding.
    around = len((prefix + suffix).encode()) * 4 / 3
    assert len(text) - len("[REDACTED:SECRET]") <= around + 2 + 2


def test_a_token_inside_basic_authorization_is_replaced() -> None:
    header = "Authorization: Basic " + b64(b"octocat:" + TOKEN.encode())
    out, count = redacted(TOKEN, header.encode() + b"\n")
    assert count == 1
    assert out.startswith(b"Authorization: Basic b2N0b2Nhd")
    assert out.endswith(b"[REDACTED:SECRET]\n")


def test_a_slash_escaped_base64_secret_is_replaced() -> None:
    value = "\xff\xff\xff" * 4  # encodes to slashes only
    encoded = b64(value.encode())
    assert "/" in encoded
    line = json.dumps({"text": encoded}).replace("/", "\\/").encode()
    out, count = redacted(value, line, json_context=True)
    assert count == 1
    assert orjson.loads(out) == {"text": "[REDACTED:SECRET]"}


@pytest.mark.parametrize("value", [TOKEN, AWKWARD, "line one\nline two\ttab"])
def test_the_raw_secret_is_replaced_in_plain_text(value: str) -> None:
    out, count = redacted(value, b"server: connecting with " + value.encode() + b" now\n")
    assert (out, count) == (b"server: connecting with [REDACTED:SECRET] now\n", 1)


def test_a_secret_from_the_environment_with_undecodable_bytes_is_replaced_as_bytes() -> None:
    value = b"token-\xff\xfe-bytes".decode("utf-8", "surrogateescape")
    out, count = redacted(value, b"got token-\xff\xfe-bytes\n")
    assert (out, count) == (b"got [REDACTED:SECRET]\n", 1)


# -- what is not a secret, and what is not touched -----------------------------------------------


def test_values_under_eight_characters_are_ignored() -> None:
    assert MIN_SECRET_CHARS == 8
    assert not Redactor({"SHORT": "1234567"}).active
    assert Redactor({"LONG_ENOUGH": "12345678"}).active
    out, count = Redactor({"SHORT": "1234567", "LONG": "abcdefgh"}).redact(b"1234567 abcdefgh", False)
    assert (out, count) == (b"1234567 [REDACTED:LONG]", 1)


def test_without_secrets_the_redactor_is_inactive_and_returns_its_input() -> None:
    redactor = Redactor({})
    data = b'{"jsonrpc":"2.0","id":1,"result":{}}'
    assert not redactor.active
    assert redactor.redact(data, True)[0] is data


def test_nothing_to_replace_returns_the_very_same_bytes() -> None:
    data = b'{"jsonrpc":"2.0","id":1,"result":{"text":"nothing secret here"}}'
    out, count = Redactor({"SECRET": TOKEN}).redact(data, True)
    assert out is data
    assert count == 0


def test_the_redactor_never_shows_a_value() -> None:
    redactor = Redactor({"GITHUB_TOKEN": TOKEN})
    assert TOKEN not in repr(redactor)
    assert TOKEN[:8] not in repr(redactor._any) + repr(redactor._json)
    assert "GITHUB_TOKEN" in repr(redactor)


def test_a_label_that_would_need_escaping_is_refused() -> None:
    with pytest.raises(ValueError, match="label"):
        Redactor({'bad"label': TOKEN})


# -- overlaps ------------------------------------------------------------------------------------


def test_overlapping_occurrences_become_one_replacement() -> None:
    out, count = redacted("abcdabcd", b"xx abcdabcdabcd yy")
    assert (out, count) == (b"xx [REDACTED:SECRET] yy", 1)


def test_adjacent_occurrences_are_replaced_one_by_one() -> None:
    out, count = redacted(TOKEN, (TOKEN + TOKEN).encode())
    assert (out, count) == (b"[REDACTED:SECRET][REDACTED:SECRET]", 2)


def test_two_secrets_overlapping_leave_no_fragment_of_either() -> None:
    redactor = Redactor({"FIRST": "abcdefgh", "SECOND": "efghijklmn"})
    out, count = redactor.redact(b"<abcdefghijklmn>", False)
    assert (out, count) == (b"<[REDACTED:SECOND]>", 1)


def test_a_secret_inside_another_secret_is_named_by_the_longer_one() -> None:
    redactor = Redactor({"SHORTER": "abcdefgh", "LONGER": "xxabcdefghyy"})
    assert redactor.redact(b"[xxabcdefghyy]", False) == (b"[[REDACTED:LONGER]]", 1)
    assert redactor.redact(b"[abcdefgh]", False) == (b"[[REDACTED:SHORTER]]", 1)


# -- JSON is never broken ------------------------------------------------------------------------


def test_a_secret_of_digits_is_replaced_in_strings_but_not_in_numbers() -> None:
    line = b'{"id":912345678,"result":{"pin":"12345678","n":[123456789, 1.12345678e5]}}'
    out, count = redacted("12345678", line, json_context=True)
    assert count == 1
    assert orjson.loads(out) == {"id": 912345678, "result": {"pin": "[REDACTED:SECRET]", "n": [123456789, 112345.678]}}


def test_a_match_starting_inside_an_escape_is_not_a_secret_and_is_left_alone() -> None:
    # The text holds a newline then "abcdefgh": its bytes hold `nabcdefgh` after a backslash.
    line = orjson.dumps({"text": "\nabcdefgh"})
    assert redacted("nabcdefgh", line, json_context=True) == (line, 0)
    # Here the bytes hold `41bcdefgh` inside the escape \u0041.
    line = b'{"text":"\\u0041bcdefgh"}'
    assert redacted("41bcdefgh", line, json_context=True) == (line, 0)


def test_a_secret_after_an_escaped_backslash_is_replaced() -> None:
    line = orjson.dumps({"text": "C:\\" + TOKEN})
    out, count = redacted(TOKEN, line, json_context=True)
    assert count == 1
    assert orjson.loads(out) == {"text": "C:\\[REDACTED:SECRET]"}


def test_the_raw_form_of_a_secret_json_would_escape_is_not_used_in_json() -> None:
    # `a"bcdefgh` cannot appear raw in valid JSON; its escaped form is what is found there.
    line = orjson.dumps({"text": 'a"bcdefgh'})
    out, count = redacted('a"bcdefgh', line, json_context=True)
    assert (orjson.loads(out), count) == ({"text": "[REDACTED:SECRET]"}, 1)


# -- properties ----------------------------------------------------------------------------------

_special = st.sampled_from(list("\"\\/'<>&+=%:?#\n\t\x00\x7f é€😀\u2028"))
_secrets = st.text(st.one_of(_special, st.characters(exclude_categories=["Cs"])), min_size=8, max_size=40)
_keys = st.text("abcxyz_", max_size=6)  # shorter than any secret: keys are never redacted here
_MARK = "\x00MARK\x00"
_leaves = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
    | st.just(_MARK)
)
_trees = st.recursive(
    _leaves, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_keys, inner, max_size=4), max_leaves=12
)


def _embed(secret: str, how: str) -> str:
    raw = secret.encode()
    return {
        "raw": secret,
        "basic": "Basic " + b64(b"user:" + raw),
        "basic url-safe unpadded": b64(b"u:" + raw, urlsafe=True, padded=False) + "-tail",
        "url": "https://example.com/?q=" + quote(secret, safe="") + "&x=1",
        "url plus": "q=" + quote_plus(secret),
        "json text": json.dumps({"env": {"TOKEN": secret}}),
        "orjson text": orjson.dumps([secret]).decode(),
    }[how]


_EMBEDDINGS = ["raw", "basic", "basic url-safe unpadded", "url", "url plus", "json text", "orjson text"]


def _encode(message: Any, encoder: str) -> bytes:
    if encoder == "orjson":
        return orjson.dumps(message)
    text = json.dumps(message, ensure_ascii=encoder != "json utf-8")
    return (text.replace("/", "\\/") if encoder == "json slashes" else text).encode()


def _forms_of(secret: str) -> set[str]:
    """What must not survive in any string of the output: the test's own list of forms."""
    raw = secret.encode()
    forms = {secret, quote(secret, safe=""), quote_plus(secret)}
    forms |= {json.dumps(secret)[1:-1], orjson.dumps(secret).decode()[1:-1]}
    for skip in range(3):
        encoded = b64(bytes(skip) + raw)
        first, whole = (8 * skip + 5) // 6, 8 * (skip + len(raw)) // 6
        forms |= {encoded[first:whole], encoded[first:whole].replace("+", "-").replace("/", "_")}
    return forms


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [*value, *(s for item in value.values() for s in _strings(item))]
    if isinstance(value, list):
        return [s for item in value for s in _strings(item)]
    return []


def _shape(value: Any) -> Any:
    """The structure with every string's text blanked: keys, nesting and the other values stay."""
    if isinstance(value, str):
        return str
    if isinstance(value, dict):
        return {key: _shape(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_shape(item) for item in value]
    return value


def _fill(tree: Any, texts: st.DrawFn, secret: str) -> Any:
    if tree == _MARK:
        return (
            texts(st.text(max_size=10))
            + _embed(secret, texts(st.sampled_from(_EMBEDDINGS)))
            + texts(st.text(max_size=10))
        )
    if isinstance(tree, dict):
        return {key: _fill(item, texts, secret) for key, item in tree.items()}
    if isinstance(tree, list):
        return [_fill(item, texts, secret) for item in tree]
    return tree


@st.composite
def _messages(draw: st.DrawFn, secret: str) -> Any:
    tree = draw(_trees)
    text = {"type": "text", "text": _MARK}
    result = {"content": [text], "structuredContent": tree}
    return {"jsonrpc": "2.0", "id": draw(st.integers(0, 2**31)), "result": _fill(result, draw, secret)}


_ENCODERS = st.sampled_from(["orjson", "json ascii", "json utf-8", "json slashes"])


@settings(max_examples=400, deadline=None)
@given(data=st.data(), secret=_secrets, encoder=_ENCODERS)
def test_any_message_embedding_a_secret_stays_valid_and_loses_every_form_of_it(
    data: st.DataObject, secret: str, encoder: str
) -> None:
    message = data.draw(_messages(secret))
    line = _encode(message, encoder)
    out, count = Redactor({"API_TOKEN": secret}).redact(line, json_context=True)
    parsed = orjson.loads(out)
    assert _shape(parsed) == _shape(message)
    forms = _forms_of(secret)
    for text in _strings(parsed):
        assert not [form for form in forms if form in text], text
    assert count >= 1


@settings(max_examples=300, deadline=None)
@given(tree=_trees, secret=_secrets, encoder=_ENCODERS)
def test_a_message_without_the_secret_is_returned_untouched(tree: Any, secret: str, encoder: str) -> None:
    line = _encode({"jsonrpc": "2.0", "id": 1, "result": {"structuredContent": tree}}, encoder)
    assume(secret not in line.decode())
    assume(not any(form.encode() in line for form in _forms_of(secret)))
    out, count = Redactor({"API_TOKEN": secret}).redact(line, json_context=True)
    assert out is line
    assert count == 0
