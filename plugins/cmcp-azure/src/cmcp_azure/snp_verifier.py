"""Offline verification of `azure-sev-snp-hcl-v1` evidence: an Azure SEV-SNP CVM's HCL
report, the VCEK that signed its SNP report, and a vTPM quote.

The chain proven, each link a named check: the session binding is the quote's extraData;
HCLAkPub signed the quote; HCLAkPub is in the runtime data; the runtime data's SHA-256 is
the SNP report's REPORT_DATA (`cmcp_azure.links`); and then cmcp-sev's verifier judges the
SNP report with that REPORT_DATA expected in place of the binding: the VCEK signed it, the
VCEK chains to a pinned AMD root at the claim's time, TCB, chip id, debug policy and the
auditor's minimums. Besides, the report must be the paravisor's: requested at VMPL 0. The
measurement is the report's MEASUREMENT: the paravisor's launch digest (the guest OS is
measured into the vTPM's PCRs, which `pcrs` pins).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, Final

from cmcp_azure.evidence import decode_snp, encode
from cmcp_azure.hcl import ReportType
from cmcp_azure.links import Links, expected_report_data
from cmcp_azure.plugin import SNP_NAME
from cmcp_azure.verdict import combine
from cmcp_azure.vm_policy import VmPolicy
from cmcp_cli.attestation.api import EvidenceVerdict, TrustInputs, Verifier
from cmcp_cli.attestation.toolkit import CheckFailed as _Fail
from cmcp_cli.attestation.toolkit import CheckSkipped as _Skip
from cmcp_cli.attestation.toolkit import NamedCheck, run_checks
from cmcp_sev import structures as snp
from cmcp_sev import verifier as sev
from cmcp_sev.plugin import PLATFORM_POLICY_KEYS as SEV_POLICY_KEYS

VMPL: Final = "azure.snp.vmpl"


def _vmpl(links: Links) -> str:
    # The guest OS runs at a VMPL above the paravisor's 0 and can ask the firmware for a
    # report of its own, over runtime data of its own making (its own "HCLAkPub"): only a
    # VMPL 0 report is the paravisor's.
    try:
        report = snp.parse_report(links.hcl_report().hardware_report)
    except snp.ReportFormatError:
        raise _Skip(f"The SNP report is unusable (see {sev.VERSION}).") from None
    if report.vmpl != 0:
        raise _Fail(
            f"The SNP report was requested at VMPL {report.vmpl}, not 0: by software beside "
            "the paravisor (such as the guest OS), whose runtime data and key prove nothing."
        )
    return "The SNP report was requested at VMPL 0, the paravisor's."


class AzureSnpVerifier(Verifier):
    """Judges `azure-sev-snp-hcl-v1` evidence offline (stdlib and `cryptography` only)."""

    def verify(self, evidence: Mapping[str, Any], trust: TrustInputs) -> EvidenceVerdict:
        policy, hardware_policy = VmPolicy.parse(  # ProviderError if unusable
            trust.platform_policy, name=f"[{SNP_NAME}]", hardware_keys=SEV_POLICY_KEYS
        )
        decoded = decode_snp(evidence)
        links = Links(decoded, trust, policy, ReportType.SNP)
        steps: tuple[NamedCheck, ...] = (*links.checks(), (VMPL, lambda: _vmpl(links)))
        azure = run_checks(steps)
        if links.report is None:
            return combine(azure, None, sev.CHECKS)
        report: dict[str, Any] = {
            "report": encode(links.report.hardware_report),
            "signing_key": "vcek",
        }
        if decoded.vcek is not None:
            report["vcek"] = encode(decoded.vcek)
        if decoded.cert_chain:
            report["cert_chain"] = [encode(cert) for cert in decoded.cert_chain]
        hardware = sev.SevVerifier().verify(
            report,
            dataclasses.replace(trust, platform_policy=hardware_policy),
            report_data=expected_report_data(links.report),
            policy_table=f"[{SNP_NAME}]",
        )
        return combine(azure, hardware, sev.CHECKS)
