"""A claim-signing key attested by this host's provider.

The DESIGN §6 binding ties a key to a session's policy and catalog and to this gateway;
the provider collects evidence over it, and `attest_key` returns what signs a claim and
what attests it, with the issuer record its chain keeps. A session's key is attested when
it opens and again when its evidence is renewed; a recovering process attests its own.

Devices beside the CPU platform (confidential GPUs) are attested over the same binding by
the device providers the gateway started with (`Attestor.devices`): every one of them, every
time. A device that cannot be attested attests nothing, so the key is not attested either.

Every collection of hardware evidence is appraised where it is collected (`appraising`),
and the issuer record carries the appraisal; a session is not opened on evidence whose
appraisal is below `trace.appraisal.required_status`.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from cmcp_cli import __version__
from cmcp_cli.attestation.api import (
    Appraisal,
    CheckStatus,
    Collector,
    DeviceCollector,
    DeviceEvidence,
    Evidence,
    ProviderError,
    ProviderSpec,
)
from cmcp_cli.attestation.binding import compute_binding
from cmcp_cli.audit.entry import timestamp
from cmcp_cli.audit.issuer import DeviceRecord, Issuer
from cmcp_cli.audit.recorder import Clock, utc_now
from cmcp_cli.claim.canonical import CanonicalizationError, canonical_sha256
from cmcp_cli.claim.keys import ClaimKey
from cmcp_cli.claim.model import NO_APPRAISAL_VERIFIER, device_item
from cmcp_cli.errors import CmcpError
from cmcp_cli.evidence.appraising import (
    AppraisalInputs,
    AppraisalLedger,
    AppraisalPolicyError,
    Collected,
    RuntimeAppraisal,
    appraise,
    appraises,
    below_required,
    unappraised_reason,
)

# A random id of this gateway process, recorded in every session it opens, so that a
# later process recovering a session can say whose session it closed.
GATEWAY_PROCESS = secrets.token_hex(16)
NO_APPRAISAL = Appraisal("none", NO_APPRAISAL_VERIFIER)


class AttestationUnavailableError(CmcpError):
    """No evidence can be collected for a new session: it is not opened (fail closed)."""


class DeviceAttestationError(AttestationUnavailableError):
    """A device the gateway attests beside its platform could not be attested: no session
    opens, and an open one whose re-attestation finds it so takes no further request."""


class MeasurementMismatchError(AttestationUnavailableError):
    """The evidence states a measurement outside `attestation.expected_measurement`: no
    session is opened on it, and a gateway whose first evidence states one does not start."""


class PlatformPolicyRefusedError(AttestationUnavailableError):
    """A verifier refused `trace.appraisal.platform_policy`: the evidence was not judged, so
    no session opens on it, and a gateway whose first evidence finds it so does not start."""


class AppraisalBelowRequiredError(AttestationUnavailableError):
    """The appraisal of the evidence is below `trace.appraisal.required_status`: no session
    is opened on it, and a gateway whose first evidence is appraised so does not start."""


@dataclass(frozen=True)
class DeviceAttestor:
    """A device provider the gateway started with (detected and prepared): its one
    collector instance, origin and settings (`attestation.providers.<name>`)."""

    spec: ProviderSpec
    version: str
    collector: DeviceCollector
    settings: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def load(
        cls, spec: ProviderSpec, version: str, settings: Mapping[str, Any] | None = None
    ) -> DeviceAttestor:
        return cls(spec, version, spec.load_device_collector(), dict(settings or {}))


@dataclass(frozen=True)
class Attestor:
    """The provider that collects this host's evidence: its one collector instance (which
    holds the device for the gateway's life), origin and settings; and the device
    providers that attest devices beside it over the same binding."""

    spec: ProviderSpec
    version: str
    collector: Collector
    settings: Mapping[str, Any] = field(default_factory=dict)
    # `attestation.expected_measurement`: evidence stating any other measurement attests
    # nothing (empty: no pin). `attestation.validity_seconds`, recorded with each issuer.
    pins: tuple[str, ...] = ()
    validity_seconds: int | None = None
    devices: tuple[DeviceAttestor, ...] = ()
    # `trace.appraisal`, read: what the appraisal of each collection trusts; and the latest
    # appraisal made (shared by the copies `replace` makes of this attestor).
    appraisal: AppraisalInputs = field(default_factory=AppraisalInputs)
    appraisals: AppraisalLedger = field(default_factory=AppraisalLedger)
    # `trace.anchor.url`: each issuer names it, so every record it signs states its
    # `transparency` URI there (fixed before signing: the record is anchored as signed).
    anchor_url: str | None = None

    @classmethod
    def load(
        cls, spec: ProviderSpec, version: str, settings: Mapping[str, Any] | None = None
    ) -> Attestor:
        return cls(spec, version, spec.load_collector(), dict(settings or {}))

    def appraisal_detail(self, *, operator: bool) -> dict[str, Any]:
        """What `/readyz` shows of the gateway's own appraisal: whether it makes one, what
        it requires and the latest it made. The files it trusts and the checks that did not
        pass (why it is not `affirming`) are the operator's: `/readyz` answers anyone."""
        reason = unappraised_reason(self.spec)
        if reason is not None:
            return {"appraised": False, "reason": reason}
        latest = self.appraisals.latest
        sources = self.appraisal.sources
        detail: dict[str, Any] = {
            "appraised": True,
            "required_status": self.appraisal.required_status,
            "inputs": {
                "trust_roots": len(self.appraisal.trust_roots),
                "collateral": len(self.appraisal.collateral),
                "platform_policy": sources.get("platform_policy") is not None,
                "allow_debug": self.appraisal.allow_debug,
            },
            "policy_ref": self.appraisal.policy_ref(self.spec.name, self.pins),
            "made": self.appraisals.made,
            "latest": None if latest is None else latest.to_json(operator=operator),
        }
        if operator:
            detail["inputs"] = dict(sources)
        return detail

    def close(self) -> None:
        """Release the platform's collector and every device provider's."""
        try:
            self.collector.close()
        finally:
            for device in self.devices:
                device.collector.close()


@dataclass(frozen=True)
class AttestedKey:
    """A claim-signing key bound to a session's policy and catalog and this gateway, and
    the platform's evidence over that binding: what signs a claim and what attests it."""

    key: ClaimKey
    binding: bytes
    evidence: Evidence
    attestation: dict[str, Any]  # the claim's gateway.attestation (with `devices`, if any)
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
    enforce: bool = True,
    nonce: str | None = None,
) -> AttestedKey:
    """Compute the DESIGN §6 binding of `key` (with `nonce`, the verifier's challenge the
    session was opened with, when it was: binding version 2) and have the provider collect
    evidence over it, and every device provider over the same binding, then appraise it.
    Raises `AttestationUnavailableError` when the provider cannot (fail closed), or the
    appraisal's verifier refuses the platform policy; `DeviceAttestationError` when a
    device provider cannot; `MeasurementMismatchError` when the measurement is not pinned
    and `AppraisalBelowRequiredError` when the appraisal is below the required status,
    unless `enforce` is False (a re-attestation records such evidence, its pin None, with
    its appraisal, and judges it)."""
    binding = compute_binding(
        key_thumbprint=key.thumbprint,
        bundle_hash=bundle_hash,
        catalog_hash=catalog_hash,
        gateway_digest=gateway_digest,
        nonce=nonce,
    )
    try:
        evidence = attestor.collector.collect(binding, attestor.settings)
    except ProviderError as exc:
        raise AttestationUnavailableError(
            f"the {attestor.spec.name} provider could not attest the session: {exc.message}",
            hint=exc.hint,
        ) from exc
    devices = tuple(
        (device, item) for device in attestor.devices for item in _collect_devices(device, binding)
    )
    try:
        pin = matched_pin(attestor, evidence.measurement)
    except MeasurementMismatchError:
        if enforce:
            raise
        pin = None
    now = clock()
    generated_at = timestamp(now)
    own = None
    if appraises(attestor.spec, evidence):
        collected = Collected(
            spec=attestor.spec,
            evidence=evidence,
            devices=[(device.spec, item.evidence) for device, item in devices],
            binding=binding,
            generated_at=now,
            bundle_hash=bundle_hash,
            gateway_digest=gateway_digest,
        )
        try:
            own = appraise(collected, attestor.appraisal, attestor.pins)
        except AppraisalPolicyError as exc:
            raise PlatformPolicyRefusedError(exc.message, hint=exc.hint) from exc
        attestor.appraisals.note(own)
    appraisal = evidence.appraisal
    if own is not None:
        appraisal = Appraisal(own.status, own.verifier)
    attestation: dict[str, Any] = {
        "provider": attestor.spec.name,
        "provider_version": attestor.version,
        "evidence_type": evidence.evidence_type,
        "generated_at": generated_at,
        "binding": binding.hex(),
        "evidence": dict(evidence.evidence),
    }
    if devices:
        attestation["devices"] = [
            device_item(
                provider=device.spec.name,
                provider_version=device.version,
                evidence_type=item.evidence_type,
                device=item.device,
                evidence=dict(item.evidence),
            )
            for device, item in devices
        ]
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
        anchor_url=attestor.anchor_url,
        devices=tuple(
            DeviceRecord(
                provider=device.spec.name,
                provider_version=device.version,
                evidence_type=item.evidence_type,
                device=item.device,
                evidence_digest=canonical_sha256(dict(item.evidence)),
            )
            for device, item in devices
        ),
        # The claim's trace.appraisal: the appraisal the evidence states (an OPAQUE
        # token's, by its issuer), else the gateway's own of hardware evidence, else none.
        appraisal_status=NO_APPRAISAL.status if appraisal is None else appraisal.status,
        appraisal_verifier=NO_APPRAISAL.verifier if appraisal is None else appraisal.verifier,
        appraisal_policy_ref=None if own is None else own.policy_ref,
        appraisal_timestamp=None if own is None else own.timestamp,
        appraisal_checks=None if own is None else tuple(own.record()),
    )
    required = attestor.appraisal.required_status
    if enforce and below_required(issuer.appraisal_status, required):
        raise AppraisalBelowRequiredError(
            f"the {attestor.spec.name} evidence is appraised {issuer.appraisal_status}, below "
            f"trace.appraisal.required_status {required}{_why(own)}",
            hint=_below_hint(own, attestor.spec.name),
        )
    return AttestedKey(key, binding, evidence, attestation, issuer)


_DONE = {CheckStatus.FAIL: "failed", CheckStatus.SKIP: "skipped", CheckStatus.PASS: "passed"}


def _why(own: RuntimeAppraisal | None) -> str:
    if own is None:
        return " (the evidence states its appraisal; the gateway makes none of its own)"
    return ": " + "; ".join(
        f"{check.name} {_DONE[check.status]} ({check.reason})" for check in own.not_passed
    )


def _below_hint(own: RuntimeAppraisal | None, provider: str) -> str:
    """What would raise the appraisal: pin the measurement, give what a skipped check
    lacked, or fix what failed; else lower the requirement."""
    steps = []
    names = {check.name: check.status for check in own.not_passed} if own else {}
    if names.get("measurement") is CheckStatus.SKIP:
        steps.append(
            f"pin the measurement (`cmcp measure {provider} --config <config>`) in "
            "attestation.expected_measurement"
        )
    if any(status is CheckStatus.SKIP for name, status in names.items() if name != "measurement"):
        steps.append(
            "give trace.appraisal the trust roots (and collateral) the skipped checks name"
        )
    if any(status is CheckStatus.FAIL for status in names.values()):
        steps.append("fix the host or the inputs the failed checks name")
    lower = "lower trace.appraisal.required_status"
    return "; ".join(steps) + f"; or {lower}" if steps else lower


def _collect_devices(device: DeviceAttestor, binding: bytes) -> tuple[DeviceEvidence, ...]:
    """The device provider's evidence over `binding`: at least one item, each of an
    evidence type it declares and with a canonical JSON form; else
    `DeviceAttestationError`, since a claim cannot carry what it cannot state."""
    name = device.spec.name
    try:
        items = device.collector.collect(binding, device.settings)
    except ProviderError as exc:
        raise DeviceAttestationError(
            f"the {name} provider could not attest the session's devices: {exc.message}",
            hint=exc.hint,
        ) from exc
    problem = None
    if not items:
        problem = "it returned no device evidence, though it was prepared with devices"
    for item in items:
        if item.evidence_type not in device.spec.evidence_types:
            problem = f"it returned evidence type {item.evidence_type!r}, which it does not declare"
        else:
            try:
                canonical_sha256(dict(item.evidence))
            except (CanonicalizationError, TypeError, ValueError) as exc:
                problem = f"the evidence of {item.device} has no canonical JSON form ({exc})"
        if problem is not None:
            break
    if problem is not None:
        raise DeviceAttestationError(
            f"the {name} provider could not attest the session's devices: {problem}",
            hint=f"a bug in the {name} plugin {device.version}: report it to its maintainers",
        )
    return tuple(items)


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
