"""`cmcp measure azure-sev-snp` and `azure-tdx` on the genuine Azure vectors: the
measurement is the one the hardware report states (checked against bytes sliced by hand
and against the TD quote Intel's Quoting Enclave signed), the PCRs to pin are the ones a
quote by the report's HCLAkPub signed, and every input that is not what it claims to be
is refused with the reason."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from cmcp_azure.measurer import AzureSnpMeasurer, AzureTdxMeasurer
from cmcp_cli.attestation.api import MeasureInputs, MeasureResult, ProviderError
from cmcp_tdx.quote import parse_quote
from cmcp_tpm import structures as tpm

SHARED = Path(__file__).resolve().parents[4] / "shared" / "attestation-vectors"
AZURE = SHARED / "azure-cvm"
VTPM = SHARED / "tpm" / "azure-vtpm-2026-07-27"  # tpm2-tools files from an Azure vTPM
SNP_REPORT = AZURE / "trustee-milan-hcl-report.bin"
SNP_QUOTE = AZURE / "trustee-milan-tpm-quote.json"
TDX_REPORT = AZURE / "trustee-tdx-hcl-report.bin"
TDX_QUOTE = AZURE / "trustee-tdx-tpm-quote.json"
SNP_HARDWARE = 32  # where the hardware report starts in an HCL report
MILAN_MEASUREMENT = (
    "9ac48fcac8a2d88aeeff8d427ad4f2be0e3917c748a18bdf52cc317e7fe20308"
    "b459d5ef1a12e0c22944eb386d17c315"
)


@pytest.fixture(autouse=True)
def _vectors() -> None:
    if not AZURE.is_dir() or not VTPM.is_dir():
        pytest.skip(f"the shared attestation vectors are not at {SHARED}")


def measure(measurer: AzureSnpMeasurer | AzureTdxMeasurer, **options: str | Path) -> MeasureResult:
    values = {name.replace("_", "-"): (str(value),) for name, value in options.items()}
    return measurer.measure(MeasureInputs(values=values))


def refused(measurer: AzureSnpMeasurer | AzureTdxMeasurer, **options: str | Path) -> str:
    with pytest.raises(ProviderError) as refusal:
        measure(measurer, **options)
    assert refusal.value.hint, refusal.value.message
    return refusal.value.message


def written(tmp_path: Path, name: str, data: bytes | bytearray) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def quote_document(path: Path = SNP_QUOTE) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(path.read_text())
    return document


# ---------------------------------------------------------------- the measurement


def test_snp_measurement_is_the_reports_measurement_field() -> None:
    raw = SNP_REPORT.read_bytes()
    by_hand = raw[SNP_HARDWARE + 0x90 : SNP_HARDWARE + 0xC0].hex()  # MEASUREMENT, 48 bytes
    assert by_hand == MILAN_MEASUREMENT  # MANIFEST.md: measurement 9ac48fca…c315
    result = measure(AzureSnpMeasurer(), hcl_report=SNP_REPORT)
    assert result.measurement == "sha384:" + MILAN_MEASUREMENT
    details = result.details
    assert details["runtime_data_sha256"] == (
        "b3fbad6514c83caeb0380882145e49f794229ef37c421b91fc47ff93556bafac"
    )
    report = details["snp_report"]
    assert (report["version"], report["vmpl"], report["guest_svn"]) == (2, 0, 5)
    assert (report["policy"], report["debug"]) == ("0x3001f", False)
    assert report["chip_id"].startswith("19752a44") and report["chip_id"].endswith("6cca")
    assert details["vm_configuration"]["secure_boot"] is True
    assert details["vm_configuration"]["vm_unique_id"] == "911B0EF8-9DBA-48B0-B275-4E4DF2D39252"
    assert "paravisor" in details["covers"] and "MEASUREMENT" in details["covers"]
    assert "vTPM's PCRs" in details["not_covered"] and "pcrs" in details["not_covered"]
    assert "pcrs" not in details  # no quote given, nothing to pin
    assert any(note.startswith("does not cover: the guest OS") for note in result.notes)


def test_the_user_data_report_of_another_milan_vm_measures_its_own_paravisor(
    tmp_path: Path,
) -> None:
    evidence = json.loads((AZURE / "trustee-milan-userdata-evidence.json").read_text())
    encoded = evidence["hcl_report"]
    raw = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4))
    result = measure(AzureSnpMeasurer(), hcl_report=written(tmp_path, "hcl.bin", raw))
    assert result.measurement == "sha384:" + raw[SNP_HARDWARE + 0x90 : SNP_HARDWARE + 0xC0].hex()
    assert result.measurement != "sha384:" + MILAN_MEASUREMENT
    assert result.details["snp_report"]["guest_svn"] == 12
    assert result.details["runtime_data_sha256"].startswith("cf7cc073")
    # its quote (48-byte nonce) is signed by this report's HCLAkPub, not the first set's
    quote = written(tmp_path, "quote.json", json.dumps(evidence["tpm_quote"]).encode())
    pinned = measure(AzureSnpMeasurer(), hcl_report=tmp_path / "hcl.bin", tpm_quote=quote)
    assert pinned.details["pcrs"]["4"] == evidence["tpm_quote"]["pcrs"][4]
    assert "another VM" in refused(AzureSnpMeasurer(), hcl_report=SNP_REPORT, tpm_quote=quote)


def test_tdx_measurement_is_the_one_of_the_dcap_quote_made_from_the_report() -> None:
    quote = parse_quote((AZURE / "trustee-tdx-td-quote.bin").read_bytes())
    registers = quote.body.mrtd + b"".join(quote.body.rtmrs)  # cmcp-tdx's measurement preimage
    result = measure(AzureTdxMeasurer(), hcl_report=TDX_REPORT)
    assert result.measurement == "sha384:" + hashlib.sha384(registers).hexdigest()
    report = result.details["td_report"]
    assert report["mrtd"] == quote.body.mrtd.hex()
    assert report["mrtd"].startswith("024a32b0") and report["mrtd"].endswith("ab7b")
    assert [report[f"rtmr{n}"] for n in range(4)] == ["00" * 48] * 4
    assert "all zero here" in result.details["covers"]
    assert result.details["runtime_data_sha256"] == (
        "9734504f161d104c74e3165c15f779b06a9bb40dfa71937817d7eee68e593839"
    )


def test_a_report_that_allows_debugging_is_measured_with_the_warning(tmp_path: Path) -> None:
    genuine = measure(AzureSnpMeasurer(), hcl_report=SNP_REPORT)
    assert not any("allows debugging" in note for note in genuine.notes)
    snp = bytearray(SNP_REPORT.read_bytes())
    snp[SNP_HARDWARE + 0x08 + 2] |= 0x08  # guest policy bit 19, DEBUG
    result = measure(AzureSnpMeasurer(), hcl_report=written(tmp_path, "snp.bin", snp))
    assert result.details["snp_report"]["debug"] is True
    assert any("fails sev.policy.debug" in note for note in result.notes)
    tdx = bytearray(TDX_REPORT.read_bytes())
    tdx[SNP_HARDWARE + 512] |= 0x01  # TDINFO ATTRIBUTES bit 0, DEBUG
    # and TEE_INFO_HASH over the changed TDINFO, as the TDX module would write it
    tdx[SNP_HARDWARE + 80 : SNP_HARDWARE + 128] = hashlib.sha384(
        tdx[SNP_HARDWARE + 512 : SNP_HARDWARE + 1024]
    ).digest()
    result = measure(AzureTdxMeasurer(), hcl_report=written(tmp_path, "tdx.bin", tdx))
    assert result.details["td_report"]["debug"] is True
    assert any("fails tdx.td.debug" in note for note in result.notes)


def test_a_report_of_the_other_hardware_is_refused_naming_its_provider() -> None:
    assert "comes from an azure-tdx VM" in refused(AzureSnpMeasurer(), hcl_report=TDX_REPORT)
    assert "comes from an azure-sev-snp VM" in refused(AzureTdxMeasurer(), hcl_report=SNP_REPORT)


def test_an_altered_report_is_refused(tmp_path: Path) -> None:
    raw = bytearray(SNP_REPORT.read_bytes())
    runtime = bytearray(raw)
    runtime[1300] ^= 0x01  # inside the runtime data: its hash then differs from REPORT_DATA
    message = refused(AzureSnpMeasurer(), hcl_report=written(tmp_path, "r.bin", bytes(runtime)))
    assert "REPORT_DATA is not the SHA-256 of its runtime data" in message
    report_data = bytearray(raw)
    report_data[SNP_HARDWARE + 0x50] ^= 0x01  # REPORT_DATA itself
    message = refused(AzureSnpMeasurer(), hcl_report=written(tmp_path, "d.bin", report_data))
    assert "REPORT_DATA is not the SHA-256" in message
    header = bytearray(raw)
    header[0] = ord("X")
    message = refused(AzureSnpMeasurer(), hcl_report=written(tmp_path, "h.bin", header))
    assert "is not an HCL report" in message and "HCLA" in message
    padding_byte = bytearray(raw)
    padding_byte[-1] = 1  # the zero padding no signature covers
    message = refused(AzureSnpMeasurer(), hcl_report=written(tmp_path, "p.bin", padding_byte))
    assert "not all zero" in message
    truncated = written(tmp_path, "t.bin", bytes(raw[:1000]))
    assert "shorter than" in refused(AzureSnpMeasurer(), hcl_report=truncated)
    vmpl = bytearray(raw)
    vmpl[SNP_HARDWARE + 0x30] = 2  # VMPL: a report the guest OS asked for
    message = refused(AzureSnpMeasurer(), hcl_report=written(tmp_path, "l.bin", vmpl))
    assert "requested at VMPL 2, not 0" in message
    version = bytearray(raw)
    version[SNP_HARDWARE] = 9  # the SNP report's own version
    message = refused(AzureSnpMeasurer(), hcl_report=written(tmp_path, "v.bin", version))
    assert "REPORT_DATA" not in message and "report version 9" in message


def test_a_missing_or_repeated_report_is_refused(tmp_path: Path) -> None:
    assert "cannot be read" in refused(AzureSnpMeasurer(), hcl_report=tmp_path / "none.bin")
    with pytest.raises(ProviderError, match="--hcl-report is required"):
        AzureSnpMeasurer().measure(MeasureInputs(values={}))
    twice = {"hcl-report": (str(SNP_REPORT), str(SNP_REPORT))}
    with pytest.raises(ProviderError, match="given 2 times"):
        AzureSnpMeasurer().measure(MeasureInputs(values=twice))
    with pytest.raises(ProviderError, match="unknown option"):
        AzureSnpMeasurer().measure(MeasureInputs(values={"ovmf": ("x",)}))


# ---------------------------------------------------------------- the PCRs to pin


def test_the_pcrs_to_pin_are_the_ones_the_reports_ak_quoted() -> None:
    listed = quote_document()["pcrs"]
    result = measure(AzureSnpMeasurer(), hcl_report=SNP_REPORT, tpm_quote=SNP_QUOTE)
    assert result.measurement == "sha384:" + MILAN_MEASUREMENT  # the quote changes nothing
    # by default the boot chain and secure boot policy: not PCR 6, which differs per VM
    assert result.details["pcrs"] == {"4": listed[4], "7": listed[7]}
    assert quote_document(TDX_QUOTE)["pcrs"][6] != listed[6]  # two VMs, two PCR 6 values
    assert result.details["pcr_source"] == f"--tpm-quote {SNP_QUOTE}"
    table = tomllib.loads(result.notes[-1])  # the note pastes into the platform policy
    assert table == {"azure-sev-snp": {"pcrs": result.details["pcrs"]}}
    tdx = quote_document(TDX_QUOTE)["pcrs"]
    chosen = measure(
        AzureTdxMeasurer(), hcl_report=TDX_REPORT, tpm_quote=TDX_QUOTE, pin_pcrs="1-3,23"
    )
    assert chosen.details["pcrs"] == {str(n): tdx[n] for n in (1, 2, 3, 23)}
    assert tomllib.loads(chosen.notes[-1])["azure-tdx"]["pcrs"] == chosen.details["pcrs"]


def test_a_quote_from_another_vm_is_refused() -> None:
    message = refused(AzureSnpMeasurer(), hcl_report=SNP_REPORT, tpm_quote=TDX_QUOTE)
    assert "does not verify with HCLAkPub from the runtime data" in message


def test_a_quote_re_signed_by_another_key_is_refused(tmp_path: Path) -> None:
    document = quote_document()
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    message = bytes.fromhex(document["message"])
    document["signature"] = other.sign(message, padding.PKCS1v15(), hashes.SHA256()).hex()
    quote = written(tmp_path, "q.json", json.dumps(document).encode())
    assert "does not verify with HCLAkPub" in refused(
        AzureSnpMeasurer(), hcl_report=SNP_REPORT, tpm_quote=quote
    )


def test_pcr_values_the_quote_did_not_sign_are_refused(tmp_path: Path) -> None:
    document = quote_document()
    document["pcrs"][7] = "00" * 32
    quote = written(tmp_path, "q.json", json.dumps(document).encode())
    message = refused(AzureSnpMeasurer(), hcl_report=SNP_REPORT, tpm_quote=quote)
    assert "not the quoted pcrDigest" in message


def test_a_tampered_quote_message_is_refused(tmp_path: Path) -> None:
    document = quote_document()
    message = bytearray.fromhex(document["message"])
    message[message.index(b"challenge")] ^= 0x01  # extraData: the nonce it was taken for
    document["message"] = message.hex()
    quote = written(tmp_path, "q.json", json.dumps(document).encode())
    assert "does not verify with HCLAkPub" in refused(
        AzureSnpMeasurer(), hcl_report=SNP_REPORT, tpm_quote=quote
    )


def test_a_quote_over_other_pcrs_is_refused(tmp_path: Path) -> None:
    document = quote_document()
    attest = tpm.parse_attest(bytes.fromhex(document["message"]))
    seven = tpm.build_attest(
        attest.qualified_signer, attest.extra_data, (("sha256", tuple(range(8))),),
        hashlib.sha256(b"".join(bytes.fromhex(v) for v in document["pcrs"][:8])).digest(),
    )  # fmt: skip
    document["message"] = seven.hex()
    quote = written(tmp_path, "q.json", json.dumps(document).encode())
    message = refused(AzureSnpMeasurer(), hcl_report=SNP_REPORT, tpm_quote=quote)
    assert "not SHA-256 PCRs 0-23" in message


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda d: d.update(extra=1), "exactly the members signature, message and pcrs"),
        (lambda d: d.pop("signature"), "exactly the members signature, message and pcrs"),
        (lambda d: d.update(pcrs=d["pcrs"][:23]), "list of 24 hex values"),
        (lambda d: d.update(message="zz"), "must be hex strings"),
        (lambda d: d.update(signature=7), "must be hex strings"),
        (lambda d: d["pcrs"].__setitem__(3, "00"), "every PCR value must be 32 bytes"),
        (lambda d: d.update(message="ff544347"), "TPMS_ATTEST is refused"),
    ],
)
def test_a_malformed_quote_is_refused(tmp_path: Path, change: Any, expected: str) -> None:
    document = quote_document()
    change(document)
    quote = written(tmp_path, "q.json", json.dumps(document).encode())
    assert expected in refused(AzureSnpMeasurer(), hcl_report=SNP_REPORT, tpm_quote=quote)
    not_json = written(tmp_path, "n.json", b"\xff{")
    assert "is not JSON" in refused(AzureSnpMeasurer(), hcl_report=SNP_REPORT, tpm_quote=not_json)
    for text in (b"[" * 1100, b'{"pcrs": [], "pcrs": []}'):  # too deep; two meanings
        unclear = written(tmp_path, "u.json", text)
        assert "is not JSON" in refused(
            AzureSnpMeasurer(), hcl_report=SNP_REPORT, tpm_quote=unclear
        )


def test_a_tpm2_tools_pcr_file_gives_unsigned_values() -> None:
    pcr_file = VTPM / "pcrs.bin"  # `tpm2_quote -o` on an Azure vTPM, PCRs 0-7
    result = measure(AzureSnpMeasurer(), hcl_report=SNP_REPORT, pcr_file=pcr_file, pin_pcrs="0-7")
    pinned = [bytes.fromhex(result.details["pcrs"][str(n)]) for n in range(8)]
    quoted = tpm.parse_attest((VTPM / "quote.msg").read_bytes())  # that quote's own digest
    assert hashlib.sha256(b"".join(pinned)).digest() == quoted.pcr_digest
    assert result.details["pcr_source"].endswith("(unsigned)")
    message = refused(AzureSnpMeasurer(), hcl_report=SNP_REPORT, pcr_file=pcr_file, pin_pcrs="7-9")
    assert "has no sha256 value for PCR 8, 9" in message
    not_a_file = refused(AzureSnpMeasurer(), hcl_report=SNP_REPORT, pcr_file=SNP_QUOTE)
    assert "not a tpm2-tools PCR values file" in not_a_file


def test_pcr_options_that_cannot_do_what_they_say_are_refused() -> None:
    message = refused(AzureSnpMeasurer(), hcl_report=SNP_REPORT, pin_pcrs="7")
    assert "none are given" in message
    both = refused(
        AzureSnpMeasurer(), hcl_report=SNP_REPORT, tpm_quote=SNP_QUOTE, pcr_file=VTPM / "pcrs.bin"
    )
    assert "both give the PCR values" in both
    bad = refused(AzureSnpMeasurer(), hcl_report=SNP_REPORT, tpm_quote=SNP_QUOTE, pin_pcrs="24")
    assert "--pin-pcrs 24" in bad


# ---------------------------------------------------------------- through the CLI


def _cmcp(*args: str | Path) -> subprocess.CompletedProcess[str]:
    """The installed `cmcp` with none of cMCP's variables from this environment."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("CMCP_")}
    return subprocess.run(
        [str(Path(sys.executable).with_name("cmcp")), *map(str, args)],
        capture_output=True, text=True, env=environment, timeout=60, check=False,
    )  # fmt: skip


def test_cmcp_measure_prints_the_measurement_alone_and_says_what_it_covers() -> None:
    done = _cmcp("measure", "azure-sev-snp", "--hcl-report", SNP_REPORT, "--tpm-quote", SNP_QUOTE)
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"sha384:{MILAN_MEASUREMENT}\n"
    assert "does not cover: the guest OS" in done.stderr
    assert '[azure-sev-snp]\npcrs = { "4" = "1d3b1cb1' in done.stderr
    as_json = _cmcp("measure", "azure-tdx", "--hcl-report", TDX_REPORT, "--json")
    assert as_json.returncode == 0, as_json.stderr
    report = json.loads(as_json.stdout)
    assert report["provider"] == "azure-tdx"
    assert report["details"]["td_report"]["mrtd"].startswith("024a32b0")
    wrong = _cmcp("measure", "azure-sev-snp", "--hcl-report", TDX_REPORT)
    assert wrong.returncode == 2
    assert "comes from an azure-tdx VM" in wrong.stderr
    assert "cmcp measure azure-tdx" in wrong.stderr
