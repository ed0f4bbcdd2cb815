"""Synthetic GPU evidence signed under test roots: a report over our binding from a device
chain shaped like NVIDIA's, RIMs that match it and OCSP responses for every certificate,
signed by `cmcp_gpucc.rim_signing`. It is hardware-attested, and only so: without OCSP only
when the auditor's policy allows unchecked revocation; a flipped byte in any signed region
fails the signature (and the check that reads it); every other negative fails the check
that names it. Roots named by the policy's `[gpu-cc] trust_roots` (relative to its folder)
replace the vendored ones for both chains."""

from __future__ import annotations

import dataclasses
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding

from cmcp_cli.attestation.api import CheckStatus, ProviderError, TrustInputs
from cmcp_cli.testing.verdicts import assert_fails, reason, statuses
from cmcp_gpucc import rim, spdm, synthetic
from cmcp_gpucc.evidence import encode
from cmcp_gpucc.rim_signing import AT, RimPki, good_responses, ocsp_response, rim_from_blocks
from cmcp_gpucc.synthetic import DevicePki, ReportFields
from cmcp_gpucc.verifier import HARDWARE_CHECKS, GpuVerifier

BINDING = bytes(range(32))


def rims(rim_pki: RimPki, blocks: Any = None, **versions: str) -> dict[str, bytes]:
    blocks = blocks or synthetic.block_values()
    driver = versions.get("driver", synthetic.DRIVER)
    vbios = versions.get("vbios", synthetic.VBIOS_TEXT)
    return {
        "driver": rim_pki.sign(rim_from_blocks(blocks, synthetic.DRIVER_INDICES, version=driver)),
        "vbios": rim_pki.sign(rim_from_blocks(blocks, synthetic.VBIOS_INDICES, version=vbios)),
    }


def responses(device_pki: DevicePki, rim_pki: RimPki) -> list[bytes]:
    return good_responses(device_pki.ocsp_pairs) + rim_pki.responses()


def evidence(
    device_pki: DevicePki,
    rim_pki: RimPki,
    *,
    fields: ReportFields | None = None,
    staple_ocsp: bool = True,
    **changes: Any,
) -> dict[str, Any]:
    report = synthetic.report(device_pki, BINDING, fields)
    doc = synthetic.evidence(
        report,
        device_pki.chain,
        rims=rims(rim_pki),
        ocsp=responses(device_pki, rim_pki) if staple_ocsp else (),
    )
    doc.update(changes)
    return {key: value for key, value in doc.items() if value is not None}


def trust(device_pki: DevicePki, rim_pki: RimPki, **changes: Any) -> TrustInputs:
    pems = (device_pki.root_pem(), rim_pki.root.cert.public_bytes(Encoding.PEM))
    values: dict[str, Any] = {"binding": BINDING, "at": AT, "trust_roots": pems, **changes}
    return TrustInputs(**values)


def test_matching_rims_and_good_ocsp_are_hardware_attested(
    device_pki: DevicePki, rim_pki: RimPki
) -> None:
    verdict = GpuVerifier().verify(evidence(device_pki, rim_pki), trust(device_pki, rim_pki))
    status = statuses(verdict)
    assert all(status[name] is CheckStatus.PASS for name in HARDWARE_CHECKS), verdict.checks
    assert status["gpu.fwid"] is CheckStatus.PASS
    assert verdict.hardware_attested
    assert "index 35 left out" in reason(verdict, "gpu.measurements")
    assert "6 certificate(s) not revoked" in reason(verdict, "gpu.revocation")
    driver, vbios = (rim.parse_rim(xml) for xml in rims(rim_pki).values())
    assert verdict.measurement == rim.rim_set_measurement(driver, vbios)


def test_without_ocsp_it_is_attested_only_when_the_policy_allows(
    device_pki: DevicePki, rim_pki: RimPki
) -> None:
    doc = evidence(device_pki, rim_pki, staple_ocsp=False)
    strict = GpuVerifier().verify(doc, trust(device_pki, rim_pki))
    assert not strict.failed and not strict.hardware_attested
    assert statuses(strict)["gpu.revocation"] is CheckStatus.SKIP
    assert "allow_unchecked_revocation = true" in reason(strict, "gpu.revocation")
    allowed = trust(device_pki, rim_pki, platform_policy={"allow_unchecked_revocation": True})
    lenient = GpuVerifier().verify(doc, allowed)
    assert lenient.hardware_attested
    assert "Not checked" in reason(lenient, "gpu.revocation")
    assert "policy allows that" in reason(lenient, "gpu.revocation")


def test_a_revoked_or_missing_response_fails_revocation(
    device_pki: DevicePki, rim_pki: RimPki
) -> None:
    revoked = ocsp_response(
        device_pki.brom.cert,
        device_pki.provisioner.cert,
        device_pki.provisioner,
        status=__import__(
            "cryptography.x509.ocsp", fromlist=["OCSPCertStatus"]
        ).OCSPCertStatus.REVOKED,
    )
    good = responses(device_pki, rim_pki)
    for stapled, fragment in (
        (good[1:], "No stapled OCSP response covers"),
        ([revoked, *good[1:]], "revoked"),
    ):
        doc = evidence(device_pki, rim_pki)
        doc["ocsp"] = [encode(response) for response in stapled]
        assert_fails(
            GpuVerifier().verify(doc, trust(device_pki, rim_pki)), "gpu.revocation", fragment
        )


def test_rims_are_judged_at_the_claim_time(device_pki: DevicePki) -> None:
    short = RimPki.create(signer_not_after=AT - timedelta(days=1))
    doc = evidence(device_pki, short)
    verdict = GpuVerifier().verify(doc, trust(device_pki, short))
    assert_fails(verdict, "gpu.rim.driver", "expired")
    assert_fails(verdict, "gpu.rim.vbios", "expired")
    assert "gpu.rim.driver" in reason(verdict, "gpu.measurements")


def test_a_measurement_that_differs_is_named_by_rim_index(
    device_pki: DevicePki, rim_pki: RimPki
) -> None:
    blocks = dict(synthetic.block_values())
    blocks[22] = bytes(48)  # RIM index 21 of the driver RIM, SPDM block 22
    blocks[1] = bytes(48)  # RIM index 0 of the VBIOS RIM
    doc = evidence(device_pki, rim_pki, fields=ReportFields(blocks=blocks))
    verdict = GpuVerifier().verify(doc, trust(device_pki, rim_pki))
    assert_fails(verdict, "gpu.measurements", "driver RIM index(es) 21 ", "VBIOS RIM index(es) 0 ")


def test_nvdec0_index_35_counts_when_nvdec0_is_enabled(
    device_pki: DevicePki, rim_pki: RimPki
) -> None:
    blocks = dict(synthetic.block_values())
    blocks[36] = bytes(48)  # RIM index 35
    disabled = evidence(device_pki, rim_pki, fields=ReportFields(blocks=blocks))
    assert GpuVerifier().verify(disabled, trust(device_pki, rim_pki)).hardware_attested
    enabled = evidence(device_pki, rim_pki, fields=ReportFields(blocks=blocks, nvdec0=0xAA))
    verdict = GpuVerifier().verify(enabled, trust(device_pki, rim_pki))
    assert_fails(verdict, "gpu.measurements", "driver RIM index(es) 35 ")


def test_rims_of_other_versions_kinds_or_chips_fail(device_pki: DevicePki, rim_pki: RimPki) -> None:
    t = trust(device_pki, rim_pki)
    wrong_version = evidence(
        device_pki,
        rim_pki,
        rims={k: encode(v) for k, v in rims(rim_pki, driver="550.90.08").items()},
    )
    assert_fails(
        GpuVerifier().verify(wrong_version, t), "gpu.rim.driver", "550.90.08", "GPU signed"
    )
    pair = rims(rim_pki)
    swapped = evidence(
        device_pki, rim_pki, rims={"driver": encode(pair["vbios"]), "vbios": encode(pair["driver"])}
    )
    verdict = GpuVerifier().verify(swapped, t)
    assert_fails(verdict, "gpu.rim.driver", "not a GPU driver RIM")
    assert_fails(verdict, "gpu.rim.vbios", "not a GPU VBIOS RIM")
    blackwell = DevicePki.create("GB100")
    doc = synthetic.evidence(
        synthetic.report(blackwell, BINDING), blackwell.chain, rims=rims(rim_pki),
        ocsp=good_responses(blackwell.ocsp_pairs) + rim_pki.responses(),
    )  # fmt: skip
    verdict = GpuVerifier().verify(doc, trust(blackwell, rim_pki))
    assert reason(verdict, "gpu.architecture").startswith("NVIDIA Blackwell (GB100)")
    assert_fails(verdict, "gpu.rim.driver", "is for GH100, not the GPU's GB100")


def test_debug_and_cc_off_fail_unless_allowed(device_pki: DevicePki, rim_pki: RimPki) -> None:
    t = trust(device_pki, rim_pki)
    devtools = evidence(device_pki, rim_pki, nvml=synthetic.nvml(cc_mode="devtools"))
    assert_fails(GpuVerifier().verify(devtools, t), "gpu.debug", "DevTools", "allow_debug = true")
    for allowed in (
        dataclasses.replace(t, allow_debug=True),
        dataclasses.replace(t, platform_policy={"allow_debug": True}),
    ):
        verdict = GpuVerifier().verify(devtools, allowed)
        assert verdict.hardware_attested and "auditor allows debug" in reason(verdict, "gpu.debug")
    off = evidence(device_pki, rim_pki, nvml=synthetic.nvml(cc_mode="off"))
    lenient = dataclasses.replace(t, allow_debug=True)
    assert_fails(GpuVerifier().verify(off, lenient), "gpu.debug", "confidential computing off")


def test_minimum_versions_from_the_platform_policy(device_pki: DevicePki, rim_pki: RimPki) -> None:
    doc = evidence(device_pki, rim_pki)
    met = {"minimum_driver_version": "550.54.15", "minimum_vbios_version": "96.00.9F.00.01"}
    verdict = GpuVerifier().verify(doc, trust(device_pki, rim_pki, platform_policy=met))
    assert verdict.hardware_attested
    assert "driver 550.90.07 >= 550.54.15" in reason(verdict, "gpu.versions.minimum")
    for key, minimum in (
        ("minimum_driver_version", "550.100"),
        ("minimum_vbios_version", "96.00.A0.00.00"),
    ):
        verdict = GpuVerifier().verify(
            doc, trust(device_pki, rim_pki, platform_policy={key: minimum})
        )
        assert_fails(
            verdict, "gpu.versions.minimum", f"older than the platform policy's minimum {minimum}"
        )


@pytest.mark.parametrize(
    "table",
    [
        {"allow_debug": "yes"},
        {"allow_unchecked_revocation": 1},
        {"minimum_driver_version": "r550"},
        {"minimum_vbios_version": "96.00.9F"},
        {"require_ocsp": True},
        {"rim_measurements": []},
        {"rim_measurements": ["sha256:" + "0" * 64]},
    ],
)
def test_an_unusable_platform_policy_is_refused_naming_the_key(
    device_pki: DevicePki, rim_pki: RimPki, table: dict[str, Any]
) -> None:
    with pytest.raises(ProviderError) as raised:
        GpuVerifier().verify(
            evidence(device_pki, rim_pki), trust(device_pki, rim_pki, platform_policy=table)
        )
    assert next(iter(table)) in raised.value.message


def test_the_fwid_must_be_the_one_the_leaf_states(device_pki: DevicePki, rim_pki: RimPki) -> None:
    doc = evidence(device_pki, rim_pki, fields=ReportFields(fwid=bytes(48)))
    verdict = GpuVerifier().verify(doc, trust(device_pki, rim_pki))
    assert [c.name for c in verdict.checks if c.status is CheckStatus.FAIL] == ["gpu.fwid"]
    assert not verdict.hardware_attested


def test_a_leaf_without_a_p384_key_fails(rim_pki: RimPki) -> None:
    p256 = DevicePki.create(curve=ec.SECP256R1())
    doc = synthetic.evidence(synthetic.report(p256, BINDING), p256.chain)
    verdict = GpuVerifier().verify(doc, trust(p256, rim_pki))
    assert_fails(verdict, "gpu.signature", "P-384")
    assert_fails(verdict, "gpu.chain", "P-384")


def regions(report: bytes) -> dict[str, tuple[int, int]]:
    """Each signed region of a report: where it starts and ends."""
    exchange = spdm.parse(report)
    record_end = spdm.REQUEST_SIZE + 8 + int.from_bytes(report[42:45], "little")
    opaque_start = record_end + spdm.NONCE_SIZE + 2
    return {
        "request header": (0, 4),
        "requester nonce": (4, 36),
        "slot": (36, 37),
        "response header": (37, 45),
        "measurement record": (45, record_end),
        "responder nonce": (record_end, record_end + 32),
        "opaque length": (record_end + 32, opaque_start),
        "opaque data": (opaque_start, opaque_start + len(exchange.opaque)),
        "signature": (len(report) - 96, len(report)),
    }


@pytest.mark.parametrize(
    "region",
    [
        "request header", "requester nonce", "slot", "response header", "measurement record",
        "responder nonce", "opaque length", "opaque data", "signature",
    ],
)  # fmt: skip
def test_a_flip_in_every_signed_region_fails_the_signature(
    device_pki: DevicePki, rim_pki: RimPki, region: str
) -> None:
    report = synthetic.report(device_pki, BINDING)
    start, end = regions(report)[region]
    t = trust(device_pki, rim_pki)
    for at in sorted({start, (start + end) // 2, end - 1}):
        changed = bytearray(report)
        changed[at] ^= 0x01
        doc = synthetic.evidence(
            bytes(changed),
            device_pki.chain,
            rims=rims(rim_pki),
            ocsp=responses(device_pki, rim_pki),
        )
        verdict = GpuVerifier().verify(doc, t)
        assert_fails(verdict, "gpu.signature", "does not verify")
        failed = {c.name for c in verdict.checks if c.status is CheckStatus.FAIL}
        if region == "requester nonce":
            assert "gpu.nonce" in failed
        if region in ("request header", "slot", "response header", "opaque length"):
            assert "gpu.format" in failed, (at, verdict.checks)
        if region == "signature":
            assert failed == {"gpu.signature"}, (at, failed)


def test_bytes_after_the_signature_are_refused(device_pki: DevicePki) -> None:
    report = synthetic.report(device_pki, BINDING)
    with pytest.raises(spdm.SpdmError, match="more than its lengths account for"):
        spdm.parse(report + b"\0")
    verdict = GpuVerifier().verify(
        synthetic.evidence(report + b"\0", device_pki.chain), TrustInputs(binding=BINDING, at=AT)
    )
    assert_fails(verdict, "gpu.format", "more than its lengths account for")
    assert_fails(verdict, "gpu.signature", "does not verify")


def test_the_platform_policy_may_pin_the_rim_pair(device_pki: DevicePki, rim_pki: RimPki) -> None:
    doc = evidence(device_pki, rim_pki)
    measured = GpuVerifier().verify(doc, trust(device_pki, rim_pki)).measurement
    assert measured is not None
    pinned = GpuVerifier().verify(
        doc, trust(device_pki, rim_pki, platform_policy={"rim_measurements": [measured]})
    )
    assert pinned.hardware_attested
    assert measured in reason(pinned, "gpu.rims.pinned")
    other = "sha384:" + "0" * 96
    verdict = GpuVerifier().verify(
        doc, trust(device_pki, rim_pki, platform_policy={"rim_measurements": [other]})
    )
    assert_fails(verdict, "gpu.rims.pinned", "driver 550.90.07", "not among")
    unverified = evidence(device_pki, rim_pki)
    del unverified["rims"]
    verdict = GpuVerifier().verify(
        unverified, trust(device_pki, rim_pki, platform_policy={"rim_measurements": [measured]})
    )
    assert statuses(verdict)["gpu.rims.pinned"] is CheckStatus.SKIP
    assert "gpu.rim.driver" in reason(verdict, "gpu.rims.pinned")


# -- [gpu-cc] trust_roots: the auditor's roots, named in the platform policy ----------


def _policy_trust(folder: Path, *names: str) -> TrustInputs:
    return TrustInputs(
        BINDING, AT, platform_policy={"trust_roots": list(names)}, platform_policy_dir=folder
    )


@pytest.fixture
def auditor(tmp_path: Path, device_pki: DevicePki, rim_pki: RimPki) -> Path:
    roots = tmp_path / "roots"
    roots.mkdir()
    (roots / "device.pem").write_bytes(device_pki.root_pem())
    (roots / "corim.pem").write_bytes(rim_pki.root.cert.public_bytes(Encoding.PEM))
    policies = tmp_path / "policies"  # where the platform-policy file stands
    policies.mkdir()
    return policies


def test_roots_named_relative_to_the_policy_folder_anchor_both_chains(
    auditor: Path, device_pki: DevicePki, rim_pki: RimPki
) -> None:
    trust = _policy_trust(auditor, "../roots/device.pem", "../roots/corim.pem")
    verdict = GpuVerifier().verify(evidence(device_pki, rim_pki), trust)
    status = statuses(verdict)
    assert all(status[name] is CheckStatus.PASS for name in HARDWARE_CHECKS), verdict.checks
    assert verdict.hardware_attested
    assert "[gpu-cc] trust_roots" in reason(verdict, "gpu.chain")


def test_a_wrong_device_root_fails_the_device_chain(
    auditor: Path, device_pki: DevicePki, rim_pki: RimPki
) -> None:
    trust = _policy_trust(auditor, "../roots/corim.pem")  # the CoRIM root alone: not the GPU's
    verdict = GpuVerifier().verify(evidence(device_pki, rim_pki), trust)
    assert_fails(verdict, "gpu.chain", "not a pinned root", "[gpu-cc] trust_roots")
    assert not verdict.hardware_attested


def test_the_trust_inputs_roots_do_not_override_the_policys(
    auditor: Path, device_pki: DevicePki, rim_pki: RimPki
) -> None:
    right = (device_pki.root_pem(), rim_pki.root.cert.public_bytes(Encoding.PEM))
    trust = TrustInputs(
        BINDING,
        AT,
        trust_roots=right,
        platform_policy={"trust_roots": ["../roots/corim.pem"]},
        platform_policy_dir=auditor,
    )
    verdict = GpuVerifier().verify(evidence(device_pki, rim_pki), trust)
    assert statuses(verdict)["gpu.chain"] is CheckStatus.FAIL


@pytest.mark.parametrize(
    ("names", "message"),
    [
        (["roots/device.pem"], "cannot be read"),  # relative to the policy, not the cwd
        ([], "non-empty list of PEM file paths"),
        ("../roots/device.pem", "non-empty list of PEM file paths"),
    ],
)
def test_unusable_trust_roots_are_the_auditors_error(
    auditor: Path, device_pki: DevicePki, rim_pki: RimPki, names: object, message: str
) -> None:
    trust = TrustInputs(
        BINDING, AT, platform_policy={"trust_roots": names}, platform_policy_dir=auditor
    )
    with pytest.raises(ProviderError, match=message):
        GpuVerifier().verify(evidence(device_pki, rim_pki), trust)
