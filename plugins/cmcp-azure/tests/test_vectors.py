"""Every expected fact MANIFEST.md states of the genuine Azure sets, read with this
plugin's parsers: the HCL layout, which bytes are hashed into REPORT_DATA, the quotes'
nonces, digests and signers, and the hardware reports' fields."""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.utils import CryptographyDeprecationWarning

from cmcp_azure import hcl, runtime_data, tdreport
from cmcp_azure.testing.vectors import CHALLENGE, USERDATA_NONCE, AzureSet
from cmcp_cli.attestation.toolkit import pem_certificates
from cmcp_sev import certificates, structures
from cmcp_tdx import quote as tdx
from cmcp_tpm import pcr
from cmcp_tpm import structures as tpm


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _quote(azure_set: AzureSet) -> tuple[bytes, tpm.Attest]:
    raw = base64.b64decode(azure_set.evidence["tpm_quote"]["attest"])
    return raw, tpm.parse_attest(raw)


def test_the_milan_hcl_report(azure_vectors: Path) -> None:
    data = (azure_vectors / "trustee-milan-hcl-report.bin").read_bytes()
    assert _sha256(data) == "5145bacdfca0cb1dd968c00374ea3746f66c9ac4e6159ccba8bbca408efdc00a"
    assert len(data) == 2600
    assert int.from_bytes(data[8:12], "little") == 2346  # report_size
    report = hcl.parse(data)
    assert (report.version, report.report_type) == (1, hcl.ReportType.SNP)
    assert report.runtime_data == data[1236:2346]
    assert len(report.runtime_data) == 1110
    assert report.runtime_data.startswith(b'{"keys":[{"kid":"HCLAkPub"')
    digest = "b3fbad6514c83caeb0380882145e49f794229ef37c421b91fc47ff93556bafac"
    assert _sha256(report.runtime_data) == digest
    assert report.report_data == bytes.fromhex(digest) + bytes(32)
    snp = structures.parse_report(report.hardware_report)
    assert (snp.version, snp.vmpl, snp.policy, snp.guest_svn) == (2, 0, 0x3001F, 5)
    assert not snp.debug
    assert snp.measurement.hex().startswith("9ac48fca") and snp.measurement.hex().endswith("c315")
    assert snp.id_key_digest.hex().startswith("03562158")
    assert snp.id_key_digest.hex().endswith("44a3")
    assert snp.chip_id.hex().startswith("19752a44") and snp.chip_id.hex().endswith("6cca")
    tcb = snp.reported_tcb.decode(structures.Product.MILAN)
    assert (tcb.bootloader, tcb.tee, tcb.snp, tcb.microcode) == (3, 0, 8, 115)
    runtime = runtime_data.parse(report.runtime_data)
    assert runtime.user_data == bytes(64)
    assert runtime.vm_configuration.secure_boot is True
    assert runtime.vm_configuration.vm_unique_id == "911B0EF8-9DBA-48B0-B275-4E4DF2D39252"
    assert runtime.ak_public.key_size == 2048
    assert runtime.ak_public.public_numbers().e == 65537


def test_the_milan_vcek_bundle(azure_vectors: Path, milan_set: AzureSet) -> None:
    pem = (azure_vectors / "trustee-milan-vcek-ask-ark.pem").read_bytes()
    assert _sha256(pem) == "757811b4df12565a819de55eacc6ed24e6e9f0f22b40bae7280bb9ba61a413a5"
    vcek, ask, ark = pem_certificates(pem)
    der = vcek.public_bytes(Encoding.DER)
    assert _sha256(der) == "fcd6cc41673e50002d03f3ce655ee36fba1a5e4e1bb873cf6a936024ad3607ff"
    with pytest.warns(CryptographyDeprecationWarning):  # RFC 5280 wants it positive
        assert vcek.serial_number == 0
    assert (vcek.not_valid_before_utc.year, vcek.not_valid_after_utc.year) == (2023, 2030)
    vendored = pem_certificates(
        (azure_vectors.parent / "sev-snp" / "amd-ask-ark-milan.pem").read_bytes()
    )
    assert [c.public_bytes(Encoding.DER) for c in (ask, ark)] == [
        c.public_bytes(Encoding.DER) for c in vendored
    ]
    report = hcl.parse(base64.b64decode(milan_set.evidence["hcl_report"]))
    extensions = certificates.amd_extensions(vcek)
    assert extensions.hwid == structures.parse_report(report.hardware_report).chip_id
    assert {k: extensions.spl[k] for k in ("bl", "tee", "snp", "ucode")} == {
        "bl": 3, "tee": 0, "snp": 8, "ucode": 115,
    }  # fmt: skip
    vcek.verify_directly_issued_by(ask)
    ask.verify_directly_issued_by(ark)


def test_the_milan_quote(azure_vectors: Path, milan_set: AzureSet) -> None:
    document = (azure_vectors / "trustee-milan-tpm-quote.json").read_bytes()
    assert _sha256(document) == "6cd588dbe17105a4e57abe71f614403ddd8664f7ac2853fb11d5f3a2cd63d990"
    raw, attest = _quote(milan_set)
    assert len(raw) == 122
    assert attest.extra_data == CHALLENGE == bytes.fromhex("6368616c6c656e6765")
    assert (attest.magic, attest.type) == (0xFF544347, 0x8018)
    assert attest.qualified_signer.hex().startswith("000b96f6")
    assert attest.qualified_signer.hex().endswith("5f25")
    digest = "0daff74c2fca14910b1e9b54a384707434c3365db9f163cc73a39a9f7500833f"
    assert attest.pcr_digest.hex() == digest
    assert attest.pcr_selection == (("sha256", tuple(range(24))),)
    values = milan_set.evidence["tpm_quote"]["pcrs"]["sha256"]
    assert (
        pcr.composite("sha256", [bytes.fromhex(values[str(i)]) for i in range(24)]).hex() == digest
    )
    assert values["0"].startswith("f3a7e99a") and values["0"].endswith("99be")


def test_the_milan_user_data_set(azure_vectors: Path, userdata_set: AzureSet) -> None:
    document = (azure_vectors / "trustee-milan-userdata-evidence.json").read_bytes()
    assert _sha256(document) == "cd272f2b5102c6b289f64455d8d478e3ec8fb4e6fdf22a7c133d9ed3a4efa9c5"
    raw, attest = _quote(userdata_set)
    assert len(raw) == 161 and len(USERDATA_NONCE) == 48
    assert attest.extra_data == USERDATA_NONCE
    assert userdata_set.evidence["tpm_quote"]["pcrs"]["sha256"]["0"].startswith("84275b2f")
    assert userdata_set.evidence["tpm_quote"]["pcrs"]["sha256"]["0"].endswith("a6a7")
    report = hcl.parse(base64.b64decode(userdata_set.evidence["hcl_report"]))
    assert len(report.runtime_data) == 1110
    assert _sha256(report.runtime_data).startswith("cf7cc073")
    assert _sha256(report.runtime_data).endswith("46ee")
    assert report.report_data == report.expected_report_data
    runtime = runtime_data.parse(report.runtime_data)
    assert runtime.user_data == USERDATA_NONCE + bytes(16)
    assert f'"user-data":"{USERDATA_NONCE.hex().upper()}{"0" * 32}"'.encode() in (
        report.runtime_data
    )
    snp = structures.parse_report(report.hardware_report)
    assert (snp.version, snp.cpuid, snp.guest_svn) == (3, (0x19, 0x01, 0x01), 12)
    tcb = snp.reported_tcb.decode(structures.Product.MILAN)
    assert (tcb.bootloader, tcb.tee, tcb.snp, tcb.microcode) == (4, 0, 24, 219)
    vcek = base64.b64decode(userdata_set.evidence["vcek"])
    assert _sha256(vcek).startswith("e1ef3f3e") and _sha256(vcek).endswith("8f69")


def test_the_tdx_set(azure_vectors: Path, tdx_set: AzureSet) -> None:
    data = (azure_vectors / "trustee-tdx-hcl-report.bin").read_bytes()
    assert _sha256(data) == "f7d67cdc5dba980da1ac060110d51f270058fad599488c6aabb3f01f87be4a45"
    report = hcl.parse(data)
    assert (report.version, report.report_type) == (2, hcl.ReportType.TDX)
    assert int.from_bytes(data[8:12], "little") == 2437
    assert report.runtime_data == data[1236:2437] and len(report.runtime_data) == 1201
    digest = "9734504f161d104c74e3165c15f779b06a9bb40dfa71937817d7eee68e593839"
    assert _sha256(report.runtime_data) == digest
    assert data[160:192] == bytes.fromhex(digest) == report.report_data[:32]
    assert report.hardware_report[0] == 0x81
    body = tdreport.body_of(report.hardware_report)
    assert body.rtmrs == (bytes(48),) * 4
    raw = (azure_vectors / "trustee-tdx-td-quote.bin").read_bytes()
    assert _sha256(raw) == "a2c43c6937dcdb91403844f371acc26e39c4937951e61fbd2c8ecd18969f9e6f"
    assert len(raw) == 5006 and not any(raw[4936:])
    quote = tdx.parse_quote(raw)
    assert (quote.header.version, quote.header.tee_type) == (4, 0x81)
    assert quote.trailing == 70
    assert quote.body.mrtd.hex().startswith("024a32b0") and quote.body.mrtd.hex().endswith("ab7b")
    assert quote.body == body
    _, attest = _quote(tdx_set)
    assert attest.extra_data == CHALLENGE
    document = (azure_vectors / "trustee-tdx-tpm-quote.json").read_bytes()
    assert _sha256(document) == "f3531776fc48b779e56f6c0b9cd844f0d63b7d8c57ad9c08bc8a561c3d058a7d"
