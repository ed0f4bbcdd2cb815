"""The Cedar request model for MCP operations (DESIGN §3, docs/policy.md).

Every data-moving message is one request with its own action (`MessageKind`). A tool
call: principal `Agent::"<agent id>"`, action `Action::"call_tool"`, resource
`Tool::"<exact tool name>"` with its catalog groups as `Tools::"<group>"` parents, and a
context of `data_class`, `session_max_sensitivity`, `workflow_id`, `arguments` and
`platform`. The other kinds (`list_tools`, `read_resource`, `get_prompt`, and the
server-initiated `create_message`, `elicit`, `list_roots`) name a `Server`, `Resource`
or `Prompt` entity and carry the context `message_request` builds.

Tool arguments are untrusted input. Cedar's JSON reads `{"__entity": ...}` and
`{"__extn": ...}` as entity references and extension values, so an agent could otherwise
forge `context.arguments.x == Agent::"admin"`; such keys are refused. Cedar has no null
and no floating point: null members are dropped (so `has` is false for them), and floats
and integers outside Cedar's 64-bit range become their JSON text as strings, which a
numeric comparison then rejects as an error, and an error is a deny.
"""

from __future__ import annotations

import enum
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cmcp_cli.errors import PolicyRequestError

AGENT_TYPE = "Agent"
ACTION_TYPE = "Action"
TOOL_TYPE = "Tool"
TOOL_GROUP_TYPE = "Tools"
ANONYMOUS_AGENT = "anonymous"

SERVER_TYPE = "Server"
RESOURCE_TYPE = "Resource"
PROMPT_TYPE = "Prompt"


class MessageKind(enum.StrEnum):
    """The governed MCP messages, each a Cedar action of the same name."""

    CALL_TOOL = "call_tool"  # tools/call
    LIST_TOOLS = "list_tools"  # tools/list, decided per upstream server
    READ_RESOURCE = "read_resource"  # resources/read
    GET_PROMPT = "get_prompt"  # prompts/get
    CREATE_MESSAGE = "create_message"  # sampling/createMessage (server to client)
    ELICIT = "elicit"  # elicitation/create (server to client)
    LIST_ROOTS = "list_roots"  # roots/list (server to client)

    @property
    def server_initiated(self) -> bool:
        return self in _SERVER_INITIATED

    @property
    def resource_type(self) -> str:
        """The entity type of the request's resource."""
        return _RESOURCE_TYPES.get(self, SERVER_TYPE)


_SERVER_INITIATED = frozenset(
    {MessageKind.CREATE_MESSAGE, MessageKind.ELICIT, MessageKind.LIST_ROOTS}
)
_RESOURCE_TYPES = {
    MessageKind.CALL_TOOL: TOOL_TYPE,
    MessageKind.READ_RESOURCE: RESOURCE_TYPE,
    MessageKind.GET_PROMPT: PROMPT_TYPE,
}
# The MCP method each kind governs.
KIND_METHODS: dict[MessageKind, str] = {
    MessageKind.CALL_TOOL: "tools/call",
    MessageKind.LIST_TOOLS: "tools/list",
    MessageKind.READ_RESOURCE: "resources/read",
    MessageKind.GET_PROMPT: "prompts/get",
    MessageKind.CREATE_MESSAGE: "sampling/createMessage",
    MessageKind.ELICIT: "elicitation/create",
    MessageKind.LIST_ROOTS: "roots/list",
}

CALL_TOOL = MessageKind.CALL_TOOL.value
LIST_TOOLS = MessageKind.LIST_TOOLS.value
READ_RESOURCE = MessageKind.READ_RESOURCE.value
GET_PROMPT = MessageKind.GET_PROMPT.value

MAX_ARGUMENT_DEPTH = 32
_RESERVED_KEYS = frozenset({"__entity", "__extn", "__expr"})
_I64_MIN, _I64_MAX = -(2**63), 2**63 - 1


@dataclass(frozen=True, slots=True)
class EntityRef:
    type: str
    id: str

    def to_json(self) -> dict[str, str]:
        return {"type": self.type, "id": self.id}

    def __str__(self) -> str:
        return f"{self.type}::{json.dumps(self.id, ensure_ascii=False)}"


@dataclass(frozen=True, slots=True)
class ToolResource:
    """A catalog tool as Cedar sees it: an entity with groups and attributes."""

    name: str
    server: str
    groups: tuple[str, ...]
    data_class: str

    def entity_json(self) -> dict[str, Any]:
        return {
            "uid": {"type": TOOL_TYPE, "id": self.name},
            "attrs": {"server": self.server, "data_class": self.data_class},
            "parents": [{"type": TOOL_GROUP_TYPE, "id": group} for group in self.groups],
        }

    @classmethod
    def from_entity_json(cls, document: Mapping[str, Any]) -> ToolResource:
        """Rebuild a recorded tool entity; `PolicyRequestError` when it is malformed."""
        try:
            uid, attrs, parents = document["uid"], document["attrs"], document["parents"]
            if uid["type"] != TOOL_TYPE or any(p["type"] != TOOL_GROUP_TYPE for p in parents):
                raise PolicyRequestError("recorded entity is not a Tool in Tools groups")
            return cls(
                name=str(uid["id"]),
                server=str(attrs["server"]),
                groups=tuple(str(p["id"]) for p in parents),
                data_class=str(attrs["data_class"]),
            )
        except (KeyError, TypeError) as exc:
            raise PolicyRequestError(f"recorded tool entity is malformed: {exc}") from exc


@dataclass(frozen=True, slots=True)
class MessageTarget:
    """What a message other than a tool call is about, as Cedar sees it: the upstream
    `Server::"<name>"` (attribute `data_class`), or a `Resource::"<uri>"` or
    `Prompt::"<name>"` of that server (attributes `server`, `data_class`; parent the
    `Server`, so `resource in Server::"docs"` matches everything docs serves)."""

    type: str
    id: str
    server: str
    data_class: str

    def entity_json(self) -> dict[str, Any]:
        if self.type == SERVER_TYPE:
            return {
                "uid": {"type": SERVER_TYPE, "id": self.id},
                "attrs": {"data_class": self.data_class},
                "parents": [],
            }
        return {
            "uid": {"type": self.type, "id": self.id},
            "attrs": {"server": self.server, "data_class": self.data_class},
            "parents": [{"type": SERVER_TYPE, "id": self.server}],
        }

    @classmethod
    def from_entity_json(cls, document: Mapping[str, Any]) -> MessageTarget:
        """Rebuild a recorded entity; `PolicyRequestError` when it is malformed or the
        recorded shape is not the one `entity_json` writes (so nothing else rides along)."""
        try:
            uid, attrs = document["uid"], document["attrs"]
            kind = uid["type"]
            if kind == SERVER_TYPE:
                target = cls(SERVER_TYPE, str(uid["id"]), str(uid["id"]), str(attrs["data_class"]))
            elif kind in (RESOURCE_TYPE, PROMPT_TYPE):
                target = cls(kind, str(uid["id"]), str(attrs["server"]), str(attrs["data_class"]))
            else:
                raise PolicyRequestError(f"recorded entity type {kind!r} is not a message target")
        except (KeyError, TypeError) as exc:
            raise PolicyRequestError(f"recorded message entity is malformed: {exc}") from exc
        if target.entity_json() != dict(document):
            raise PolicyRequestError(f"recorded {kind} entity has unexpected members")
        return target


def entity_of(document: Mapping[str, Any]) -> ToolResource | MessageTarget:
    """A recorded entity, by its type; `PolicyRequestError` for any other."""
    uid = document.get("uid") if isinstance(document, Mapping) else None
    if isinstance(uid, Mapping) and uid.get("type") == TOOL_TYPE:
        return ToolResource.from_entity_json(document)
    return MessageTarget.from_entity_json(document)


@dataclass(frozen=True, slots=True)
class CedarRequest:
    """One authorization question; `to_json` is what the audit log records and replays."""

    principal: EntityRef
    action: EntityRef
    resource: EntityRef
    context: Mapping[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {
            "principal": self.principal.to_json(),
            "action": self.action.to_json(),
            "resource": self.resource.to_json(),
            "context": dict(self.context),
        }

    @property
    def kind(self) -> MessageKind | None:
        """The message kind the action names, or None for an action cMCP never asks."""
        if self.action.type != ACTION_TYPE:
            return None
        try:
            return MessageKind(self.action.id)
        except ValueError:
            return None

    def to_record(self, target: ToolResource | MessageTarget | None) -> dict[str, Any]:
        """What the audit log keeps: the request and the entity Cedar saw for its resource,
        so that a replay needs nothing but the bundle to decide it again."""
        return {**self.to_json(), "entities": [target.entity_json()] if target is not None else []}

    @classmethod
    def from_json(cls, document: Mapping[str, Any]) -> CedarRequest:
        """Rebuild a recorded request; raises `PolicyRequestError` when it is malformed."""
        try:
            refs = [
                EntityRef(type=str(document[part]["type"]), id=str(document[part]["id"]))
                for part in ("principal", "action", "resource")
            ]
            context = document["context"]
        except (KeyError, TypeError) as exc:
            raise PolicyRequestError(f"recorded Cedar request is malformed: missing {exc}") from exc
        if not isinstance(context, Mapping):
            raise PolicyRequestError("recorded Cedar request context is not an object")
        return cls(principal=refs[0], action=refs[1], resource=refs[2], context=context)


def tool_call_request(
    *,
    agent_id: str,
    tool: str,
    arguments: Mapping[str, Any] | None,
    data_class: str,
    session_max_sensitivity: str,
    workflow_id: str = "",
    platform: str,
) -> CedarRequest:
    """The request for `tools/call`.

    Raises `PolicyRequestError` for arguments Cedar must not see; the caller denies the call.
    """
    return CedarRequest(
        principal=EntityRef(AGENT_TYPE, agent_id),
        action=EntityRef(ACTION_TYPE, CALL_TOOL),
        resource=EntityRef(TOOL_TYPE, tool),
        context={
            "data_class": data_class,
            "session_max_sensitivity": session_max_sensitivity,
            "workflow_id": workflow_id,
            "arguments": cedar_record(arguments or {}),
            "platform": platform,
        },
    )


@dataclass(frozen=True, slots=True)
class MessageFacts:
    """What every message request's context carries besides its kind's own members."""

    agent_id: str
    server: str
    data_class: str
    session_max_sensitivity: str
    platform: str
    call_id: str = ""  # the tool call a server-initiated request belongs to, "" for none


def message_target(
    kind: MessageKind, *, server: str, target: str, data_class: str
) -> MessageTarget:
    """The resource entity of a message other than a tool call: the server itself, or the
    resource URI or prompt name on it."""
    if kind is MessageKind.CALL_TOOL:
        raise PolicyRequestError("a tool call's resource is its catalog Tool, not a message target")
    entity_type = kind.resource_type
    return MessageTarget(
        entity_type, server if entity_type == SERVER_TYPE else target, server, data_class
    )


def message_request(
    kind: MessageKind, facts: MessageFacts, target: MessageTarget, params: Mapping[str, Any]
) -> CedarRequest:
    """The request for a message other than `tools/call`; `params` are the message's MCP
    params as received (untrusted). Raises `PolicyRequestError` for params Cedar must not
    see or that do not have the shape MCP gives them; the caller denies the message."""
    if not isinstance(params, Mapping):
        raise PolicyRequestError(f"{KIND_METHODS[kind]} params must be a JSON object")
    context: dict[str, Any] = {
        "data_class": facts.data_class,
        "session_max_sensitivity": facts.session_max_sensitivity,
        "platform": facts.platform,
        "server": facts.server,
        "call_id": facts.call_id,
    }
    context.update(_KIND_CONTEXT[kind](params))
    return CedarRequest(
        principal=EntityRef(AGENT_TYPE, facts.agent_id),
        action=EntityRef(ACTION_TYPE, kind.value),
        resource=EntityRef(target.type, target.id),
        context=context,
    )


def _no_context(_: Mapping[str, Any]) -> dict[str, Any]:
    return {}


def _read_resource_context(params: Mapping[str, Any]) -> dict[str, Any]:
    return {"uri": _string(params, "uri", required=True)}


def _get_prompt_context(params: Mapping[str, Any]) -> dict[str, Any]:
    arguments = params.get("arguments")
    if arguments is None:
        arguments = {}
    if not isinstance(arguments, Mapping):
        raise PolicyRequestError("prompts/get params.arguments must be an object")
    return {"arguments": cedar_record(arguments)}


def _create_message_context(params: Mapping[str, Any]) -> dict[str, Any]:
    messages = params.get("messages")
    if not isinstance(messages, list):
        raise PolicyRequestError("sampling/createMessage params.messages must be a list")
    max_tokens = params.get("maxTokens", 0)
    if type(max_tokens) is not int or not _I64_MIN <= max_tokens <= _I64_MAX:
        raise PolicyRequestError("sampling/createMessage params.maxTokens must be an integer")
    preferences = params.get("modelPreferences")
    hints = preferences.get("hints") if isinstance(preferences, Mapping) else None
    names = sorted(
        {
            hint["name"]
            for hint in (hints if isinstance(hints, list) else ())
            if isinstance(hint, Mapping) and isinstance(hint.get("name"), str)
        }
    )
    system_prompt = params.get("systemPrompt")
    return {
        "max_tokens": max_tokens,
        "include_context": _string(params, "includeContext") or "none",
        "message_count": len(messages),
        "system_prompt": isinstance(system_prompt, str) and bool(system_prompt),
        "model_hints": names,
    }


def _elicit_context(params: Mapping[str, Any]) -> dict[str, Any]:
    mode = _string(params, "mode") or "form"
    if mode not in ("form", "url"):
        raise PolicyRequestError(f"elicitation/create mode {mode!r} is not form or url")
    schema = params.get("requestedSchema")
    properties = schema.get("properties") if isinstance(schema, Mapping) else None
    fields = sorted(str(name) for name in properties) if isinstance(properties, Mapping) else []
    context: dict[str, Any] = {
        "message": _string(params, "message"),
        "mode": mode,
        "requested_fields": fields,
    }
    url = _string(params, "url")
    if url:
        context["url"] = url
    return context


def _string(params: Mapping[str, Any], key: str, *, required: bool = False) -> str:
    value = params.get(key)
    if value is None and not required:
        return ""
    if not isinstance(value, str):
        raise PolicyRequestError(f"params.{key} must be a string")
    return value


_KIND_CONTEXT = {
    MessageKind.LIST_TOOLS: _no_context,
    MessageKind.READ_RESOURCE: _read_resource_context,
    MessageKind.GET_PROMPT: _get_prompt_context,
    MessageKind.CREATE_MESSAGE: _create_message_context,
    MessageKind.ELICIT: _elicit_context,
    MessageKind.LIST_ROOTS: _no_context,
}


def cedar_record(arguments: Mapping[str, Any]) -> dict[str, Any]:
    """Tool-call arguments as a Cedar record (see the module docstring for the mapping)."""
    if not isinstance(arguments, Mapping):
        raise PolicyRequestError(
            f"tool arguments must be a JSON object, not {type(arguments).__name__}"
        )
    return _record(arguments, depth=0, path="arguments")


def _to_cedar(value: Any, *, depth: int, path: str) -> Any:
    if depth > MAX_ARGUMENT_DEPTH:
        raise PolicyRequestError(f"{path}: nested deeper than {MAX_ARGUMENT_DEPTH} levels")
    if isinstance(value, bool | str):
        return value
    if isinstance(value, int):
        return value if _I64_MIN <= value <= _I64_MAX else str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise PolicyRequestError(f"{path}: {value} is not a JSON number")
        return json.dumps(value)
    if isinstance(value, Mapping):
        return _record(value, depth=depth, path=path)
    if isinstance(value, Sequence):
        return [
            _to_cedar(item, depth=depth + 1, path=f"{path}[{index}]")
            for index, item in enumerate(value)
            if item is not None
        ]
    raise PolicyRequestError(f"{path}: {type(value).__name__} is not a JSON value")


def _record(value: Mapping[Any, Any], *, depth: int, path: str) -> dict[str, Any]:
    record: dict[str, Any] = {}
    for key, member in value.items():
        if not isinstance(key, str):
            raise PolicyRequestError(f"{path}: object key {key!r} is not a string")
        if key in _RESERVED_KEYS:
            raise PolicyRequestError(
                f"{path}.{key}: {key!r} is reserved by Cedar's JSON format and would "
                "let arguments impersonate entities or extension values"
            )
        if member is not None:
            record[key] = _to_cedar(member, depth=depth + 1, path=f"{path}.{key}")
    return record
