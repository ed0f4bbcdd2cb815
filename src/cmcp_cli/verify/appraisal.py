"""The `appraisal` check: a claim's `trace.appraisal` is what its evidence allows it to state.

Evidence that is a third party's appraisal (an OPAQUE token) states its status and issuer,
confirmed only when the verifier checked its signature (`EvidenceVerdict.appraisal`); the
claim must state exactly that. Other evidence states no appraisal: over software-mode
evidence the claim must say `none` by `urn:cmcp:appraisal:none`; over hardware evidence it
says that too (claims of gateways that did not appraise), or states the gateway's own
appraisal (`claim.appraisal`): its verifier names `cmcp-gateway` at the claim's
`gateway.gateway_version`, its status is one an appraisal finds, its `policy_ref` has the
form the gateway makes and its `timestamp` is when the evidence the claim carries was
generated. This verifier judges that evidence itself. The stated status is the gateway's
verdict under its own inputs: when the auditor's inputs (`--expected-measurement`,
`--trust-root`, `--collateral`, the provider's `--platform-policy` table, `--allow-debug`)
name the same `policy_ref`, they are the gateway's, so a stated status better than this
verifier's checks find (`status_of`) fails; under other inputs it is judged on form. When no
verifier here can judge the evidence, the form rules still apply. So an operator who holds
the gateway's key still cannot write a third party's name or a verdict over software into a
claim, pass one gateway's appraisal off as another version's, nor state a better verdict
than its evidence earns under the inputs it names.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from cmcp_cli.attestation.api import Check, EvidenceVerdict
from cmcp_cli.claim.appraisal import (
    RUNTIME_STATUSES,
    is_policy_ref,
    runtime_verifier_version,
    unix_seconds,
)
from cmcp_cli.claim.model import NO_APPRAISAL_VERIFIER, SOFTWARE_PLATFORM
from cmcp_cli.evidence.appraising import better_than

NAME: Final = "appraisal"


def record_appraisal_check(stated: Mapping[str, Any], platform: str) -> Check:
    """For a standalone TRACE record, which carries no evidence: an appraisal it states
    cannot be confirmed here, so it is skipped and the record is not verifiable here; a
    gateway's own appraisal of the wrong form, or over `platform` software-only, fails."""
    return _form_only(
        stated,
        "record",
        lambda: _runtime_problem(stated, hardware=platform != SOFTWARE_PLATFORM),
        "which only the evidence of its GatewayClaim can confirm: verify the claim",
    )


@dataclass(frozen=True)
class AuditorAppraisal:
    """What this verifier's own checks of the claim's evidence make of it, as the gateway's
    appraisal would (`status_of`), and the `policy_ref` the auditor's inputs (its pins,
    roots, collateral, platform-policy table and debug setting) would be named by."""

    status: str
    policy_ref: str | None  # None: the auditor's platform-policy table has no canonical form


def appraisal_check(
    stated: Mapping[str, Any],
    verdict: EvidenceVerdict | None,
    claim: Mapping[str, Any],
    auditor: AuditorAppraisal | None = None,
) -> Check:
    """`stated` is the well-formed GatewayClaim `claim`'s `trace.appraisal`; `verdict` its
    CPU evidence's, by its provider's verifier, and `auditor` this verifier's appraisal of
    all of its evidence; both None when no verifier here could judge it (the form rules
    still apply)."""
    status, verifier = stated["status"], stated["verifier"]
    if verdict is None:
        return _unjudged_check(stated, claim)
    confirmed = verdict.appraisal
    if confirmed is None:
        if (status, verifier) == ("none", NO_APPRAISAL_VERIFIER):
            return Check.passed(NAME, "the claim states no appraisal, and its evidence none")
        if runtime_verifier_version(verifier) is not None:
            return _runtime_check(stated, claim, auditor)
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


def _unjudged_check(stated: Mapping[str, Any], claim: Mapping[str, Any]) -> Check:
    """The form rules alone, for a claim whose CPU evidence no verifier here judged."""
    return _form_only(
        stated,
        "claim",
        lambda: _runtime_form_problem(stated, claim),
        "which only a verifier of its evidence can confirm, and none judged it here",
    )


def _form_only(
    stated: Mapping[str, Any], document: str, problem: Callable[[], str | None], unconfirmed: str
) -> Check:
    """An appraisal no evidence here confirms: none passes, the gateway's own of the wrong
    form (`problem`) fails, and any other is skipped (`unconfirmed` says why)."""
    status, verifier = stated["status"], stated["verifier"]
    if (status, verifier) == ("none", NO_APPRAISAL_VERIFIER):
        return Check.passed(NAME, f"the {document} states no appraisal")
    if runtime_verifier_version(verifier) is not None:
        found = problem()
        if found is not None:
            return Check.failed(NAME, found)
    return Check.skipped(
        NAME, f"the {document} states appraisal {status!r} by {verifier}, {unconfirmed}"
    )


def _runtime_check(
    stated: Mapping[str, Any], claim: Mapping[str, Any], auditor: AuditorAppraisal | None
) -> Check:
    """The gateway's own appraisal, stated by a claim whose evidence states none. Under the
    auditor's inputs named by the same `policy_ref` the gateway's verdict is reproducible,
    so a stated status better than this verifier's checks find fails; under other inputs
    the stated status is the gateway's verdict under its own, judged on form."""
    problem = _runtime_form_problem(stated, claim)
    if problem is not None:
        return Check.failed(NAME, problem)
    named = f"cmcp-gateway {runtime_verifier_version(stated['verifier'])}, {stated['policy_ref']}"
    if auditor is not None and auditor.policy_ref == stated["policy_ref"]:
        if better_than(stated["status"], auditor.status):
            return Check.failed(
                NAME,
                f"the claim states the gateway's own appraisal {stated['status']!r} ({named}), "
                f"but under the same inputs (the auditor's recompute to that policy_ref) this "
                f"verifier's checks of the evidence find {auditor.status!r}",
            )
        return Check.passed(
            NAME,
            f"{stated['status']!r}: the gateway's own appraisal ({named}), which this "
            f"verifier's checks under the same inputs reproduce ({auditor.status!r})",
        )
    recomputed = "none" if auditor is None or auditor.policy_ref is None else auditor.policy_ref
    return Check.passed(
        NAME,
        f"{stated['status']!r}: the gateway's own appraisal of its hardware evidence when it "
        f"collected it ({named}); the auditor's inputs differ from the gateway's (they name "
        f"{recomputed}), so this verifier judged that evidence itself with the auditor's",
    )


def _runtime_form_problem(stated: Mapping[str, Any], claim: Mapping[str, Any]) -> str | None:
    """What is wrong with a stated runtime appraisal for this claim: its form, the gateway
    version it names, and its timestamp against the evidence's `generated_at`."""
    gateway = claim["gateway"]
    hardware = claim["trace"]["runtime"]["platform"] != SOFTWARE_PLATFORM
    problem = _runtime_problem(stated, hardware=hardware)
    version = runtime_verifier_version(stated["verifier"])
    if problem is None and version != gateway["gateway_version"]:
        problem = (
            f"the appraisal names cmcp-gateway {version}, but the claim was issued by "
            f"gateway version {gateway['gateway_version']}"
        )
    generated_at = gateway["attestation"]["generated_at"]
    if problem is None and stated["timestamp"] != unix_seconds(generated_at):
        problem = (
            f"appraisal.timestamp {stated['timestamp']} is not when the evidence the claim "
            f"carries was generated ({generated_at})"
        )
    return problem


def _runtime_problem(stated: Mapping[str, Any], *, hardware: bool) -> str | None:
    """What is wrong with the form of a stated runtime appraisal, or None."""
    if not hardware:
        return (
            f"the claim states the gateway's own appraisal ({stated['status']!r} by "
            f"{stated['verifier']}) over software-only evidence, which is never appraised"
        )
    if stated["status"] not in RUNTIME_STATUSES:
        return (
            f"the gateway's own appraisal states {stated['status']!r}, which an appraisal "
            f"does not find (one of {', '.join(RUNTIME_STATUSES)})"
        )
    if not is_policy_ref(stated.get("policy_ref")):
        return (
            f"the gateway's own appraisal names policy {stated.get('policy_ref')!r}, not "
            "urn:cmcp:appraisal-policy:sha256:<64 hex>"
        )
    if "timestamp" not in stated:
        return "the gateway's own appraisal states no timestamp"
    return None
