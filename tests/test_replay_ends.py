"""How a chain ends: nothing may follow session_end, and every forwarded message of an
ended session has its outcome or its fault, however the log is cut into segments."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import orjson
import pytest

from cmcp_cli.audit.entry import seal
from cmcp_cli.audit.logfile import export_jsonl
from cmcp_cli.audit.replay import ProblemKind, replay_chains
from tests.sessions import RecordedSession, record_session
from tests.support import run_cmcp

Lines = list[bytes]


def exported(recorded: RecordedSession) -> Lines:
    buffer = io.BytesIO()
    export_jsonl(recorded.db, buffer)
    return buffer.getvalue().splitlines()


def rechain(entries: list[dict[str, Any]]) -> Lines:
    """Seal entries as a chain: seq and prev of each follow the one before it."""
    lines: Lines = []
    prev = "sha256:" + "0" * 64
    for seq, entry in enumerate(entries):
        fields = {k: v for k, v in entry.items() if k != "hash"} | {"seq": seq, "prev": prev}
        sealed = seal(fields)
        prev = sealed.hash
        lines.append(sealed.line)
    return lines


def with_fault_after_end(lines: Lines) -> Lines:
    entries = [orjson.loads(line) for line in lines]
    assert entries[-1]["type"] == "session_end"
    late = {**entries[-1], "type": "fault", "error": "late", "stage": "forward"}
    for key in ("reason", "claim", "recovered_by"):
        late.pop(key, None)
    return rechain([*entries, late])


def without_outcome(lines: Lines, call_id: str) -> Lines:
    """The chain re-sealed without the outcome of `call_id` (as if it was never written)."""
    entries = [orjson.loads(line) for line in lines]
    kept = [e for e in entries if not (e.get("phase") == "outcome" and e.get("call_id") == call_id)]
    assert len(kept) == len(entries) - 1
    return rechain(kept)


@pytest.fixture
def recorded(tmp_path: Path) -> RecordedSession:
    return record_session(tmp_path)


@pytest.mark.parametrize("segment", [1, 2, 100])
def test_an_entry_after_session_end_is_a_problem(recorded: RecordedSession, segment: int) -> None:
    lines = with_fault_after_end(exported(recorded))
    (replay,) = replay_chains(lines, segment_lines=segment).values()
    after = [p for p in replay.problems if p.kind is ProblemKind.AFTER_END]
    assert [p.seq for p in after] == [len(lines) - 1], replay.problems


def test_replay_audit_and_verify_report_an_entry_after_session_end(
    recorded: RecordedSession, tmp_path: Path
) -> None:
    log = tmp_path / "after-end.jsonl"
    log.write_bytes(b"".join(line + b"\n" for line in with_fault_after_end(exported(recorded))))
    replayed = run_cmcp("replay-audit", "--log", log, "--json")
    assert replayed.returncode == 1, replayed.stdout + replayed.stderr
    (session,) = replayed.json()["sessions"]
    assert "after_end" in {p["kind"] for p in session["problems"]}
    verified = run_cmcp(
        "verify", recorded.claim_path, "--allow-software", "--audit-log", log, "--json"
    )
    assert verified.returncode == 1
    (check,) = [c for c in verified.json()["checks"] if c["name"] == "audit log"]
    assert check["status"] == "fail"
    assert "after session_end" in check["reason"], check


@pytest.mark.parametrize("segment", [1, 2, 3, 100])
def test_a_forwarded_call_without_outcome_or_fault_is_flagged(
    recorded: RecordedSession, segment: int
) -> None:
    lines = exported(recorded)
    decisions = [orjson.loads(line) for line in lines]
    forwarded = [e for e in decisions if e.get("phase") == "decision" and e["forwarded"]]
    assert len(forwarded) >= 2
    lines = without_outcome(lines, forwarded[0]["call_id"])
    (replay,) = replay_chains(lines, segment_lines=segment).values()
    unanswered = [p for p in replay.problems if p.kind is ProblemKind.UNANSWERED]
    assert [p.seq for p in unanswered] == [forwarded[0]["seq"]], replay.problems
    assert forwarded[0]["call_id"] in unanswered[0].message


@pytest.mark.parametrize("segment", [1, 2, 3, 100])
def test_answered_and_unforwarded_decisions_are_not_flagged(
    recorded: RecordedSession, segment: int
) -> None:
    lines = exported(recorded)
    entries = [orjson.loads(line) for line in lines]
    # the quickstart denies delete_records: a decision that has no outcome by design
    assert any(e.get("phase") == "decision" and not e["forwarded"] for e in entries)
    (replay,) = replay_chains(lines, segment_lines=segment).values()
    assert replay.problems == []
