"""The contract every attestation provider plugin passes (opt-in; needs pytest).

In a plugin's tests:

    from cmcp_cli.testing.provider_contract import ProviderContract

    class TestMyProvider(ProviderContract):
        @pytest.fixture
        def provider_spec(self) -> ProviderSpec:
            return MY_SPEC

The suite checks the declaration, lazy loading, that detection and verification never
raise on bad input, that a verifier fails closed (garbage, a wrong binding), and, where
the collector detects its hardware here (with the `provider_settings` fixture's config),
that its own evidence verifies. A device provider (`ProviderScope.DEVICE`) passes the same
suite with its `DeviceCollector`: each device's evidence is judged on its own, and its
`platform` names its devices rather than a TRACE `runtime.platform`, which stays the CPU's.

Then it tampers: the `pinned_evidence` fixture is evidence with everything an auditor pins
to verify it (roots, policy hash, collateral), on which the verifier's verdict is
hardware-attested (for the software provider: passes). By default it is the collector's own
evidence, where the hardware is here; override it with genuine vendor evidence or evidence
signed under a test PKI so that the tamper tests run everywhere. Every single-leaf change
of it (`cmcp_cli.testing.tamper`) must fail, never turn a passing check into a skip that no
failure explains, and never stay hardware-attested.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

import pytest

from cmcp_cli.attestation.api import (
    CheckStatus,
    Collector,
    Detection,
    DeviceCollector,
    EvidenceVerdict,
    GatewayFacts,
    ProviderScope,
    ProviderSpec,
    TrustInputs,
)
from cmcp_cli.claim.canonical import canonical_bytes
from cmcp_cli.testing.tamper import REMOVED, same_outcome, tamper_problems, tamperings

TRACE_PLATFORMS = frozenset(
    {
        "intel-tdx",
        "amd-sev-snp",
        "azure-cvm-sev-snp",
        "nvidia-h100",
        "nvidia-blackwell",
        "aws-nitro",
        "arm-cca",
        "google-confidential-space",
        "tpm2",
        "software-only",
    }
)
_NAME = re.compile(r"[a-z][a-z0-9-]*")
_DIGEST = re.compile(r"sha(256:[0-9a-f]{64}|384:[0-9a-f]{96})")
GARBAGE: tuple[Any, ...] = ({}, {"binding": 7}, {"report": "not base64 ☃"}, {"evidence": [None]})


# What a gateway would measure: any well-formed hashes do for the contract.
FACTS = GatewayFacts(
    bundle_hash="sha256:" + "b0" * 32,
    catalog_hash="sha256:" + "ca" * 32,
    gateway_digest="sha256:" + "9a" * 32,
)


SOFTWARE_PLATFORM = "software-only"


def _trust(
    binding: bytes, policy_hash: str | None = None, trust_roots: tuple[bytes, ...] = ()
) -> TrustInputs:
    return TrustInputs(
        binding=binding,
        at=datetime.now(UTC),
        trust_roots=trust_roots,
        policy_hash=policy_hash,
        gateway_digest=FACTS.gateway_digest if policy_hash is not None else None,
    )


@dataclass(frozen=True)
class PinnedEvidence:
    """Evidence and what an auditor gives to verify it, so that it is hardware-attested."""

    evidence: Mapping[str, Any]
    trust: TrustInputs
    # Lists of independent items a real host may give fewer of (see cmcp_cli.testing.tamper).
    independent_lists: frozenset[tuple[str | int, ...]] = frozenset()


@dataclass(frozen=True)
class Collected:
    """One evidence item a collector returned: the platform's, or one device's."""

    evidence_type: str
    evidence: Mapping[str, Any]
    platform: str | None  # the platform's evidence states it; a device's does not
    measurement: str | None


def _collector(spec: ProviderSpec) -> Collector | DeviceCollector:
    if spec.scope is ProviderScope.DEVICE:
        return spec.load_device_collector()
    return spec.load_collector()


class ProviderContract:
    @pytest.fixture
    def provider_spec(self) -> ProviderSpec:
        raise NotImplementedError("override the provider_spec fixture in your test class")

    @pytest.fixture
    def provider_settings(self) -> Mapping[str, Any]:
        """The provider's config section for the collector tests (override to point it at
        a test device, such as a software TPM)."""
        return {}

    @pytest.fixture
    def collected_trust_roots(self) -> tuple[bytes, ...]:
        """The PEM roots the collector's own evidence verifies to (override for a test
        device whose evidence chains to a test root rather than the vendor's)."""
        return ()

    def test_declaration(self, provider_spec: ProviderSpec) -> None:
        assert _NAME.fullmatch(provider_spec.name), "a provider name is lowercase, digits and -"
        if provider_spec.scope is ProviderScope.PLATFORM:
            assert provider_spec.platform in TRACE_PLATFORMS, (
                "platform must be a TRACE runtime.platform"
            )
        else:  # its devices' kind: the claim's runtime.platform stays the CPU's
            assert _NAME.fullmatch(provider_spec.platform), "a device platform is a lowercase name"
            assert provider_spec.platform != SOFTWARE_PLATFORM
        types = provider_spec.evidence_types
        assert types, "a provider verifies at least one evidence type"
        assert len(set(types)) == len(types)
        assert all(isinstance(t, str) and t for t in types)

    def test_parts_load_on_demand(self, provider_spec: ProviderSpec) -> None:
        collector = _collector(provider_spec)
        verifier = provider_spec.load_verifier()
        assert callable(getattr(collector, "detect", None))
        assert callable(getattr(collector, "collect", None))
        assert callable(getattr(verifier, "verify", None))
        if provider_spec.measurer is not None:
            assert callable(getattr(provider_spec.load_measurer(), "measure", None))

    def test_detection_is_an_answer_not_an_exception(
        self, provider_spec: ProviderSpec, provider_settings: Mapping[str, Any]
    ) -> None:
        detection = _collector(provider_spec).detect(provider_settings)
        assert isinstance(detection, Detection)
        assert detection.detail, "say why the hardware is or is not here"

    @pytest.mark.parametrize("garbage", GARBAGE, ids=lambda g: repr(g)[:30])
    def test_verifier_fails_closed_on_garbage(
        self, provider_spec: ProviderSpec, garbage: Any
    ) -> None:
        verdict = provider_spec.load_verifier().verify(garbage, _trust(b"\x00" * 32))
        assert isinstance(verdict, EvidenceVerdict)
        assert verdict.failed, "malformed evidence must fail a check"
        assert not verdict.hardware_attested

    def _collect(
        self, provider_spec: ProviderSpec, settings: Mapping[str, Any], binding: bytes
    ) -> tuple[Collected, ...]:
        collector = _collector(provider_spec)
        if not collector.detect(settings).present:
            pytest.skip("the provider's hardware is not present on this machine")
        try:
            collector.prepare(FACTS, settings)
            if provider_spec.scope is ProviderScope.DEVICE:
                devices = cast(DeviceCollector, collector)
                return tuple(
                    Collected(item.evidence_type, item.evidence, None, None)
                    for item in devices.collect(binding, settings)
                )
            evidence = cast(Collector, collector).collect(binding, settings)
            return (
                Collected(
                    evidence.evidence_type,
                    evidence.evidence,
                    evidence.platform,
                    evidence.measurement,
                ),
            )
        finally:
            collector.close()

    def test_collected_evidence_is_hashable_json(
        self, provider_spec: ProviderSpec, provider_settings: Mapping[str, Any]
    ) -> None:
        collected = self._collect(provider_spec, provider_settings, bytes(range(32)))
        assert collected, "a collector that detects its hardware returns its evidence"
        for evidence in collected:
            assert evidence.evidence_type in provider_spec.evidence_types
            if provider_spec.scope is ProviderScope.PLATFORM:
                assert evidence.platform == provider_spec.platform
                assert evidence.measurement is not None
                assert _DIGEST.fullmatch(evidence.measurement)
            canonical_bytes(dict(evidence.evidence))  # no floats, nothing unserialisable

    def test_own_evidence_verifies_and_a_wrong_binding_fails(
        self,
        provider_spec: ProviderSpec,
        provider_settings: Mapping[str, Any],
        collected_trust_roots: tuple[bytes, ...],
    ) -> None:
        binding = bytes(range(32))
        verifier = provider_spec.load_verifier()
        roots = collected_trust_roots
        for evidence in self._collect(provider_spec, provider_settings, binding):
            good = verifier.verify(evidence.evidence, _trust(binding, FACTS.bundle_hash, roots))
            assert not good.failed, [c for c in good.checks if c.status is CheckStatus.FAIL]
            wrong = verifier.verify(evidence.evidence, _trust(bytes(32), None, roots))
            assert wrong.failed and not wrong.hardware_attested

    @pytest.fixture
    def pinned_evidence(
        self,
        provider_spec: ProviderSpec,
        provider_settings: Mapping[str, Any],
        collected_trust_roots: tuple[bytes, ...],
    ) -> PinnedEvidence:
        """The collector's own evidence (a device provider's first device's) with the
        contract's pins (skips where the hardware is not here); override with evidence and
        the auditor's pins that verify it everywhere."""
        binding = bytes(range(32))
        first = self._collect(provider_spec, provider_settings, binding)[0]
        trust = _trust(binding, FACTS.bundle_hash, collected_trust_roots)
        return PinnedEvidence(first.evidence, trust)

    def test_pinned_evidence_verifies(
        self, provider_spec: ProviderSpec, pinned_evidence: PinnedEvidence
    ) -> None:
        verdict = provider_spec.load_verifier().verify(
            pinned_evidence.evidence, pinned_evidence.trust
        )
        assert not verdict.failed, [c for c in verdict.checks if c.status is CheckStatus.FAIL]
        software = provider_spec.platform == SOFTWARE_PLATFORM
        assert verdict.hardware_attested is not software, verdict.checks

    def test_every_changed_leaf_of_the_evidence_fails(
        self, provider_spec: ProviderSpec, pinned_evidence: PinnedEvidence
    ) -> None:
        verifier = provider_spec.load_verifier()
        trust = pinned_evidence.trust
        genuine = verifier.verify(pinned_evidence.evidence, trust)
        assert not genuine.failed, "the pinned evidence must verify (test_pinned_evidence_verifies)"
        wrong: list[str] = []
        count = 0
        for tampering in tamperings(pinned_evidence.evidence):
            count += 1
            verdict = verifier.verify(tampering.evidence, trust)
            independent = (
                tampering.change == REMOVED and tampering.path in pinned_evidence.independent_lists
            )
            judge = same_outcome if independent else tamper_problems
            wrong.extend(f"{tampering}: {p}" for p in judge(genuine, verdict))
        assert count, "the evidence has no leaf to change"
        assert not wrong, f"{len(wrong)} problem(s) in {count} tamperings:\n" + "\n".join(wrong)
