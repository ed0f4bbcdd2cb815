"""`Mcp-Param-*` headers (2026-07-28): computed from the body, and checked against it, the
way the official SDK's client and server do."""

from __future__ import annotations

from typing import Any

import pytest
from mcp.shared.inbound import mcp_param_headers, validate_mcp_param_headers, x_mcp_header_map

from cmcp_cli.wire.mcp_params import decode_value, encode_value, param_headers, param_mismatch

SCHEMA = {
    "type": "object",
    "properties": {
        "region": {"type": "string", "x-mcp-header": "Region"},
        "count": {"type": "integer", "x-mcp-header": "Count"},
        "dry": {"type": "boolean", "x-mcp-header": "Dry"},
        "nested": {
            "type": "object",
            "properties": {"zone": {"type": "string", "x-mcp-header": "Zone"}},
        },
        "plain": {"type": "string"},
    },
}


@pytest.mark.parametrize(
    "arguments",
    [
        {"region": "eu-west", "count": 3, "dry": True, "nested": {"zone": "a"}},
        {"region": "  café  ", "count": 10**30},
        {"plain": "x"},
        {"region": "=?base64?eA==?=", "dry": False},
    ],
)
def test_the_headers_sent_upstream_are_the_sdk_clients(arguments: dict[str, Any]) -> None:
    ours = param_headers(SCHEMA, arguments)
    theirs = mcp_param_headers(x_mcp_header_map(SCHEMA), arguments)
    assert ours == {name.lower(): value for name, value in theirs.items()}
    assert validate_mcp_param_headers(SCHEMA, arguments, ours) is None
    assert param_mismatch(SCHEMA, arguments, list(ours.items())) is None


@pytest.mark.parametrize(
    ("arguments", "headers", "reason"),
    [
        ({"region": "us"}, [("mcp-param-region", "eu")], "does not match"),
        ({"region": "us"}, [], "is missing"),
        ({}, [("mcp-param-region", "us")], "is not"),
        (
            {"region": "us"},
            [("mcp-param-region", "us"), ("mcp-param-region", "us")],
            "more than once",
        ),
        ({"region": "us"}, [("mcp-param-region", "=?base64?!!?=")], "does not match"),
        ({"count": 42}, [("mcp-param-count", "42.5")], "does not match"),
    ],
)
def test_a_disagreement_is_named(
    arguments: dict[str, Any], headers: list[tuple[str, str]], reason: str
) -> None:
    found = param_mismatch(SCHEMA, arguments, headers)
    assert found is not None
    assert reason in found
    if len(dict(headers)) == len(headers):  # a mapping cannot carry a duplicate
        assert validate_mcp_param_headers(SCHEMA, arguments, dict(headers)) is not None


def test_integers_compare_as_numbers() -> None:
    assert param_mismatch(SCHEMA, {"count": 42}, [("mcp-param-count", "42.0")]) is None
    assert validate_mcp_param_headers(SCHEMA, {"count": 42}, {"mcp-param-count": "42.0"}) is None


def test_values_round_trip_through_the_base64_wrapping() -> None:
    for value in ["plain", " edge ", "naïve", "line\nbreak", "=?base64?x?="]:
        assert decode_value(encode_value(value)) == value
    assert decode_value("=?base64?not base64?=") is None
