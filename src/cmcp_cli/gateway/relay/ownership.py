"""Which agent a closed session belongs to, whichever gateway process opened it.

A session's `session_start` entry names its agent, so a session closed before a restart,
or by crash recovery, is still its agent's. Answers are kept for the sessions read or
closed most recently; older ones are read from the audit store again.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from cmcp_cli.audit.store import session_start

KEPT = 4096  # sessions whose agent is remembered

InThread = Callable[..., Awaitable[Any]]


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


def recorded_agent(store: Path, session_id: str) -> str | None:
    start = session_start(store, session_id)
    agent = start.fields.get("agent") if start is not None else None
    return agent if isinstance(agent, str) and agent else None
