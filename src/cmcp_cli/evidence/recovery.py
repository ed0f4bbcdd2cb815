"""Closing the sessions a dead gateway process left open, before a new one serves.

A gateway killed with sessions open leaves chains without session_end. The next gateway
on the store (it holds the store's lock, so the earlier process is gone) replays each
such chain and, when nothing says entries were removed, finishes it: a fault for every
forwarded message that has neither outcome nor fault (its outcome is unknown), then a
session_end whose reason is the interruption and whose `recovered_by` names this process
and its own attested key, which signs the session's claim. The claim says it is a
recovery claim (`gateway.recovery`) and whose session it closed. A session opened with a
verifier's challenge is recovered with it: the new key's binding includes the challenge
session_start records, and the claim states it, as the session's own claims did.

A recovery claim continues the sequence of the claims the session issued per call and
links to the last of them when its file is there. A chain is never finished over a
deletion. When its chain is not intact, when a claim for it already exists that is not
one issued per call (so it had ended), or when its process stopped cleanly (and so had
closed it), entries were removed: it is left as it is and reported as truncated.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cmcp_cli.attestation.measurement import installation_digest
from cmcp_cli.audit.processes import gateway_processes
from cmcp_cli.audit.record_members import SessionRecordError
from cmcp_cli.audit.recorder import Clock, SessionRecorder, utc_now
from cmcp_cli.audit.replay import IssuedClaim, SessionReplay, replay_chains
from cmcp_cli.audit.session_record import INTERRUPTED, claim_facts, end_record
from cmcp_cli.audit.store import AuditStore, iter_lines, unended_sessions
from cmcp_cli.claim.canonical import CanonicalizationError
from cmcp_cli.claim.challenge import challenge_problem
from cmcp_cli.claim.keys import ClaimKey
from cmcp_cli.claim.model import build_claim, claim_digest
from cmcp_cli.errors import CmcpError
from cmcp_cli.evidence.attesting import GATEWAY_PROCESS, Attestor, attest_key
from cmcp_cli.evidence.claim_files import claim_path, write_claim
from cmcp_cli.evidence.session import ClosedSession
from cmcp_cli.strict_json import read_json_file

_LOG = logging.getLogger(__name__)
INTERRUPTED_STAGE = "interrupted"  # the stage of the fault of a message in flight at the crash


@dataclass(frozen=True)
class RecoveredSession:
    session_id: str
    interrupted_process: str  # the process that opened the session and died
    claim: Path
    unknown_outcomes: int  # forwarded messages whose outcome is unknown

    def describe(self) -> str:
        return (
            f"recovered session {self.session_id}: interrupted in gateway process "
            f"{self.interrupted_process}; {self.unknown_outcomes} message(s) in flight marked "
            f"outcome unknown; claim {self.claim}"
        )


@dataclass(frozen=True)
class TruncatedSession:
    session_id: str
    reason: str  # why entries were removed, so the chain is not finished

    def describe(self) -> str:
        return (
            f"session {self.session_id} is truncated and was left as it is: {self.reason} "
            "(`cmcp replay-audit --db` shows it)"
        )


@dataclass
class RecoveryReport:
    recovered: list[RecoveredSession] = field(default_factory=list)
    truncated: list[TruncatedSession] = field(default_factory=list)


def recover_sessions(
    store: AuditStore,
    *,
    attestor: Attestor,
    claims_dir: Path,
    process_id: str = GATEWAY_PROCESS,
    gateway_digest: str | None = None,
    clock: Clock = utc_now,
) -> RecoveryReport:
    """Finish every session in `store` that an earlier process left open. The caller
    holds the store's lock (`audit.processes.lock_store`): no other process writes it.

    Raises `AttestationUnavailableError` when this process's key cannot be attested.
    """
    report = RecoveryReport()
    stopped = {p.process for p in gateway_processes(store.path).values() if p.stopped_at}
    digest = gateway_digest or installation_digest()
    for session_id in unended_sessions(store.path):
        replay = replay_chains(iter_lines(store.path, session_id), session_id=session_id).get(
            session_id
        )
        if replay is None:
            continue
        process = _process_of(replay)
        if process == process_id:
            continue  # this process's own session, open
        reason = _why_truncated(replay, process, stopped, claims_dir)
        if reason is not None:
            left = TruncatedSession(session_id, reason)
            _LOG.info("%s", left.describe())
            report.truncated.append(left)
            continue
        finished = _finish(
            store,
            replay,
            attestor=attestor,
            claims_dir=claims_dir,
            process_id=process_id,
            gateway_digest=digest,
            clock=clock,
        )
        _LOG.info("%s", finished.describe())
        if isinstance(finished, RecoveredSession):
            report.recovered.append(finished)
        else:
            report.truncated.append(finished)
    return report


def _last_issued(replay: SessionReplay) -> tuple[int, IssuedClaim | None]:
    """The sequence number of the chain's last `claim` entry and that entry; 0 and None
    when it has none."""
    last: tuple[int, IssuedClaim | None] = (0, None)
    for issued in replay.issued.values():
        claim = issued.fields.get("claim")
        number = claim.get("sequence_number") if isinstance(claim, Mapping) else None
        if type(number) is int and number > last[0]:
            last = (number, issued)
    return last


def _tip_of(path: Path) -> object:
    """The `audit_chain.tip` of the claim at `path`; None when there is none to read."""
    try:
        document = read_json_file(path, "claim")
    except CmcpError:
        return None
    gateway = document.get("gateway") if isinstance(document, Mapping) else None
    chain = gateway.get("audit_chain") if isinstance(gateway, Mapping) else None
    return chain.get("tip") if isinstance(chain, Mapping) else None


def _issued_per_call(path: Path, replay: SessionReplay) -> bool:
    """Whether the claim at `path` is one issued while the session went on: its tip is a
    `claim` entry of the chain, so it says nothing of the session's end."""
    tip = _tip_of(path)
    return any(issued.state.tip == tip for issued in replay.issued.values())


def _link_to(path: Path, last: IssuedClaim | None) -> str | None:
    """What the recovery claim links to: the digest of the session's last claim issued per
    call, when its file is there and covers the chain up to the last `claim` entry; else
    None, and the sequence shows the link broken (its process died before writing it)."""
    if last is None or _tip_of(path) != last.state.tip:
        return None
    try:
        return claim_digest(read_json_file(path, "claim"))
    except (CmcpError, CanonicalizationError):
        return None


def _process_of(replay: SessionReplay) -> str | None:
    process = replay.start.get("process") if replay.start is not None else None
    return process if isinstance(process, str) else None


def _why_truncated(
    replay: SessionReplay, process: str | None, stopped: set[str], claims_dir: Path
) -> str | None:
    """Why entries of this open chain were removed, or None when it was interrupted."""
    problems = [p for p in replay.problems if p is not replay.open_end]
    if problems:
        return f"its chain is not intact ({problems[0].kind.value}: {problems[0].message})"
    start = replay.start
    if start is None or process is None:
        return "its session_start names no gateway process"
    if not all(isinstance(start.get(name), str) for name in ("bundle_hash", "catalog_hash")):
        return "its session_start records no bundle_hash or catalog_hash"
    problem = challenge_problem(start["challenge"]) if "challenge" in start else None
    if problem is not None:
        return f"its session_start records a challenge that is not one ({problem})"
    latest = claim_path(claims_dir, replay.session_id)
    if latest.exists() and not _issued_per_call(latest, replay):
        return f"a claim was issued for it ({latest})"
    if process in stopped:
        return f"its gateway process {process} stopped cleanly, after closing its sessions"
    return None


def _finish(
    store: AuditStore,
    replay: SessionReplay,
    *,
    attestor: Attestor,
    claims_dir: Path,
    process_id: str,
    gateway_digest: str,
    clock: Clock,
) -> RecoveredSession | TruncatedSession:
    start: Mapping[str, Any] = replay.start or {}
    interrupted = str(start["process"])
    key = ClaimKey.generate()
    attested = attest_key(
        attestor,
        key=key,
        bundle_hash=str(start["bundle_hash"]),
        catalog_hash=str(start["catalog_hash"]),
        gateway_digest=gateway_digest,
        process_id=process_id,
        clock=clock,
        nonce=start.get("challenge"),  # the session's, so its last claim is bound to it too
    )
    issued, last = _last_issued(replay)
    ending = end_record(
        reason=INTERRUPTED,
        issued_at=int(clock().timestamp()),
        sequence_number=issued + 1,
        previous=_link_to(claim_path(claims_dir, replay.session_id, sequence=issued), last),
        recovered_by=attested.issuer,
    )
    try:  # before anything is appended: a chain whose claim cannot be built stays as it is
        claim_facts(start, ending, replay.state, attested.attestation)
    except SessionRecordError as exc:
        return TruncatedSession(replay.session_id, f"its records cannot make a claim ({exc})")
    recorder = SessionRecorder.resume(store, replay.state, clock=clock)
    in_flight = sorted(replay.pending.items(), key=lambda item: item[1].seq)
    for call_id, pending in in_flight:
        recorder.fault(
            error=f"the outcome is unknown: gateway process {interrupted} stopped while the "
            f"message was in flight (recovered by gateway process {process_id})",
            stage=INTERRUPTED_STAGE,
            call_id=call_id,
            kind=pending.kind,
        )
    end = recorder.end(ending)
    facts = claim_facts(start, end.fields, recorder.state, attested.attestation)
    claim = build_claim(facts, key)
    closed = ClosedSession(claim=claim, key=key)
    path = write_claim(claims_dir, replay.session_id, closed)
    return RecoveredSession(replay.session_id, interrupted, path, len(in_flight))
