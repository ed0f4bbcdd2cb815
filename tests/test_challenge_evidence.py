"""A verifier's challenge through the evidence layer, with real SQLite stores and the
offline verifier: the session binds it (binding version 2) when it opens, when its
evidence is renewed and when a later process recovers it; every claim states it; and a
claim whose nonce was changed or removed, even re-signed by the session's own key, fails."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from cmcp_cli.attestation import software
from cmcp_cli.attestation.api import CheckStatus
from cmcp_cli.attestation.manager import load_providers
from cmcp_cli.audit.processes import lock_store, record_start
from cmcp_cli.audit.recorder import SessionRecorder
from cmcp_cli.audit.session_record import SessionPolicy, start_record
from cmcp_cli.audit.store import AuditStore, iter_lines
from cmcp_cli.claim.keys import ClaimKey
from cmcp_cli.claim.model import sign_claim
from cmcp_cli.errors import CmcpError
from cmcp_cli.evidence.attesting import Attestor, attest_key
from cmcp_cli.evidence.freshness import renew_evidence
from cmcp_cli.evidence.recovery import recover_sessions
from cmcp_cli.evidence.session import EvidenceSession
from cmcp_cli.verify.claim import VerifyOptions, VerifyReport, verify_document
from tests.gateway_support import statuses as cli_statuses
from tests.gateway_support import verify
from tests.sessions import StepClock, record_session
from tests.support import challenge, claim_binding

ATTESTOR = Attestor.load(software.SPEC, "0.1.0")
POLICY = SessionPolicy(
    bundle_hash="sha256:" + "11" * 32,
    policy_version="1.0.0",
    catalog_hash="sha256:" + "22" * 32,
    enforcement_mode="enforcing",
    data_class_order=("public", "internal"),
)


def verified(
    document: dict[str, Any], db: Path | None, nonce: str | None
) -> tuple[VerifyReport, dict[str, CheckStatus]]:
    options = VerifyOptions(
        audit_log=db,
        allow_software=True,
        expected_nonce=nonce,
        at=datetime.fromtimestamp(document.get("trace", document)["iat"] + 1, UTC),
    )
    report = verify_document(document, options, load_providers())
    return report, {check.name: check.status for check in report.checks}


def reason(report: VerifyReport, name: str) -> str:
    (check,) = [c for c in report.checks if c.name == name]
    return check.reason


def session_start(db: Path, session_id: str) -> dict[str, Any]:
    first = json.loads(next(iter(iter_lines(db, session_id))))
    assert first["type"] == "session_start"
    return dict(first)


def test_a_session_opened_with_a_challenge_binds_it_and_every_claim_states_it(
    tmp_path: Path,
) -> None:
    nonce = challenge()
    recorded = record_session(tmp_path, challenge=nonce)
    claim = recorded.claim
    assert claim["trace"]["runtime"]["nonce"] == nonce
    assert recorded.record["runtime"]["nonce"] == nonce  # the record is the claim's trace
    attestation = claim["gateway"]["attestation"]
    assert attestation["binding"] == claim_binding(claim, nonce) != claim_binding(claim, None)
    assert attestation["evidence"]["binding"] == claim_binding(claim, nonce)  # what was attested
    assert session_start(recorded.db, recorded.session_id)["challenge"] == nonce

    report, checks = verified(claim, recorded.db, nonce)
    assert report.exit_code == 0, report.to_json()
    assert checks["nonce"] == checks["binding"] == checks["evidence.binding"] == CheckStatus.PASS
    assert checks["log: session"] == checks["log: issuer"] == CheckStatus.PASS
    assert "runtime.nonce (binding version 2)" in reason(report, "binding")
    report, checks = verified(recorded.record, recorded.db, nonce)
    assert checks["nonce"] is CheckStatus.PASS and not report.failed, report.to_json()
    assert "carries no evidence over it" in reason(report, "nonce")

    report, checks = verified(claim, recorded.db, challenge())
    assert checks["nonce"] is CheckStatus.FAIL and report.exit_code == 1
    assert f"runtime.nonce is {nonce}, not the expected" in reason(report, "nonce")
    report, checks = verified(claim, recorded.db, None)
    assert checks["nonce"] is CheckStatus.SKIP and not report.failed
    assert reason(report, "nonce") == f"no --expected-nonce; the claim states runtime.nonce {nonce}"


def test_without_a_challenge_nothing_changes(tmp_path: Path) -> None:
    recorded = record_session(tmp_path)
    claim = recorded.claim
    assert "nonce" not in claim["trace"]["runtime"]
    assert claim["gateway"]["attestation"]["binding"] == claim_binding(claim, None)  # version 1
    assert "challenge" not in session_start(recorded.db, recorded.session_id)
    report, checks = verified(claim, recorded.db, None)
    assert report.exit_code == 0 and checks["nonce"] is CheckStatus.SKIP
    assert "states no runtime.nonce" in reason(report, "nonce")
    assert "runtime.nonce" not in reason(report, "binding")
    # an auditor who expects a nonce is told the claim answers no challenge
    report, checks = verified(claim, recorded.db, challenge())
    assert checks["nonce"] is CheckStatus.FAIL and report.exit_code == 1
    assert "opened without a challenge" in reason(report, "nonce")


def test_a_nonce_changed_or_removed_and_re_signed_fails(tmp_path: Path) -> None:
    """Even the session's own key (which a forger does not hold) cannot move a claim to
    another challenge: the evidence is over the one the session was opened with."""
    nonce, other, key = challenge(), challenge(), ClaimKey.generate()
    recorded = record_session(tmp_path, challenge=nonce, key=key)

    changed = json.loads(json.dumps(recorded.claim))
    changed["trace"]["runtime"]["nonce"] = other
    report, checks = verified(sign_claim(changed, key), recorded.db, other)
    assert checks["signature"] is CheckStatus.PASS and checks["nonce"] is CheckStatus.PASS
    assert checks["binding"] is CheckStatus.FAIL
    assert checks["evidence.binding"] is CheckStatus.FAIL
    assert checks["log: session"] is CheckStatus.FAIL
    assert f'trace.runtime.nonce: the claim states "{other}", the log gives "{nonce}"' in reason(
        report, "log: session"
    )

    # the stated binding made to agree: the evidence still names the original one
    changed["gateway"]["attestation"]["binding"] = claim_binding(changed, other)
    report, checks = verified(sign_claim(changed, key), recorded.db, other)
    assert checks["binding"] is CheckStatus.PASS
    assert checks["evidence.binding"] is CheckStatus.FAIL and report.exit_code == 1

    removed = json.loads(json.dumps(recorded.claim))
    del removed["trace"]["runtime"]["nonce"]
    removed["gateway"]["attestation"]["binding"] = claim_binding(removed, None)
    report, checks = verified(sign_claim(removed, key), recorded.db, None)
    assert checks["binding"] is CheckStatus.PASS
    assert checks["evidence.binding"] is CheckStatus.FAIL
    assert checks["log: session"] is CheckStatus.FAIL and report.exit_code == 1


def test_renewed_evidence_is_over_the_same_challenge(tmp_path: Path) -> None:
    nonce = challenge()
    attestor = replace(ATTESTOR, validity_seconds=60)
    renewed: dict[str, Any] = {}

    def during(session: EvidenceSession) -> None:
        opened = session.attestation["generated_at"]
        clock = session.clock
        assert isinstance(clock, StepClock)
        clock.now += timedelta(seconds=50)
        assert renew_evidence(session, attestor, policy="fail_closed").fresh
        renewed["newer"] = session.attestation["generated_at"] > opened

    recorded = record_session(tmp_path, challenge=nonce, attestor=attestor, during=during)
    assert renewed["newer"]
    claim = recorded.claim
    assert claim["gateway"]["attestation"]["evidence"]["binding"] == claim_binding(claim, nonce)
    report, checks = verified(claim, recorded.db, nonce)
    assert report.exit_code == 0, report.to_json()
    assert checks["evidence.binding"] is CheckStatus.PASS


def _interrupted(db: Path, session_id: str, nonce: str | None) -> None:
    """A session of a process that died: opened, never closed."""
    with AuditStore(db) as store:
        EvidenceSession(
            store=store,
            session_id=session_id,
            policy=POLICY,
            attestor=ATTESTOR,
            process_id="proc-dead",
            challenge=nonce,
        )


def _recover(db: Path, claims: Path) -> tuple[list[str], list[str]]:
    claims.mkdir(exist_ok=True)
    lock = lock_store(db, "proc-new")
    try:
        record_start(db, lock.holder)
        with AuditStore(db) as store:
            report = recover_sessions(
                store, attestor=ATTESTOR, claims_dir=claims, process_id="proc-new"
            )
    finally:
        lock.release()
    return [r.session_id for r in report.recovered], [t.reason for t in report.truncated]


def test_a_recovering_process_binds_the_sessions_challenge(tmp_path: Path) -> None:
    db, claims, nonce = tmp_path / "audit.db", tmp_path / "claims", challenge()
    _interrupted(db, "challenged", nonce)
    _interrupted(db, "plain", None)
    recovered, truncated = _recover(db, claims)
    assert sorted(recovered) == ["challenged", "plain"] and truncated == []

    claim = json.loads((claims / "challenged.claim.json").read_text())
    assert claim["gateway"]["recovery"]["process"] == "proc-new"
    assert claim["trace"]["runtime"]["nonce"] == nonce
    # the recovering process's own key, bound with the session's challenge
    assert claim["gateway"]["attestation"]["evidence"]["binding"] == claim_binding(claim, nonce)
    report, checks = verified(claim, db, nonce)
    assert report.exit_code == 0, report.to_json()
    assert checks["log: session"] is CheckStatus.PASS

    plain = json.loads((claims / "plain.claim.json").read_text())
    assert "nonce" not in plain["trace"]["runtime"]
    assert plain["gateway"]["attestation"]["binding"] == claim_binding(plain, None)


def test_a_recorded_challenge_that_is_not_one_is_never_recovered_over(tmp_path: Path) -> None:
    db = tmp_path / "audit.db"
    with AuditStore(db) as store:
        key = ClaimKey.generate()
        attested = attest_key(
            ATTESTOR,
            key=key,
            bundle_hash=POLICY.bundle_hash,
            catalog_hash=POLICY.catalog_hash,
            gateway_digest="sha256:" + "33" * 32,
            process_id="proc-dead",
        )
        recorder = SessionRecorder(store, "odd")
        recorder.start(start_record("a", POLICY, attested.issuer, challenge="abcdefgh"))
    recovered, truncated = _recover(db, tmp_path / "claims")
    assert recovered == []
    assert truncated == [
        "its session_start records a challenge that is not one (a challenge encodes 6 bytes; "
        "it must encode 16 to 64 random bytes (e.g. `openssl rand 32 | basenc --base64url "
        "| tr -d =`))"
    ]


@pytest.mark.parametrize("bad", ["short", "has space in it and is long enough", 16 * "é"])
def test_a_session_is_never_opened_over_a_malformed_challenge(tmp_path: Path, bad: str) -> None:
    with AuditStore(tmp_path / "audit.db") as store, pytest.raises(CmcpError) as refused:
        EvidenceSession(
            store=store, session_id="s", policy=POLICY, attestor=ATTESTOR, challenge=bad
        )
    assert refused.value.message.startswith("the session's challenge cannot be bound: ")
    assert list(iter_lines(tmp_path / "audit.db", "s")) == []


BEFORE_CHALLENGES = Path(__file__).parent / "fixtures" / "claim-1.0"


def test_a_claim_made_before_challenges_existed_verifies_unchanged() -> None:
    claim_path = BEFORE_CHALLENGES / "before-challenges.claim.json"
    claim = json.loads(claim_path.read_text(encoding="utf-8"))
    assert claim["cmcp_version"] == "1.0" and "signature" not in claim["trace"]
    assert claim["gateway"]["attestation"]["binding"] == claim_binding(claim, None)  # version 1
    at = str(claim["trace"]["iat"] + 1)
    audit = BEFORE_CHALLENGES / "audit.jsonl"
    for path in (claim_path, BEFORE_CHALLENGES / "before-challenges.record.json"):
        code, report = verify(path, "--allow-software", "--at", at, "--audit-log", audit)
        assert code == 0, report
        checks = cli_statuses(report)
        assert checks["signature"] == checks["audit log"] == "pass"
        assert checks["nonce"] == "skip"
    code, report = verify(claim_path, "--allow-software", "--at", at)
    assert cli_statuses(report)["binding"] == "pass" and code == 0
    code, report = verify(
        claim_path, "--allow-software", "--at", at, "--expected-nonce", challenge()
    )
    assert code == 1 and cli_statuses(report)["nonce"] == "fail"
