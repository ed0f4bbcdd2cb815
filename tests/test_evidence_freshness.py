"""Freshness of a claim's evidence, as the library records it and `verify` judges it: the
claim states `validity_seconds`, and a claim whose newest evidence was stale when it was
issued fails `freshness`; a session renewed in time carries the renewal's evidence and
passes. Time is a step clock the test moves, so nothing waits."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cmcp_cli.attestation import software
from cmcp_cli.attestation.api import CheckStatus
from cmcp_cli.attestation.manager import load_providers
from cmcp_cli.evidence.attesting import Attestor
from cmcp_cli.evidence.freshness import renew_evidence
from cmcp_cli.evidence.session import EvidenceSession
from cmcp_cli.verify.claim import VerifyOptions, verify_document
from tests.sessions import StepClock, record_session

VALIDITY = 60


def _attestor() -> Attestor:
    return replace(Attestor.load(software.SPEC, "0.1.0"), validity_seconds=VALIDITY)


def _advance(session: EvidenceSession, seconds: float) -> None:
    clock = session.clock
    assert isinstance(clock, StepClock)
    clock.now += timedelta(seconds=seconds)


def _freshness(claim: dict[str, Any], db: Path) -> tuple[CheckStatus, str]:
    options = VerifyOptions(
        audit_log=db,
        allow_software=True,
        at=datetime.fromtimestamp(claim["trace"]["iat"] + 1, UTC),
    )
    report = verify_document(claim, options, load_providers())
    (check,) = [c for c in report.checks if c.name == "freshness"]
    (issuer,) = [c for c in report.checks if c.name == "log: issuer"]
    assert issuer.status is CheckStatus.PASS, issuer.reason
    return check.status, check.reason


def test_a_claim_whose_evidence_outlived_its_validity_fails_freshness(tmp_path: Path) -> None:
    recorded = record_session(
        tmp_path, attestor=_attestor(), during=lambda session: _advance(session, VALIDITY + 5)
    )
    assert recorded.claim["gateway"]["attestation"]["validity_seconds"] == VALIDITY
    status, reason = _freshness(recorded.claim, recorded.db)
    assert status is CheckStatus.FAIL
    assert "went stale" in reason and f"validity_seconds is {VALIDITY}" in reason


def test_evidence_renewed_in_time_keeps_the_claim_fresh(tmp_path: Path) -> None:
    attestor = _attestor()
    opened: dict[str, Any] = {}

    def during(session: EvidenceSession) -> None:
        opened["generated_at"] = session.attestation["generated_at"]
        _advance(session, VALIDITY * 0.8)
        assert renew_evidence(session, attestor, policy="fail_closed").fresh
        _advance(session, VALIDITY * 0.8)

    recorded = record_session(tmp_path, attestor=attestor, during=during)
    attestation = recorded.claim["gateway"]["attestation"]
    assert attestation["generated_at"] > opened["generated_at"]  # the renewal's evidence
    assert attestation["stale_warnings"] == 0
    status, reason = _freshness(recorded.claim, recorded.db)
    assert status is CheckStatus.PASS, reason
