"""What a request says to the gateway itself, on every protocol revision.

`params._cmcp` is the gateway's own: an object with `session_id` (the session of a plain
JSON-RPC call) and `workflow_id`. It is taken off the request before anything is decided
on it or forwarded, so neither the policy's `context.arguments` nor an upstream sees it.
The workflow id may also come as the `Cmcp-Workflow-Id` header or as
`params._meta["_cmcp.workflow_id"]`, which official SDK clients can set; sources that
disagree are refused, as headers that disagree with the body are. It fills Cedar's
`context.workflow_id` of tool calls. A request that says none of this costs two dict
lookups and one header scan.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cmcp_cli.wire import asgi
from cmcp_cli.wire.asgi import Scope
from cmcp_cli.wire.jsonrpc import Code, Message, ProtocolError
from cmcp_cli.wire.mcp import (
    GATEWAY_PARAM_KEYS,
    GATEWAY_PARAMS,
    RESERVED_SESSION_IDS,
    SESSION_ID,
    WORKFLOW_HEADER,
    WORKFLOW_ID,
    WORKFLOW_KEY,
)

_HEADER = WORKFLOW_HEADER.lower().encode("latin-1")
_SESSION_FIELD = f"params.{GATEWAY_PARAMS}.session_id"
_WORKFLOW_FIELD = f"params.{GATEWAY_PARAMS}.workflow_id"
_META_FIELD = f"params._meta[{WORKFLOW_KEY!r}]"


@dataclass(frozen=True, slots=True)
class GatewayParams:
    """The session a plain call names (None: the agent's default session) and the
    workflow the request belongs to ("" for none)."""

    session_id: str | None = None
    workflow_id: str = ""


NONE = GatewayParams()


def take(scope: Scope, message: Message) -> tuple[Message, GatewayParams]:
    """The request without `params._cmcp`, and what it says to the gateway."""
    params = message.params
    header = asgi.header(scope, _HEADER)
    meta = params.get("_meta")
    meta = meta if isinstance(meta, Mapping) else {}
    in_meta = WORKFLOW_KEY in meta
    if GATEWAY_PARAMS not in params and header is None and not in_meta:
        return message, NONE
    own = params.get(GATEWAY_PARAMS, {})
    if not isinstance(own, Mapping):
        raise _refused(
            message,
            f"params.{GATEWAY_PARAMS} must be an object with any of "
            f"{', '.join(GATEWAY_PARAM_KEYS)}",
        )
    unknown = sorted(str(key) for key in own if key not in GATEWAY_PARAM_KEYS)
    if unknown:
        raise _refused(
            message,
            f"params.{GATEWAY_PARAMS} has unknown key(s) {', '.join(map(repr, unknown))}: "
            f"the known keys are {', '.join(GATEWAY_PARAM_KEYS)}",
        )
    session_id = own.get("session_id")
    if "session_id" in own and (
        not isinstance(session_id, str)
        or not SESSION_ID.fullmatch(session_id)
        or session_id in RESERVED_SESSION_IDS
    ):
        raise _refused(
            message,
            f"{_SESSION_FIELD} must be 1 to 64 letters, digits, '_' or '-' "
            f"(and not {', '.join(map(repr, sorted(RESERVED_SESSION_IDS)))})",
        )
    sources: dict[str, object] = {}
    if "workflow_id" in own:
        sources[_WORKFLOW_FIELD] = own["workflow_id"]
    if header is not None:
        sources[f"the {WORKFLOW_HEADER} header"] = header
    if in_meta:
        sources[_META_FIELD] = meta[WORKFLOW_KEY]
    for field, value in sources.items():
        if not isinstance(value, str) or not WORKFLOW_ID.fullmatch(value):
            raise _refused(
                message,
                f"{field} must be 1 to 128 printable ASCII characters, without a space at "
                "either end",
            )
    if len(set(sources.values())) > 1:
        raise _refused(
            message,
            f"the workflow id is given twice, differently ({' and '.join(sources)}): send "
            "it once, or the same in each",
            code=Code.HEADER_MISMATCH,
        )
    workflow_id = str(next(iter(sources.values()), ""))
    if GATEWAY_PARAMS in params:
        kept: dict[str, Any] = {k: v for k, v in params.items() if k != GATEWAY_PARAMS}
        message = dataclasses.replace(message, params=kept)
    return message, GatewayParams(session_id=session_id, workflow_id=workflow_id)


def _refused(message: Message, text: str, *, code: Code = Code.INVALID_PARAMS) -> ProtocolError:
    return ProtocolError(code, text, request_id=message.id, http_status=400)
