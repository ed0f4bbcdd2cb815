"""Client sessions: one evidence chain, one set of upstream sessions, one claim each.

A session belongs to the agent that opened it and is never handed to another. Entries
are sealed on the event loop and their durability awaited there (`durably`), so sessions
waiting on the same fsync share one group commit without a thread each. What blocks for
longer (opening a session: key, evidence; closing it: the claim; signing and writing a
claim issued per call) runs on a thread pool.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import logging
import secrets
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from cmcp_cli.audit.recorder import ChainEndedError, deferred_durability
from cmcp_cli.catalog.model import advertised_hash, approved_definition
from cmcp_cli.evidence.anchor_queue import PendingAnchor
from cmcp_cli.evidence.claim_files import claim_path, write_claim
from cmcp_cli.evidence.session import ClosedSession, EvidenceSession, PendingClaim
from cmcp_cli.gateway.anchoring.worker import AnchorWorker
from cmcp_cli.gateway.enforcement.approvals import ApprovalDesk
from cmcp_cli.gateway.enforcement.messages import Gate, fail_gate
from cmcp_cli.gateway.relay.exchange import Exchange
from cmcp_cli.gateway.relay.freshness import renewal_time
from cmcp_cli.gateway.relay.listen import Listener
from cmcp_cli.gateway.relay.metrics import GatewayMetrics
from cmcp_cli.gateway.relay.ownership import ClosedSessionOwners
from cmcp_cli.gateway.runtime import ActivePolicy, Caller, GatewayRuntime
from cmcp_cli.gateway.upstream.api import UpstreamConversation, UpstreamError
from cmcp_cli.gateway.upstream.listing import list_tools
from cmcp_cli.gateway.upstream.modern_client import open_conversation
from cmcp_cli.wire.mcp import MODERN_PROTOCOLS

_Result = TypeVar("_Result")
log = logging.getLogger(__name__)


DRAIN_SECONDS = 5.0  # how long a closing session waits for its calls' records
FORWARDED_NOTICES = frozenset(
    {
        "notifications/tools/list_changed",
        "notifications/resources/list_changed",
        "notifications/prompts/list_changed",
        "notifications/resources/updated",
        "notifications/message",
        "notifications/progress",
    }
)


ServerMessageHandler = Callable[
    ["GatewaySession", str, UpstreamConversation, dict[str, Any]], Awaitable[None]
]


class SessionLimitError(Exception):
    pass


@dataclass
class GatewaySession:
    id: str
    agent: str
    protocol_version: str  # as negotiated at initialize
    evidence: EvidenceSession
    policy: ActivePolicy  # the bundle it was opened under, for its whole life
    last_seen: float = field(default_factory=time.monotonic)
    upstreams: dict[str, UpstreamConversation] = field(default_factory=dict)
    drifted: dict[str, str] = field(default_factory=dict)  # tool -> advertised definition hash
    advertised: set[str] = field(default_factory=set)  # approved tools the upstream lists
    routes: dict[tuple[str, str], str] = field(default_factory=dict)  # (listing, item) -> upstream
    tool_order: dict[str, list[str]] = field(default_factory=dict)  # upstream -> its tools/list
    subscribed: dict[str, str] = field(default_factory=dict)  # resource uri -> upstream
    listeners: set[Listener] = field(default_factory=set)  # open subscriptions/listen streams
    # (upstream, input key) -> the open gate of an input request the client was asked
    awaiting_input: dict[tuple[str, str], Gate] = field(default_factory=dict)
    closed: bool = False  # closing or closed: it takes no new request
    # When its evidence is next attested (monotonic; `relay.freshness`), and why it went
    # stale under `staleness_policy: fail_closed` (then every request is refused).
    renew_at: float = float("inf")
    stale: str | None = None
    exchange: Exchange = field(init=False)
    streaming: bool = False
    # The last claim issued per call still being signed and written; each waits for the
    # one before, so the session's latest claim file is always its latest claim.
    claim_writes: asyncio.Task[None] | None = None
    _call_ids: itertools.count[int] = field(default_factory=itertools.count)
    _opening: asyncio.Lock = field(default_factory=asyncio.Lock)

    def __post_init__(self) -> None:
        self.exchange = Exchange(resumable=self.protocol_version not in MODERN_PROTOCOLS)

    @property
    def notices(self) -> asyncio.Queue[bytes | None]:
        """Events for the client's GET stream (bounded); None ends the stream."""
        return self.exchange.notices

    def next_call_id(self) -> str:
        return f"{self.id}/{next(self._call_ids)}"

    def notify(self, notice: dict[str, Any] | None) -> None:
        """Queue a message for the client's GET stream; the end-of-stream marker always fits.
        Listen streams get what they asked for; the end marker ends them with their result."""
        for listener in list(self.listeners):
            if notice is None:
                listener.end(graceful=True)
            else:
                listener.offer(notice)
        self.exchange.publish(notice)


class SessionRegistry:
    def __init__(self, runtime: GatewayRuntime, *, threads: int = 8) -> None:
        self.runtime = runtime
        self._sessions: dict[str, GatewaySession] = {}
        self._executor = ThreadPoolExecutor(threads, thread_name_prefix="cmcp-evidence")
        self.per_call = runtime.config.claims.per_call
        # agent -> its session opened or claimed last; None: the gateway's (for the operator)
        self._latest_of: dict[str | None, str] = {}
        self._closed_owners = ClosedSessionOwners(runtime.store.path, self.in_thread)
        self._background: set[asyncio.Task[None]] = set()
        self.approvals = ApprovalDesk(runtime.config.limits.approval_ttl_seconds)
        self.metrics = GatewayMetrics()
        # With trace.anchor: anchors each claim's record after its files are written.
        self.anchors = anchor_worker(runtime)
        # Where messages an upstream sends outside any request go (set by the relay).
        self.on_server_message: ServerMessageHandler | None = None
        # Run by `close` before session_end: answers what the upstreams still wait for.
        self.on_session_closing: Callable[[GatewaySession], Awaitable[None]] | None = None

    async def in_thread(
        self, function: Callable[..., _Result], *args: Any, **kwargs: Any
    ) -> _Result:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, lambda: function(*args, **kwargs))

    @contextlib.asynccontextmanager
    async def durably(self) -> AsyncIterator[None]:
        """Record on the event loop, then wait, without blocking it, until every entry the
        block recorded is durable: a block's records are durable when it exits."""
        with deferred_durability() as pending:
            try:
                yield
            finally:
                for done in pending:
                    await asyncio.wrap_future(done)

    def __len__(self) -> int:
        return len(self._sessions)

    def open_sessions(self) -> list[GatewaySession]:
        return [session for session in self._sessions.values() if not session.closed]

    def open_by_agent(self) -> Counter[str]:
        return Counter(session.agent for session in self._sessions.values())

    def get(self, session_id: str, agent: str) -> GatewaySession | None:
        """The session, only for the agent that opened it."""
        session = self._sessions.get(session_id)
        if session is None or session.closed or session.agent != agent:
            return None
        session.last_seen = time.monotonic()
        return session

    def find(self, session_id: str) -> GatewaySession | None:
        """Any open session, whoever it belongs to: for the operator only."""
        session = self._sessions.get(session_id)
        return None if session is None or session.closed else session

    async def owner(self, session_id: str) -> str | None:
        """The agent a session belongs to, open or closed, by this gateway process or an
        earlier one; None when nobody is known to (then only the operator reads it)."""
        session = self._sessions.get(session_id)
        if session is not None:
            return session.agent
        return await self._closed_owners.of(session_id)

    async def readable_by(self, caller: Caller, session_id: str) -> bool:
        """The one rule for reading a session's claim and its audit chain: the session's
        own agent and the operator may; for anyone else the session does not exist."""
        if caller.operator:
            return True
        return caller.agent is not None and await self.owner(session_id) == caller.agent

    def latest_of(self, caller: Caller) -> str | None:
        """The session opened or claimed last (an open one may have no claim yet): of the
        caller's own sessions for an agent, of all sessions for the operator."""
        if caller.operator:
            return self._latest_of.get(None)
        return self._latest_of.get(caller.agent) if caller.agent is not None else None

    def _latest(self, session: GatewaySession) -> None:
        self._latest_of[session.agent] = self._latest_of[None] = session.id

    async def open(
        self,
        agent: str,
        protocol_version: str,
        *,
        session_id: str | None = None,
        challenge: str | None = None,
    ) -> GatewaySession:
        """A new session of `agent`, under a fresh random id or under `session_id` (which
        the caller made sure is unused), bound to the verifier's `challenge` when given."""
        if len(self._sessions) >= self.runtime.config.limits.max_sessions:
            raise SessionLimitError(
                f"{len(self._sessions)} sessions are open (limits.max_sessions)"
            )
        session_id = session_id or secrets.token_urlsafe(18)
        runtime = self.runtime
        policy = runtime.active  # taken once: a reload meanwhile does not change it
        evidence = await self.in_thread(
            EvidenceSession,
            store=runtime.store,
            session_id=session_id,
            policy=policy.session,
            attestor=runtime.attestor,
            agent=agent,
            challenge=challenge,
        )
        session = GatewaySession(session_id, agent, protocol_version, evidence, policy)
        session.renew_at = renewal_time(time.monotonic(), runtime.config.attestation)
        self._sessions[session_id] = session
        self._latest(session)
        self.metrics.sessions_opened += 1
        return session

    async def used(self, session_id: str) -> bool:
        """Whether a session ever had that id: open or closing here, recorded in the audit
        store (by any process), or with a claim file in claims.dir."""
        return (
            session_id in self._sessions
            or await self._closed_owners.used(session_id)
            or await self.in_thread(self.claim_path(session_id).exists)
        )

    async def upstream(self, session: GatewaySession, name: str) -> UpstreamConversation:
        """The session's own upstream session, opened (and its tools pinned) on first use."""
        existing = session.upstreams.get(name)
        if existing is not None:
            return existing
        async with session._opening:
            existing = session.upstreams.get(name)
            if existing is not None:
                return existing
            upstream = self.runtime.upstreams.get(name)
            if upstream is None:
                raise UpstreamError(name, "is not configured (no entry under upstreams)")
            opened = await open_conversation(
                upstream, modern=session.protocol_version in MODERN_PROTOCOLS
            )
            # Subscribed before the pin, so no change can fall between the two unannounced: a
            # change the pin misses arrives as list_changed and is pinned again (`_repin`
            # waits for this open to finish).
            opened.on_notification = functools.partial(self._upstream_notice, session, name, opened)
            await opened.listen()
            await self.pin_tools(session, name, opened)
            if session.closed:  # closed while this opened: nothing else will close it
                await opened.close()
                raise UpstreamError(name, "the client session ended while this one opened")
            session.upstreams[name] = opened
            return opened

    async def _upstream_notice(
        self,
        session: GatewaySession,
        name: str,
        conversation: UpstreamConversation,
        notice: dict[str, Any],
    ) -> None:
        """A message an upstream sent outside any request. A changed tool list is pinned
        again (a definition that drifted is recorded and blocked from then on) before the
        client hears of it; the rest goes to the relay (`on_server_message`)."""
        method = notice.get("method")
        if session.closed or not isinstance(method, str):
            return
        if method == "notifications/tools/list_changed" and "id" not in notice:
            task = asyncio.create_task(self._repin(session, name))
            self._background.add(task)
            task.add_done_callback(self._background.discard)
        elif method in FORWARDED_NOTICES and "id" not in notice:
            session.notify(_relayed(notice))
        elif self.on_server_message is not None:
            await self.on_server_message(session, name, conversation, notice)

    async def _repin(self, session: GatewaySession, name: str) -> None:
        async with session._opening:  # after the first pin, if that is still under way
            upstream = session.upstreams.get(name)
        if upstream is None or session.closed:
            return
        try:
            await self.pin_tools(session, name, upstream)
        except UpstreamError as exc:
            with contextlib.suppress(ChainEndedError):  # the session ended meanwhile
                async with self.durably():
                    session.evidence.recorder.fault(error=str(exc), stage="tools/list_changed")
        except ChainEndedError:
            return
        session.notify({"jsonrpc": "2.0", "method": "notifications/tools/list_changed"})

    def end_streams(self) -> None:
        """Before shutdown waits on open responses: cancel every request in flight (each
        records its fault and answers its client) and end every client's GET stream."""
        for session in self._sessions.values():
            for flight in list(session.exchange.flights.values()):
                flight.cancel("the gateway is stopping")
            session.notify(None)

    async def pin_tools(
        self, session: GatewaySession, name: str, upstream: UpstreamConversation
    ) -> None:
        """Compare the upstream's advertised tools (every page) with the catalog; record
        each drift."""
        tools = await list_tools(upstream, name)
        session.advertised -= {
            tool for tool, pinned in self.runtime.catalog.tools.items() if pinned.server == name
        }
        session.tool_order[name] = [tool["name"] for tool in tools]
        for tool in tools:
            pinned = self.runtime.catalog.tools.get(tool["name"])
            if pinned is None or pinned.server != name:
                continue  # not approved: never listed, and denied when called
            advertised = approved_definition(tool["name"], tool)
            session.advertised.add(tool["name"])
            digest = advertised_hash(advertised)
            if digest != pinned.definition_hash and tool["name"] not in session.drifted:
                session.drifted[tool["name"]] = digest
                self.metrics.drift += 1
                async with self.durably():
                    session.evidence.recorder.drift(
                        tool=tool["name"],
                        expected_hash=pinned.definition_hash,
                        advertised_hash=digest,
                    )

    async def renew(
        self, session: GatewaySession, name: str, lost: UpstreamConversation, why: str
    ) -> UpstreamConversation:
        """A new upstream session in place of one the upstream forgot (HTTP 404), its
        catalog pinned again and the renewal recorded; the client's session goes on."""
        if session.upstreams.get(name) is not lost:  # another request renewed it already
            return await self.upstream(session, name)
        del session.upstreams[name]
        forgotten = session.exchange.take_pending(lost)  # the upstream forgot what it asked
        with contextlib.suppress(UpstreamError):
            await lost.close()
        renewed = await self.upstream(session, name)
        async with self.durably():
            session.evidence.recorder.fault(
                error=f"upstream {name!r} forgot the session ({why}); a new upstream "
                "session was opened and its tools pinned again",
                stage="upstream_session_renewed",
            )
        for pending in forgotten:  # relayed to the client, so each ends in its fault
            if pending.gate is not None:
                text = f"upstream {name!r} forgot the session before the client answered"
                await fail_gate(self, session, pending.gate, text, "upstream_session_renewed")
        return renewed

    async def close(self, session: GatewaySession, reason: str) -> ClosedSession | None:
        """End a session: it takes no new request; its requests in flight are cancelled
        and waited for (bounded) until their fault or outcome is durable; requests the
        upstreams sent it are answered with an error; then session_end, then the claim."""
        if session.closed:
            return None
        session.closed = True
        self._sessions.pop(session.id, None)
        flights = list(session.exchange.flights.values())
        for flight in flights:
            flight.cancel(f"the session was closed ({reason}) while the request was in flight")
        if flights:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(DRAIN_SECONDS):
                    for flight in flights:
                        await flight.done.wait()
        if self.on_session_closing is not None:
            await self.on_session_closing(session)
        for listener in list(session.listeners):  # listen streams end with their result
            listener.end(graceful=True)
        session.exchange.close()
        self.approvals.end_session(session.id)
        for upstream in session.upstreams.values():
            await upstream.close()
        for (server, key), gate in session.awaiting_input.items():
            why = f"the client never answered input {key!r} of upstream {server!r}"
            await fail_gate(self, session, gate, why, "input")
        await self.claims_written(session)
        closed = await self.in_thread(session.evidence.close, reason=reason)
        self._closed_owners.remember(session.id, session.agent)
        await self.in_thread(self._write_claim, session.id, closed, numbered=self.per_call)
        self._latest(session)
        self.metrics.sessions_closed += 1
        return closed

    async def close_idle(self) -> int:
        limit = self.runtime.config.limits.session_idle_timeout_seconds
        now = time.monotonic()
        # A session with a request in flight (a tool waiting on its user, say) is not idle.
        idle = [
            s
            for s in self._sessions.values()
            if now - s.last_seen > limit and not s.exchange.flights
        ]
        for session in idle:
            await self.close(session, "idle timeout")
        return len(idle)

    async def close_all(self, reason: str) -> None:
        """Close every session, concurrently: each waits (bounded) for its own calls."""
        await asyncio.gather(*(self.close(s, reason) for s in list(self._sessions.values())))
        self._executor.shutdown(wait=True)

    def publish_claim(self, session: GatewaySession, pending: PendingClaim) -> None:
        """Sign and write a claim issued per call, off the call's path: its `claim` entry is
        durable already, so the claim may be served once written (`claims_written`)."""
        session.claim_writes = asyncio.create_task(
            self._publish(session, pending, session.claim_writes)
        )

    async def _publish(
        self, session: GatewaySession, pending: PendingClaim, before: asyncio.Task[None] | None
    ) -> None:
        if before is not None:
            await asyncio.wait([before])  # its failure is its own, logged there
        try:
            closed = await self.in_thread(pending.sign)
            await self.in_thread(self._write_claim, session.id, closed, numbered=True)
        except Exception:  # the chain still records its issuance; the next claim goes on
            log.exception(
                "claim %d of session %s could not be signed or written",
                pending.sequence_number,
                session.id,
            )
            return
        self._latest(session)

    async def claims_written(self, session: GatewaySession | None) -> None:
        """Wait until every claim the session issued per call so far is written."""
        if session is not None and session.claim_writes is not None:
            await asyncio.wait([session.claim_writes])

    def claim_path(
        self, session_id: str, *, record: bool = False, sequence: int | None = None
    ) -> Path:
        return claim_path(self.runtime.claims_dir, session_id, record=record, sequence=sequence)

    @property
    def anchor_intake(self) -> Callable[[PendingAnchor], None] | None:
        """What a written claim's queued record is handed to (None: anchoring is off)."""
        return None if self.anchors is None else self.anchors.queued

    def _write_claim(self, session_id: str, closed: ClosedSession, *, numbered: bool) -> Path:
        return write_claim(
            self.runtime.claims_dir,
            session_id,
            closed,
            numbered=numbered,
            queued=self.anchor_intake,
        )


def anchor_worker(runtime: GatewayRuntime) -> AnchorWorker | None:
    anchor, log_key = runtime.config.trace.anchor, runtime.anchor_log_key
    if anchor is None or log_key is None:
        return None
    return AnchorWorker(anchor, runtime.claims_dir, log_key)


def _relayed(notice: dict[str, Any]) -> dict[str, Any]:
    """An upstream's notification as the client gets it: its method and params only."""
    relayed: dict[str, Any] = {"jsonrpc": "2.0", "method": notice["method"]}
    if isinstance(notice.get("params"), dict):
        relayed["params"] = notice["params"]
    return relayed
