"""The check names tests expect to pass, written out (not taken from the verifiers, so
that a check dropped from a verifier fails the tests that list it)."""

from __future__ import annotations

from typing import Final

# The links the evidence proves by itself, whatever session it is judged for.
EVIDENCE_LINKS: Final = (
    "azure.evidence.shape", "azure.hcl.format", "azure.runtime_data", "azure.quote.format",
    "azure.quote.signature", "azure.quote.pcrs", "azure.runtime_data.hash",
    "azure.vm_configuration",
)  # fmt: skip
# The links that carry the session binding (user data skips when the paravisor carried none).
BINDING_LINKS: Final = ("azure.quote.nonce", "azure.user_data")
# The hardware report's checks, judged by cmcp-sev's and cmcp-tdx's verifiers.
SNP_HARDWARE: Final = (
    "azure.snp.vmpl", "sev.evidence.shape", "sev.report.version", "sev.product",
    "sev.vcek.chain", "sev.ark.pinned", "sev.report.signature", "sev.vcek.tcb",
    "sev.vcek.chip_id", "sev.report_data", "sev.policy.debug",
)  # fmt: skip
TDX_HARDWARE: Final = (
    "azure.td_quote.body", "tdx.evidence.shape", "tdx.quote.header", "tdx.pck.chain",
    "tdx.root.pinned", "tdx.qe.signature", "tdx.qe.binding", "tdx.quote.signature",
    "tdx.report_data", "tdx.td.debug",
)  # fmt: skip
