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
whose existence makes collection fail, as a GPU that fell off the bus), `signer` (a text
whose SHA-256 seeds the Ed25519 key that signs instead of the test device key).

Roots, as a real plugin's: the verifiers pin the test device key unless the auditor names
PEM public keys, which then replace it. `testtee` (a CPU platform) takes them from
`--trust-root` (TrustInputs.trust_roots); `testgpu` (a device) from its platform-policy
table, `[testgpu] trust_roots = ["gpu.pem"]`, a relative path taken from the policy file's
folder, and from TrustInputs.trust_roots only when that key is absent.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import load_pem_public_key

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
    read_policy_file,
    run_checks,
    settings_section,
)
from cmcp_cli.claim.canonical import canonical_bytes


def signing_key(seed: str) -> Ed25519PrivateKey:
    """The Ed25519 key whose seed is the SHA-256 of `seed`."""
    return Ed25519PrivateKey.from_private_bytes(hashlib.sha256(seed.encode()).digest())


# The test device key: its seed is public, it attests nothing outside these tests.
DEVICE_KEY = signing_key("cmcp test gpu key")
PINNED = DEVICE_KEY.public_key()
GPU_TYPE = "test-gpu-v1"
TEE_TYPE = "test-tee-v1"
FIRMWARE = "1.2.3"
TEE_MEASUREMENT = "sha256:" + hashlib.sha256(b"test tee").hexdigest()
_SETTINGS = ("devices", "fail_prepare", "fail_marker", "signer")


def _settings(settings: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    return settings_section(
        settings, section=f"attestation.providers.{name}", accepted=_SETTINGS, provider=name
    )


def _count(settings: Mapping[str, Any]) -> int:
    devices = settings.get("devices", 0)
    return devices if type(devices) is int and devices > 0 else 0


def _signed(body: dict[str, Any], settings: Mapping[str, Any]) -> dict[str, Any]:
    seed = settings.get("signer")
    key = signing_key(seed) if isinstance(seed, str) else DEVICE_KEY
    signature = key.sign(canonical_bytes(body))
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
                    },
                    settings,
                ),
            )
            for index in range(_count(settings))
        )


class TeeCollector(_Collecting, api.Collector):
    name = "testtee"

    def collect(self, binding: bytes, settings: Mapping[str, Any]) -> Evidence:
        self._check_bus(settings)
        evidence = _signed({"measurement": TEE_MEASUREMENT, "nonce": binding.hex()}, settings)
        return Evidence(TEE_TYPE, evidence, "arm-cca", TEE_MEASUREMENT)


def _public_keys(pems: tuple[bytes, ...]) -> list[Ed25519PublicKey]:
    keys = [load_pem_public_key(pem) for pem in pems]
    if not all(isinstance(key, Ed25519PublicKey) for key in keys):
        raise ProviderError("a test root is not an Ed25519 public key")
    return [key for key in keys if isinstance(key, Ed25519PublicKey)]


class _Verifying:
    prefix = "testgpu"

    def pinned(self, trust: TrustInputs) -> tuple[list[Ed25519PublicKey], str]:
        """The keys that may sign, and where they were given."""
        if trust.trust_roots:
            return _public_keys(trust.trust_roots), "--trust-root"
        return [PINNED], "the pinned test device key"

    def verify(self, evidence: Mapping[str, Any], trust: TrustInputs) -> EvidenceVerdict:
        body: dict[str, Any] = {}
        keys, source = self.pinned(trust)

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
            except ValueError as exc:
                raise CheckFailed(f"the signature is unusable ({exc})") from None
            for key in keys:
                try:
                    key.verify(raw, canonical_bytes(body))
                except InvalidSignature:
                    continue
                return f"Ed25519 by a key of {source}"
            raise CheckFailed(f"not signed by a key of {source}")

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
    def pinned(self, trust: TrustInputs) -> tuple[list[Ed25519PublicKey], str]:
        named = trust.platform_policy.get("trust_roots")
        if named is None:
            return super().pinned(trust)
        if not isinstance(named, list) or not all(isinstance(n, str) for n in named):
            raise ProviderError("[testgpu] trust_roots must be a list of PEM file paths")
        what = "[testgpu] trust_roots"
        pems = tuple(read_policy_file(name, trust.platform_policy_dir, what)[1] for name in named)
        return _public_keys(pems), what


class TeeVerifier(_Verifying, api.Verifier):
    prefix = "testtee"


GPU_SPEC = ProviderSpec(
    name="testgpu",
    platform="test-gpu",
    evidence_types=(GPU_TYPE,),
    collector=f"{__name__}:GpuCollector",
    verifier=f"{__name__}:GpuVerifier",
    description="test GPUs signing with a test device key",
    platform_policy_keys=("trust_roots",),
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
