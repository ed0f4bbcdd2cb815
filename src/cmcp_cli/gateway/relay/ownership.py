"""Which agent a closed session belongs to, whichever gateway process opened it.

A session's `session_start` entry names its agent, so a session closed before a restart,
or by crash recovery, is still its agent's. Answers are kept for the sessions read or
closed most recently; older ones are read from the audit store again. A session id the
store holds anything of is used for good: no new session may take it (its chain and its
claim files are that session's).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from cmcp_cli.audit.store import has_session, session_start

KEPT = 4096  # sessions whose agent is remembered

InThread = Callable[..., Awaitable[Any]]


class SessionIdUnavailableError(Exception):
    """A session id a client asked to open a session under, which it cannot have: a session
    of its own that ended (`ended`), or one that is, or was, someone else's."""

    def __init__(self, session_id: str, *, ended: bool) -> None:
        super().__init__(session_id)
        self.session_id = session_id
        self.ended = ended


class ClosedSessionOwners:
    def __init__(self, store: Path, in_thread: InThread) -> None:
        self._store = store
        self._in_thread = in_thread
        self._agents: OrderedDict[str, str] = OrderedDict()  # session id -> its agent

    def remember(self, session_id: str, agent: str) -> None:
        self._agents[session_id] = agent
        self._agents.move_to_end(session_id)
        while len(self._agents) > KEPT:
            self._agents.popitem(last=False)

    async def of(self, session_id: str) -> str | None:
        """The agent the session's session_start names; None when the store holds no
        intact session_start naming one (then only the operator reads the session)."""
        agent = self._agents.get(session_id)
        if agent is None:
            agent = await self._in_thread(recorded_agent, self._store, session_id)
            if agent is None:
                return None
        self.remember(session_id, agent)
        return agent

    async def used(self, session_id: str) -> bool:
        """Whether a session of that id was ever recorded, by this process or an earlier
        one (an entry of it in the store, intact or edited)."""
        if session_id in self._agents:
            return True
        return bool(await self._in_thread(has_session, self._store, session_id))


def recorded_agent(store: Path, session_id: str) -> str | None:
    start = session_start(store, session_id)
    agent = start.fields.get("agent") if start is not None else None
    return agent if isinstance(agent, str) and agent else None
