"""A session's claims, and closing a session to get its last one.

`GET /trace/{id}` serves the session's latest claim (`?format=record`: its TRACE record;
`?sequence=N`: its claim of that number, with `claims.per_call`); `GET /trace/latest`
the caller's session opened or claimed last (the operator's: the gateway's). A session
still open has no claim until it closes (or, with `claims.per_call`, until its first
call): that is answered 409 with what to do. With `trace.anchor`, `?receipt` (with
`&sequence=N` too) serves the claim's receipt, or 409 `{"pending": true, ...}` while its
record waits to be anchored (404 when anchoring is off). `POST /sessions/{id}/close` ends a session
and writes its claim. All of it for the session's own agent and the operator only
(`OperatorRoutes.readable`); to anyone else a session is as absent as an unknown one.
"""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from cmcp_cli.evidence.anchor_queue import PendingAnchor, find_receipt
from cmcp_cli.gateway.operator.routes import OperatorRoutes
from cmcp_cli.gateway.relay.sessions import SessionRegistry
from cmcp_cli.gateway.runtime import GatewayRuntime
from cmcp_cli.wire import asgi
from cmcp_cli.wire.asgi import Scope, Send
from cmcp_cli.wire.mcp import SESSION_ID_PATTERN

_SESSION_PATH = re.compile(rf"/sessions/(?P<id>{SESSION_ID_PATTERN})/close")
_TRACE_PATH = re.compile(rf"/trace/(?P<id>{SESSION_ID_PATTERN})")
_SEQUENCE = re.compile(r"[1-9][0-9]{0,17}")
LATEST = "/trace/latest"


class ClaimRoutes:
    def __init__(
        self, runtime: GatewayRuntime, sessions: SessionRegistry, operator: OperatorRoutes
    ) -> None:
        self.runtime = runtime
        self.sessions = sessions
        self.operator = operator

    async def route(self, scope: Scope, send: Send) -> bool:
        """Answer the request if it is one of these routes; False when it is not."""
        path, method = scope["path"], scope["method"]
        if path.startswith("/trace/") and method == "GET":
            await self._trace(scope, send, path)
        elif (match := _SESSION_PATH.fullmatch(path)) and method == "POST":
            await self._close(scope, send, match.group("id"))
        else:
            return False
        return True

    async def _close(self, scope: Scope, send: Send, session_id: str) -> None:
        token = asgi.bearer_token(scope)
        agent = self.runtime.credentials.agent_for(token)
        session = self.sessions.get(session_id, agent) if agent else None
        if session is None and self.runtime.credentials.is_operator(token):
            session = self.sessions.find(session_id)
        if session is None:
            await asgi.send_json(send, 404, {"error": "unknown or closed session"})
            return
        await self.sessions.close(session, "closed on request")
        await asgi.send_json(send, 200, {"session_id": session_id, "claim": f"/trace/{session_id}"})

    async def _trace(self, scope: Scope, send: Send, path: str) -> None:
        query = parse_qs(
            urlsplit("?" + scope.get("query_string", b"").decode("latin-1")).query,
            keep_blank_values=True,
        )
        record = query.get("format") == ["record"]
        sequence: int | None = None
        if "sequence" in query:
            given = query["sequence"]
            if len(given) != 1 or not _SEQUENCE.fullmatch(given[0]):
                await asgi.send_json(
                    send, 400, {"error": "sequence must be one positive integer (?sequence=1)"}
                )
                return
            sequence = int(given[0])
        if path == LATEST:
            missing = (
                "no session of yours yet: make a call, close its session "
                "(POST /sessions/{id}/close), then GET /trace/latest"
            )
            session_id = self.sessions.latest_of(self.operator.caller(scope))
        else:
            missing = "no claim for that session"
            match = _TRACE_PATH.fullmatch(path)
            session_id = match.group("id") if match else None
        # readable refuses (and answers) a request that names no session
        if not await self.operator.readable(scope, send, session_id, missing) or not session_id:
            return
        session = self.sessions.find(session_id)
        await self.sessions.claims_written(session)
        claim = self.sessions.claim_path(session_id, record=record, sequence=sequence)
        if "receipt" in query and claim.is_file():
            await self._receipt(send, self.sessions.claim_path(session_id, sequence=sequence))
        elif claim.is_file():
            await asgi.send_bytes(send, 200, claim.read_bytes(), content_type="application/json")
        elif session is not None:
            answer = still_open(session_id, sequence, per_call=self.sessions.per_call)
            await asgi.send_json(send, 409, answer)
        else:
            await asgi.send_json(send, 404, {"error": missing})

    async def _receipt(self, send: Send, claim_file: Path) -> None:
        """The receipt of the record `claim_file` holds (a claim or a standalone record)."""
        if self.sessions.anchors is None:
            await asgi.send_json(
                send, 404, {"error": "anchoring is off (trace.anchor is not set): no receipts"}
            )
            return
        found = find_receipt(self.runtime.claims_dir, claim_file)
        if isinstance(found, bytes):
            await asgi.send_bytes(send, 200, found, content_type="application/json")
        elif isinstance(found, PendingAnchor):
            await asgi.send_json(
                send,
                409,
                {
                    "pending": True,
                    "queued_at": found.queued_at,
                    "attempts": found.attempts,
                    "last_error": found.last_error,
                },
            )
        else:
            await asgi.send_json(send, 404, {"error": found})


def still_open(session_id: str, sequence: int | None, *, per_call: bool) -> dict[str, object]:
    """What a caller is told about an open session whose claim it asked for."""
    which = f"claim {sequence}" if sequence is not None else "claim"
    more = (
        "each tool call issues the next claim (claims.per_call)"
        if per_call
        else "or run the gateway with claims.per_call: true for a claim after every tool call"
    )
    return {
        "error": f"session {session_id!r} is still open and has no {which} yet: close it "
        f"(POST /sessions/{session_id}/close), then GET /trace/{session_id}; {more}",
        "session_id": session_id,
        "open": True,
        "close": f"POST /sessions/{session_id}/close",
        "claim": f"GET /trace/{session_id}",
    }
