"""Claims issued while a session goes on (`claim` entries): each matched with the chain as
of its own entry, however the log is cut into replay segments, and linked in order."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from cmcp_cli.audit.chain import ChainState
from cmcp_cli.audit.entry import SealedEntry
from cmcp_cli.audit.matching import match_claim
from cmcp_cli.audit.record_members import SessionRecordError
from cmcp_cli.audit.recorder import SessionRecorder
from cmcp_cli.audit.replay import replay_chains
from cmcp_cli.audit.session_record import (
    claim_facts,
    claim_record,
    end_record,
    start_record,
)
from cmcp_cli.audit.store import AuditStore, iter_lines
from cmcp_cli.claim.keys import ClaimKey
from cmcp_cli.claim.model import build_claim, claim_digest
from cmcp_cli.evidence.claim_files import write_claim
from cmcp_cli.evidence.session import ClosedSession
from cmcp_cli.verify.sequence import sequence_checks
from tests.test_claim_match import POLICY, evidence_of, failing, issuer


def session_with_claims(db: Path, key: ClaimKey) -> list[dict[str, Any]]:
    """A session of three calls, a claim after each and the last at its end."""
    evidence = evidence_of(key)
    attestation = {"evidence": evidence, "binding": evidence["binding"]}
    claims: list[dict[str, Any]] = []
    with AuditStore(db) as store:
        recorder = SessionRecorder(store, "s-1")
        start = recorder.start(start_record("agent-a", POLICY, issuer("p-1", key))).fields

        def signed(entry: SealedEntry, state: ChainState) -> dict[str, Any]:
            return build_claim(claim_facts(start, entry.fields, state, attestation), key)

        for number in (1, 2, 3):
            recorder.decision(
                call_id=f"s-1/{number}",
                tool="get_weather",
                decision="allow",
                policy_ids=["p"],
                request_sha256="sha256:" + "e" * 64,
                data_class="internal" if number == 2 else "public",
                forwarded=True,
                cedar_request=None,
            )
            recorder.outcome(
                call_id=f"s-1/{number}", response_sha256="sha256:" + "f" * 64, latency_us=5
            )
            previous = claim_digest(claims[-1]) if claims else None
            record = claim_record(
                issued_at=1_800_000_000 + number, sequence_number=number, previous=previous
            )
            claims.append(recorder.claim(record, signed))
        end = recorder.end(
            end_record(
                reason="closed",
                issued_at=1_800_000_009,
                sequence_number=4,
                previous=claim_digest(claims[-1]),
            )
        )
        claims.append(signed(end, recorder.state))
    return claims


@pytest.mark.parametrize("segment_lines", [1, 2, 3, 5, 1000])
def test_each_claim_matches_the_chain_as_of_its_own_entry(
    tmp_path: Path, segment_lines: int
) -> None:
    key = ClaimKey.generate()
    db = tmp_path / "audit.db"
    claims = session_with_claims(db, key)
    replay = replay_chains(iter_lines(db), session_id="s-1", segment_lines=segment_lines)["s-1"]
    assert replay.problems == []
    # a replay of every session keeps no state per claim entry
    assert replay_chains(iter_lines(db), segment_lines=segment_lines)["s-1"].issued == {}
    assert sorted(replay.issued) == [3, 6, 9]  # the seq of each claim entry
    lengths = [c["gateway"]["audit_chain"]["length"] for c in claims]
    assert lengths == [4, 7, 10, 11]
    assert [c["trace"]["data_class"] for c in claims] == ["public"] + ["internal"] * 3
    for claim in claims:
        match = match_claim(replay, claim)
        assert match.unmatched is None and failing(match) == {}, claim["gateway"]
    assert all(check.status.value == "pass" for check in sequence_checks(claims))

    # one claim's chain stated as another's: the counters and the issuance differ
    second = dict(claims[1])
    second["gateway"] = {**claims[1]["gateway"], "sequence_number": 3}
    assert set(failing(match_claim(replay, second))) == {"log: issuance"}
    shifted = dict(claims[1])
    shifted["gateway"] = {
        **claims[1]["gateway"],
        "audit_chain": claims[2]["gateway"]["audit_chain"],
    }
    assert "log: counters" in failing(match_claim(replay, shifted))


def test_a_claim_entry_without_its_link_makes_no_claim(tmp_path: Path) -> None:
    key = ClaimKey.generate()
    with AuditStore(tmp_path / "audit.db") as store:
        recorder = SessionRecorder(store, "s-1")
        start = recorder.start(start_record("agent-a", POLICY, issuer("p-1", key))).fields
        record = {"claim": {"iat": 1_800_000_000, "sequence_number": 1}}
        with pytest.raises(SessionRecordError, match=r"the claim entry\.claim records no previous"):
            recorder.claim(record, lambda entry, state: claim_facts(start, entry.fields, state, {}))


def test_the_latest_file_is_the_highest_sequence_number_written(tmp_path: Path) -> None:
    claims = session_with_claims(tmp_path / "audit.db", ClaimKey.generate())
    folder = tmp_path / "claims"
    folder.mkdir()
    for claim in (claims[0], claims[2], claims[1]):  # claim 2 finishes writing last
        write_claim(folder, "s-1", ClosedSession(claim), numbered=True)
    latest = json.loads((folder / "s-1.claim.json").read_text())
    assert latest == claims[2]
    assert json.loads((folder / "s-1.2.claim.json").read_text()) == claims[1]
    assert sorted(path.name for path in folder.iterdir()) == [
        "s-1.1.claim.json",
        "s-1.1.record.json",
        "s-1.2.claim.json",
        "s-1.2.record.json",
        "s-1.3.claim.json",
        "s-1.3.record.json",
        "s-1.claim.json",
        "s-1.record.json",
    ]
