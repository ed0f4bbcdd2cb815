"""Offline verification of `azure-tdx-hcl-v1` evidence: an Azure TDX CVM's HCL report,
the DCAP quote the host's Quoting Enclave made of its TDREPORT, and a vTPM quote.

The chain proven, each link a named check: the session binding is the vTPM quote's
extraData; HCLAkPub signed it; HCLAkPub is in the runtime data; the runtime data's SHA-256
is the TDREPORT's REPORTDATA (`cmcp_azure.links`); the DCAP quote's TD body is the
TDREPORT's, field by field (the TDREPORT's MAC is checkable only on its CPU, so the quote
is what proves it); and then cmcp-tdx's verifier judges the DCAP quote with that
REPORTDATA expected in place of the binding: PCK chain to a pinned Intel root at the
claim's time, QE report, quote signature, debug, TCB status. The measurement is the
quote's MRTD and RTMRs (zero on Azure: the guest OS is measured into the vTPM's PCRs,
which `pcrs` pins).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, Final

from cmcp_azure import tdreport
from cmcp_azure.evidence import DecodedEvidence, decode_tdx, encode
from cmcp_azure.hcl import ReportType
from cmcp_azure.links import SHAPE, Links, expected_report_data
from cmcp_azure.plugin import TDX_NAME
from cmcp_azure.verdict import combine
from cmcp_azure.vm_policy import VmPolicy
from cmcp_cli.attestation.api import EvidenceVerdict, TrustInputs, Verifier
from cmcp_cli.attestation.toolkit import CheckFailed as _Fail
from cmcp_cli.attestation.toolkit import CheckSkipped as _Skip
from cmcp_cli.attestation.toolkit import NamedCheck, run_checks
from cmcp_tdx import quote as tdx
from cmcp_tdx import verifier as tdx_verifier
from cmcp_tdx.plugin import PLATFORM_POLICY_KEYS as TDX_POLICY_KEYS

TD_QUOTE_BODY: Final = "azure.td_quote.body"


def _td_quote_body(links: Links, decoded: DecodedEvidence) -> str:
    report = links.hcl_report()
    if decoded.td_quote is None:
        raise _Skip(f"The evidence carries no usable td_quote (see {SHAPE}).")
    try:
        parsed = tdx.parse_quote(decoded.td_quote)
    except tdx.QuoteFormatError:
        raise _Skip(f"The TD quote is unusable (see {tdx_verifier.HEADER}).") from None
    # The host pads the quote with zero bytes; anything else after its declared end is
    # data no signature covers, carried in evidence that is hashed into the claim.
    if parsed.trailing and any(decoded.td_quote[-parsed.trailing :]):
        raise _Fail(
            f"The {parsed.trailing} bytes after the TD quote's declared end are not all zero: "
            "they are covered by no signature."
        )
    quoted = parsed.body
    try:
        stated = tdreport.body_of(report.hardware_report)
    except tdreport.TdReportFormatError as error:
        raise _Fail(f"The HCL report's TDREPORT is refused: {error}.") from None
    differ = [
        field.name
        for field in dataclasses.fields(stated)
        if getattr(stated, field.name) != getattr(quoted, field.name)
    ]
    if differ:
        raise _Fail(
            f"The TD quote's body differs from the HCL report's TDREPORT in {', '.join(differ)}: "
            "the quote was made of another TD report."
        )
    padding = f"; its {parsed.trailing} bytes of padding are zero" if parsed.trailing else ""
    return f"The TD quote's body is the TDREPORT's, field by field (REPORTDATA included){padding}."


class AzureTdxVerifier(Verifier):
    """Judges `azure-tdx-hcl-v1` evidence offline (stdlib and `cryptography` only).
    Collateral the auditor gives takes precedence over the evidence's, as in cmcp-tdx."""

    def verify(self, evidence: Mapping[str, Any], trust: TrustInputs) -> EvidenceVerdict:
        policy, hardware_policy = VmPolicy.parse(  # ProviderError if unusable
            trust.platform_policy, name=f"[{TDX_NAME}]", hardware_keys=TDX_POLICY_KEYS
        )
        decoded = decode_tdx(evidence)
        links = Links(decoded, trust, policy, ReportType.TDX)
        steps: tuple[NamedCheck, ...] = (
            *links.checks(),
            (TD_QUOTE_BODY, lambda: _td_quote_body(links, decoded)),
        )
        azure = run_checks(steps)
        if links.report is None:
            return combine(azure, None, tdx_verifier.CHECKS)
        quote: dict[str, Any] = {}
        if decoded.td_quote is not None:
            quote["quote"] = encode(decoded.td_quote)
        if decoded.collateral is not None:
            quote["collateral"] = decoded.collateral
        hardware = tdx_verifier.TdxVerifier().verify(
            quote,
            dataclasses.replace(trust, platform_policy=hardware_policy),
            report_data=expected_report_data(links.report),
            policy_table=f"[{TDX_NAME}]",
        )
        return combine(azure, hardware, tdx_verifier.CHECKS)
