"""Genuine NVIDIA RIMs stapled to genuine reports, judged by the verifier at the times
MANIFEST.md states: a validly signed RIM passes only while its signer is valid and only for
the version the GPU signed; every negative RIM fails the RIM check that names it; and with
a synthetic driver RIM beside the genuine VBIOS RIM, the 535 report's measurements differ at
exactly VBIOS RIM index 9, as the appraisal table of MANIFEST.md says."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from cmcp_cli.attestation.api import CheckStatus, EvidenceVerdict, TrustInputs
from cmcp_cli.testing.verdicts import assert_fails, reason, statuses
from cmcp_gpucc import roots, spdm, synthetic
from cmcp_gpucc.rim_signing import RimPki, rim_from_blocks
from cmcp_gpucc.verifier import GpuVerifier

Load = Callable[[str], tuple[bytes, tuple[x509.Certificate, ...]]]
BEFORE_VBIOS_SIGNER_EXPIRY = datetime(2025, 6, 1, tzinfo=UTC)  # VBIOS signer ends 2025-12-12
AT = datetime(2026, 12, 1, tzinfo=UTC)
VBIOS_5E01 = "nvat-rim-NV_GPU_VBIOS_1010_0200_882_96005E0001_measurement_mismatch.xml"
DRIVER_550 = "nvat-rim-NV_GPU_DRIVER_GH100_550.144.03.xml"


def judge(
    genuine: Load,
    name: str,
    rims: dict[str, bytes],
    at: datetime,
    extra_roots: tuple[bytes, ...] = (),
) -> EvidenceVerdict:
    report, chain = genuine(name)
    evidence = synthetic.evidence(report, chain, nvml_said=synthetic.nvml_of(report), rims=rims)
    trust_roots: tuple[bytes, ...] = ()
    if extra_roots:  # the auditor names NVIDIA's two roots and the test root
        vendored = roots.vendored()
        nvidia = [a.cert.public_bytes(Encoding.PEM) for a in (*vendored.device, *vendored.rim)]
        trust_roots = (*nvidia, *extra_roots)
    binding = spdm.parse(report).requester_nonce
    return GpuVerifier().verify(evidence, TrustInputs(binding, at, trust_roots=trust_roots))


def xml(vectors: Path, name: str) -> bytes:
    return (vectors / name).read_bytes()


def test_a_validly_signed_vbios_rim_passes_while_its_signer_is_valid(
    genuine: Load, vectors: Path
) -> None:
    rims = {"vbios": xml(vectors, VBIOS_5E01)}
    before = judge(genuine, "hopper-535", rims, BEFORE_VBIOS_SIGNER_EXPIRY)
    assert statuses(before)["gpu.rim.vbios"] is CheckStatus.PASS, reason(before, "gpu.rim.vbios")
    assert "NVIDIA CoRIM signing Root CA" in reason(before, "gpu.rim.vbios")
    assert "gpu.rim.driver" in reason(before, "gpu.measurements")
    after = judge(genuine, "hopper-535", rims, AT)
    assert_fails(after, "gpu.rim.vbios", "expired", "2025-12-12")


def test_a_rim_for_another_version_fails(genuine: Load, vectors: Path) -> None:
    vbios = judge(
        genuine, "hopper-570", {"vbios": xml(vectors, VBIOS_5E01)}, BEFORE_VBIOS_SIGNER_EXPIRY
    )
    assert_fails(vbios, "gpu.rim.vbios", "VBIOS 96.00.5E.00.01", "GPU signed VBIOS 96.00.5E.00.04")
    driver = judge(genuine, "nvlgv-hopper", {"driver": xml(vectors, DRIVER_550)}, AT)
    assert_fails(driver, "gpu.rim.driver", "driver 550.144.03", "GPU signed driver 550.90.07")


def test_the_genuine_driver_rim_expires_with_its_signer(genuine: Load, vectors: Path) -> None:
    verdict = judge(
        genuine,
        "nvlgv-hopper",
        {"driver": xml(vectors, DRIVER_550)},
        datetime(2026, 12, 31, tzinfo=UTC),
    )
    assert_fails(verdict, "gpu.rim.driver", "expired", "2026-12-30")


def test_each_negative_rim_fails_its_check(genuine: Load, vectors: Path) -> None:
    cases = (
        ("nvlgv-hopper", "driver", "nvat-rim-NV_GPU_DRIVER_GH100_550.144.03-bad-signature.xml", AT, "does not verify"),
        ("hopper-535", "driver", "nvat-rim-NV_GPU_DRIVER_GH100_535.86.09_measurement_mismatch.xml", AT, "reference digest"),
        ("hopper-570", "driver", "nvat-rim-NV_GPU_DRIVER_GH100_570.124.03_expired.xml", AT, "expired"),
        ("blackwell", "vbios", "nvat-rim-GB100-VBIOS-97.00.83.00.09-debug-root.xml", AT, "pinned NVIDIA CoRIM signing root"),
        ("hopper-590", "vbios", "nvat-rim-NV_SWITCH_BIOS_5612_0002_890_9610550001.xml", datetime(2026, 6, 1, tzinfo=UTC), "not a GPU VBIOS RIM"),
        ("hopper-590", "vbios", "nvat-rim-NV_SWITCH_BIOS_5612_0002_890_9610550001_invalid_signature.xml", datetime(2026, 1, 1, tzinfo=UTC), "reference digest"),
        ("hopper-535", "vbios", "nvat-rim-NV_SWITCH_BIOS_5612_0002_890_9610550001_measurement_mismatch.xml", BEFORE_VBIOS_SIGNER_EXPIRY, "reference digest"),
        ("hopper-535", "vbios", DRIVER_550, BEFORE_VBIOS_SIGNER_EXPIRY, "not a GPU VBIOS RIM"),
    )  # fmt: skip
    for report, kind, name, at, fragment in cases:
        verdict = judge(genuine, report, {kind: xml(vectors, name)}, at)
        assert_fails(verdict, f"gpu.rim.{kind}", fragment)
        assert [c.name for c in verdict.checks if c.status is CheckStatus.FAIL] == [
            f"gpu.rim.{kind}"
        ], name


def test_the_535_report_differs_from_the_genuine_vbios_rim_at_index_9(
    genuine: Load, vectors: Path, rim_pki: RimPki
) -> None:
    report, _ = genuine("hopper-535")
    blocks = dict(spdm.parse(report).digests())
    driver = rim_pki.sign(rim_from_blocks(blocks, synthetic.DRIVER_INDICES, version="535.86.09"))
    rims = {"driver": driver, "vbios": xml(vectors, VBIOS_5E01)}
    test_root = rim_pki.root.cert.public_bytes(Encoding.PEM)
    verdict = judge(genuine, "hopper-535", rims, BEFORE_VBIOS_SIGNER_EXPIRY, (test_root,))
    assert statuses(verdict)["gpu.rim.driver"] is CheckStatus.PASS
    assert statuses(verdict)["gpu.rim.vbios"] is CheckStatus.PASS
    assert_fails(verdict, "gpu.measurements", "VBIOS RIM index(es) 9 do not match")
    assert "driver RIM" not in reason(verdict, "gpu.measurements")
    assert [c.name for c in verdict.checks if c.status is CheckStatus.FAIL] == ["gpu.measurements"]
