"""What a session's chain records about its claim, and the claim those records determine.

`session_start` records the session (its agent, policy, catalog, model, and the
verifier's challenge it was opened with) and its issuer (audit.issuer: the process, key,
platform, measurement, evidence digest and gateway build that sign its claim).
`session_end` records what is fixed only when the claim is issued (`iat`,
`sequence_number`, and `previous`, the digest of the session's claim before it); a session
closed by a later process after its own process died (`recovered_by`) names that later
process as the issuer instead. With `claims.per_call`, a `claim` entry records the same
`claim` member for a claim issued while the session goes on, over the chain up to and
including that entry; session_end's claim continues their sequence.

An `attestation` entry records a re-attestation of the session's binding; the newest one
with evidence is the evidence the claim carries (`evidence_record`), and the stale ones
are counted in it. It records the devices attested beside the platform, and the
appraisal, of the evidence it was collected with, as the issuer record does.

`claim_facts` turns those records and the chain's own state into the facts a claim
states. The gateway builds its claims from it, and a verifier given the log compares a
claim with what it gives, so a claim and a log that describe different sessions cannot
both check out.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cmcp_cli.audit.chain import STALE_STATUS, ChainState
from cmcp_cli.audit.issuer import Issuer, device_records, issuer_of
from cmcp_cli.audit.record_members import (
    SessionRecordError,
    json_type,
    member,
    optional_member,
)
from cmcp_cli.claim.model import SessionFacts, device_item

INTERRUPTED = "interrupted"  # session_end.reason of a session closed by recovery


@dataclass(frozen=True)
class SessionPolicy:
    """What the session runs under, fixed for its whole life."""

    bundle_hash: str
    policy_version: str
    catalog_hash: str
    enforcement_mode: str  # enforcing, advisory or silent
    data_class_order: Sequence[str]
    trust_domain: str = "cmcp.local"
    model_provider: str = "unknown"
    model_id: str = "unknown"
    record_inputs: str = "full"  # or "hashes": the Cedar request is then not kept
    # How the catalog came to be: "explicit" (a catalog file the operator provided) or
    # "first-contact" (written from what the upstreams advertised at the first start).
    catalog_pinning: str = "explicit"


def start_record(
    agent: str, policy: SessionPolicy, issuer: Issuer, challenge: str | None = None
) -> dict[str, Any]:
    """The members of a session_start entry (beside the base fields every entry has): the
    session's agent and policy, the verifier's challenge it was opened with, and its
    claim's issuer."""
    opened = {} if challenge is None else {"challenge": challenge}
    return {
        "agent": agent,
        "bundle_hash": policy.bundle_hash,
        "catalog_hash": policy.catalog_hash,
        "catalog_pinning": policy.catalog_pinning,
        "enforcement_mode": policy.enforcement_mode,
        "data_class_order": list(policy.data_class_order),
        "policy_version": policy.policy_version,
        "trust_domain": policy.trust_domain,
        "model": {"provider": policy.model_provider, "model_id": policy.model_id},
        **opened,
        **issuer.record(),
    }


def issuance(*, issued_at: int, sequence_number: int, previous: str | None) -> dict[str, Any]:
    """What a claim fixes at issuance, as its record's `claim` member keeps it."""
    return {"iat": issued_at, "sequence_number": sequence_number, "previous": previous}


def claim_record(*, issued_at: int, sequence_number: int, previous: str | None) -> dict[str, Any]:
    """The members of a `claim` entry: the issuance of a claim issued while the session
    goes on, over the chain up to and including this entry."""
    return {
        "claim": issuance(issued_at=issued_at, sequence_number=sequence_number, previous=previous)
    }


def end_record(
    *,
    reason: str,
    issued_at: int,
    sequence_number: int,
    previous: str | None = None,
    recovered_by: Issuer | None = None,
) -> dict[str, Any]:
    """The members of a session_end entry: why, and what its claim fixes at issuance."""
    fields: dict[str, Any] = {
        "reason": reason,
        "claim": issuance(issued_at=issued_at, sequence_number=sequence_number, previous=previous),
    }
    if recovered_by is not None:
        fields["recovered_by"] = recovered_by.record()
    return fields


# `status` of an `attestation` entry: fresh evidence for the session's binding was taken
# and its measurement is the session's and pinned (`fresh`); or it could not be taken,
# or its measurement changed or left the pinned set (`stale`, with `reason` and the
# `policy` that decided what followed: `fail_closed` or `warn_only`).
FRESH = "fresh"
STALE = STALE_STATUS
# The members of an attestation entry that carry new evidence; the claim states the
# newest entry's (`evidence_record`).
EVIDENCE_FIELDS = (
    "platform",
    "measurement",
    "evidence_digest",
    "evidence_type",
    "generated_at",
    "measurement_pin",
    "devices",
    "appraisal",
    "appraisal_checks",
)


def attestation_record(
    *,
    status: str,
    issuer: Issuer | None,
    reason: str | None = None,
    policy: str | None = None,
) -> dict[str, Any]:
    """The members of an `attestation` entry: a re-attestation of the session's binding.
    `issuer` is the fresh evidence's issuer record (None when none could be collected)."""
    fields: dict[str, Any] = {"status": status}
    if issuer is not None:
        fields |= {
            "platform": issuer.platform,
            "measurement": issuer.measurement,
            "evidence_digest": issuer.evidence_digest,
            "evidence_type": issuer.evidence_type,
            "generated_at": issuer.generated_at,
            "measurement_pin": issuer.measurement_pin,
            "appraisal": issuer.appraisal(),
            **issuer.appraisal_findings(),
        }
        if issuer.devices:
            fields["devices"] = [device.record() for device in issuer.devices]
    if reason is not None:
        fields["reason"] = reason
    if policy is not None:
        fields["policy"] = policy
    return fields


def evidence_record(
    start: Mapping[str, Any], end: Mapping[str, Any], state: ChainState
) -> tuple[Mapping[str, Any], str]:
    """The record of the evidence the claim carries, and what it is: the newest
    `attestation` entry with evidence of the session's own process, else the issuer's.
    A recovering process's evidence is newer than any its interrupted process took."""
    issuer = issuer_of(start, end)
    if issuer is start and state.attestation is not None:
        return state.attestation, "attestation entry"
    return issuer, "session_start" if issuer is start else "session_end.recovered_by"


def claim_facts(
    start: Mapping[str, Any],
    end: Mapping[str, Any],
    state: ChainState,
    attestation: Mapping[str, Any],
) -> SessionFacts:
    """The facts of the claim that a chain with this session_start and this record of
    issuance (`end`: the session_end, or a `claim` entry, whose `claim` member fixes
    `iat`, `sequence_number` and `previous`), and its state as of that record, determines.
    `attestation` is the claim's own `gateway.attestation` for the members the log keeps
    only a digest of (`evidence`, and each device's) or recomputes (`binding`); every other
    member comes from the records.

    Raises `SessionRecordError` naming the first member that is missing or mistyped.
    """
    issuer = issuer_of(start, end)
    who = "session_start" if issuer is start else "session_end.recovered_by"
    # a claim entry has no reason: session_end always does
    named = "session_end" if "reason" in end else "the claim entry"
    claim = member(end, "claim", Mapping, named)
    issued_at = member(claim, "iat", int, f"{named}.claim")
    sequence_number = member(claim, "sequence_number", int, f"{named}.claim")
    if "previous" not in claim:
        raise SessionRecordError(f"{named}.claim records no previous")
    previous = claim["previous"]
    if previous is not None and not isinstance(previous, str):
        raise SessionRecordError(
            f"{named}.claim records previous as {json_type(previous)}, not a string or null"
        )
    model = member(start, "model", Mapping, "session_start")
    appraisal = member(issuer, "appraisal", Mapping, who)
    issued = member(issuer, "attestation", Mapping, who)
    # The platform and measurement (`top`), evidence type and time (`sub`) of the newest
    # evidence: an attestation entry holds all of them, an issuer record nests the latter.
    top, top_at = evidence_record(start, end, state)
    appraisal_at = f"{who}.appraisal"
    # The appraisal the newest evidence states (an attestation entry records its own).
    if top is not issuer and "appraisal" in top:
        appraisal, appraisal_at = member(top, "appraisal", Mapping, top_at), f"{top_at}.appraisal"
    sub, sub_at = top, top_at
    if top is issuer:
        sub, sub_at = issued, f"{who}.attestation"
    order = member(start, "data_class_order", list, "session_start")
    recovery = None
    if issuer is not start:
        recovery = {
            "interrupted_process": member(start, "process", str, "session_start"),
            "process": member(issuer, "process", str, who),
        }
    return SessionFacts(
        session_id=state.session_id,
        gateway_version=member(issuer, "gateway_version", str, who),
        sequence_number=sequence_number,
        issued_at=issued_at,
        trust_domain=member(start, "trust_domain", str, "session_start"),
        model_provider=member(model, "provider", str, "session_start.model"),
        model_id=member(model, "model_id", str, "session_start.model"),
        platform=member(top, "platform", str, top_at),
        measurement=member(top, "measurement", str, top_at),
        bundle_hash=member(start, "bundle_hash", str, "session_start"),
        enforcement_mode=member(start, "enforcement_mode", str, "session_start"),
        policy_version=member(start, "policy_version", str, "session_start"),
        data_class=state.max_data_class or (str(order[0]) if order else "public"),
        audit_chain=state.audit_chain_json(),
        call_summary=state.calls.to_json(),
        catalog_hash=member(start, "catalog_hash", str, "session_start"),
        catalog_pinning=member(start, "catalog_pinning", str, "session_start"),
        drift_detected=state.drift_detected,
        attestation={
            "provider": member(issued, "provider", str, f"{who}.attestation"),
            "provider_version": member(issued, "provider_version", str, f"{who}.attestation"),
            "evidence_type": member(sub, "evidence_type", str, sub_at),
            "generated_at": member(sub, "generated_at", str, sub_at),
            "binding": attestation.get("binding"),
            "evidence": attestation.get("evidence"),
            **_devices(top, top_at, attestation.get("devices")),
            **_freshness(issued, sub, f"{who}.attestation", sub_at, state),
        },
        build_digest=member(issuer, "gateway_digest", str, who),
        slsa_level=member(issuer, "slsa_level", int, who),
        appraisal_status=member(appraisal, "status", str, appraisal_at),
        appraisal_verifier=member(appraisal, "verifier", str, appraisal_at),
        appraisal_policy_ref=optional_member(appraisal, "policy_ref", str, appraisal_at),
        appraisal_timestamp=optional_member(appraisal, "timestamp", int, appraisal_at),
        recovery=recovery,
        previous_claim=previous,
        nonce=optional_member(start, "challenge", str, "session_start"),
        anchor_url=optional_member(issuer, "anchor_url", str, who),
    )


def _freshness(
    issued: Mapping[str, Any],
    newest: Mapping[str, Any],
    who: str,
    newest_at: str,
    state: ChainState,
) -> dict[str, Any]:
    """`measurement_pin`, `validity_seconds` and `stale_warnings` of the claim, when the
    issuer records `validity_seconds` (a chain that does not states none of them)."""
    if "validity_seconds" not in issued:
        return {}
    pin = newest.get("measurement_pin", _MISSING)
    if pin is not None:
        pin = member(newest, "measurement_pin", str, newest_at)
    return {
        "measurement_pin": pin,
        "validity_seconds": member(issued, "validity_seconds", int, who),
        "stale_warnings": state.stale_attestations,
    }


_MISSING = object()


def _devices(newest: Mapping[str, Any], where: str, stated: object) -> dict[str, Any]:
    """`devices` of the claim: the newest evidence record's, each with the evidence the
    claim carries for it (`stated`, the claim's own list; the log keeps only digests)."""
    records = device_records(newest, where)
    if not records:
        return {}
    carried = stated if isinstance(stated, list) else []
    items = []
    for index, record in enumerate(records):
        item = carried[index] if index < len(carried) else None
        evidence = item.get("evidence") if isinstance(item, Mapping) else None
        items.append(
            device_item(
                provider=record["provider"],
                provider_version=record["provider_version"],
                evidence_type=record["evidence_type"],
                device=record["device"],
                evidence=evidence,
            )
        )
    return {"devices": items}
