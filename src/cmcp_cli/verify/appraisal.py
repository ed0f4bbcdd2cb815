"""The `appraisal` check: a claim's `trace.appraisal` is exactly what its evidence states and
its provider's verifier confirmed.

Most evidence states no appraisal (hardware evidence is appraised by `cmcp verify` itself),
and the claim must then say `none` by `urn:cmcp:appraisal:none`. Evidence that is a third
party's appraisal (an OPAQUE token) states its status and issuer, confirmed only when the
verifier checked its signature (`EvidenceVerdict.appraisal`); the claim must state exactly
that. So an operator who holds the gateway's key still cannot write "affirming" into a claim.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from cmcp_cli.attestation.api import Check, EvidenceVerdict
from cmcp_cli.claim.model import NO_APPRAISAL_VERIFIER

NAME: Final = "appraisal"


def record_appraisal_check(stated: Mapping[str, Any]) -> Check:
    """For a standalone TRACE record, which carries no evidence: an appraisal it states
    cannot be confirmed here, so it is skipped and the record is not verifiable here."""
    status, verifier = stated["status"], stated["verifier"]
    if (status, verifier) == ("none", NO_APPRAISAL_VERIFIER):
        return Check.passed(NAME, "the record states no appraisal")
    return Check.skipped(
        NAME,
        f"the record states appraisal {status!r} by {verifier}, which only the evidence of "
        "its GatewayClaim can confirm: verify the claim",
    )


def appraisal_check(stated: Mapping[str, Any], verdict: EvidenceVerdict) -> Check:
    """`stated` is the claim's well-formed `trace.appraisal`; `verdict` its evidence's."""
    status, verifier = stated["status"], stated["verifier"]
    confirmed = verdict.appraisal
    if confirmed is None:
        if (status, verifier) == ("none", NO_APPRAISAL_VERIFIER):
            return Check.passed(NAME, "the claim states no appraisal, and its evidence none")
        return Check.failed(
            NAME,
            f"the claim states appraisal {status!r} by {verifier}, but its evidence states no "
            "appraisal this verifier confirmed (a third party's appraisal counts only once its "
            "signature checks out)",
        )
    if (status, verifier) == (confirmed.status, confirmed.verifier):
        return Check.passed(
            NAME, f"{status!r} by {verifier}, as the verified evidence states (not hardware)"
        )
    return Check.failed(
        NAME,
        f"the claim states appraisal {status!r} by {verifier}, but its evidence states "
        f"{confirmed.status!r} by {confirmed.verifier}",
    )
