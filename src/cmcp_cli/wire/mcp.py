"""MCP revisions, the `_meta` keys of the stateless 2026-07-28 envelope, and what a
request says to the gateway itself (its session, its workflow)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from contextvars import ContextVar
from typing import Any

from cmcp_cli.claim.challenge import CHALLENGE_META_KEY

MODERN_PROTOCOLS = ("2026-07-28",)
PROTOCOL_VERSION_KEY = "io.modelcontextprotocol/protocolVersion"
CLIENT_CAPABILITIES_KEY = "io.modelcontextprotocol/clientCapabilities"
SERVER_INFO_KEY = "io.modelcontextprotocol/serverInfo"
CLIENT_INFO_KEY = "io.modelcontextprotocol/clientInfo"
SESSION_KEY = "_cmcp.session_id"
WORKFLOW_KEY = "_cmcp.workflow_id"
WORKFLOW_HEADER = "Cmcp-Workflow-Id"
# `params._cmcp` of a request: what it says to the gateway, never forwarded upstream.
GATEWAY_PARAMS = "_cmcp"
GATEWAY_PARAM_KEYS = ("session_id", "workflow_id")
# A session id a client may name: also a file name under claims.dir and a URL segment.
SESSION_ID_PATTERN = r"[A-Za-z0-9_-]{1,64}"
SESSION_ID = re.compile(SESSION_ID_PATTERN)
RESERVED_SESSION_IDS = frozenset({"latest"})  # GET /trace/latest is the caller's latest claim
# A workflow id: 1 to 128 printable ASCII characters, no space at either end, so that it
# reads the same in a header (whose ends HTTP trims) as in a body.
WORKFLOW_ID = re.compile(r"[\x21-\x7e](?:[\x20-\x7e]{0,126}[\x21-\x7e])?")
# Methods whose name-like parameter is repeated in the Mcp-Name header.
NAME_BEARING = {"tools/call": "name", "prompts/get": "name", "resources/read": "uri"}

LOG_LEVEL_KEY = "io.modelcontextprotocol/logLevel"
# Envelope keys of a 2026-07-28 client's request that a 2026-07-28 upstream is told again:
# what the client can do (input requests above all) and the log messages it wants.
RELAYED_ENVELOPE = (CLIENT_CAPABILITIES_KEY, LOG_LEVEL_KEY)
# Those keys as the client of the request being answered sent them.
CLIENT_ENVELOPE: ContextVar[Mapping[str, Any] | None] = ContextVar(
    "cmcp_client_envelope", default=None
)


def forwardable_meta(meta: object) -> dict[str, Any] | None:
    """A client's `_meta` without the envelope keys and the gateway's own (its session,
    its workflow, the verifier's challenge): what the upstream, spoken to in a session,
    may see."""
    if not isinstance(meta, Mapping):
        return None
    kept = {
        key: value
        for key, value in meta.items()
        if not (
            key.startswith("io.modelcontextprotocol/")
            or key.startswith("_cmcp.")
            or key == CHALLENGE_META_KEY
        )
    }
    return kept or None
