"""Reading an `EvidenceVerdict` in a provider's tests: each check's status by name, the
reason a check gave, and a failure asserted by check name and reason fragments."""

from __future__ import annotations

from cmcp_cli.attestation.api import CheckStatus, EvidenceVerdict


def statuses(verdict: EvidenceVerdict) -> dict[str, CheckStatus]:
    return {check.name: check.status for check in verdict.checks}


def reason(verdict: EvidenceVerdict, name: str) -> str:
    return next(check.reason for check in verdict.checks if check.name == name)


def assert_fails(verdict: EvidenceVerdict, name: str, *fragments: str) -> None:
    """Check `name` failed, for a reason containing every fragment, and the verdict is
    neither passing nor hardware-attested."""
    assert statuses(verdict)[name] is CheckStatus.FAIL, verdict.checks
    assert verdict.failed and not verdict.hardware_attested
    for fragment in fragments:
        assert fragment in reason(verdict, name), reason(verdict, name)
