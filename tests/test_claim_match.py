"""A claim against its session's log (`match_claim`): the issuer of a recovered session,
records that lack what a claim states, and a chain cut short."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from cmcp_cli.attestation.binding import compute_binding
from cmcp_cli.audit.issuer import Issuer
from cmcp_cli.audit.matching import LOG_CHECKS, ClaimMatch, match_claim
from cmcp_cli.audit.recorder import SessionRecorder
from cmcp_cli.audit.replay import SessionReplay, replay_log
from cmcp_cli.audit.report import claim_key_thumbprint
from cmcp_cli.audit.session_record import (
    INTERRUPTED,
    SessionPolicy,
    claim_facts,
    end_record,
    start_record,
)
from cmcp_cli.audit.store import AuditStore
from cmcp_cli.claim.canonical import canonical_sha256
from cmcp_cli.claim.keys import ClaimKey
from cmcp_cli.claim.model import build_claim

POLICY = SessionPolicy(
    bundle_hash="sha256:" + "b" * 64,
    catalog_hash="sha256:" + "c" * 64,
    enforcement_mode="enforcing",
    data_class_order=("public", "internal"),
    policy_version="1.0.0",
    trust_domain="cmcp.local",
    model_provider="anthropic",
    model_id="claude-test",
)
DIGEST = "sha256:" + "d" * 64


def evidence_of(key: ClaimKey) -> dict[str, Any]:
    binding = compute_binding(
        key_thumbprint=key.thumbprint,
        bundle_hash=POLICY.bundle_hash,
        catalog_hash=POLICY.catalog_hash,
        gateway_digest=DIGEST,
    )
    return {"binding": binding.hex(), "gateway_digest": DIGEST}


def issuer(process: str, key: ClaimKey) -> Issuer:
    return Issuer(
        process=process,
        key_thumbprint=key.thumbprint,
        platform="software-only",
        measurement=DIGEST,
        evidence_digest=canonical_sha256(evidence_of(key)),
        gateway_version="0.1.0",
        gateway_digest=DIGEST,
        provider="software-only",
        provider_version="0.1.0",
        evidence_type="cmcp-software-v1",
        generated_at="2026-12-01T10:00:00.000000Z",
    )


def recorded(
    db: Path, start: dict[str, Any], end: dict[str, Any] | None, session_id: str = "s-1"
) -> SessionReplay:
    with AuditStore(db) as store:
        recorder = SessionRecorder(store, session_id)
        recorder.start(start)
        recorder.fault(error="upstream went away", stage="forward")
        if end is not None:
            recorder.end(end)
    return replay_log(db)[session_id]


def claim_of(replay: SessionReplay, key: ClaimKey) -> dict[str, Any]:
    assert replay.start is not None and replay.end is not None
    evidence = evidence_of(key)
    attestation = {"evidence": evidence, "binding": evidence["binding"]}
    return build_claim(claim_facts(replay.start, replay.end, replay.state, attestation), key)


def failing(match: ClaimMatch) -> dict[str, list[str]]:
    return {c.name: [m.message for m in c.mismatches] for c in match.checks if c.mismatches}


def test_a_recovered_sessions_claim_is_the_recovering_processs(tmp_path: Path) -> None:
    own, recovering = ClaimKey.generate(), ClaimKey.generate()
    replay = recorded(
        tmp_path / "audit.db",
        start_record("agent-a", POLICY, issuer("p-1", own)),
        end_record(
            reason=INTERRUPTED,
            issued_at=1_800_000_000,
            sequence_number=1,
            recovered_by=issuer("p-2", recovering),
        ),
    )
    assert claim_key_thumbprint(replay) == recovering.thumbprint
    claim = claim_of(replay, recovering)
    assert claim["gateway"]["recovery"] == {"interrupted_process": "p-1", "process": "p-2"}
    match = match_claim(replay, claim)
    assert match.unmatched is None and failing(match) == {}
    assert [c.name for c in match.checks] == list(LOG_CHECKS)

    # the interrupted process's key does not sign what the recovering process issued
    evidence = evidence_of(own)
    attestation = {"evidence": evidence, "binding": evidence["binding"]}
    forged = build_claim(
        claim_facts(replay.start or {}, replay.end or {}, replay.state, attestation), own
    )
    reasons = failing(match_claim(replay, forged))
    assert set(reasons) == {"log: issuer"}
    assert any(
        f"the log gives key {recovering.thumbprint} (session_end.recovered_by.key_thumbprint)"
        in reason
        for reason in reasons["log: issuer"]
    )

    # nor does a claim that hides the recovery
    hidden = copy.deepcopy(claim)
    del hidden["gateway"]["recovery"]
    assert failing(match_claim(replay, hidden)) == {
        "log: issuer": [
            'gateway.recovery: the claim states nothing, the log gives {"interrupted_process":'
            '"p-1","process":"p-2"}'
        ]
    }


def test_records_that_lack_a_member_the_claim_states_match_no_claim(tmp_path: Path) -> None:
    key = ClaimKey.generate()
    start = start_record("agent-a", POLICY, issuer("p-1", key))
    end = end_record(reason="closed", issued_at=1_800_000_000, sequence_number=1)
    claim = claim_of(recorded(tmp_path / "full.db", start, end), key)
    for record, member in (("session_start", "model"), ("session_start", "key_thumbprint")):
        partial = {k: v for k, v in start.items() if k != member}
        replay = recorded(tmp_path / f"{member}.db", partial, end)
        match = match_claim(replay, claim)
        assert (
            match.unmatched == f"the log cannot vouch for the claim: {record} records no {member}"
        )
    mistyped = {**start, "model": "claude-test"}
    match = match_claim(recorded(tmp_path / "mistyped.db", mistyped, end), claim)
    assert match.unmatched == (
        "the log cannot vouch for the claim: session_start records model as a string, not an object"
    )
    no_iat = {**end, "claim": {"sequence_number": 1}}
    match = match_claim(recorded(tmp_path / "iat.db", start, no_iat), claim)
    assert match.unmatched == "the log cannot vouch for the claim: session_end.claim records no iat"
    unknown_mode = {**start, "enforcement_mode": "lenient"}
    match = match_claim(recorded(tmp_path / "mode.db", unknown_mode, end), claim)
    assert match.unmatched is not None and "enforcement_mode 'lenient'" in match.unmatched


def test_a_chain_without_session_end_vouches_for_nothing_it_would_fix(tmp_path: Path) -> None:
    key = ClaimKey.generate()
    start = start_record("agent-a", POLICY, issuer("p-1", key))
    end = end_record(reason="closed", issued_at=1_800_000_000, sequence_number=1)
    claim = claim_of(recorded(tmp_path / "full.db", start, end), key)
    replay = recorded(tmp_path / "open.db", start, None)
    assert claim_key_thumbprint(replay) == key.thumbprint  # an open session's key is known
    reasons = failing(match_claim(replay, claim))
    assert reasons["log: issuance"] == [
        "the log has no session_end of session s-1: nothing there vouches for trace.iat and "
        "gateway.sequence_number"
    ]
    assert any(
        "gateway.audit_chain.length: the claim states 3, the log gives 2" in r
        for r in (reasons["log: chain"])
    )
    # what session_start fixes is still compared
    assert "log: session" not in reasons and "log: issuer" not in reasons
