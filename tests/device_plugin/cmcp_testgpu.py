"""A device provider of the test tree (`ProviderScope.DEVICE`), installed as a real plugin
into a temporary site (tests/device_support.py): "GPUs" that sign, with a test Ed25519
device key, their index, name and firmware with the requester's nonce (the binding). Its
verifier pins that key's public half, as a real one pins a vendor root, so the core is
tested with device evidence that verifies, or fails named checks, without any vendor's
plugin.

A platform provider (`testtee`) of the same kind rides along, so a claim whose CPU
evidence is hardware-attested (to this test key) can be built too.

Settings (`attestation.providers.testgpu`): `devices` (how many GPUs are here, default 0:
none detected), `fail_prepare` (a message prepare refuses with), `fail_marker` (a file
whose existence makes collection fail, as a GPU that fell off the bus).
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cmcp_cli.attestation import api
from cmcp_cli.attestation.api import (
    Detection,
    DeviceEvidence,
    Evidence,
    EvidenceVerdict,
    GatewayFacts,
    ProviderError,
    ProviderScope,
    ProviderSpec,
    TrustInputs,
)
from cmcp_cli.attestation.hookspecs import provide
from cmcp_cli.attestation.toolkit import (
    CheckFailed,
    CheckSkipped,
    canonical_base64,
    hardware_verdict,
    run_checks,
    settings_section,
)
from cmcp_cli.claim.canonical import canonical_bytes

# The test device key: its seed is public, it attests nothing outside these tests.
DEVICE_KEY = Ed25519PrivateKey.from_private_bytes(hashlib.sha256(b"cmcp test gpu key").digest())
PINNED = DEVICE_KEY.public_key()
GPU_TYPE = "test-gpu-v1"
TEE_TYPE = "test-tee-v1"
FIRMWARE = "1.2.3"
TEE_MEASUREMENT = "sha256:" + hashlib.sha256(b"test tee").hexdigest()
_SETTINGS = ("devices", "fail_prepare", "fail_marker")


def _settings(settings: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    return settings_section(
        settings, section=f"attestation.providers.{name}", accepted=_SETTINGS, provider=name
    )


def _count(settings: Mapping[str, Any]) -> int:
    devices = settings.get("devices", 0)
    return devices if type(devices) is int and devices > 0 else 0


def _signed(body: dict[str, Any]) -> dict[str, Any]:
    signature = DEVICE_KEY.sign(canonical_bytes(body))
    return {**body, "signature": base64.b64encode(signature).decode()}


class _Collecting:
    name = "testgpu"

    def detect(self, settings: Mapping[str, Any]) -> Detection:
        count = _count(settings)
        if count:
            return Detection(True, f"{count} test GPU(s) in confidential-computing mode")
        return Detection(False, "no test GPU here (attestation.providers.testgpu.devices is 0)")

    def prepare(self, facts: GatewayFacts, settings: Mapping[str, Any]) -> None:
        del facts  # a test GPU measures nothing of the gateway
        checked = _settings(settings, self.name)
        if checked.get("fail_prepare"):
            raise ProviderError(
                f"the test GPU refuses: {checked['fail_prepare']}",
                hint="remove attestation.providers.testgpu.fail_prepare",
            )

    def _check_bus(self, settings: Mapping[str, Any]) -> None:
        marker = settings.get("fail_marker")
        if isinstance(marker, str) and Path(marker).exists():
            raise ProviderError("test GPU 0 fell off the bus", hint="reseat the test GPU")

    def close(self) -> None:
        pass


class GpuCollector(_Collecting, api.DeviceCollector):
    def collect(self, binding: bytes, settings: Mapping[str, Any]) -> tuple[DeviceEvidence, ...]:
        self._check_bus(settings)
        return tuple(
            DeviceEvidence(
                device=f"GPU {index} (Test GPU)",
                evidence_type=GPU_TYPE,
                evidence=_signed(
                    {
                        "index": index,
                        "name": "Test GPU",
                        "firmware": FIRMWARE,
                        "nonce": binding.hex(),
                    }
                ),
            )
            for index in range(_count(settings))
        )


class TeeCollector(_Collecting, api.Collector):
    name = "testtee"

    def collect(self, binding: bytes, settings: Mapping[str, Any]) -> Evidence:
        self._check_bus(settings)
        evidence = _signed({"measurement": TEE_MEASUREMENT, "nonce": binding.hex()})
        return Evidence(TEE_TYPE, evidence, "arm-cca", TEE_MEASUREMENT)


class _Verifying:
    prefix = "testgpu"

    def verify(self, evidence: Mapping[str, Any], trust: TrustInputs) -> EvidenceVerdict:
        body: dict[str, Any] = {}

        def shape() -> str:
            if not isinstance(evidence, Mapping) or not isinstance(evidence.get("nonce"), str):
                raise CheckFailed("the evidence is not an object with a nonce")
            body.update({k: v for k, v in evidence.items() if k != "signature"})
            return "an object with a nonce and a signature"

        def signature() -> str:
            if not body:
                raise CheckSkipped(f"{self.prefix}.format failed")
            try:
                raw = canonical_base64(evidence.get("signature"), "signature")
                PINNED.verify(raw, canonical_bytes(body))
            except (ValueError, InvalidSignature) as exc:
                raise CheckFailed(f"not signed by the pinned test device key ({exc!r})") from None
            return "Ed25519 by the pinned test device key"

        def nonce() -> str:
            if not body:
                raise CheckSkipped(f"{self.prefix}.format failed")
            if body["nonce"] != trust.binding.hex():
                raise CheckFailed("the nonce is not the claim's binding")
            return "the nonce is the claim's binding"

        names = [f"{self.prefix}.{n}" for n in ("format", "signature", "nonce")]
        checks = run_checks(zip(names, (shape, signature, nonce), strict=True))
        measurement = body.get("measurement") if isinstance(body.get("measurement"), str) else None
        return hardware_verdict(checks, names, measurement)


class GpuVerifier(_Verifying, api.Verifier):
    pass


class TeeVerifier(_Verifying, api.Verifier):
    prefix = "testtee"


GPU_SPEC = ProviderSpec(
    name="testgpu",
    platform="test-gpu",
    evidence_types=(GPU_TYPE,),
    collector=f"{__name__}:GpuCollector",
    verifier=f"{__name__}:GpuVerifier",
    description="test GPUs signing with a test device key",
    scope=ProviderScope.DEVICE,
)
TEE_SPEC = ProviderSpec(
    name="testtee",
    platform="arm-cca",
    evidence_types=(TEE_TYPE,),
    collector=f"{__name__}:TeeCollector",
    verifier=f"{__name__}:TeeVerifier",
    description="a test TEE signing with the test device key",
)


class Plugin:
    cmcp_attestation_providers = staticmethod(provide(GPU_SPEC, TEE_SPEC))


plugin = Plugin()
