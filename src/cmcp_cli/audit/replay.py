"""Replaying audit chains: every hash and link, every located discrepancy, every decision.

Replay reads stored lines in stored order. Per session it checks that each line is a
canonical entry whose content hashes to its `hash`, that `seq` counts up from 0 without
gaps, repeats or reordering, that each `prev` is the hash before it, that the chain starts
with `session_start` and ends with `session_end`; it rebuilds the same `ChainState` the
recorder built, so root, tip, length and the call summary can be matched with a claim;
and, given the bundle, it decides every recorded Cedar request again.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from cmcp_cli.audit.chain import DECISION_PHASE, ChainState
from cmcp_cli.audit.entry import GENESIS_PREV, EntryError, EntryType, SealedEntry, open_line
from cmcp_cli.claim.canonical import canonical_bytes
from cmcp_cli.errors import CmcpError
from cmcp_cli.policy.engine import Authorizer, CompiledBundle
from cmcp_cli.policy.request import CedarRequest, ToolResource

MAX_PROBLEMS_PER_SESSION = 50
UNKNOWN_SESSION = "(unreadable)"
Progress = Callable[[int], None]
_PROGRESS_STEP = 4096


class ProblemKind(enum.StrEnum):
    EDITED = "edited"  # the content does not hash to the entry's hash
    MALFORMED = "malformed"  # not a canonical, well-formed entry
    GAP = "gap"  # a sequence number is missing (deleted, or moved later)
    DUPLICATE = "duplicate"  # two entries claim one sequence number (a fork or an insert)
    OUT_OF_ORDER = "out_of_order"  # an entry appears after a later one
    BROKEN_LINK = "broken_link"  # `prev` is not the hash before it
    BAD_START = "bad_start"  # the chain does not open with session_start at seq 0
    TRUNCATED = "truncated"  # the chain ends without session_end, or before the claim's tip
    CLAIM_MISMATCH = "claim_mismatch"
    DECISION_MISMATCH = "decision_mismatch"
    NOT_REPLAYABLE = "not_replayable"  # a recorded request that cannot be decided again


@dataclass(frozen=True, slots=True)
class ChainProblem:
    session_id: str
    seq: int | None
    kind: ProblemKind
    message: str

    def to_json(self) -> dict[str, object]:
        return {
            "session_id": self.session_id,
            "seq": self.seq,
            "kind": self.kind.value,
            "message": self.message,
        }


@dataclass
class SessionReplay:
    session_id: str
    state: ChainState
    problems: list[ChainProblem] = field(default_factory=list)
    bundle_hash: str | None = None
    decisions_checked: int = 0
    truncated_report: bool = False
    _seen: set[int] = field(default_factory=set, repr=False)

    @property
    def first_bad_seq(self) -> int | None:
        located = [p.seq for p in self.problems if p.seq is not None]
        return min(located) if located else None

    def add(self, kind: ProblemKind, seq: int | None, message: str) -> None:
        if len(self.problems) < MAX_PROBLEMS_PER_SESSION:
            self.problems.append(ChainProblem(self.session_id, seq, kind, message))
        else:
            self.truncated_report = True

    def add_claim_mismatch(self, message: str) -> None:
        self.add(ProblemKind.CLAIM_MISMATCH, None, message)

    def to_json(self) -> dict[str, object]:
        return {
            "session_id": self.session_id,
            "ok": not self.problems,
            "first_bad_seq": self.first_bad_seq,
            "audit_chain": self.state.audit_chain_json(),
            "call_summary": self.state.calls.to_json(),
            "data_class": self.state.max_data_class,
            "drift_detected": self.state.drift_detected,
            "ended": self.state.ended,
            "bundle_hash": self.bundle_hash,
            "decisions_checked": self.decisions_checked,
            "problems": [p.to_json() for p in self.problems],
            "problems_truncated": self.truncated_report,
        }


def replay_chains(
    lines: Iterable[bytes],
    *,
    session_id: str | None = None,
    progress: Progress | None = None,
) -> dict[str, SessionReplay]:
    """Check every session in `lines` (or only `session_id`); returns them in first-seen order."""
    sessions: dict[str, SessionReplay] = {}
    position = 0
    for position, line in enumerate(lines, start=1):
        if progress is not None and position % _PROGRESS_STEP == 0:
            progress(_PROGRESS_STEP)
        _replay_line(line, position, sessions, session_id)
    if progress is not None:
        progress(position % _PROGRESS_STEP)
    for replay in sessions.values():
        if replay.state.length and not replay.state.ended:
            replay.add(
                ProblemKind.TRUNCATED,
                replay.state.length,
                f"the chain ends at seq {replay.state.length - 1} without session_end: "
                "later entries were removed, or the session is still open",
            )
    return sessions


def _replay_line(
    line: bytes, position: int, sessions: dict[str, SessionReplay], only: str | None
) -> None:
    try:
        entry = open_line(line)
    except EntryError as exc:
        session, seq = _loose_identity(line)
        if only is not None and session != only:
            return
        replay = _session(sessions, session or UNKNOWN_SESSION)
        kind = ProblemKind.EDITED if "edited" in str(exc) else ProblemKind.MALFORMED
        where = f"seq {seq}" if seq is not None else f"line {position}"
        replay.add(kind, seq if seq is not None else replay.state.next_seq, f"{where}: {exc}")
        if kind is ProblemKind.EDITED:
            _advance_past_edit(replay, line)
        return
    if only is not None and entry.session_id != only:
        return
    _link(_session(sessions, entry.session_id), entry)


def _session(sessions: dict[str, SessionReplay], session_id: str) -> SessionReplay:
    replay = sessions.get(session_id)
    if replay is None:
        replay = sessions[session_id] = SessionReplay(session_id, ChainState(session_id=session_id))
    return replay


def _link(replay: SessionReplay, entry: SealedEntry) -> None:
    state = replay.state
    expected = state.next_seq
    seq = entry.seq
    if seq in replay._seen:
        replay.add(ProblemKind.DUPLICATE, seq, f"a second entry claims seq {seq}: the chain forks")
        return
    if seq < expected:
        replay.add(
            ProblemKind.OUT_OF_ORDER, seq, f"seq {seq} appears after seq {expected - 1}: reordered"
        )
        replay._seen.add(seq)
        return
    if seq > expected:
        missing = f"{expected}" if seq == expected + 1 else f"{expected} to {seq - 1}"
        kind = ProblemKind.BAD_START if expected == 0 else ProblemKind.GAP
        replay.add(kind, expected, f"seq {missing} missing before seq {seq}")
    elif entry.prev != state.tip:
        replay.add(
            ProblemKind.BROKEN_LINK,
            seq,
            f"seq {seq}: prev is {entry.prev}, but the entry before it hashes to {state.tip}",
        )
    if seq == 0 and (entry.type != EntryType.SESSION_START or entry.prev != GENESIS_PREV):
        replay.add(
            ProblemKind.BAD_START, 0, "seq 0 is not a session_start linked to the genesis hash"
        )
    if entry.type == EntryType.SESSION_START and replay.bundle_hash is None:
        value = entry.fields.get("bundle_hash")
        replay.bundle_hash = value if isinstance(value, str) else None
    replay._seen.add(seq)
    # Counting goes on from what is there, so one bad entry does not hide the rest.
    state.length = seq
    state.apply(entry)


def _advance_past_edit(replay: SessionReplay, line: bytes) -> None:
    """Keep linking after an edited entry, using the hash it claims, so that the one
    edit is reported once instead of as a broken link on every entry after it."""
    try:
        fields = orjson.loads(line)
        claimed, seq = fields["hash"], fields["seq"]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return
    if isinstance(claimed, str) and type(seq) is int and seq == replay.state.next_seq:
        replay._seen.add(seq)
        replay.state.length = seq + 1
        replay.state.tip = claimed


def _loose_identity(line: bytes) -> tuple[str | None, int | None]:
    try:
        fields = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None, None
    if not isinstance(fields, dict):
        return None, None
    session, seq = fields.get("session_id"), fields.get("seq")
    return (session if isinstance(session, str) else None, seq if type(seq) is int else None)


def recheck_decisions(
    replay: SessionReplay, lines: Iterable[bytes], bundle: CompiledBundle
) -> None:
    """Decide every recorded Cedar request of the session again and report mismatches.

    A bundle whose hash is not the one the session recorded is refused: its decisions
    would prove nothing about this session.
    """
    if replay.bundle_hash != bundle.hash:
        recorded = replay.bundle_hash or "no bundle (its session_start is missing)"
        replay.add(
            ProblemKind.NOT_REPLAYABLE,
            None,
            f"decisions not re-checked: the session recorded {recorded}, "
            f"but {bundle.source.root} hashes to {bundle.hash}",
        )
        return
    authorizers: dict[bytes, Authorizer] = {}
    for line in lines:
        try:
            entry = open_line(line)
        except EntryError:
            continue  # already reported by the chain check
        fields = entry.fields
        if entry.session_id != replay.session_id or fields.get("phase") != DECISION_PHASE:
            continue
        record = fields.get("cedar_request")
        if not isinstance(record, Mapping):
            continue  # recorded with audit.record_inputs: hashes
        _recheck(replay, entry.seq, fields, record, bundle=bundle, authorizers=authorizers)


def _recheck(
    replay: SessionReplay,
    seq: int,
    fields: Mapping[str, Any],
    record: Mapping[str, Any],
    *,
    bundle: CompiledBundle,
    authorizers: dict[bytes, Authorizer],
) -> None:
    try:
        request = CedarRequest.from_json(record)
        entities = record.get("entities", [])
        tools = [ToolResource.from_entity_json(e) for e in entities]
    except CmcpError as exc:
        replay.add(ProblemKind.NOT_REPLAYABLE, seq, f"seq {seq}: {exc.message}")
        return
    key = canonical_bytes([t.entity_json() for t in tools])
    authorizer = authorizers.get(key)
    if authorizer is None:
        authorizer = authorizers[key] = bundle.authorizer(tools)
    decision = authorizer.decide(request)
    replay.decisions_checked += 1
    recorded = (fields.get("decision"), sorted(fields.get("policy_ids") or []))
    again = (decision.effect.value, sorted(decision.policy_ids))
    if recorded != again:
        replay.add(
            ProblemKind.DECISION_MISMATCH,
            seq,
            f"seq {seq}: recorded {recorded[0]} by {recorded[1] or 'no policy'}, "
            f"but the bundle decides {again[0]} by {again[1] or 'no policy'}",
        )


def compare_with_claim(replay: SessionReplay, claim: Mapping[str, Any]) -> None:
    """Match the replayed chain with what a claim states about it."""
    gateway, trace = _mapping(claim.get("gateway")), _mapping(claim.get("trace"))
    state = replay.state
    stated_chain = _mapping(gateway.get("audit_chain"))
    replayed_chain = state.audit_chain_json()
    for key in ("root", "tip", "length"):
        stated = stated_chain.get(key)
        if stated != replayed_chain[key]:
            seq = _first_missing(state.length, stated) if key == "length" else None
            kind = (
                ProblemKind.TRUNCATED
                if key == "length" and seq is not None
                else ProblemKind.CLAIM_MISMATCH
            )
            replay.add(
                kind,
                seq,
                f"claim states audit_chain.{key} {stated!r}, the log gives {replayed_chain[key]!r}",
            )
    stated_summary = gateway.get("call_summary")
    if stated_summary != state.calls.to_json():
        replay.add(
            ProblemKind.CLAIM_MISMATCH,
            None,
            f"claim states call_summary {stated_summary}, the log gives {state.calls.to_json()}",
        )
    if gateway.get("session_id") != replay.session_id:
        replay.add(
            ProblemKind.CLAIM_MISMATCH, None, f"claim is for session {gateway.get('session_id')!r}"
        )
    if _mapping(trace.get("tool_transcript")).get("hash") != state.tip:
        replay.add(
            ProblemKind.CLAIM_MISMATCH, None, "trace.tool_transcript.hash is not the chain tip"
        )


def _mapping(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _first_missing(replayed_length: int, stated: object) -> int | None:
    return replayed_length if type(stated) is int and stated > replayed_length else None
