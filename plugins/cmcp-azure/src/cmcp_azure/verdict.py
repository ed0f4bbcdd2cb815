"""One verdict of an Azure verification: the Azure links' checks, then the hardware
verifier's (cmcp-sev's or cmcp-tdx's, under their own names)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

from cmcp_azure.links import HCL_FORMAT, MAY_SKIP
from cmcp_cli.attestation.api import Check, EvidenceVerdict
from cmcp_cli.attestation.toolkit import hardware_verdict

# The runtime data's hash is what the hardware report must carry: without a usable HCL
# report there is nothing to judge the hardware report against.
NO_HARDWARE_REPORT: Final = f"The HCL report is unusable (see {HCL_FORMAT})."


def combine(
    azure: tuple[Check, ...], hardware: EvidenceVerdict | None, hardware_checks: Iterable[str]
) -> EvidenceVerdict:
    """Hardware-attested only when no Azure check failed, every one passed (user data and
    pinned PCRs may skip) and the hardware verifier's verdict is hardware-attested."""
    links = hardware_verdict(azure, (c.name for c in azure), None, may_skip=MAY_SKIP)
    if hardware is None:
        skipped = tuple(Check.skipped(name, NO_HARDWARE_REPORT) for name in hardware_checks)
        return EvidenceVerdict(azure + skipped, False, None)
    attested = links.hardware_attested and hardware.hardware_attested
    return EvidenceVerdict(azure + hardware.checks, attested, hardware.measurement)
