"""The gateway's ASGI application: MCP on /mcp, plus health, claims and session control.

MCP streamable HTTP (2025-03-26, 2025-06-18, 2025-11-25): POST carries one JSON-RPC
message and gets a JSON answer, or an event stream when the upstream sends something
before it (see `streams`); GET opens the session's own stream, or resumes a lost one with
Last-Event-ID; DELETE ends the session, and its claim is written. The stateless
2026-07-28 revision is served on the same URL (see `modern`): a request says which
revision it speaks. A plain JSON-RPC request (no `initialize` before it, no
Mcp-Session-Id, no protocol version in a header or in `_meta`) is a one-shot call: served
as the stateless revision serves a request, in the session `params._cmcp.session_id`
names (opened under that id on first use, for its agent only) or else in the agent's
default session, and answered as plain JSON-RPC with the session in `Cmcp-Session-Id`.
A verifier's challenge (`Cmcp-Challenge`, or `_meta`) is bound by the request that opens
a session: `initialize`, or the request that opens a stateless or plain call's session.
"""

from __future__ import annotations

import dataclasses

from cmcp_cli.audit.recorder import ChainEndedError
from cmcp_cli.audit.store import AuditStoreError
from cmcp_cli.evidence.attesting import AttestationUnavailableError
from cmcp_cli.gateway.downstream import gateway_params, modern
from cmcp_cli.gateway.downstream.gateway_params import GatewayParams
from cmcp_cli.gateway.downstream.http_rules import TransportRules
from cmcp_cli.gateway.downstream.streams import (
    ResponseStream,
    as_is,
    message_event,
    serve_events,
)
from cmcp_cli.gateway.operator.claims import ClaimRoutes
from cmcp_cli.gateway.operator.routes import OperatorRoutes
from cmcp_cli.gateway.relay.dispatch import Dispatcher, Reply
from cmcp_cli.gateway.relay.exchange import GET_STREAM
from cmcp_cli.gateway.relay.ownership import SessionIdUnavailableError
from cmcp_cli.gateway.relay.reload import PolicyReloader
from cmcp_cli.gateway.relay.sessions import GatewaySession, SessionLimitError, SessionRegistry
from cmcp_cli.gateway.relay.stateless import StatelessSessions
from cmcp_cli.gateway.runtime import GatewayRuntime
from cmcp_cli.gateway.upstream.api import KNOWN_PROTOCOLS
from cmcp_cli.wire import asgi
from cmcp_cli.wire.asgi import Receive, Scope, Send
from cmcp_cli.wire.jsonrpc import Code, Message, ProtocolError, error, parse_message
from cmcp_cli.wire.mcp import MODERN_PROTOCOLS, SESSION_KEY

MCP_PATH = "/mcp"
KEEPALIVE_SECONDS = 15.0
# The one-shot call of a plain JSON-RPC request is served as this revision serves one.
PLAIN_PROTOCOL = MODERN_PROTOCOLS[0]
_PLAIN_SESSION = "params._cmcp.session_id"
_SESSION_MISSING = (
    "Mcp-Session-Id is missing. Either initialize first and send the Mcp-Session-Id it "
    "answers with; or speak 2026-07-28 (the protocol version in params._meta and the "
    "MCP-Protocol-Version header); or send a plain JSON-RPC call, without the "
    "MCP-Protocol-Version header, naming its session in params._cmcp.session_id"
)
# How a request that gives a challenge its session was not opened with gets one that is.
_NEW_LEGACY_SESSION = "initialize a new session, giving the challenge with initialize"
_NEW_PLAIN_SESSION = f"name a new session in {_PLAIN_SESSION} on the call that gives it"
_NEW_MODERN_SESSION = (
    "a 2026-07-28 request opens your default session when none is open: end the open one "
    "with DELETE /mcp and its Mcp-Session-Id, then give the challenge on your next request"
)


class GatewayApp:
    def __init__(self, runtime: GatewayRuntime) -> None:
        self.runtime = runtime
        self.sessions = SessionRegistry(runtime)
        self.stateless = StatelessSessions(self.sessions)
        self.reloader = PolicyReloader(self.sessions)
        self.dispatcher = Dispatcher(runtime, self.sessions)
        self.operator = OperatorRoutes(runtime, self.sessions)
        self.claims = ClaimRoutes(runtime, self.sessions, self.operator)
        self.rules = TransportRules(runtime.config)
        self.ready = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        try:
            await self._route(scope, receive, send)
        except asgi.ClientGoneError:
            return

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                if self.sessions.anchors is not None:
                    self.sessions.anchors.start()
                self.ready = True
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                self.ready = False
                await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def shutdown(self) -> None:
        """Close every open session (writing its claim), then the runtime."""
        await self.reloader.stop()
        await self.sessions.close_all("gateway shutdown")
        if self.sessions.anchors is not None:  # what is pending stays queued on disk
            await self.sessions.anchors.stop()
        self.runtime.close()

    async def _route(self, scope: Scope, receive: Receive, send: Send) -> None:
        path, method = scope["path"], scope["method"]
        refusal = self.rules.check(scope) or (
            self.rules.check_mcp(scope, method) if path == MCP_PATH else None
        )
        if refusal is not None:
            await asgi.send_json(send, refusal.status, refusal.body, headers=refusal.headers)
            return
        receive = self.rules.bounded(receive, send)
        if path == MCP_PATH:
            await self._mcp(scope, receive, send, method)
        elif path == "/healthz" and method == "GET":
            await asgi.send_json(send, 200, {"status": "ok"})
        elif path == "/readyz" and method == "GET":
            status = 200 if self.ready else 503
            # readiness answers anyone: file paths, check reasons and service errors only
            # to the operator
            operator = self.runtime.credentials.is_operator(asgi.bearer_token(scope))
            detail = {
                "ready": self.ready,
                "sessions": len(self.sessions),
                "measurement": self.runtime.measurement.to_json(),
                "appraisal": self.runtime.attestor.appraisal_detail(operator=operator),
                "policy": self.reloader.status(),
            }
            if self.sessions.anchors is not None:  # pending anchors do not stop serving
                detail["anchoring"] = self.sessions.anchors.status().to_json(operator=operator)
            await asgi.send_json(send, status, detail)
        elif not await self.claims.route(scope, send) and not await self.operator.route(
            scope, receive, send
        ):
            await asgi.send_json(send, 404, {"error": f"no route {method} {path}"})

    async def _mcp(self, scope: Scope, receive: Receive, send: Send, method: str) -> None:
        agent = self._agent(scope)
        if agent is None:
            text = (
                "the Authorization header is missing: send Authorization: Bearer <token>"
                if asgi.header(scope, b"authorization") is None
                else "the bearer token is not valid: send one of the gateway's agent tokens"
            )
            await asgi.send_json(
                send,
                401,
                error(None, Code.INVALID_REQUEST, text),
                headers={"www-authenticate": 'Bearer realm="cmcp"'},
            )
            return
        if method == "POST":
            await self._post(scope, receive, send, agent)
        elif method == "DELETE":
            await self._delete(scope, send, agent)
        elif method == "GET":
            await self._stream(scope, receive, send, agent)
        else:
            await asgi.send_json(
                send,
                405,
                error(None, Code.INVALID_REQUEST, f"{method} is not served on {MCP_PATH}"),
                headers={"allow": "GET, POST, DELETE"},
            )

    async def _stream(self, scope: Scope, receive: Receive, send: Send, agent: str) -> None:
        """The session's own stream (server-sent events): list_changed and what upstreams
        send outside any request, until the session or the gateway ends or the client
        leaves. With `Last-Event-ID`, the stream that event was on resumes after it."""
        session_id = asgi.header(scope, b"mcp-session-id")
        session = self.sessions.get(session_id, agent) if session_id else None
        if session is None:
            text = (
                "unknown or closed session: initialize again"
                if session_id
                else "Mcp-Session-Id is missing: a stream is a session's; send the "
                "Mcp-Session-Id that initialize answered with"
            )
            await asgi.send_json(
                send, 404 if session_id else 400, error(None, Code.SESSION_NOT_FOUND, text)
            )
            return
        if await self._stray_challenge(scope, send, session):
            return
        replay: list[bytes] = []
        last_event_id = asgi.header(scope, b"last-event-id")
        resumed = session.exchange.resume(last_event_id) if last_event_id else None
        if last_event_id and resumed is None and not last_event_id.startswith(GET_STREAM + "-"):
            await asgi.send_json(
                send,
                404,
                error(
                    None,
                    Code.INVALID_REQUEST,
                    f"Last-Event-ID {last_event_id!r} names no stream this session can resume "
                    "(unknown, or its events are no longer kept): repeat the request",
                ),
            )
            return
        if resumed is not None:
            replay, channel = resumed
            if channel is None or channel.name != GET_STREAM:
                await serve_events(
                    send,
                    receive,
                    channel.queue if channel else None,
                    encode=as_is,
                    replay=replay,
                    keepalive=KEEPALIVE_SECONDS,
                )
                if channel is not None and channel.queue is not None:
                    channel.queue = None  # its reader left: what follows is only kept
                return
        if session.streaming:
            await asgi.send_json(
                send, 409, error(None, Code.INVALID_REQUEST, "this session has a stream already")
            )
            return
        session.streaming = True
        try:
            await serve_events(
                send,
                receive,
                session.notices,
                encode=as_is,
                replay=replay,
                keepalive=KEEPALIVE_SECONDS,
            )
        finally:
            session.streaming = False

    async def _post(self, scope: Scope, receive: Receive, send: Send, agent: str) -> None:
        limits = self.runtime.config.limits
        stream = ResponseStream(scope, receive, send)
        try:
            body = await asgi.read_body(receive, limits.max_request_body_bytes)
            message = parse_message(body, max_depth=limits.max_json_depth)
            try:
                reply = await self._answer(scope, message, agent, stream)
            except ChainEndedError:
                reply = Reply(
                    error(message.id, Code.SESSION_NOT_FOUND, "the session has ended"),
                    status=404,
                )
            except AuditStoreError as exc:
                # Fail closed: what could not be recorded was not forwarded, or not returned.
                reply = Reply(
                    error(
                        message.id,
                        Code.AUDIT_FAILED,
                        f"the audit store cannot record, so nothing is forwarded: {exc.message}",
                    ),
                    status=503,
                )
            except AttestationUnavailableError as exc:
                # Fail closed: a session without evidence would yield a claim nobody can verify.
                reply = Reply(error(message.id, Code.ATTESTATION_FAILED, exc.message), status=503)
        except asgi.BodyTooLargeError:
            reply = Reply(
                error(
                    None,
                    Code.INVALID_REQUEST,
                    f"the body exceeds {limits.max_request_body_bytes} bytes "
                    "(limits.max_request_body_bytes)",
                ),
                status=413,
            )
        except ProtocolError as exc:
            reply = Reply(exc.to_json(), status=exc.http_status)
        if reply.listener is not None:
            await self._listen(send, receive, reply)
            return
        headers: dict[str, str] = {}
        if reply.session_id:
            headers["mcp-session-id"] = reply.session_id
        if reply.stateless_session:
            headers["cmcp-session-id"] = reply.stateless_session
        await stream.finish(reply.status, reply.message, headers, streamed=reply.streamed)

    async def _listen(self, send: Send, receive: Receive, reply: Reply) -> None:
        """A subscriptions/listen answer: its events, as server-sent events, until the
        session ends or the client leaves."""
        listener = reply.listener
        if listener is None:
            return
        try:
            await serve_events(
                send, receive, listener.events, encode=message_event, keepalive=KEEPALIVE_SECONDS
            )
        finally:
            session = self.sessions.find(reply.stateless_session or "")
            if session is not None:
                await self.dispatcher.listening.unlisten(session, listener)

    async def _answer(
        self, scope: Scope, message: Message, agent: str, stream: ResponseStream
    ) -> Reply:
        message, own = gateway_params.take(scope, message)
        if modern.is_modern(scope, message):
            _no_plain_session(message, own, f"params._meta[{SESSION_KEY!r}]")
            if message.is_notification or message.method is None:
                return Reply(None, status=202)
            return await self._stateless(
                scope,
                message,
                agent,
                stream,
                own,
                version=modern.check_envelope(scope, message),
                requested=modern.requested_session(message),
            )
        if message.method == "initialize":
            _no_plain_session(message, own, "the Mcp-Session-Id initialize answers with")
            if message.id is None:
                raise ProtocolError(Code.INVALID_REQUEST, "initialize is a request: it needs an id")
            try:
                return await self.dispatcher.initialize(message, agent, challenge=own.challenge)
            except SessionLimitError as exc:
                raise ProtocolError(
                    Code.INVALID_REQUEST, str(exc), request_id=message.id, http_status=503
                ) from exc
        # Any revision of the session era is taken, as SDK servers take it: the session is
        # served by the revision it negotiated, whatever a later request's header names.
        named = asgi.header(scope, b"mcp-protocol-version")
        if named is not None and named not in KNOWN_PROTOCOLS:
            raise ProtocolError(
                Code.INVALID_REQUEST,
                f"MCP-Protocol-Version {named!r} is not supported "
                f"(supported: {', '.join((*KNOWN_PROTOCOLS, *MODERN_PROTOCOLS))})",
                request_id=message.id,
            )
        session_id = asgi.header(scope, b"mcp-session-id")
        if session_id is None and named is None:
            if message.is_notification or message.method is None:
                return Reply(None, status=202)
            return await self._stateless(
                scope, message, agent, stream, own, version=None, requested=own.session_id
            )
        if session_id is None:
            raise ProtocolError(Code.INVALID_REQUEST, _SESSION_MISSING, request_id=message.id)
        _no_plain_session(message, own, "its Mcp-Session-Id")
        session = self.sessions.get(session_id, agent)
        if session is None:
            raise ProtocolError(
                Code.SESSION_NOT_FOUND,
                "unknown or closed session: initialize again",
                request_id=message.id,
                http_status=404,
            )
        if own.challenge is not None:
            gateway_params.bound_challenge(
                message, own.challenge, session.evidence.challenge, session.id, _NEW_LEGACY_SESSION
            )
        stream.exchange = session.exchange
        return await self.dispatcher.handle(message, session, stream, workflow_id=own.workflow_id)

    async def _stateless(
        self,
        scope: Scope,
        message: Message,
        agent: str,
        stream: ResponseStream,
        own: GatewayParams,
        *,
        version: str | None,
        requested: str | None,
    ) -> Reply:
        """A request without a session of the session era, answered in the session it names
        or in its agent's default session: a 2026-07-28 one (`version`), with that
        revision's results and HTTP statuses; or a plain JSON-RPC one-shot call (`version`
        None), whose named session is opened on first use, answered as plain JSON-RPC."""
        plain = version is None
        modern.check_removed(message, plain=plain)
        try:
            session = await self.stateless.session(
                agent, requested, version or PLAIN_PROTOCOL, create=plain, challenge=own.challenge
            )
        except SessionLimitError as exc:
            raise ProtocolError(
                Code.INVALID_REQUEST, str(exc), request_id=message.id, http_status=503
            ) from exc
        except SessionIdUnavailableError as exc:
            raise _unavailable(message, exc) from exc
        if session is None:
            raise ProtocolError(
                Code.SESSION_NOT_FOUND,
                f"_meta[{SESSION_KEY!r}] names no open session of this agent: "
                "leave it out to use your default session",
                request_id=message.id,
                http_status=404,
            )
        if own.challenge is not None:  # bound already when this request opened the session
            how = _NEW_PLAIN_SESSION if plain else _NEW_MODERN_SESSION
            gateway_params.bound_challenge(
                message, own.challenge, session.evidence.challenge, session.id, how
            )
        if message.method == "server/discover":
            return await self.dispatcher.discover(message, session)
        if not plain:
            modern.check_params(scope, message, self.runtime.catalog)
        stream.exchange = session.exchange
        stream.cancels = message.id
        stream.headers["cmcp-session-id"] = session.id
        reply = await self.dispatcher.handle(message, session, stream, workflow_id=own.workflow_id)
        if reply.listener is not None or plain:
            return dataclasses.replace(reply, stateless_session=session.id)
        answer = reply.message
        status = reply.status
        if answer is not None and isinstance(answer.get("result"), dict):
            answer = {
                **answer,
                "result": modern.complete(message.method or "", answer["result"], session.id),
            }
        elif answer is not None and isinstance(answer.get("error"), dict):
            code = answer["error"].get("code")
            status = modern.ERROR_STATUS.get(code, status) if isinstance(code, int) else status
        return Reply(
            answer,
            status=status,
            outcome=reply.outcome,
            stateless_session=session.id,
            streamed=reply.streamed,
        )

    async def _delete(self, scope: Scope, send: Send, agent: str) -> None:
        session_id = asgi.header(scope, b"mcp-session-id")
        if session_id is None:
            text = "Mcp-Session-Id is missing: DELETE ends the session that header names"
            await asgi.send_json(send, 400, error(None, Code.SESSION_NOT_FOUND, text))
            return
        session = self.sessions.get(session_id, agent)
        if session is None:
            await asgi.send_json(
                send, 404, error(None, Code.SESSION_NOT_FOUND, "unknown or closed session")
            )
            return
        if await self._stray_challenge(scope, send, session):
            return
        await self.sessions.close(session, "closed by client")
        await asgi.send_bytes(send, 200, b"")

    async def _stray_challenge(self, scope: Scope, send: Send, session: GatewaySession) -> bool:
        """Refuse (400) a stream or end of `session` whose `Cmcp-Challenge` is not the
        session's own; True when refused."""
        problem = gateway_params.stray_challenge(
            scope, session.evidence.challenge, session.id, _NEW_LEGACY_SESSION
        )
        if problem is None:
            return False
        await asgi.send_json(send, 400, error(None, Code.INVALID_PARAMS, problem))
        return True

    def _agent(self, scope: Scope) -> str | None:
        return self.runtime.credentials.agent_for(asgi.bearer_token(scope))


def _no_plain_session(message: Message, own: GatewayParams, instead: str) -> None:
    """Refuse `params._cmcp.session_id` on a request that names its session otherwise."""
    if own.session_id is not None:
        raise ProtocolError(
            Code.INVALID_PARAMS,
            f"{_PLAIN_SESSION} names the session of a plain JSON-RPC call only; this "
            f"request's session is {instead}",
            request_id=message.id,
        )


def _unavailable(message: Message, refused: SessionIdUnavailableError) -> ProtocolError:
    """The refusal of a session id a plain call may not open: its agent learns where the
    claim of its own ended session is; another agent only that the id is not available."""
    session_id = refused.session_id
    if refused.ended:
        return ProtocolError(
            Code.SESSION_NOT_FOUND,
            f"session {session_id!r} has ended: its claim is at GET /trace/{session_id}; "
            f"pick a new {_PLAIN_SESSION} for new calls",
            request_id=message.id,
            http_status=404,
            data={"session_id": session_id, "claim": f"/trace/{session_id}"},
        )
    return ProtocolError(
        Code.INVALID_PARAMS,
        f"session id {session_id!r} is not available to this agent: pick another {_PLAIN_SESSION}",
        request_id=message.id,
        http_status=409,
    )
