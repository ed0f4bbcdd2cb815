"""Writing one session's chain: each method builds an entry, seals it, makes it durable.

A lock serialises the entries of one session (each entry's `prev` is the hash before
it); different sessions append concurrently and share the store's group commit.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any, TypeVar

from cmcp_cli.audit.chain import DECISION_PHASE, DEFAULT_KIND, OUTCOME_PHASE, ChainState
from cmcp_cli.audit.entry import ENTRY_FORMAT, EntryType, SealedEntry, seal, timestamp
from cmcp_cli.audit.store import AuditStore

Clock = Callable[[], datetime]
_Built = TypeVar("_Built")


class ChainEndedError(Exception):
    """An entry was offered after the session's `session_end`: the chain is complete, so
    nothing may follow it (a claim signed over the chain would not cover it)."""

    def __init__(self, session_id: str, kind: str) -> None:
        super().__init__(
            f"session {session_id} has ended: its chain takes no {kind} entry after "
            "session_end (record a call's fault or outcome before closing the session)"
        )
        self.session_id = session_id


def utc_now() -> datetime:
    return datetime.now(UTC)


_DEFERRED: ContextVar[list[Future[None]] | None] = ContextVar("cmcp_deferred", default=None)


@contextlib.contextmanager
def deferred_durability() -> Iterator[list[Future[None]]]:
    """Within this block, appends return once queued instead of once durable; the futures
    of their durability are collected in the yielded list, and the caller must wait for
    every one of them before acting on what was recorded. For an event loop, which must
    not block on fsync but must not forward a call before its decision is durable."""
    pending: list[Future[None]] = []
    token = _DEFERRED.set(pending)
    try:
        yield pending
    finally:
        _DEFERRED.reset(token)


class SessionRecorder:
    def __init__(self, store: AuditStore, session_id: str, *, clock: Clock = utc_now) -> None:
        self.store = store
        self.state = ChainState(session_id=session_id)
        self._clock = clock
        self._lock = threading.Lock()
        self.ended = False  # set by `end`; every later append is refused

    @classmethod
    def resume(
        cls, store: AuditStore, state: ChainState, *, clock: Clock = utc_now
    ) -> SessionRecorder:
        """Go on with a chain read back from the store: `state` is its replayed state (tip,
        length, counters), so the next entry links to its tip with the next seq, and the
        counters a claim states include what was recorded before. The caller replayed the
        chain and found it intact; a chain that ended takes nothing more."""
        if state.ended:
            raise ChainEndedError(state.session_id, "further")
        recorder = cls(store, state.session_id, clock=clock)
        recorder.state = state
        return recorder

    @property
    def session_id(self) -> str:
        return self.state.session_id

    def _append(
        self,
        kind: EntryType,
        fields: Mapping[str, Any],
        then: Callable[[SealedEntry, ChainState], None] | None = None,
    ) -> SealedEntry:
        """Seal, submit and apply one entry; `then` sees the entry and the state it leaves
        before any other entry of the session can follow it."""
        with self._lock:
            if self.ended:
                raise ChainEndedError(self.state.session_id, kind.value)
            entry = seal(
                {
                    "v": ENTRY_FORMAT,
                    "seq": self.state.next_seq,
                    "session_id": self.state.session_id,
                    "ts": timestamp(self._clock()),
                    "type": kind.value,
                    "prev": self.state.tip,
                    **fields,
                }
            )
            done = self.store.submit(entry)
            # The next entry may chain to this one at once: the store writes in submission
            # order, so no entry is durable before the ones it chains to, and a failed write
            # fails the store for every later entry.
            self.state.apply(entry)
            self.ended = kind is EntryType.SESSION_END
            if then is not None:
                then(entry, self.state)
        deferred = _DEFERRED.get()
        if deferred is None:
            done.result()  # durable before the caller goes on
        else:
            deferred.append(done)  # the caller awaits it (see `deferred_durability`)
        return entry

    def start(self, record: Mapping[str, Any]) -> SealedEntry:
        """The root entry: it binds the chain to its policy, catalog, key and platform
        (`session_record.start_record` gives its members)."""
        return self._append(EntryType.SESSION_START, record)

    def decision(
        self,
        *,
        call_id: str,
        tool: str,
        decision: str,
        policy_ids: Sequence[str],
        request_sha256: str,
        data_class: str,
        forwarded: bool,
        cedar_request: Mapping[str, Any] | None,
        approval: Mapping[str, Any] | None = None,
        kind: str = DEFAULT_KIND,
        server: str = "",
        related_call_id: str = "",
    ) -> SealedEntry:
        """A message's decision; durable before the message is forwarded.

        A tool call's entry names its `tool` and has no `kind` (the format tool calls
        always had). Any other kind's entry has `kind`, `target` (the resource URI, the
        prompt name, or the server for server-wide kinds), `server`, and, for a request
        an upstream sent while serving a tool call, `related_call_id`."""
        fields: dict[str, Any] = {
            "phase": DECISION_PHASE,
            "call_id": call_id,
        }
        if kind == DEFAULT_KIND:
            fields["tool"] = tool
        else:
            # plain strings: an enum member would push the entry off the fast canonical path
            fields.update(kind=str(kind), target=tool, server=server)
            if related_call_id:
                fields["related_call_id"] = related_call_id
        fields |= {
            "decision": decision,
            "policy_ids": list(policy_ids),
            "request_sha256": request_sha256,
            "data_class": data_class,
            "forwarded": forwarded,
        }
        if cedar_request is not None:
            fields["cedar_request"] = dict(cedar_request)
        if approval is not None:
            fields["approval"] = dict(approval)
        return self._append(EntryType.CALL, fields)

    def outcome(
        self,
        *,
        call_id: str,
        response_sha256: str,
        latency_us: int,
        redactions: Mapping[str, int] | None = None,
    ) -> SealedEntry:
        """A forwarded call's result; durable before the response is returned."""
        fields: dict[str, Any] = {
            "phase": OUTCOME_PHASE,
            "call_id": call_id,
            "response_sha256": response_sha256,
            "latency_us": latency_us,
        }
        if redactions:
            fields["redactions"] = dict(redactions)  # kinds and counts, never values
        return self._append(EntryType.CALL, fields)

    def fault(
        self, *, error: str, stage: str, call_id: str | None = None, kind: str = DEFAULT_KIND
    ) -> SealedEntry:
        """A failure; with `call_id`, of that message (of `kind`, recorded unless a tool
        call's), counted in its kind's `faulted`."""
        fields: dict[str, Any] = {"error": error, "stage": stage}
        if call_id is not None:
            fields["call_id"] = call_id
            if kind != DEFAULT_KIND:
                fields["kind"] = str(kind)
        return self._append(EntryType.FAULT, fields)

    def drift(self, *, tool: str, expected_hash: str, advertised_hash: str) -> SealedEntry:
        return self._append(
            EntryType.DRIFT,
            {"tool": tool, "expected_hash": expected_hash, "advertised_hash": advertised_hash},
        )

    def attestation(self, record: Mapping[str, Any]) -> SealedEntry:
        """A re-attestation of the session's binding (`session_record.attestation_record`
        gives its members)."""
        return self._append(EntryType.ATTESTATION, record)

    def policy_load(self, record: Mapping[str, Any]) -> SealedEntry:
        """A bundle the gateway took or refused while this session was open (the members
        are the reloader's: docs/claim-format.md). It changes nothing this session decides
        with: a session keeps the bundle its session_start names."""
        return self._append(EntryType.POLICY_LOAD, record)

    def claim(
        self, record: Mapping[str, Any], build: Callable[[SealedEntry, ChainState], _Built]
    ) -> _Built:
        """A `claim` entry (`session_record.claim_record` gives its members), and what
        `build` makes of the chain's state right after it: the claim over the chain up to
        and including this entry, fixed before any later entry changes that state."""
        built: list[_Built] = []
        self._append(
            EntryType.CLAIM, record, lambda entry, state: built.append(build(entry, state))
        )
        return built[0]

    def end(self, record: Mapping[str, Any]) -> SealedEntry:
        """The last entry (`session_record.end_record` gives its members)."""
        return self._append(EntryType.SESSION_END, record)
