"""The links an Azure CVM's evidence adds around the hardware report, one named check each:

    session binding -> vTPM quote (extraData) -> signed by HCLAkPub -> HCLAkPub is in the
    runtime data -> the runtime data's SHA-256 is the hardware report's REPORT_DATA

and beside them what the runtime data says (its user data, the VM's configuration) and the
quoted PCRs against the auditor's pins. The hardware report itself (signed by AMD's VCEK,
or quoted by Intel's QE) is judged by cmcp-sev's or cmcp-tdx's verifier.

The only key a quote is ever verified with is HCLAkPub from the runtime data: the key is
trusted because the hardware report carries that document's hash, and for no other reason
(no AK certificate is shipped or needed).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey

from cmcp_azure import hcl
from cmcp_azure import runtime_data as rd
from cmcp_azure.evidence import BANK, DecodedEvidence
from cmcp_azure.vm_policy import VmPolicy
from cmcp_cli.attestation.api import TrustInputs
from cmcp_cli.attestation.toolkit import CheckFailed as _Fail
from cmcp_cli.attestation.toolkit import CheckSkipped as _Skip
from cmcp_cli.attestation.toolkit import ExpectedReportData, NamedCheck, require_binding
from cmcp_tpm import pcr
from cmcp_tpm import structures as tpm

SHAPE: Final = "azure.evidence.shape"
HCL_FORMAT: Final = "azure.hcl.format"
RUNTIME_DATA: Final = "azure.runtime_data"
QUOTE_FORMAT: Final = "azure.quote.format"
QUOTE_SIGNATURE: Final = "azure.quote.signature"
QUOTE_NONCE: Final = "azure.quote.nonce"
QUOTE_PCRS: Final = "azure.quote.pcrs"
RUNTIME_DATA_HASH: Final = "azure.runtime_data.hash"
USER_DATA: Final = "azure.user_data"
VM_CONFIGURATION: Final = "azure.vm_configuration"
PCRS_PINNED: Final = "azure.pcrs.pinned"
# Checks that may skip in a hardware-attested verdict: user data the paravisor did not
# carry (the quote binds alone), and PCRs the auditor did not pin.
MAY_SKIP: Final = (USER_DATA, PCRS_PINNED)
QUOTED_PCRS: Final = tuple(range(pcr.PCR_COUNT))


def expected_report_data(report: hcl.HclReport) -> ExpectedReportData:
    """What the hardware verifier must find in REPORT_DATA: the runtime data's hash, which
    the links above tie to the session binding."""
    return ExpectedReportData(
        report.expected_report_data,
        "the SHA-256 of the HCL runtime data followed by 32 zero bytes",
    )


def _clause(error: object) -> str:
    return str(error).rstrip(".")


def _prefix(data: bytes) -> str:
    return data[:8].hex() + ("…" if len(data) > 8 else "")


def quote_attest(raw: bytes) -> tpm.Attest:
    """The quote's TPMS_ATTEST, refused (`CheckFailed`) unless a TPM made it over SHA-256
    PCRs 0-23, the selection every Azure quote is taken over."""
    try:
        attest = tpm.parse_attest(raw)
    except tpm.TpmFormatError as error:
        raise _Fail(f"The quote's TPMS_ATTEST is refused: {_clause(error)}.") from None
    if attest.magic != tpm.TPM_GENERATED_VALUE:
        raise _Fail(
            f"The quote's magic is 0x{attest.magic:08x}, not 0xff544347: not made by a TPM."
        )
    if attest.pcr_selection != ((BANK, QUOTED_PCRS),):
        raise _Fail(
            f"The quote selects {attest.pcr_selection}, not SHA-256 PCRs 0-23, the "
            "selection every Azure quote is taken over."
        )
    if len(attest.pcr_digest) != pcr.DIGEST_SIZES[BANK]:
        raise _Fail(f"The quote's pcrDigest is {len(attest.pcr_digest)} bytes, not SHA-256.")
    return attest


def verify_quote_signature(key: RSAPublicKey, attest: bytes, blob: bytes) -> None:
    """`CheckFailed` unless `blob`, a TPMT_SIGNATURE, is HCLAkPub's RSASSA-PKCS1v1.5 SHA-256
    signature of the raw TPMS_ATTEST bytes."""
    try:
        signature = tpm.parse_signature(blob)
    except tpm.TpmFormatError as error:
        raise _Fail(f"The quote's TPMT_SIGNATURE is refused: {_clause(error)}.") from None
    if (signature.scheme, signature.hash_alg) != (tpm.ALG_RSASSA, tpm.ALG_SHA256):
        raise _Fail(
            f"The signature is scheme 0x{signature.scheme:04x} hash "
            f"0x{signature.hash_alg:04x}, not RSASSA-PKCS1v1.5 with SHA-256, the only "
            "signature HCLAkPub makes."
        )
    try:
        key.verify(signature.value, attest, padding.PKCS1v15(), hashes.SHA256())
    except InvalidSignature:
        raise _Fail(
            "The quote's signature does not verify with HCLAkPub from the runtime data: "
            "the quote was altered, or made by another VM's vTPM."
        ) from None


def verify_quote_pcrs(attest: tpm.Attest, values: Mapping[int, bytes]) -> None:
    """`CheckFailed` unless the SHA-256 PCR values 0-23 hash to the quote's pcrDigest."""
    missing = [str(i) for i in QUOTED_PCRS if i not in values]
    if missing:
        raise _Fail(f"The PCR values lack {BANK} PCR(s) {', '.join(missing)}, which are quoted.")
    actual = pcr.composite(BANK, [values[i] for i in QUOTED_PCRS])
    if actual != attest.pcr_digest:
        raise _Fail(
            f"The reported PCR values hash to {actual.hex()}, not the quoted pcrDigest "
            f"{attest.pcr_digest.hex()}."
        )


class Links:
    """The Azure checks of one verification. Each returns its reason for passing, or raises
    `CheckSkipped` / `CheckFailed` with the reason."""

    def __init__(
        self,
        decoded: DecodedEvidence,
        trust: TrustInputs,
        policy: VmPolicy,
        report_type: hcl.ReportType,
    ) -> None:
        self.d, self.trust, self.policy, self.report_type = decoded, trust, policy, report_type
        self.report: hcl.HclReport | None = None
        self.runtime: rd.RuntimeData | None = None
        self.attest: tpm.Attest | None = None
        self.pcrs_quoted = False
        self.hcl_error = ""
        if decoded.hcl_report is not None:
            try:
                report = hcl.parse(decoded.hcl_report)
            except hcl.HclFormatError as error:
                self.hcl_error = _clause(error)
            else:
                if report.report_type is report_type:
                    self.report = report
                else:
                    self.hcl_error = (
                        f"it holds a {report.report_type.name} report, not the "
                        f"{report_type.name} report this evidence type carries"
                    )

    def checks(self) -> tuple[NamedCheck, ...]:
        return (
            (SHAPE, self.shape), (HCL_FORMAT, self.hcl_format), (RUNTIME_DATA, self.runtime_data),
            (QUOTE_FORMAT, self.quote_format), (QUOTE_SIGNATURE, self.quote_signature),
            (QUOTE_NONCE, self.quote_nonce), (QUOTE_PCRS, self.quote_pcrs),
            (RUNTIME_DATA_HASH, self.runtime_data_hash), (USER_DATA, self.user_data),
            (VM_CONFIGURATION, self.vm_configuration), (PCRS_PINNED, self.pcrs_pinned),
        )  # fmt: skip

    def hcl_report(self) -> hcl.HclReport:
        if self.report is None:
            raise _Skip(f"The HCL report is unusable (see {HCL_FORMAT}).")
        return self.report

    def _runtime(self) -> rd.RuntimeData:
        if self.runtime is None:
            raise _Skip(f"The runtime data is unusable (see {RUNTIME_DATA}).")
        return self.runtime

    def _attest(self) -> tpm.Attest:
        if self.attest is None:
            raise _Skip(f"The quote's TPMS_ATTEST is unusable (see {QUOTE_FORMAT}).")
        return self.attest

    def shape(self) -> str:
        if self.d.problems:
            raise _Fail("The evidence is malformed: " + "; ".join(self.d.problems) + ".")
        return "Every member is present, of its type, and decodes."

    def hcl_format(self) -> str:
        if self.d.hcl_report is None:
            raise _Skip(f"The evidence carries no usable hcl_report (see {SHAPE}).")
        if self.report is None:
            raise _Fail(f"The HCL report is refused: {self.hcl_error}.")
        r = self.report
        return (
            f"An HCL report v{r.version} holding a {r.report_type.name} report and "
            f"{len(r.runtime_data)} bytes of runtime data; header, request data and padding "
            "are of the one layout accepted."
        )

    def runtime_data(self) -> str:
        report = self.hcl_report()
        try:
            self.runtime = rd.parse(report.runtime_data)
        except rd.RuntimeDataError as error:
            raise _Fail(f"The runtime data is refused: {_clause(error)}.") from None
        bits = self.runtime.ak_public.key_size
        return f"The runtime data is a JSON document with HCLAkPub (RSA-{bits})."

    def quote_format(self) -> str:
        raw = self.d.quote.attest
        if raw is None:
            raise _Skip(f"The evidence carries no usable tpm_quote.attest (see {SHAPE}).")
        self.attest = quote_attest(raw)
        return "A TPM_ST_ATTEST_QUOTE (magic 0xff544347) over SHA-256 PCRs 0-23."

    def quote_signature(self) -> str:
        # Judged on the raw bytes, not the parsed attest, so that any change to the signed
        # structure fails here even when it also makes it malformed.
        attest, blob = self.d.quote.attest, self.d.quote.signature
        if attest is None or blob is None:
            raise _Skip(f"The quote's attest or signature is unusable (see {SHAPE}).")
        verify_quote_signature(self._runtime().ak_public, attest, blob)
        return "HCLAkPub, the key the runtime data names, signed the quote (RSASSA, SHA-256)."

    def quote_nonce(self) -> str:
        return require_binding(
            self._attest().extra_data,
            self.trust.binding,
            what="The quote's extraData",
            made="the quote was made",
        )

    def quote_pcrs(self) -> str:
        attest, values = self._attest(), self.d.quote.pcrs
        if values is None:
            raise _Skip(f"The evidence carries no usable tpm_quote.pcrs (see {SHAPE}).")
        verify_quote_pcrs(attest, values)
        self.pcrs_quoted = True
        return "The reported SHA-256 PCRs 0-23 hash to the quoted pcrDigest."

    def runtime_data_hash(self) -> str:
        report = self.hcl_report()
        if report.report_data != report.expected_report_data:
            raise _Fail(
                f"The {report.report_type.name} report's REPORT_DATA "
                f"{_prefix(report.report_data)} is not the SHA-256 of the runtime data "
                f"({report.runtime_data_digest.hex()}) followed by 32 zero bytes: the runtime "
                "data (and so HCLAkPub) is not the one the hardware report attests."
            )
        return (
            f"REPORT_DATA is the SHA-256 of the {len(report.runtime_data)}-byte runtime data "
            "followed by 32 zero bytes."
        )

    def user_data(self) -> str:
        runtime, binding = self._runtime(), self.trust.binding
        if not any(runtime.user_data):
            raise _Skip(
                "The paravisor carried no user data: the binding reaches the report through "
                "the AK quote only."
            )
        if len(binding) > hcl.USER_DATA_SIZE:
            raise _Fail(f"The binding is {len(binding)} bytes, longer than the user data.")
        expected = binding + bytes(hcl.USER_DATA_SIZE - len(binding))
        if runtime.user_data != expected:
            raise _Fail(
                f"The runtime data's user-data {_prefix(runtime.user_data)} is not the session "
                f"binding {_prefix(binding)} followed by zero bytes: the report was made for "
                "another session or claim."
            )
        return "The runtime data's user-data is the session binding followed by zero bytes."

    def vm_configuration(self) -> str:
        return self.policy.judge(self._runtime().vm_configuration)

    def pcrs_pinned(self) -> str:
        pinned = self.policy.pcrs
        if not pinned:
            raise _Skip("The auditor's platform policy pins no PCRs (its pcrs key).")
        values = self.d.quote.pcrs
        if values is None or not self.pcrs_quoted:
            raise _Skip(f"The PCR values are not the quoted ones (see {QUOTE_PCRS}).")
        differ = [
            f"PCR {index} is {values[index].hex()}, not {value.hex()}"
            for index, value in sorted(pinned.items())
            if values[index] != value
        ]
        if differ:
            raise _Fail(f"The quoted {BANK} PCRs differ from the pins: {'; '.join(differ)}.")
        listed = ", ".join(str(index) for index in sorted(pinned))
        return f"The quoted {BANK} PCR(s) {listed} hold the pinned values."
