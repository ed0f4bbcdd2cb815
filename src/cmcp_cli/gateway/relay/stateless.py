"""Which session a request without Mcp-Session-Id is answered in.

A 2026-07-28 request, or a plain JSON-RPC one-shot call, is answered in the session it
names, or else in its agent's default session, opened on first use and again after it
was closed. A one-shot call may also name a session that does not exist yet: it is opened
under that id for the calling agent, when no session ever had the id. The request that
opens a session binds the verifier's challenge it gives, if any.
"""

from __future__ import annotations

import asyncio
import functools

from cmcp_cli.gateway.relay.ownership import SessionIdUnavailableError
from cmcp_cli.gateway.relay.sessions import GatewaySession, SessionRegistry


class StatelessSessions:
    def __init__(self, sessions: SessionRegistry) -> None:
        self.sessions = sessions
        self._default: dict[str, str] = {}  # agent -> its default session's id
        self._opening_default = asyncio.Lock()
        # session id -> the opening of a session under an id its client chose
        self._opening_named: dict[str, asyncio.Task[GatewaySession]] = {}

    async def session(
        self,
        agent: str,
        requested: str | None,
        protocol_version: str,
        *,
        create: bool = False,
        challenge: str | None = None,
    ) -> GatewaySession | None:
        """The session `requested` names (None when it is not an open session of this
        agent; with `create`, see `named`), else the agent's default session. A session
        opened for this request is bound to `challenge`; the caller judges one it was not
        opened for (`gateway_params.bound_challenge`)."""
        if requested is not None:
            session = self.sessions.get(requested, agent)
            if session is not None or not create:
                return session
            return await self.named(agent, requested, protocol_version, challenge)
        known = self._default.get(agent)
        session = self.sessions.get(known, agent) if known else None
        if session is not None:
            return session
        async with self._opening_default:
            known = self._default.get(agent)
            session = self.sessions.get(known, agent) if known else None
            if session is None:
                session = await self.sessions.open(agent, protocol_version, challenge=challenge)
                self._default[agent] = session.id
            return session

    async def named(
        self, agent: str, session_id: str, protocol_version: str, challenge: str | None = None
    ) -> GatewaySession:
        """The agent's open session `session_id`, or a new one opened under that id when no
        session ever had it (`SessionRegistry.used`). `SessionIdUnavailableError`
        otherwise: `ended` when it was the agent's own; for another agent's id nothing
        more is said. Requests naming the same new id wait for one opening."""
        while True:
            session = self.sessions.get(session_id, agent)
            if session is not None:
                return session
            opening = self._opening_named.get(session_id)
            if opening is None:
                break
            await asyncio.wait([opening])
        task = asyncio.create_task(self._open_named(agent, session_id, protocol_version, challenge))
        self._opening_named[session_id] = task
        task.add_done_callback(functools.partial(self._opened, session_id))
        # A requester that leaves does not cancel the opening: others may wait on it.
        return await asyncio.shield(task)

    def _opened(self, session_id: str, task: asyncio.Task[GatewaySession]) -> None:
        if self._opening_named.get(session_id) is task:
            del self._opening_named[session_id]
        if not task.cancelled():
            task.exception()  # its requester may have left: nobody else is to be told

    async def _open_named(
        self, agent: str, session_id: str, protocol_version: str, challenge: str | None
    ) -> GatewaySession:
        if await self.sessions.used(session_id):
            owner = await self.sessions.owner(session_id)
            raise SessionIdUnavailableError(session_id, ended=owner == agent)
        return await self.sessions.open(
            agent, protocol_version, session_id=session_id, challenge=challenge
        )
