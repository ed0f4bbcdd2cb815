"""A claim-signing key attested by this host's provider.

The DESIGN §6 binding ties a key to a session's policy and catalog and to this gateway;
the provider collects evidence over it, and `attest_key` returns what signs a claim and
what attests it, with the issuer record its chain keeps. A session's key is attested when
it opens and again when its evidence is renewed; a recovering process attests its own.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from cmcp_cli import __version__
from cmcp_cli.attestation.api import Appraisal, Collector, Evidence, ProviderError, ProviderSpec
from cmcp_cli.attestation.binding import compute_binding
from cmcp_cli.audit.entry import timestamp
from cmcp_cli.audit.recorder import Clock, utc_now
from cmcp_cli.audit.session_record import Issuer
from cmcp_cli.claim.canonical import canonical_sha256
from cmcp_cli.claim.keys import ClaimKey
from cmcp_cli.claim.model import NO_APPRAISAL_VERIFIER
from cmcp_cli.errors import CmcpError

# A random id of this gateway process, recorded in every session it opens, so that a
# later process recovering a session can say whose session it closed.
GATEWAY_PROCESS = secrets.token_hex(16)
NO_APPRAISAL = Appraisal("none", NO_APPRAISAL_VERIFIER)


class AttestationUnavailableError(CmcpError):
    """No evidence can be collected for a new session: it is not opened (fail closed)."""


class MeasurementMismatchError(AttestationUnavailableError):
    """The evidence states a measurement outside `attestation.expected_measurement`: no
    session is opened on it, and a gateway whose first evidence states one does not start."""


@dataclass(frozen=True)
class Attestor:
    """The provider that collects this host's evidence: its one collector instance (which
    holds the device for the gateway's life), origin and settings."""

    spec: ProviderSpec
    version: str
    collector: Collector
    settings: Mapping[str, Any] = field(default_factory=dict)
    # `attestation.expected_measurement`: evidence stating any other measurement attests
    # nothing (empty: no pin). `attestation.validity_seconds`, recorded with each issuer.
    pins: tuple[str, ...] = ()
    validity_seconds: int | None = None

    @classmethod
    def load(
        cls, spec: ProviderSpec, version: str, settings: Mapping[str, Any] | None = None
    ) -> Attestor:
        return cls(spec, version, spec.load_collector(), dict(settings or {}))


@dataclass(frozen=True)
class AttestedKey:
    """A claim-signing key bound to a session's policy and catalog and this gateway, and
    the platform's evidence over that binding: what signs a claim and what attests it."""

    key: ClaimKey
    binding: bytes
    evidence: Evidence
    attestation: dict[str, Any]  # the claim's gateway.attestation
    issuer: Issuer  # as session_start (or a recovery's session_end) records it


def attest_key(
    attestor: Attestor,
    *,
    key: ClaimKey,
    bundle_hash: str,
    catalog_hash: str,
    gateway_digest: str,
    process_id: str,
    clock: Clock = utc_now,
    enforce_pins: bool = True,
) -> AttestedKey:
    """Compute the DESIGN §6 binding of `key` and have the provider collect evidence over
    it. Raises `AttestationUnavailableError` when the provider cannot (fail closed), and
    `MeasurementMismatchError` when the measurement is not pinned, unless `enforce_pins`
    is False (a re-attestation records such evidence, its pin None, and judges it)."""
    binding = compute_binding(
        key_thumbprint=key.thumbprint,
        bundle_hash=bundle_hash,
        catalog_hash=catalog_hash,
        gateway_digest=gateway_digest,
    )
    try:
        evidence = attestor.collector.collect(binding, attestor.settings)
    except ProviderError as exc:
        raise AttestationUnavailableError(
            f"the {attestor.spec.name} provider could not attest the session: {exc.message}",
            hint=exc.hint,
        ) from exc
    try:
        pin = matched_pin(attestor, evidence.measurement)
    except MeasurementMismatchError:
        if enforce_pins:
            raise
        pin = None
    generated_at = timestamp(clock())
    appraisal = evidence.appraisal
    attestation: dict[str, Any] = {
        "provider": attestor.spec.name,
        "provider_version": attestor.version,
        "evidence_type": evidence.evidence_type,
        "generated_at": generated_at,
        "binding": binding.hex(),
        "evidence": dict(evidence.evidence),
    }
    issuer = Issuer(
        process=process_id,
        key_thumbprint=key.thumbprint,
        platform=evidence.platform,
        measurement=evidence.measurement,
        evidence_digest=canonical_sha256(dict(evidence.evidence)),
        gateway_version=__version__,
        gateway_digest=gateway_digest,
        provider=attestor.spec.name,
        provider_version=attestor.version,
        evidence_type=evidence.evidence_type,
        generated_at=generated_at,
        measurement_pin=pin,
        validity_seconds=attestor.validity_seconds,
        # The claim's trace.appraisal: the appraisal the evidence states (an OPAQUE
        # token's, by its issuer), else none.
        appraisal_status=NO_APPRAISAL.status if appraisal is None else appraisal.status,
        appraisal_verifier=NO_APPRAISAL.verifier if appraisal is None else appraisal.verifier,
    )
    return AttestedKey(key, binding, evidence, attestation, issuer)


def matched_pin(attestor: Attestor, measurement: str) -> str | None:
    """The pin `measurement` matches (None when nothing is pinned), or
    `MeasurementMismatchError` naming both and how to get the right value."""
    if not attestor.pins:
        return None
    if measurement in attestor.pins:
        return measurement
    name = attestor.spec.name
    command = "software" if name == "software-only" else name
    raise MeasurementMismatchError(
        f"the {name} provider states measurement {measurement}, which is not among "
        f"attestation.expected_measurement ({', '.join(attestor.pins)})",
        hint=f"run `cmcp measure {command} --config <your cmcp-config.yaml>` on the host you "
        "trust and pin what it prints; a host measuring otherwise is not that host",
    )
