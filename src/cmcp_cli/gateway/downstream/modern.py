"""The stateless MCP revision (2026-07-28) as clients speak it to the gateway.

No `initialize` and no `Mcp-Session-Id`: every request carries its protocol version and
client capabilities in `params._meta`, and repeats method and name in the `Mcp-Method` /
`Mcp-Name` headers, which must agree with the body (the gateway decides on the body; a
disagreement is refused, so a proxy in front cannot be shown one call and make another).
Results carry `resultType`. A client that wants a session other than its agent's default
one names it with `_meta["_cmcp.session_id"]`; every answer says which session it used.
"""

from __future__ import annotations

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
    SESSION_ID,
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
    """The request's protocol version, once its envelope and headers are consistent. What
    is missing is named as missing, with what to send."""
    meta = message.params.get("_meta")
    needed = f"{PROTOCOL_VERSION_KEY!r} and {CLIENT_CAPABILITIES_KEY!r}"
    if not isinstance(meta, Mapping):
        raise _refused(
            message,
            Code.INVALID_PARAMS,
            f"params._meta {'must be an object' if '_meta' in message.params else 'is missing'}"
            f": a 2026-07-28 request carries {needed} in it (the capabilities may be {{}})",
        )
    missing = [key for key in (PROTOCOL_VERSION_KEY, CLIENT_CAPABILITIES_KEY) if key not in meta]
    if missing:
        raise _refused(
            message,
            Code.INVALID_PARAMS,
            f"params._meta is missing {' and '.join(map(repr, missing))}: a 2026-07-28 "
            f"request carries {needed} (the capabilities may be {{}})",
        )
    version = meta[PROTOCOL_VERSION_KEY]
    _check_header(
        scope, message, b"mcp-protocol-version", version, "params._meta's protocol version"
    )
    _check_header(scope, message, b"mcp-method", message.method, "the body's method")
    name_key = NAME_BEARING.get(message.method or "")
    if name_key is not None:
        named = message.params.get(name_key)
        if named is not None:
            _check_header(scope, message, b"mcp-name", named, f"the body's {name_key!r}")
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


_HEADER_NAMES = {
    b"mcp-protocol-version": "MCP-Protocol-Version",
    b"mcp-method": "Mcp-Method",
    b"mcp-name": "Mcp-Name",
}


def _check_header(scope: Scope, message: Message, name: bytes, body: object, what: str) -> None:
    """Refuse a routing header that is missing, or that disagrees with the body."""
    sent = asgi.header(scope, name)
    header = _HEADER_NAMES[name]
    if sent is None:
        value = body if isinstance(body, str) else "..."
        raise _refused(
            message,
            Code.HEADER_MISMATCH,
            f"the {header} header is missing: a 2026-07-28 request repeats {what} in it "
            f"({header}: {value})",
        )
    decoded = decode_value(sent) if name == b"mcp-name" else sent
    if decoded != body:
        raise _refused(message, Code.HEADER_MISMATCH, f"the {header} header does not match {what}")


def check_removed(message: Message, *, plain: bool = False) -> None:
    """Refuse a method this revision removed, as a method not found (HTTP 404); `plain`: to
    a plain JSON-RPC call (served as this revision is)."""
    if message.method in REMOVED:
        served = "served to a plain JSON-RPC call" if plain else "a 2026-07-28 method"
        raise _refused(
            message,
            Code.METHOD_NOT_FOUND,
            f"{message.method} is not {served} (it belongs to sessions of 2025-11-25 and "
            "earlier: initialize one to use it)",
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
    if not isinstance(value, str) or not SESSION_ID.fullmatch(value):
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
