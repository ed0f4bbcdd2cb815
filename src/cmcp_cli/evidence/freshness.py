"""Fresh evidence for an open session: the same key and binding, attested again.

Evidence is fresh for `attestation.validity_seconds` after it was generated. A session
that lives longer has the provider collect evidence over its own binding again (the
challenge it was opened with included, so the binding is the one its claims state) and
records the result as an `attestation` entry: `fresh` when the measurement is still the
session's and pinned, `stale` (with its reason and the `staleness_policy` that decides
what follows) when the evidence could not be collected or its measurement changed or
left the pinned set. The claim carries the newest evidence an entry records.

Devices attested at the session's start must be attested again, the same ones: a device
that cannot be, or a changed set of devices, makes the evidence stale and the session
fail closed whatever `staleness_policy` says, since the session's GPU work would go on
on devices nothing attests any more. So does evidence appraised below
`trace.appraisal.required_status`: no session is opened on such evidence, nor goes on on it.
"""

from __future__ import annotations

from dataclasses import dataclass

from cmcp_cli.audit.issuer import Issuer
from cmcp_cli.audit.session_record import FRESH, STALE, attestation_record
from cmcp_cli.evidence.appraising import below_required
from cmcp_cli.evidence.attesting import (
    AttestationUnavailableError,
    AttestedKey,
    Attestor,
    DeviceAttestationError,
    attest_key,
)
from cmcp_cli.evidence.session import EvidenceSession


@dataclass(frozen=True)
class Renewal:
    fresh: bool
    reason: str | None = None  # why the session's evidence is stale, when it is
    # The staleness policy that decides what follows stale evidence, as the attestation
    # entry records it: the configured one, or `fail_closed` when a device attested at the
    # start is not attested now, or the appraisal is below the required status, whatever
    # the configured one says.
    policy: str | None = None


FAIL_CLOSED = "fail_closed"


def renew_evidence(session: EvidenceSession, attestor: Attestor, *, policy: str) -> Renewal:
    """Attest the session's binding again and record the `attestation` entry (blocking: it
    waits for the provider and for durability). Raises `ChainEndedError` when the session
    ended meanwhile; nothing is then recorded."""
    attested: AttestedKey | None
    reason: str | None
    forced = False  # fail closed whatever the staleness policy says
    try:
        attested = attest_key(
            attestor,
            key=session.key,
            bundle_hash=session.policy.bundle_hash,
            catalog_hash=session.policy.catalog_hash,
            gateway_digest=session.gateway_digest,
            process_id=session.issuer.process,
            clock=session.clock,
            enforce=False,
            nonce=session.challenge,
        )
    except DeviceAttestationError as exc:
        attested, reason = None, f"fresh evidence could not be collected: {exc.message}"
        forced = bool(session.issuer.devices)
    except AttestationUnavailableError as exc:
        attested, reason = None, f"fresh evidence could not be collected: {exc.message}"
    except Exception as exc:  # noqa: BLE001 - a collector bug is a stale renewal (fail closed)
        attested, reason = None, f"fresh evidence could not be collected: {exc!r}"
    else:
        reason = _devices_changed(session.issuer, attested.issuer) or _below(attestor, attested)
        forced = reason is not None
        reason = reason or _stale_reason(session, attestor, attested)
    decided = None if reason is None else FAIL_CLOSED if forced else policy
    record = attestation_record(
        status=FRESH if reason is None else STALE,
        issuer=attested.issuer if attested is not None else None,
        reason=reason,
        policy=decided,
    )
    with session.evidence_lock:
        session.recorder.attestation(record)
        if attested is not None:  # the claim carries the evidence the newest entry records
            session.evidence = attested.evidence
            session.attestation = attested.attestation
    return Renewal(fresh=reason is None, reason=reason, policy=decided)


def _devices_changed(opened: Issuer, now: Issuer) -> str | None:
    """Why the devices attested now are not the ones attested when the session opened."""
    before = [(d.provider, d.device) for d in opened.devices]
    after = [(d.provider, d.device) for d in now.devices]
    if before == after:
        return None
    shown = [", ".join(f"{p} {d}" for p, d in found) or "none" for found in (before, after)]
    return f"the attested devices changed from {shown[0]} to {shown[1]}"


def _below(attestor: Attestor, attested: AttestedKey) -> str | None:
    """Why the fresh evidence's appraisal does not meet `trace.appraisal.required_status`."""
    status, required = attested.issuer.appraisal_status, attestor.appraisal.required_status
    if not below_required(status, required):
        return None
    return f"the evidence is appraised {status}, below trace.appraisal.required_status {required}"


def _stale_reason(
    session: EvidenceSession, attestor: Attestor, attested: AttestedKey
) -> str | None:
    measured, opened = attested.issuer.measurement, session.issuer.measurement
    if measured != opened:
        return f"the measurement changed from {opened} to {measured}"
    now = (attested.issuer.appraisal_status, attested.issuer.appraisal_verifier)
    before = (session.issuer.appraisal_status, session.issuer.appraisal_verifier)
    if now != before:
        return f"the appraisal changed from {before[0]} by {before[1]} to {now[0]} by {now[1]}"
    if attestor.pins and attested.issuer.measurement_pin is None:
        return f"the measurement {measured} is not among attestation.expected_measurement"
    return None
