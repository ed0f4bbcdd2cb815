"""MCP revisions and the `_meta` keys of the stateless 2026-07-28 envelope."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

MODERN_PROTOCOLS = ("2026-07-28",)
PROTOCOL_VERSION_KEY = "io.modelcontextprotocol/protocolVersion"
CLIENT_CAPABILITIES_KEY = "io.modelcontextprotocol/clientCapabilities"
SERVER_INFO_KEY = "io.modelcontextprotocol/serverInfo"
SESSION_KEY = "_cmcp.session_id"


def forwardable_meta(meta: object) -> dict[str, Any] | None:
    """A client's `_meta` without the envelope keys and the gateway's own: what the
    upstream, spoken to in a session, may see."""
    if not isinstance(meta, Mapping):
        return None
    kept = {
        key: value
        for key, value in meta.items()
        if not (key.startswith("io.modelcontextprotocol/") or key.startswith("_cmcp."))
    }
    return kept or None
