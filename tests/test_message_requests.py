"""Every governed MCP message as a Cedar request: builders, entities, the quickstart's
decisions for each kind, hostile params, and redaction of each kind's answer."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from cmcp_cli.errors import PolicyRequestError
from cmcp_cli.gateway.enforcement.messages import server_request_kind
from cmcp_cli.gateway.enforcement.redaction import redact_answer
from cmcp_cli.gateway.enforcement.wiring import server_data_class
from cmcp_cli.policy.annotations import parse_redaction
from cmcp_cli.policy.bundle import read_bundle
from cmcp_cli.policy.decision import Effect
from cmcp_cli.policy.engine import Authorizer, compile_bundle, unpermitted_actions
from cmcp_cli.policy.request import (
    CedarRequest,
    MessageFacts,
    MessageKind,
    MessageTarget,
    ToolResource,
    entity_of,
    message_request,
    message_target,
)
from tests.support import QUICKSTART, BundleFactory

FACTS = MessageFacts(
    agent_id="agent-1",
    server="demo",
    data_class="internal",
    session_max_sensitivity="public",
    platform="software-only",
)
COMMON = {
    "data_class": "internal",
    "session_max_sensitivity": "public",
    "platform": "software-only",
    "server": "demo",
    "call_id": "",
}
CARD = "4111 1111 1111 1111"


def build(kind: MessageKind, target: str, params: dict[str, Any]) -> CedarRequest:
    entity = message_target(kind, server="demo", target=target, data_class="internal")
    return message_request(kind, FACTS, entity, params)


@pytest.mark.parametrize(
    ("kind", "target", "params", "resource", "extra"),
    [
        (MessageKind.LIST_TOOLS, "demo", {}, ("Server", "demo"), {}),
        (
            MessageKind.READ_RESOURCE,
            "notes://desk/today",
            {"uri": "notes://desk/today"},
            ("Resource", "notes://desk/today"),
            {"uri": "notes://desk/today"},
        ),
        (
            MessageKind.GET_PROMPT,
            "weather_report",
            {"name": "weather_report", "arguments": {"city": "Paris", "none": None}},
            ("Prompt", "weather_report"),
            {"arguments": {"city": "Paris"}},
        ),
        (
            MessageKind.CREATE_MESSAGE,
            "demo",
            {
                "messages": [{"role": "user", "content": {"type": "text", "text": "hi"}}],
                "maxTokens": 100,
                "systemPrompt": "be brief",
                "includeContext": "thisServer",
                "modelPreferences": {"hints": [{"name": "claude"}, {"name": 3}, "x"]},
            },
            ("Server", "demo"),
            {
                "max_tokens": 100,
                "include_context": "thisServer",
                "message_count": 1,
                "system_prompt": True,
                "model_hints": ["claude"],
            },
        ),
        (
            MessageKind.ELICIT,
            "demo",
            {
                "message": "Your card, please",
                "requestedSchema": {"type": "object", "properties": {"card": {}, "name": {}}},
            },
            ("Server", "demo"),
            {"message": "Your card, please", "mode": "form", "requested_fields": ["card", "name"]},
        ),
        (
            MessageKind.ELICIT,
            "demo",
            {"message": "Sign in", "mode": "url", "url": "https://idp.example/x"},
            ("Server", "demo"),
            {
                "message": "Sign in",
                "mode": "url",
                "requested_fields": [],
                "url": "https://idp.example/x",
            },
        ),
        (MessageKind.LIST_ROOTS, "demo", {}, ("Server", "demo"), {}),
    ],
)
def test_each_kind_is_a_request_with_its_own_action_resource_and_context(
    kind: MessageKind,
    target: str,
    params: dict[str, Any],
    resource: tuple[str, str],
    extra: dict[str, Any],
) -> None:
    request = build(kind, target, params)
    assert request.to_json() == {
        "principal": {"type": "Agent", "id": "agent-1"},
        "action": {"type": "Action", "id": kind.value},
        "resource": {"type": resource[0], "id": resource[1]},
        "context": {**COMMON, **extra},
    }
    assert request.kind is kind
    entity = message_target(kind, server="demo", target=target, data_class="internal")
    recorded = request.to_record(entity)
    (document,) = recorded["entities"]
    assert entity_of(document) == entity  # what replay rebuilds is what Cedar saw
    assert CedarRequest.from_json(recorded) == request


def test_a_server_initiated_request_names_the_tool_call_it_belongs_to() -> None:
    facts = dataclasses.replace(FACTS, call_id="s1/4")
    entity = message_target(MessageKind.LIST_ROOTS, server="demo", target="", data_class="x")
    assert message_request(MessageKind.LIST_ROOTS, facts, entity, {}).context["call_id"] == "s1/4"
    assert MessageKind.LIST_ROOTS.server_initiated
    assert not MessageKind.READ_RESOURCE.server_initiated


@pytest.mark.parametrize("key", ["__entity", "__extn", "__expr"])
def test_prompt_arguments_cannot_smuggle_entities(key: str) -> None:
    with pytest.raises(PolicyRequestError, match="reserved by Cedar's JSON format"):
        build(
            MessageKind.GET_PROMPT,
            "p",
            {"name": "p", "arguments": {"who": {key: {"type": "Agent", "id": "admin"}}}},
        )


@pytest.mark.parametrize(
    ("kind", "params", "message"),
    [
        (MessageKind.READ_RESOURCE, {}, "params.uri must be a string"),
        (MessageKind.READ_RESOURCE, {"uri": {"__entity": {}}}, "params.uri must be a string"),
        (MessageKind.GET_PROMPT, {"name": "p", "arguments": [1]}, "must be an object"),
        (MessageKind.CREATE_MESSAGE, {"maxTokens": 5}, "messages must be a list"),
        (MessageKind.CREATE_MESSAGE, {"messages": [], "maxTokens": 2**70}, "integer"),
        (MessageKind.CREATE_MESSAGE, {"messages": [], "maxTokens": True}, "integer"),
        (MessageKind.ELICIT, {"message": "x", "mode": "telepathy"}, "not form or url"),
        (MessageKind.ELICIT, {"message": ["x"]}, "params.message must be a string"),
    ],
)
def test_malformed_params_are_refused_not_guessed(
    kind: MessageKind, params: dict[str, Any], message: str
) -> None:
    with pytest.raises(PolicyRequestError, match=message):
        build(kind, "t", params)


def test_a_tool_call_has_no_message_target() -> None:
    with pytest.raises(PolicyRequestError):
        message_target(MessageKind.CALL_TOOL, server="s", target="t", data_class="x")


@pytest.mark.parametrize(
    "document",
    [
        {"uid": {"type": "Agent", "id": "admin"}, "attrs": {}, "parents": []},
        {"uid": {"type": "Server", "id": "s"}, "attrs": {}, "parents": []},
        {  # an extra parent would make `in` checks pass that Cedar never saw
            "uid": {"type": "Resource", "id": "r"},
            "attrs": {"server": "s", "data_class": "x"},
            "parents": [{"type": "Server", "id": "s"}, {"type": "Server", "id": "other"}],
        },
    ],
)
def test_recorded_entities_of_another_shape_are_not_replayable(document: dict[str, Any]) -> None:
    with pytest.raises(PolicyRequestError):
        entity_of(document)


def quickstart_authorizer() -> Authorizer:
    return compile_bundle(read_bundle(QUICKSTART / "policies")).authorizer([])


@pytest.mark.parametrize(
    ("kind", "target", "params", "effect"),
    [
        (MessageKind.LIST_TOOLS, "demo", {}, Effect.ALLOW),
        (MessageKind.READ_RESOURCE, "notes://x", {"uri": "notes://x"}, Effect.REDACT),
        (MessageKind.GET_PROMPT, "weather_report", {"arguments": {"city": "Oslo"}}, Effect.ALLOW),
        (MessageKind.CREATE_MESSAGE, "demo", {"messages": [], "maxTokens": 9}, Effect.DENY),
        (MessageKind.ELICIT, "demo", {"message": "card?"}, Effect.REDACT),
        (MessageKind.LIST_ROOTS, "demo", {}, Effect.ALLOW),
    ],
)
def test_the_quickstart_decides_every_kind_under_its_schema(
    kind: MessageKind, target: str, params: dict[str, Any], effect: Effect
) -> None:
    entity = message_target(kind, server="demo", target=target, data_class="internal")
    decision = quickstart_authorizer().decide(message_request(kind, FACTS, entity, params), entity)
    assert decision.effect is effect, decision.reasons


def test_an_undeclared_prompt_argument_is_denied_by_the_schema() -> None:
    request = build(MessageKind.GET_PROMPT, "p", {"arguments": {"shell": "rm -rf /"}})
    entity = message_target(MessageKind.GET_PROMPT, server="demo", target="p", data_class="x")
    assert quickstart_authorizer().decide(request, entity).effect is Effect.DENY


def test_default_deny_applies_to_every_kind(make_bundle: BundleFactory) -> None:
    bundle = compile_bundle(
        read_bundle(
            make_bundle(
                {"tools.cedar": 'permit (principal, action == Action::"call_tool", resource);'}
            )
        )
    )
    authorizer = bundle.authorizer([])
    for kind in MessageKind:
        if kind is MessageKind.CALL_TOOL:
            continue
        params = {"uri": "u", "messages": [], "message": "m"}
        entity = message_target(kind, server="demo", target="u", data_class="internal")
        request = message_request(kind, FACTS, entity, params)
        assert authorizer.decide(request, entity).effect is Effect.DENY, kind
    assert unpermitted_actions(bundle, [k.value for k in MessageKind]) == [
        k.value for k in MessageKind if k is not MessageKind.CALL_TOOL
    ]


def test_resources_of_a_server_are_in_that_server(make_bundle: BundleFactory) -> None:
    policy = 'permit (principal, action == Action::"read_resource", resource in Server::"docs");'
    authorizer = compile_bundle(read_bundle(make_bundle({"p.cedar": policy}))).authorizer([])
    decided = {}
    for server in ("docs", "demo"):
        entity = message_target(
            MessageKind.READ_RESOURCE, server=server, target="file:///a", data_class="public"
        )
        request = message_request(MessageKind.READ_RESOURCE, FACTS, entity, {"uri": "file:///a"})
        decided[server] = authorizer.decide(request, entity).effect
    assert decided == {"docs": Effect.ALLOW, "demo": Effect.DENY}


def test_a_server_is_as_sensitive_as_its_most_sensitive_tool() -> None:
    order = ("public", "internal", "secret")
    tools = [
        ToolResource("a", "demo", (), "public"),
        ToolResource("b", "demo", (), "internal"),
        ToolResource("c", "other", (), "public"),
    ]
    assert server_data_class(tools, "demo", order) == "internal"
    assert server_data_class(tools, "other", order) == "public"
    assert server_data_class(tools, "unknown", order) == "secret"  # unknown is not low


def test_answers_of_every_kind_are_redacted_and_keep_their_types() -> None:
    spec = parse_redaction("email, card")
    resource, counts = redact_answer(
        "read_resource",
        {
            "contents": [
                {"uri": "n://a", "mimeType": "text/plain", "text": "mail ada@example.org"},
                {"uri": "n://b", "mimeType": "image/png", "blob": "aGVsbG8="},
            ]
        },
        spec,
    )
    assert resource["contents"][0]["text"] == "mail [REDACTED:email]"
    assert resource["contents"][1] == {
        "uri": "n://b",
        "mimeType": "text/plain",
        "text": "[REDACTED:blob]",
    }
    assert counts == {"email": 1, "blob": 1}

    prompt, counts = redact_answer(
        "get_prompt",
        {
            "description": "for ada@example.org",
            "messages": [{"role": "user", "content": {"type": "text", "text": f"pay {CARD}"}}],
        },
        spec,
    )
    assert prompt["messages"][0]["content"]["text"] == "pay [REDACTED:card]"
    assert prompt["messages"][0]["role"] == "user"
    assert counts == {"email": 1, "card": 1}

    sampled, counts = redact_answer(
        "create_message",
        {"role": "assistant", "model": "m", "content": {"type": "text", "text": "ada@example.org"}},
        spec,
    )
    assert sampled["content"]["text"] == "[REDACTED:email]" and sampled["model"] == "m"

    elicited, counts = redact_answer(
        "elicit",
        {"action": "accept", "content": {"card": CARD, "count": 2, "ok": True, "ref": "ab12"}},
        parse_redaction("card, /ref"),
    )
    assert elicited == {
        "action": "accept",
        "content": {"card": "[REDACTED:card]", "count": 2, "ok": True, "ref": "[REDACTED:pointer]"},
    }
    assert counts == {"card": 1, "pointer:/ref": 1}


def test_quickstart_schema_declares_every_kind() -> None:
    schema = (QUICKSTART / "policies" / "schema.cedarschema").read_text()
    for kind in MessageKind:
        assert f"action {kind.value} appliesTo" in schema
    for entity in ("Server", "Resource", "Prompt"):
        assert f"entity {entity}" in schema
    assert isinstance(MessageTarget("Server", "s", "s", "x").entity_json(), dict)
    assert Path(QUICKSTART / "policies" / "messages.cedar").is_file()


def test_server_requests_map_to_their_kinds() -> None:
    assert {
        method: server_request_kind(method)
        for method in ("sampling/createMessage", "elicitation/create", "roots/list", "ping")
    } == {
        "sampling/createMessage": MessageKind.CREATE_MESSAGE,
        "elicitation/create": MessageKind.ELICIT,
        "roots/list": MessageKind.LIST_ROOTS,
        "ping": None,
    }
