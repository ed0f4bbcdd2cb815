"""The GatewayClaim (DESIGN §5) and the standalone TRACE v0.2 Trust Record.

`build_claim` turns plain facts about a closed session into the signed envelope; the
`trace` object inside it is a complete TRACE v0.2 record with its own embedded signature
by the same key (TRACE §3.2.2): the standalone record is the claim's `trace` as it is, and
the record a transparency log anchors is the claim's `trace` byte for byte (claim.anchor).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, get_args

from cmcp_cli.claim.anchor import transparency_uri
from cmcp_cli.claim.canonical import canonical_sha256
from cmcp_cli.claim.keys import ClaimKey
from cmcp_cli.claim.signing import SIGNATURE, signed
from cmcp_cli.config import CatalogPinning

# 1.1: the claim's `trace` carries its own embedded signature (required there); 1.0: its
# `trace` has none (forbidden there) and the envelope's signature alone covers it.
CLAIM_VERSION = "1.1"
RECORD_UNSIGNED_VERSION = "1.0"
CLAIM_VERSIONS = (RECORD_UNSIGNED_VERSION, CLAIM_VERSION)
EAT_PROFILE = "tag:agentrust-io.com,2026:trace-v0.2"
SOFTWARE_PLATFORM = "software-only"
NO_APPRAISAL_VERIFIER = "urn:cmcp:appraisal:none"
ENFORCEMENT_MODES = {"enforcing": "enforce", "advisory": "advisory", "silent": "silent"}
CATALOG_PINNING: tuple[str, ...] = get_args(CatalogPinning)
# The members of each item of `gateway.attestation.devices`: the evidence of one device
# (a confidential GPU) beside the CPU platform, collected by a device provider over the
# CPU evidence's `binding`. The list is absent when no device was attested.
DEVICE_MEMBERS = ("provider", "provider_version", "evidence_type", "device", "evidence")


def device_item(
    *, provider: str, provider_version: str, evidence_type: str, device: str, evidence: Any
) -> dict[str, Any]:
    """One item of `gateway.attestation.devices`, with exactly `DEVICE_MEMBERS`."""
    return {
        "provider": provider,
        "provider_version": provider_version,
        "evidence_type": evidence_type,
        "device": device,
        "evidence": evidence,
    }


@dataclass(frozen=True)
class SessionFacts:
    """Everything a claim states, as plain values; nothing here is computed twice."""

    session_id: str
    gateway_version: str
    sequence_number: int  # this claim's position among the claims the gateway issued, from 1
    issued_at: int  # Unix seconds
    trust_domain: str
    model_provider: str
    model_id: str
    platform: str
    measurement: str
    bundle_hash: str
    enforcement_mode: str  # as configured: enforcing, advisory or silent
    policy_version: str
    data_class: str
    audit_chain: Mapping[str, Any]  # root, tip, length
    call_summary: Mapping[str, Any]
    catalog_hash: str
    # one of CATALOG_PINNING: whether the catalog was the
    # operator's own or written from what the upstreams advertised at the first start
    catalog_pinning: str
    drift_detected: bool
    # provider, provider_version, evidence_type, generated_at, binding, evidence, and
    # `devices` (items of DEVICE_MEMBERS) when devices were attested beside the platform
    attestation: Mapping[str, Any]
    build_digest: str  # the gateway software digest, also the binding's "gateway" member
    slsa_level: int = 0
    appraisal_status: str = "none"
    appraisal_verifier: str = NO_APPRAISAL_VERIFIER
    # For a session closed by a later gateway process after its own died: the process
    # that was interrupted and the one that issued this claim (`interrupted_process`,
    # `process`); None for a session its own process closed.
    recovery: Mapping[str, str] | None = None
    # `claim_digest` of the session's claim before this one; None for its first claim.
    previous_claim: str | None = None
    # The verifier's challenge the session was opened with (`trace.runtime.nonce`, and the
    # binding's `nonce`); None when none was given.
    nonce: str | None = None
    # The appraisal policy's absolute URI and when the appraisal was made (Unix seconds):
    # set with the runtime's own appraisal of its evidence, None otherwise.
    appraisal_policy_ref: str | None = None
    appraisal_timestamp: int | None = None
    # The transparency service the issuer anchors its claims in (`trace.anchor.url`): the
    # record's `transparency` URI is made from it before signing. None: not anchored.
    anchor_url: str | None = None


def subject(trust_domain: str, session_id: str) -> str:
    return f"spiffe://{trust_domain}/cmcp/session/{session_id}"


def appraisal_item(
    *, status: str, verifier: str, policy_ref: str | None = None, timestamp: int | None = None
) -> dict[str, Any]:
    """The record's `appraisal`: `status` and `verifier`, with `policy_ref` and `timestamp`
    only when the appraisal has them (the runtime's own appraisal does)."""
    appraisal: dict[str, Any] = {"status": status, "verifier": verifier}
    if policy_ref is not None:
        appraisal["policy_ref"] = policy_ref
    if timestamp is not None:
        appraisal["timestamp"] = timestamp
    return appraisal


def trace_body(facts: SessionFacts, jwk: Mapping[str, str]) -> dict[str, Any]:
    """The claim's TRACE record without its embedded signature."""
    runtime = {"platform": facts.platform, "measurement": facts.measurement}
    if facts.nonce is not None:
        runtime["nonce"] = facts.nonce
    body: dict[str, Any] = {
        "eat_profile": EAT_PROFILE,
        "iat": facts.issued_at,
        "subject": subject(facts.trust_domain, facts.session_id),
        "model": {"provider": facts.model_provider, "model_id": facts.model_id},
        "runtime": runtime,
        "policy": {
            "bundle_hash": facts.bundle_hash,
            "enforcement_mode": ENFORCEMENT_MODES[facts.enforcement_mode],
            "version": facts.policy_version,
        },
        "data_class": facts.data_class,
        "tool_transcript": {
            "hash": facts.audit_chain["tip"],
            "call_count": facts.call_summary["total"],
        },
        "build_provenance": {"slsa_level": facts.slsa_level, "digest": facts.build_digest},
        "appraisal": appraisal_item(
            status=facts.appraisal_status,
            verifier=facts.appraisal_verifier,
            policy_ref=facts.appraisal_policy_ref,
            timestamp=facts.appraisal_timestamp,
        ),
        "cnf": {"jwk": dict(jwk)},
    }
    if facts.anchor_url is not None:
        body["transparency"] = transparency_uri(facts.anchor_url, body)
    return body


def claim_body(facts: SessionFacts, jwk: Mapping[str, str]) -> dict[str, Any]:
    """The GatewayClaim of a session without its signatures (the envelope's and its
    record's): what a verifier holding the session's log expects a claim to state."""
    claim: dict[str, Any] = {
        "cmcp_version": CLAIM_VERSION,
        "trace": trace_body(facts, jwk),
        "gateway": {
            "session_id": facts.session_id,
            "gateway_version": facts.gateway_version,
            "sequence_number": facts.sequence_number,
            "previous_claim": facts.previous_claim,
            "audit_chain": dict(facts.audit_chain),
            "call_summary": dict(facts.call_summary),
            "catalog": {
                "hash": facts.catalog_hash,
                "drift_detected": facts.drift_detected,
                "pinning": facts.catalog_pinning,
            },
            "attestation": dict(facts.attestation),
        },
    }
    if facts.recovery is not None:
        claim["gateway"]["recovery"] = dict(facts.recovery)
    return claim


def build_claim(facts: SessionFacts, key: ClaimKey) -> dict[str, Any]:
    """The signed GatewayClaim of a session."""
    return sign_claim(claim_body(facts, key.public_jwk), key)


def sign_claim(claim: Mapping[str, Any], key: ClaimKey) -> dict[str, Any]:
    """`claim` signed by `key`: its `trace` on its own first (TRACE's embedded form), then
    the whole envelope. Signatures it held already are replaced."""
    body = unsigned(claim)
    if isinstance(body.get("trace"), Mapping):
        body["trace"] = signed(body["trace"], key)
    return signed(body, key)


def unsigned(claim: Mapping[str, Any]) -> dict[str, Any]:
    """A GatewayClaim without its signatures: the envelope's, and its record's embedded
    one (a 1.0 claim's record has none)."""
    body = {k: v for k, v in claim.items() if k != SIGNATURE}
    trace = body.get("trace")
    if isinstance(trace, Mapping):
        body["trace"] = {k: v for k, v in trace.items() if k != SIGNATURE}
    return body


def claim_digest(claim: Mapping[str, Any]) -> str:
    """What the next claim of a session links to (`gateway.previous_claim`): the RFC 8785
    SHA-256 digest of a claim without its signatures (`unsigned`). The signatures are left
    out so the link can be fixed before the claim is signed; a claim whose signature was
    changed fails its own signature check instead."""
    return canonical_sha256(unsigned(claim))


def is_gateway_claim(document: Mapping[str, Any]) -> bool:
    return "cmcp_version" in document or "gateway" in document
