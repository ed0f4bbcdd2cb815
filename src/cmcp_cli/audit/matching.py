"""Checking a replayed session against what else claims to describe it: the signed claim
(every member the log determines, `match_claim`) and the policy bundle (every recorded
decision again)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any, TypeGuard

from cmcp_cli.attestation.binding import compute_binding
from cmcp_cli.audit.chain import DECISION_PHASE, DEFAULT_KIND, ChainState
from cmcp_cli.audit.claim_values import ABSENT, devices_mismatch, digest, same, show
from cmcp_cli.audit.entry import EntryError, open_line
from cmcp_cli.audit.issuer import device_records, issuer_member, issuer_of
from cmcp_cli.audit.record_members import SessionRecordError
from cmcp_cli.audit.replay import IssuedClaim, ProblemKind, SessionReplay
from cmcp_cli.audit.session_record import claim_facts, evidence_record
from cmcp_cli.claim.canonical import canonical_bytes
from cmcp_cli.claim.keys import jwk_thumbprint
from cmcp_cli.claim.model import (
    CLAIM_VERSIONS,
    ENFORCEMENT_MODES,
    claim_body,
    is_gateway_claim,
    unsigned,
)
from cmcp_cli.claim.signing import SIGNATURE
from cmcp_cli.errors import CmcpError, PolicyRequestError
from cmcp_cli.policy.engine import Authorizer, CompiledBundle
from cmcp_cli.policy.request import (
    CedarRequest,
    MessageKind,
    MessageTarget,
    ToolResource,
    entity_of,
)


def recheck_with_own_bundle(
    replay: SessionReplay, lines: Iterable[bytes], bundles: Mapping[str, CompiledBundle]
) -> None:
    """Decide the session's recorded requests again with the bundle, of `bundles` (by
    hash), that its session_start names; none of them being it is reported, as with one."""
    own = bundles.get(replay.bundle_hash or "")
    if own is None:
        given = ", ".join(sorted(bundles)) or "none"
        recorded = replay.bundle_hash or "no bundle (its session_start is missing)"
        replay.add(
            ProblemKind.NOT_REPLAYABLE,
            None,
            f"decisions not re-checked: the session recorded {recorded}, "
            f"and no --bundle given hashes to it (given: {given})",
        )
        return
    recheck_decisions(replay, lines, own)


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
        if not isinstance(entities, list):
            raise PolicyRequestError("recorded entities are not a list")
        found = [entity_of(e) for e in entities]
    except CmcpError as exc:
        replay.add(ProblemKind.NOT_REPLAYABLE, seq, f"seq {seq}: {exc.message}")
        return
    tools = [e for e in found if isinstance(e, ToolResource)]
    targets = [e for e in found if isinstance(e, MessageTarget)]
    mismatch = _entry_request_mismatch(fields, request, targets)
    if mismatch is not None:
        replay.add(ProblemKind.DECISION_MISMATCH, seq, f"seq {seq}: {mismatch}")
        return
    key = canonical_bytes([t.entity_json() for t in tools])
    authorizer = authorizers.get(key)
    if authorizer is None:
        try:
            authorizer = authorizers[key] = bundle.authorizer(tools)
        except CmcpError as exc:  # recorded entities the bundle's schema rejects
            replay.add(ProblemKind.NOT_REPLAYABLE, seq, f"seq {seq}: {exc.message}")
            return
    decision = authorizer.decide(request, targets[0] if targets else None)
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


def _entry_request_mismatch(
    fields: Mapping[str, Any], request: CedarRequest, targets: list[MessageTarget]
) -> str | None:
    """Why a decision entry does not describe the request it recorded: its `kind` is not
    the request's action, or its target and server are not the request's resource. An
    entry that says one thing and proves another is counted under the wrong kind."""
    kind = fields.get("kind", DEFAULT_KIND)
    if request.kind is None or kind != request.kind.value:
        return f"the entry's kind {kind!r} is not the recorded request's action {request.action}"
    if request.context.get("data_class") != fields.get("data_class"):
        return "the entry's data_class is not the one the recorded request carried"
    if request.kind is MessageKind.CALL_TOOL:
        if targets or request.resource.id != fields.get("tool"):
            return "the entry's tool is not the recorded request's resource"
        return None
    if len(targets) != 1:
        return f"a {kind} request records {len(targets)} target entities, not one"
    target = targets[0]
    if (target.type, target.id) != (request.resource.type, request.resource.id):
        return "the recorded target entity is not the request's resource"
    if request.resource.type != request.kind.resource_type:
        return f"a {kind} request names a {request.resource.type}"
    expected_target = target.server if target.type == "Server" else target.id
    if fields.get("target") != expected_target or fields.get("server") != target.server:
        return "the entry's target or server is not the recorded request's resource"
    return None


def compare_with_claim(replay: SessionReplay, claim: Mapping[str, Any]) -> None:
    """Report every member of `claim` that is not what the replayed session determines as
    a problem of the replay (`cmcp replay-audit --claim`); `match_claim` says which."""
    match = match_claim(replay, claim)
    if match.unmatched is not None:
        replay.add(ProblemKind.CLAIM_MISMATCH, None, match.unmatched)
        return
    for check in match.checks:
        for mismatch in check.mismatches:
            kind = ProblemKind.CLAIM_MISMATCH
            if mismatch.missing_from is not None:
                kind = ProblemKind.TRUNCATED
            replay.add(kind, mismatch.missing_from, f"{check.name}: {mismatch.message}")


# The named checks of a claim against its session's log, each with the claim members it
# covers: a member belongs to the check of its longest prefix here, and any member no
# prefix names (one the gateway never writes) to "log: session".
LOG_CHECKS: Mapping[str, tuple[str, ...]] = {
    "log: chain": ("gateway.audit_chain", "trace.tool_transcript.hash"),
    "log: session": (
        "gateway.session_id",
        "trace.subject",
        "trace.model",
        "trace.policy",
        "trace.runtime.nonce",
        "gateway.catalog.hash",
        "gateway.catalog.pinning",
    ),
    "log: issuer": (
        "trace.cnf",
        "trace.runtime",
        "trace.build_provenance",
        "trace.appraisal",
        "gateway.gateway_version",
        "gateway.attestation",
        "gateway.recovery",
    ),
    "log: counters": ("gateway.call_summary", "trace.tool_transcript.call_count"),
    "log: data class": ("trace.data_class",),
    "log: drift": ("gateway.catalog.drift_detected",),
    "log: issuance": ("trace.iat", "gateway.sequence_number", "gateway.previous_claim"),
}
_OTHER_MEMBERS = "log: session"
_ISSUANCE = "log: issuance"
_TRACE_RECORD_CHECKS = tuple(name for name in LOG_CHECKS if name != "log: drift")
_COVERS = {
    "log: chain": "audit_chain root, tip and length and tool_transcript.hash are the log's",
    "log: session": "session id, subject, model, policy, challenge (runtime.nonce), catalog "
    "hash and catalog pinning are what session_start records",
    "log: issuer": "the key (by RFC 7638 thumbprint), platform, measurement, evidence (by "
    "digest), devices (each evidence by digest), binding, gateway build, appraisal and "
    "attestation are the issuer's record",
    "log: counters": "call_summary (tools_invoked and by_kind too) and "
    "tool_transcript.call_count are counted from the log",
    "log: data class": "data_class is the most sensitive class of the log's forwarded calls",
    "log: drift": "catalog.drift_detected is whether the log records drift",
    "log: issuance": "iat, sequence_number and previous_claim are what the claim's record "
    "of issuance (session_end, or the claim entry at its tip) records",
}
# A standalone TRACE record states less: what its checks cover there.
_RECORD_COVERS = {
    **_COVERS,
    "log: chain": "tool_transcript.hash is the log's tip",
    "log: session": "subject, model, policy and challenge (runtime.nonce) are what "
    "session_start records",
    "log: issuer": "the key (by RFC 7638 thumbprint), platform, measurement, gateway build "
    "and appraisal are the issuer's record",
    "log: counters": "tool_transcript.call_count is counted from the log",
    "log: issuance": "iat is what the claim's record of issuance records",
}


@dataclass(frozen=True)
class Mismatch:
    path: str  # the claim member, dotted: trace.model.model_id
    message: str  # the path, what the claim states and what the log gives
    # For an audit_chain.length beyond the log's: the first sequence number missing.
    missing_from: int | None = None


@dataclass(frozen=True)
class LogCheck:
    name: str
    mismatches: tuple[Mismatch, ...]
    covers: str  # what the check compared, said when nothing differs


@dataclass(frozen=True)
class ClaimMatch:
    """A claim against its session's log: one `LogCheck` per named check; or, when the
    log does not say what the claim must state (`unmatched`), why not."""

    checks: tuple[LogCheck, ...]
    unmatched: str | None = None


def log_check_names(gateway_claim: bool) -> tuple[str, ...]:
    """The checks of a GatewayClaim, or of a standalone TRACE record (which has no catalog)."""
    return tuple(LOG_CHECKS) if gateway_claim else _TRACE_RECORD_CHECKS


def match_claim(replay: SessionReplay, document: Mapping[str, Any]) -> ClaimMatch:
    """Compare a GatewayClaim or a standalone TRACE record, member by member, with the claim
    its session's log determines (`session_record.claim_facts`, in the one claim shape of
    `claim_body`). The key is compared by its RFC 7638 thumbprint and the evidence by its
    digest, since the log keeps only those; the binding is recomputed from the log's key,
    bundle, catalog, gateway digest and challenge; the signature is not compared. A member
    the claim lacks, or has beyond what the log determines, is a mismatch too.

    A log that lacks a record the claim states, or has it with the wrong type, matches no
    claim: `unmatched` names the member.
    """
    gateway_claim = is_gateway_claim(document)
    issued = _issued_at_tip(replay, document)
    end = replay.end if issued is None else issued.fields
    state = replay.state if issued is None else issued.state
    if end is None:  # a chain cut short: all but what session_end fixes is still compared
        end = {"reason": None, "claim": {"iat": -1, "sequence_number": -1, "previous": None}}
    record = _mapping(document.get("trace")) if gateway_claim else document
    stated_jwk = _mapping(record.get("cnf")).get("jwk")
    try:
        expected, key_check, evidence_check, devices_check = _expected_claim(
            replay, end, state, stated_jwk
        )
    except SessionRecordError as exc:
        return ClaimMatch(checks=(), unmatched=f"the log cannot vouch for the claim: {exc}")
    # the signatures are not compared: the envelope's, and its record's embedded one
    stated = (
        unsigned(document)
        if gateway_claim
        else {k: v for k, v in document.items() if k != SIGNATURE}
    )
    special: dict[str, Callable[[object], str | None]] = {"trace.cnf.jwk": key_check}
    if gateway_claim:
        special["gateway.attestation.evidence"] = evidence_check
        special["gateway.attestation.devices"] = devices_check
        # The log does not record the format a claim was written in (1.0: its record not
        # signed on its own; the shape check ties the version to that): either is matched.
        if stated.get("cmcp_version") in CLAIM_VERSIONS:
            expected["cmcp_version"] = stated["cmcp_version"]
    else:  # a TRACE record is the claim's `trace`, signed on its own
        expected, stated = {"trace": expected["trace"]}, {"trace": stated}
    found: list[Mismatch] = []
    _compare(expected, stated, "", special, found)
    length = state.length
    stated_length = _mapping(_mapping(stated.get("gateway")).get("audit_chain")).get("length")
    grouped: dict[str, list[Mismatch]] = {name: [] for name in log_check_names(gateway_claim)}
    for mismatch in found:
        located = mismatch
        # entries the claim counts beyond the log's are missing from it, from its length on
        if (
            mismatch.path == "gateway.audit_chain.length"
            and _is_int(stated_length)
            and stated_length > length
        ):
            located = Mismatch(mismatch.path, mismatch.message, missing_from=length)
        grouped[_check_of(mismatch.path)].append(located)
    if replay.end is None and issued is None:
        grouped[_ISSUANCE] = [
            Mismatch(
                "session_end",
                f"the log has no session_end of session {replay.session_id}: nothing there "
                "vouches for trace.iat and gateway.sequence_number",
            )
        ]
    covers = _COVERS if gateway_claim else _RECORD_COVERS
    return ClaimMatch(
        checks=tuple(LogCheck(name, tuple(found), covers[name]) for name, found in grouped.items())
    )


def _issued_at_tip(replay: SessionReplay, document: Mapping[str, Any]) -> IssuedClaim | None:
    """The `claim` entry whose chain the claim covers, when its stated tip is one: a claim
    issued while the session went on is matched with the chain up to that entry; any
    other claim with the whole chain and its session_end."""
    gateway = _mapping(document.get("gateway"))
    if gateway:
        tip = _mapping(gateway.get("audit_chain")).get("tip")
    else:  # a standalone TRACE record
        tip = _mapping(document.get("tool_transcript")).get("hash")
    for issued in replay.issued.values():
        if issued.state.tip == tip:
            return issued
    return None


_Judge = Callable[[object], str | None]


def _expected_claim(
    replay: SessionReplay, end: Mapping[str, Any], state: ChainState, stated_jwk: object
) -> tuple[dict[str, Any], _Judge, _Judge, _Judge]:
    """The unsigned claim the log determines, and how the claim's key, evidence and
    devices are judged against the digests the log keeps of them. The log keeps only the
    key's thumbprint: the claim's own key (`stated_jwk`) stands in for it when it is that
    key, so that what is made over the whole record (its `transparency` URI) is made
    over the same record."""
    start = replay.start
    if start is None:
        raise SessionRecordError(f"it has no session_start of session {replay.session_id}")
    thumbprint = issuer_member(start, end, "key_thumbprint")
    where = "session_start" if issuer_of(start, end) is start else "session_end.recovered_by"
    # the evidence the claim carries is the newest an attestation entry records, if any
    newest, evidence_at = evidence_record(start, end, state)
    evidence_digest = newest.get("evidence_digest")
    if not isinstance(evidence_digest, str):
        raise SessionRecordError(f"{evidence_at} records no evidence_digest string")
    facts = claim_facts(start, end, state, {})
    if facts.enforcement_mode not in ENFORCEMENT_MODES:
        raise SessionRecordError(
            f"session_start records enforcement_mode {facts.enforcement_mode!r}, not one of "
            f"{', '.join(ENFORCEMENT_MODES)}"
        )
    binding = compute_binding(
        key_thumbprint=thumbprint,
        bundle_hash=facts.bundle_hash,
        catalog_hash=facts.catalog_hash,
        gateway_digest=facts.build_digest,
        nonce=facts.nonce,
    )
    facts = replace(facts, attestation={**facts.attestation, "binding": binding.hex()})

    def key_check(stated: object) -> str | None:
        stated_key = _thumbprint(stated)
        if stated_key == f"key {thumbprint}":
            return None
        return (
            f"trace.cnf.jwk: the claim states {stated_key}, the log gives key {thumbprint} "
            f"({where}.key_thumbprint)"
        )

    def evidence_check(stated: object) -> str | None:
        stated_digest = digest(stated)
        if stated_digest == evidence_digest:
            return None
        return (
            f"gateway.attestation.evidence: the claim states evidence {stated_digest}, the log "
            f"gives evidence {evidence_digest} ({evidence_at}.evidence_digest)"
        )

    devices = device_records(newest, evidence_at)

    def devices_check(stated: object) -> str | None:
        return devices_mismatch(devices, stated, f"{evidence_at}.devices")

    jwk = dict(_mapping(stated_jwk)) if key_check(stated_jwk) is None else {}
    return claim_body(facts, jwk), key_check, evidence_check, devices_check


def _compare(
    expected: object,
    stated: object,
    path: str,
    special: Mapping[str, Callable[[object], str | None]],
    found: list[Mismatch],
) -> None:
    judge = special.get(path)
    if judge is not None:
        message = judge(stated)
        if message is not None:
            found.append(Mismatch(path, message))
        return
    if isinstance(expected, Mapping) and isinstance(stated, Mapping):
        for name in [*expected, *(k for k in stated if k not in expected)]:
            member = f"{path}.{name}" if path else str(name)
            _compare(expected.get(name, ABSENT), stated.get(name, ABSENT), member, special, found)
        return
    if not same(expected, stated):
        if stated is ABSENT:
            message = f"{path}: the claim states nothing, the log gives {show(expected)}"
        elif expected is ABSENT:
            message = f"{path}: the claim states {show(stated)}, which the log does not determine"
        else:
            message = f"{path}: the claim states {show(stated)}, the log gives {show(expected)}"
        found.append(Mismatch(path, message))


def _check_of(path: str) -> str:
    best, best_length = _OTHER_MEMBERS, -1
    for name, prefixes in LOG_CHECKS.items():
        for prefix in prefixes:
            if (path == prefix or path.startswith(prefix + ".")) and len(prefix) > best_length:
                best, best_length = name, len(prefix)
    return best


def _thumbprint(jwk: object) -> str:
    """How a stated key reads in a report: its RFC 7638 thumbprint, when it is a public
    OKP JWK of exactly the members the gateway writes."""
    if (
        isinstance(jwk, Mapping)
        and set(jwk) == {"kty", "crv", "x"}
        and all(isinstance(value, str) for value in jwk.values())
    ):
        return f"key {jwk_thumbprint(jwk)}"
    return f"{show(jwk)}, not a public JWK of kty, crv and x"


def _is_int(value: object) -> TypeGuard[int]:
    return type(value) is int


def _mapping(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}
