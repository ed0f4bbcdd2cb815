"""RFC 8785 canonical form and the digest helpers, against the RFC's published vectors."""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest
import rfc8785
from hypothesis import given, settings
from hypothesis import strategies as st

from cmcp_cli.claim.canonical import (
    CanonicalizationError,
    canonical_bytes,
    canonical_sha256,
    is_sha256_tagged,
    parse_canonical,
    sha256_tagged,
)

# RFC 8785 §3.2.2 example, as a JSON text so that the numbers parse exactly as there.
RFC8785_INPUT = r"""{
  "numbers": [333333333.33333329, 1E30, 4.50, 2e-3, 0.000000000000000000000000001],
  "string": "\u20ac$\u000F\u000aA'\u0042\u0022\u005c\\\"\/",
  "literals": [null, true, false]
}"""
RFC8785_OUTPUT = (
    '{"literals":[null,true,false],"numbers":[333333333.3333333,1e+30,4.5,0.002,1e-27],'
    '"string":"€$\\u000f\\nA\'B\\"\\\\\\\\\\"/"}'
)

# RFC 8785 §3.2.3: properties sorted by UTF-16 code units, not by code points or UTF-8.
RFC8785_SORT_INPUT = (
    '{"\\u20ac":"Euro Sign","\\r":"Carriage Return","\\ufb33":"Hebrew Letter Dalet With Dagesh",'
    '"1":"One","\\ud83d\\ude00":"Emoji: Grinning Face","\\u0080":"Control",'
    '"\\u00f6":"Latin Small Letter O With Diaeresis"}'
)
RFC8785_SORT_ORDER = [
    "Carriage Return",
    "One",
    "Control",
    "Latin Small Letter O With Diaeresis",
    "Euro Sign",
    "Emoji: Grinning Face",
    "Hebrew Letter Dalet With Dagesh",
]


def test_rfc8785_example_serialises_exactly() -> None:
    assert canonical_bytes(json.loads(RFC8785_INPUT)) == RFC8785_OUTPUT.encode("utf-8")


def test_rfc8785_property_order_is_utf16() -> None:
    output = canonical_bytes(json.loads(RFC8785_SORT_INPUT)).decode("utf-8")
    values = list(json.loads(output).values())
    assert values == RFC8785_SORT_ORDER


@pytest.mark.parametrize(
    ("number", "text"),
    [
        (0.0, "0"),
        (-0.0, "0"),
        (1e21, "1e+21"),
        (1e-7, "1e-7"),
        (123456789012345680000.0, "123456789012345680000"),
    ],
)
def test_rfc8785_number_serialisation(number: float, text: str) -> None:
    assert canonical_bytes(number) == text.encode()


@pytest.mark.parametrize("value", [float("nan"), float("inf"), 2**53, "\ud800"])
def test_values_without_canonical_form_are_refused(value: Any) -> None:
    with pytest.raises(CanonicalizationError):
        canonical_bytes(value)


def test_digest_helpers() -> None:
    assert sha256_tagged(b"") == (
        "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    )
    assert canonical_sha256({"b": 1, "a": 2}) == sha256_tagged(b'{"a":2,"b":1}')
    assert is_sha256_tagged(sha256_tagged(b"x"))
    assert not is_sha256_tagged("sha256:" + "A" * 64)
    assert not is_sha256_tagged("sha256:" + "a" * 63)
    assert not is_sha256_tagged("sha512:" + "a" * 64)


# The orjson fast path must be byte-identical to rfc8785 wherever it is taken, and every
# value it does not take must still be serialised (or refused) exactly as rfc8785 does.
json_keys = st.one_of(
    st.text(max_size=6),
    st.sampled_from(["\ue000", "\U0001f600", "\uffff", "a\ud7ff", "\x7f", "\u2028", "é"]),
)
json_leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**60), max_value=2**60),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=10),
    st.sampled_from(['\x00\x1f\x7f"\\/\b\f\n\r\t', "\u2028\u2029", "\U0001f600\ue000"]),
)
json_documents = st.recursive(
    json_leaves,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(json_keys, inner, max_size=4)
    ),
    max_leaves=25,
)


@settings(max_examples=1500, deadline=None)
@given(json_documents)
def test_canonical_bytes_equal_rfc8785_everywhere(value: Any) -> None:
    try:
        expected = rfc8785.dumps(value)
    except rfc8785.CanonicalizationError:
        with pytest.raises(CanonicalizationError):
            canonical_bytes(value)
        return
    assert canonical_bytes(value) == expected


def test_utf16_order_is_kept_where_code_point_order_differs() -> None:
    value = {"\ue000": 1, "\U0001f600": 2}
    assert canonical_bytes(value) == rfc8785.dumps(value)
    assert canonical_bytes(value).index("\U0001f600".encode()) < canonical_bytes(value).index(
        "\ue000".encode()
    )


def test_parse_canonical_refuses_other_forms() -> None:
    assert parse_canonical(b'{"a":1,"b":[true,null]}') == {"a": 1, "b": [True, None]}
    for text in (b'{"b":1,"a":2}', b'{"a": 1}', b'{"a":1.0}', b'{"a":"\\u00e9"}', b"nope"):
        with pytest.raises(CanonicalizationError):
            parse_canonical(text)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        (b'{"a":[{"b":1.5}]}', "no floating-point"),
        (b'{"a":[1e+16]}', "no floating-point"),
        (b'{"a":-0.0}', "no floating-point"),
        (b'{"a":NaN}', "not JSON"),
        (b"[" * 100_000 + b"]" * 100_000, "not JSON"),
        (b'{"a":"\xff"}', "not JSON"),  # not UTF-8
        (b'{"a":1} ', "canonical"),
        (b'{"a":1}{}', "not JSON"),
        (b'{"a":"\\ud800"}', "not JSON"),
        (b'{"a":9007199254740993}', "exceeds safe integer"),
        (b'{"a":1,"a":1}', "canonical"),
    ],
)
def test_parse_canonical_names_what_is_wrong(text: bytes, reason: str) -> None:
    with pytest.raises(CanonicalizationError, match=reason):
        parse_canonical(text)


@settings(max_examples=1500, deadline=None)
@given(json_documents)
def test_parse_canonical_accepts_exactly_the_rfc8785_form(value: Any) -> None:
    try:
        canonical = rfc8785.dumps(value)
    except rfc8785.CanonicalizationError:
        return
    read_back = json.loads(canonical)
    try:  # cMCP's domain: integers within 2**53, no floats anywhere
        rfc8785.dumps(read_back)
        acceptable = not _holds_float(read_back)
    except rfc8785.CanonicalizationError:
        acceptable = False
    if not acceptable:
        with pytest.raises(CanonicalizationError):
            parse_canonical(canonical)
        return
    assert parse_canonical(canonical) == json.loads(canonical)
    for other in (orjson.dumps(value, option=orjson.OPT_SORT_KEYS), json.dumps(value).encode()):
        if other != canonical:
            with pytest.raises(CanonicalizationError):
                parse_canonical(other)


def _holds_float(value: Any) -> bool:
    if isinstance(value, float):
        return True
    if isinstance(value, dict):
        return any(_holds_float(v) for v in value.values())
    if isinstance(value, list):
        return any(_holds_float(v) for v in value)
    return False
