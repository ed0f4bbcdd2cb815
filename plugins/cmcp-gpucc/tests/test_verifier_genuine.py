"""Every genuine NVIDIA evidence vector in the shared attestation vectors, judged offline as
their MANIFEST.md states: each parses to the stated nonce, opaque length, versions and
signed length; each genuine report is signed by the leaf of its chain, which runs to the
pinned NVIDIA Device Identity CA; the architecture comes from that chain; a genuine report
fails only `gpu.nonce` against another binding (no public RIM matches it, so the appraisal
checks are skipped); the invalid-signature report fails `gpu.signature` alone."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from cmcp_cli.attestation.api import CheckStatus, EvidenceVerdict, TrustInputs
from cmcp_cli.testing.verdicts import assert_fails, reason, statuses
from cmcp_gpucc import opaque, roots, spdm, synthetic
from cmcp_gpucc.evidence import encode
from cmcp_gpucc.verifier import GpuVerifier

Genuine = tuple[bytes, tuple[x509.Certificate, ...]]
Load = Callable[[str], Genuine]
AT = datetime(2026, 12, 1, tzinfo=UTC)
NVAT_NONCE = "931d8dd0add203ac3d8b4fbde75e115278eefcdceac5b87671a748f32364dfcb"
ALL_CHECKS = (
    "gpu.format", "gpu.signature", "gpu.chain", "gpu.nonce", "gpu.architecture", "gpu.fwid",
    "gpu.versions", "gpu.versions.minimum", "gpu.rim.driver", "gpu.rim.vbios",
    "gpu.measurements", "gpu.rims.pinned", "gpu.revocation", "gpu.debug",
)  # fmt: skip
# name: (requester nonce, opaque bytes, driver, VBIOS, signed bytes, total bytes, chip,
#        leaf serial start, leaf serial end), as MANIFEST.md states them.
FACTS = {
    "nvlgv-hopper": (NVAT_NONCE, 422, "550.90.07", "96.00.9F.00.01", 4021, 4117, "GH100", "53c22ba1", "5771"),
    "blackwell": (NVAT_NONCE, 426, "575.32", "97.00.88.00.0F", 4025, 4121, "GB100", "530d7c3c", "9059"),
    "hopper-590": ("e97b23a1718095a0e9e35edca810768c70a6a5a389b705e753b197912bc11576", 579, "590.12", "96.00.A5.00.01", 4178, 4274, "GH100", "510312ea", "466b"),
    "hopper-535": ("27a328247bf7935c993341cf587be6f05986ccce4fe7ba2c54100bd616a58f66", 357, "535.86.09", "96.00.5E.00.01", 3956, 4052, "GH100", "455472bb", "ed92"),
    "hopper-570": (NVAT_NONCE, 423, "570.124.03", "96.00.5E.00.04", 4022, 4118, "GH100", "59dd857a", "94dd"),
    "invalid-signature": (NVAT_NONCE, 567, "560.00", "96.00.A5.00.01", 4166, 4262, "GH100", "59dd857a", "94dd"),
}  # fmt: skip
VALID = ("nvlgv-hopper", "blackwell", "hopper-590", "hopper-535", "hopper-570")
ARCHITECTURE = {"GH100": "NVIDIA Hopper (GH100)", "GB100": "NVIDIA Blackwell (GB100)"}


def trust(binding: bytes = bytes(32), **changes: Any) -> TrustInputs:
    values: dict[str, Any] = {"binding": binding, "at": AT, **changes}
    return TrustInputs(**values)


def evidence(report: bytes, chain: tuple[x509.Certificate, ...]) -> dict[str, Any]:
    """The evidence the collector writes for this report: NVML agreeing with what it signed."""
    return synthetic.evidence(report, chain, nvml_said=synthetic.nvml_of(report))


def verify(
    report: bytes, chain: tuple[x509.Certificate, ...], binding: bytes = bytes(32)
) -> EvidenceVerdict:
    return GpuVerifier().verify(evidence(report, chain), trust(binding))


@pytest.mark.parametrize("name", sorted(FACTS))
def test_each_report_parses_to_the_stated_facts(genuine: Load, name: str) -> None:
    nonce, opaque_size, driver, vbios, signed, total, chip, first, last = FACTS[name]
    report, chain = genuine(name)
    exchange = spdm.parse(report)
    data = opaque.parse(exchange.opaque)
    assert report[:4] == bytes([0x11, 0xE0, 0x01, 0xFF]) and report[36] == 0
    assert exchange.requester_nonce.hex() == nonce
    assert len(exchange.opaque) == opaque_size
    assert (data.driver_version, data.vbios_version) == (driver, vbios)
    assert (len(exchange.signed), len(report)) == (signed, total)
    assert sorted(exchange.blocks) == list(range(1, 65))
    assert all(
        len(block.value) == 48 and block.value_type == 1 for block in exchange.blocks.values()
    )
    serial = f"{chain[0].serial_number:x}"
    assert serial.startswith(first) and serial.endswith(last)
    assert len(chain) == 5 and chip in chain[0].subject.rfc4514_string()


def test_the_590_report_states_its_newer_opaque_fields(genuine: Load) -> None:
    data = opaque.parse(spdm.parse(genuine("hopper-590")[0]).opaque)
    assert {20, 21, 22, 34, 36} <= set(data.fields)
    assert len(data.fields[22]) == 144
    assert data.mode == "ppcie" and data.opaque_version == 1
    # The 535 driver predates the FWID field: nothing to compare, so gpu.fwid skips.
    assert opaque.parse(spdm.parse(genuine("hopper-535")[0]).opaque).fwid is None


@pytest.mark.parametrize("name", VALID)
def test_genuine_evidence_fails_only_the_nonce(genuine: Load, name: str) -> None:
    report, chain = genuine(name)
    verdict = verify(report, chain)
    assert tuple(c.name for c in verdict.checks) == ALL_CHECKS
    assert [c.name for c in verdict.checks if c.status is CheckStatus.FAIL] == ["gpu.nonce"]
    status = statuses(verdict)
    for passed in (
        "gpu.format",
        "gpu.signature",
        "gpu.chain",
        "gpu.architecture",
        "gpu.versions",
        "gpu.debug",
    ):
        assert status[passed] is CheckStatus.PASS, (passed, reason(verdict, passed))
    expected_fwid = CheckStatus.SKIP if name == "hopper-535" else CheckStatus.PASS
    assert status["gpu.fwid"] is expected_fwid, reason(verdict, "gpu.fwid")
    for skipped in ("gpu.rim.driver", "gpu.rim.vbios", "gpu.measurements", "gpu.revocation"):
        assert status[skipped] is CheckStatus.SKIP, (skipped, reason(verdict, skipped))
    assert "another session" in reason(verdict, "gpu.nonce")
    assert not verdict.hardware_attested and verdict.measurement is None


@pytest.mark.parametrize("name", VALID)
def test_genuine_evidence_over_its_own_nonce_is_not_attested_without_rims(
    genuine: Load, name: str
) -> None:
    report, chain = genuine(name)
    verdict = verify(report, chain, spdm.parse(report).requester_nonce)
    assert not verdict.failed, verdict.checks
    assert not verdict.hardware_attested
    assert "No driver RIM is stapled" in reason(verdict, "gpu.rim.driver")
    assert "Not checked" in reason(verdict, "gpu.revocation")


@pytest.mark.parametrize("name", VALID)
def test_the_architecture_comes_from_the_pinned_chain(genuine: Load, name: str) -> None:
    report, chain = genuine(name)
    verdict = verify(report, chain)
    chip = FACTS[name][6]
    assert reason(verdict, "gpu.architecture").startswith(ARCHITECTURE[chip] + ":")
    pinned = roots.PINNED[roots.DEVICE_ROOT_FILE]
    assert pinned in reason(verdict, "gpu.chain")
    assert chain[-1].public_bytes(Encoding.DER) == roots.vendored().device[0].cert.public_bytes(
        Encoding.DER
    )


def test_the_invalid_signature_report_fails_the_signature_alone(genuine: Load) -> None:
    report, chain = genuine("invalid-signature")
    verdict = verify(report, chain, spdm.parse(report).requester_nonce)
    assert [c.name for c in verdict.checks if c.status is CheckStatus.FAIL] == ["gpu.signature"]
    assert_fails(verdict, "gpu.signature", "does not verify", "GH100 A01 GSP FMC LF")
    assert statuses(verdict)["gpu.chain"] is CheckStatus.PASS
    # The FWID of an unauthenticated report says nothing: skipped, naming the failure.
    assert "gpu.signature" in reason(verdict, "gpu.fwid")
    # Nor does its nonce or versions, though they hold: never a pass on unsigned content.
    for name in ("gpu.nonce", "gpu.versions"):
        assert statuses(verdict)[name] is CheckStatus.SKIP
        assert "the report is not authenticated (see gpu.signature)" in reason(verdict, name)


@pytest.mark.parametrize("chain_of", ["nvlgv-hopper", "hopper-590", "hopper-535", "hopper-570"])
def test_the_invalid_signature_report_verifies_with_no_hopper_leaf(
    genuine: Load, chain_of: str
) -> None:
    report, _ = genuine("invalid-signature")
    verdict = verify(report, genuine(chain_of)[1])
    assert_fails(verdict, "gpu.signature", "does not verify")


def test_a_report_with_another_gpus_chain_fails_the_signature(genuine: Load) -> None:
    report, _ = genuine("hopper-535")
    verdict = verify(report, genuine("hopper-570")[1], spdm.parse(report).requester_nonce)
    assert [c.name for c in verdict.checks if c.status is CheckStatus.FAIL] == ["gpu.signature"]


def test_one_flipped_nonce_byte_of_the_blackwell_report_fails_the_signature(
    genuine: Load,
) -> None:
    report, chain = genuine("blackwell")
    changed = bytearray(report)
    changed[4] ^= 0x01  # the first byte of the requester nonce
    verdict = verify(bytes(changed), chain, spdm.parse(report).requester_nonce)
    assert_fails(verdict, "gpu.signature", "does not verify")
    assert_fails(verdict, "gpu.nonce", "is not the session binding")


def test_the_chain_is_judged_at_the_claim_time(genuine: Load) -> None:
    report, chain = genuine("nvlgv-hopper")
    doc = evidence(report, chain)
    before = GpuVerifier().verify(doc, trust(at=datetime(2020, 10, 16, tzinfo=UTC)))
    assert_fails(before, "gpu.chain", "not valid until", "2020-10-16")
    later = GpuVerifier().verify(doc, trust(at=datetime(2090, 1, 1, tzinfo=UTC)))
    assert statuses(later)["gpu.chain"] is CheckStatus.PASS


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        (lambda c: c[:4], "has 4 certificate(s)"),
        (lambda c: (*c, c[-1]), "has 6 certificate(s)"),
        (lambda c: (c[0], c[2], c[1], c[3], c[4]), "was not issued by"),
        (lambda c: (c[1], c[0], c[2], c[3], c[4]), "CA certificate"),
        (lambda c: (c[0], c[1], c[2], c[3], c[3]), "was not issued by"),
    ],
    ids=["root missing", "extra certificate", "reordered", "leaf not first", "root replaced"],
)
def test_a_chain_with_missing_extra_or_misplaced_certificates_fails(
    genuine: Load,
    change: Callable[[tuple[x509.Certificate, ...]], tuple[x509.Certificate, ...]],
    fragment: str,
) -> None:
    report, chain = genuine("hopper-570")
    verdict = verify(report, change(chain), spdm.parse(report).requester_nonce)
    assert_fails(verdict, "gpu.chain", fragment)
    assert "gpu.chain" in reason(verdict, "gpu.architecture")


def test_only_the_auditors_roots_are_trusted_when_given(
    genuine: Load, device_pki: synthetic.DevicePki
) -> None:
    report, chain = genuine("blackwell")
    verdict = GpuVerifier().verify(
        evidence(report, chain), trust(trust_roots=(device_pki.root_pem(),))
    )
    assert_fails(verdict, "gpu.chain", "not a pinned root", "given with --trust-root")


def test_nvml_versions_must_agree_with_the_signed_ones(genuine: Load) -> None:
    report, chain = genuine("hopper-570")
    for member, said in (("driver_version", "570.124.04"), ("vbios_version", "96.00.5e.00.04")):
        said_by_nvml = synthetic.nvml_of(report, **{member: said})
        doc = synthetic.evidence(report, chain, nvml_said=said_by_nvml)
        verdict = GpuVerifier().verify(doc, trust(spdm.parse(report).requester_nonce))
        assert_fails(verdict, "gpu.versions", repr(said), "is not the signed")


def test_the_evidence_must_carry_the_chain_as_der(genuine: Load) -> None:
    report, chain = genuine("hopper-570")
    doc = evidence(report, chain)
    doc["certificates"][1] = encode(chain[1].public_bytes(Encoding.PEM))
    verdict = GpuVerifier().verify(doc, trust())
    assert_fails(verdict, "gpu.format", "not DER X.509")
