"""The Cedar request model for MCP operations (DESIGN §3).

Principal `Agent::"<agent id>"`, action `Action::"call_tool"` (or `list_tools`,
`read_resource`, `get_prompt`), resource `Tool::"<exact tool name>"` with its catalog
groups as `Tools::"<group>"` parents, and a context of `data_class`,
`session_max_sensitivity`, `workflow_id`, `arguments` and `platform`.

Tool arguments are untrusted input. Cedar's JSON reads `{"__entity": ...}` and
`{"__extn": ...}` as entity references and extension values, so an agent could otherwise
forge `context.arguments.x == Agent::"admin"`; such keys are refused. Cedar has no null
and no floating point: null members are dropped (so `has` is false for them), and floats
and integers outside Cedar's 64-bit range become their JSON text as strings, which a
numeric comparison then rejects as an error, and an error is a deny.
"""

from __future__ import annotations

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

CALL_TOOL = "call_tool"
LIST_TOOLS = "list_tools"
READ_RESOURCE = "read_resource"
GET_PROMPT = "get_prompt"

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

    def to_record(self, tool: ToolResource | None) -> dict[str, Any]:
        """What the audit log keeps: the request and the entity Cedar saw for its tool,
        so that a replay needs nothing but the bundle to decide it again."""
        return {**self.to_json(), "entities": [tool.entity_json()] if tool is not None else []}

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
