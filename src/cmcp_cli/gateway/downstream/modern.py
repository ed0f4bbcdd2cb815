"""The stateless MCP revision (2026-07-28) as clients speak it to the gateway.

No `initialize` and no `Mcp-Session-Id`: every request carries its protocol version and
client capabilities in `params._meta`, and repeats method and name in the `Mcp-Method` /
`Mcp-Name` headers, which must agree with the body (the gateway decides on the body; a
disagreement is refused, so a proxy in front cannot be shown one call and make another).
Results carry `resultType`. A client that wants a session other than its agent's default
one names it with `_meta["_cmcp.session_id"]`; every answer says which session it used.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from cmcp_cli.catalog.model import Catalog
from cmcp_cli.wire import asgi
from cmcp_cli.wire.asgi import Scope
from cmcp_cli.wire.jsonrpc import Code, Message, ProtocolError
from cmcp_cli.wire.mcp import (
    CLIENT_CAPABILITIES_KEY,
    CLIENT_ENVELOPE,
    MODERN_PROTOCOLS,
    NAME_BEARING,
    PROTOCOL_VERSION_KEY,
    RELAYED_ENVELOPE,
    SESSION_KEY,
)
from cmcp_cli.wire.mcp_params import decode_value, param_mismatch

# HTTP statuses for protocol errors on this revision; gateway decisions stay HTTP 200.
ERROR_STATUS: dict[int, int] = {
    Code.PARSE_ERROR: 400,
    Code.INVALID_REQUEST: 400,
    Code.INVALID_PARAMS: 400,
    Code.HEADER_MISMATCH: 400,
    Code.MISSING_REQUIRED_CLIENT_CAPABILITY: 400,
    Code.UNSUPPORTED_PROTOCOL_VERSION: 400,
    Code.METHOD_NOT_FOUND: 404,
}
# Methods of the session era that this revision removed: answered as methods not found.
REMOVED = frozenset(
    {"initialize", "ping", "logging/setLevel", "resources/subscribe", "resources/unsubscribe"}
)
CACHEABLE = frozenset(
    {"tools/list", "resources/list", "resources/templates/list", "resources/read", "prompts/list"}
)
_SESSION_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


def is_modern(scope: Scope, message: Message) -> bool:
    """Whether a request speaks the stateless revision: it says so in its envelope, or in
    its MCP-Protocol-Version header (a `server/discover` probe always is; an `initialize`
    only with the envelope, which no session-era client sends)."""
    if message.method == "server/discover":
        return True
    meta = message.params.get("_meta")
    if isinstance(meta, Mapping) and PROTOCOL_VERSION_KEY in meta:
        return True
    if message.method == "initialize":
        return False
    return asgi.header(scope, b"mcp-protocol-version") in MODERN_PROTOCOLS


def check_envelope(scope: Scope, message: Message) -> str:
    """The request's protocol version, once its envelope and headers are consistent."""
    meta = message.params.get("_meta")
    if not isinstance(meta, Mapping):
        raise _refused(
            message,
            Code.INVALID_PARAMS,
            f"params._meta must be an object carrying {PROTOCOL_VERSION_KEY!r} and "
            f"{CLIENT_CAPABILITIES_KEY!r} (2026-07-28 requests are self-describing)",
        )
    missing = [key for key in (PROTOCOL_VERSION_KEY, CLIENT_CAPABILITIES_KEY) if key not in meta]
    if missing:
        raise _refused(
            message, Code.INVALID_PARAMS, f"params._meta is missing {', '.join(missing)}"
        )
    version = meta[PROTOCOL_VERSION_KEY]
    if asgi.header(scope, b"mcp-protocol-version") != version:
        raise _refused(
            message,
            Code.HEADER_MISMATCH,
            "the MCP-Protocol-Version header does not match params._meta's protocol version",
        )
    if asgi.header(scope, b"mcp-method") != message.method:
        raise _refused(
            message, Code.HEADER_MISMATCH, "the Mcp-Method header does not match the body's method"
        )
    name_key = NAME_BEARING.get(message.method or "")
    if name_key is not None:
        named = message.params.get(name_key)
        if named is not None and decode_value(asgi.header(scope, b"mcp-name")) != named:
            raise _refused(
                message,
                Code.HEADER_MISMATCH,
                f"the Mcp-Name header does not match the body's {name_key!r}",
            )
    if not isinstance(version, str):
        raise _refused(message, Code.INVALID_PARAMS, "the protocol version must be a string")
    if version not in MODERN_PROTOCOLS:
        raise _refused(
            message,
            Code.UNSUPPORTED_PROTOCOL_VERSION,
            f"protocol version {version!r} is not supported",
            data={"supported": list(MODERN_PROTOCOLS), "requested": version},
        )
    CLIENT_ENVELOPE.set({key: meta[key] for key in RELAYED_ENVELOPE if key in meta})
    return version


def check_removed(message: Message) -> None:
    """Refuse a method this revision removed, as a method not found (HTTP 404)."""
    if message.method in REMOVED:
        raise _refused(
            message,
            Code.METHOD_NOT_FOUND,
            f"{message.method} is not a 2026-07-28 method (it belongs to sessions of "
            "2025-11-25 and earlier)",
        )


def check_params(scope: Scope, message: Message, catalog: Catalog) -> None:
    """Refuse a tools/call whose `Mcp-Param-*` headers disagree with its arguments, as the
    approved definition's input schema marks them (`x-mcp-header`)."""
    if message.method != "tools/call":
        return
    tool = catalog.tools.get(str(message.params.get("name")))
    if tool is None:
        return  # not an approved tool: refused on the body, whatever the headers say
    headers = [
        (name.decode("latin-1").lower(), value.decode("latin-1"))
        for name, value in scope.get("headers", ())
    ]
    schema = tool.definition.get("inputSchema")
    mismatch = param_mismatch(schema, message.params.get("arguments") or {}, headers)
    if mismatch is not None:
        raise _refused(message, Code.HEADER_MISMATCH, mismatch + " (the body decides)")


def requested_session(message: Message) -> str | None:
    """The gateway session a request names in `_meta["_cmcp.session_id"]`, if any."""
    meta = message.params.get("_meta")
    value = meta.get(SESSION_KEY) if isinstance(meta, Mapping) else None
    if value is None:
        return None
    if not isinstance(value, str) or not _SESSION_ID.fullmatch(value):
        raise _refused(message, Code.INVALID_PARAMS, f"_meta[{SESSION_KEY!r}] is not a session id")
    return value


def complete(method: str, result: Mapping[str, Any], session_id: str) -> dict[str, Any]:
    """A result as this revision requires it (`resultType`; caching directives on the
    cacheable ones), naming the session used. What an agent sees depends on its identity
    and on upstream state the gateway re-checks, so nothing may be cached, nor shared."""
    answered = dict(result)
    answered.setdefault("resultType", "complete")
    if method in CACHEABLE:
        answered["ttlMs"] = 0
        answered["cacheScope"] = "private"
    meta = answered.get("_meta")
    answered["_meta"] = {**(meta if isinstance(meta, Mapping) else {}), SESSION_KEY: session_id}
    return answered


def _refused(
    message: Message, code: Code, text: str, *, data: dict[str, Any] | None = None
) -> ProtocolError:
    return ProtocolError(
        code, text, request_id=message.id, http_status=ERROR_STATUS.get(code, 400), data=data
    )
