"""Tool arguments as Cedar values, and locating statements in Cedar source."""

from __future__ import annotations

from typing import Any

import pytest

from cmcp_cli.errors import PolicyRequestError
from cmcp_cli.policy.request import CedarRequest, cedar_record, tool_call_request
from cmcp_cli.policy.source import split_statements


def test_json_values_map_to_cedar_values() -> None:
    record = cedar_record(
        {
            "s": "text",
            "n": 42,
            "neg": -(2**63),
            "b": True,
            "f": 1.5,
            "huge": 2**63,
            "none": None,
            "list": [1, None, "x"],
            "nested": {"k": {"deeper": False}},
        }
    )
    assert record == {
        "s": "text",
        "n": 42,
        "neg": -(2**63),
        "b": True,
        "f": "1.5",
        "huge": "9223372036854775808",
        "list": [1, "x"],
        "nested": {"k": {"deeper": False}},
    }


@pytest.mark.parametrize("key", ["__entity", "__extn", "__expr"])
def test_cedar_escape_keys_cannot_be_smuggled_in_arguments(key: str) -> None:
    with pytest.raises(PolicyRequestError, match="reserved by Cedar's JSON format"):
        cedar_record({"target": {key: {"type": "Agent", "id": "admin"}}})
    with pytest.raises(PolicyRequestError, match=r"arguments\.list\[0\]"):
        cedar_record({"list": [{key: "x"}]})


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"x": float("nan")}, "not a JSON number"),
        ({1: "x"}, "is not a string"),
        ({"x": object()}, "is not a JSON value"),
    ],
)
def test_unrepresentable_arguments_are_refused(arguments: dict[Any, Any], message: str) -> None:
    with pytest.raises(PolicyRequestError, match=message):
        cedar_record(arguments)


def test_argument_nesting_is_bounded() -> None:
    deep: dict[str, Any] = {}
    cursor = deep
    for _ in range(40):
        cursor["d"] = {}
        cursor = cursor["d"]
    with pytest.raises(PolicyRequestError, match="nested deeper than 32"):
        cedar_record(deep)


def test_arguments_must_be_an_object() -> None:
    with pytest.raises(PolicyRequestError, match="must be a JSON object"):
        cedar_record(["not", "an", "object"])  # type: ignore[arg-type]


def test_request_round_trips_through_its_json_form() -> None:
    request = tool_call_request(
        agent_id="spiffe://example.org/agent/ü",
        tool="名前.lookup",
        arguments={"q": "😀"},
        data_class="internal",
        session_max_sensitivity="confidential",
        platform="tpm2",
    )
    document = request.to_json()
    assert document["principal"] == {"type": "Agent", "id": "spiffe://example.org/agent/ü"}
    assert document["action"] == {"type": "Action", "id": "call_tool"}
    assert document["resource"] == {"type": "Tool", "id": "名前.lookup"}
    assert document["context"] == {
        "data_class": "internal",
        "session_max_sensitivity": "confidential",
        "workflow_id": "",
        "arguments": {"q": "😀"},
        "platform": "tpm2",
    }
    assert CedarRequest.from_json(document) == request
    with pytest.raises(PolicyRequestError, match="malformed"):
        CedarRequest.from_json({"principal": {"type": "Agent"}})


def test_statements_are_found_with_their_lines() -> None:
    text = (
        "// header comment with a ; in it\n"
        '@id("a;b")\n'
        'permit(principal, action, resource) when { context.s == "x;\\"y" };\n'
        "\n"
        "forbid(principal,\n"
        "  action, resource);  // trailing ; comment\n"
        "permit(principal, action, resource)"
    )
    statements = split_statements(text)
    assert [(s.line, s.terminated) for s in statements] == [(2, True), (5, True), (7, False)]
    assert statements[0].text.startswith('@id("a;b")')
    assert statements[1].text == "forbid(principal,\n  action, resource);"


def test_multiline_string_advances_lines() -> None:
    statements = split_statements(
        'permit(principal, action, resource) when { "a\nb" == "" };\nforbid(principal, action, resource);'
    )
    assert [s.line for s in statements] == [1, 3]


def test_comment_only_text_has_no_statements() -> None:
    assert split_statements("// nothing\n\n   // at all\n") == []
