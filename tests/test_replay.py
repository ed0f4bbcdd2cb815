"""replay-audit: every kind of tampering is found and named by its first bad seq."""

from __future__ import annotations

import io
import json
import threading
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest
import rfc8785
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cmcp_cli.audit.entry import seal
from cmcp_cli.audit.logfile import export_jsonl, log_slices, read_log_lines
from cmcp_cli.audit.matching import LOG_CHECKS, recheck_decisions
from cmcp_cli.audit.replay import ProblemKind, replay_chains, replay_log
from cmcp_cli.audit.store import iter_lines
from cmcp_cli.policy.bundle import read_bundle
from cmcp_cli.policy.engine import compile_bundle
from tests.sessions import RecordedSession, record_session
from tests.support import QUICKSTART, run_cmcp

Lines = list[bytes]
BUNDLE = compile_bundle(read_bundle(QUICKSTART / "policies"))


@pytest.fixture
def recorded(tmp_path: Path) -> RecordedSession:
    return record_session(tmp_path)


def exported(recorded: RecordedSession) -> Lines:
    buffer = io.BytesIO()
    export_jsonl(recorded.db, buffer)
    return buffer.getvalue().splitlines()


def write(tmp_path: Path, lines: Lines) -> Path:
    path = tmp_path / "tampered.jsonl"
    path.write_bytes(b"".join(line + b"\n" for line in lines))
    return path


def reseal(lines: Lines, change: Callable[[dict[str, object]], None], at: int) -> Lines:
    """What an attacker with the log can do: change an entry and re-hash every link after it."""
    result = []
    prev = None
    for index, line in enumerate(lines):
        fields = orjson.loads(line)
        fields.pop("hash")
        if index == at:
            change(fields)
        if prev is not None:
            fields["prev"] = prev
        entry = seal(fields)
        prev = entry.hash
        result.append(entry.line)
    return result


def edit_content(lines: Lines, index: int) -> Lines:
    fields = orjson.loads(lines[index])
    fields["ts"] = "2026-01-01T00:00:00.000000Z"
    return [*lines[:index], rfc8785.dumps(fields), *lines[index + 1 :]]


TAMPERING: dict[str, tuple[Callable[[Lines], Lines], int, ProblemKind]] = {
    "edit": (lambda ls: edit_content(ls, 4), 4, ProblemKind.EDITED),
    "delete": (lambda ls: ls[:3] + ls[4:], 3, ProblemKind.GAP),
    "insert": (lambda ls: [*ls[:5], ls[3], *ls[5:]], 3, ProblemKind.DUPLICATE),
    "reorder": (lambda ls: [*ls[:2], ls[3], ls[2], *ls[4:]], 2, ProblemKind.GAP),
    "truncate": (lambda ls: ls[:6], 6, ProblemKind.TRUNCATED),
    "reseal": (
        lambda ls: reseal(ls, lambda f: f.update(decision="allow"), 3),
        3,
        ProblemKind.DECISION_MISMATCH,
    ),
    "not canonical": (
        lambda ls: [*ls[:2], json.dumps(orjson.loads(ls[2])).encode(), *ls[3:]],
        2,
        ProblemKind.MALFORMED,
    ),
    "drop the start": (lambda ls: ls[1:], 0, ProblemKind.BAD_START),
}


def test_an_untouched_log_is_clean(recorded: RecordedSession, tmp_path: Path) -> None:
    (replay,) = replay_chains(exported(recorded)).values()
    assert replay.problems == []
    assert replay.state.ended
    bundle = compile_bundle(read_bundle(recorded.bundle))
    recheck_decisions(replay, exported(recorded), bundle)
    assert replay.decisions_checked == 4
    assert replay.problems == []


@pytest.mark.parametrize("name", sorted(TAMPERING))
def test_tampering_is_located(recorded: RecordedSession, tmp_path: Path, name: str) -> None:
    tamper, first_bad, kind = TAMPERING[name]
    lines = tamper(exported(recorded))
    (replay,) = replay_chains(lines).values()
    if kind is ProblemKind.DECISION_MISMATCH:
        assert replay.problems == []  # a consistent re-hash hides from the chain check...
        recheck_decisions(replay, lines, compile_bundle(read_bundle(recorded.bundle)))
    assert replay.problems, name
    assert replay.first_bad_seq == first_bad, replay.problems
    assert kind in {p.kind for p in replay.problems}, replay.problems
    result = run_cmcp(
        "replay-audit", "--log", write(tmp_path, lines), "--bundle", recorded.bundle, "--json"
    )
    assert result.returncode == 1, result.stderr
    (session,) = result.json()["sessions"]
    assert session["first_bad_seq"] == first_bad
    assert session["ok"] is False


def test_a_resealed_log_no_longer_matches_the_claim(
    recorded: RecordedSession, tmp_path: Path
) -> None:
    lines = reseal(exported(recorded), lambda f: f.update(tool="get_weather"), 5)
    result = run_cmcp(
        "replay-audit", "--log", write(tmp_path, lines), "--claim", recorded.claim_path, "--json"
    )
    assert result.returncode == 1
    kinds = {p["kind"] for p in result.json()["sessions"][0]["problems"]}
    assert kinds == {"claim_mismatch"}
    messages = " ".join(p["message"] for p in result.json()["sessions"][0]["problems"])
    assert "audit_chain.tip" in messages


def test_truncation_is_measured_against_the_claim(
    recorded: RecordedSession, tmp_path: Path
) -> None:
    lines = exported(recorded)[:-3]
    result = run_cmcp(
        "replay-audit", "--log", write(tmp_path, lines), "--claim", recorded.claim_path
    )
    assert result.returncode == 1
    assert "first bad sequence number: 6" in result.stderr
    assert "gateway.audit_chain.length: the claim states 9, the log gives 6" in result.stderr


def test_clean_replay_through_the_cli(recorded: RecordedSession) -> None:
    result = run_cmcp(
        "replay-audit",
        "--db",
        recorded.db,
        "--claim",
        recorded.claim_path,
        "--bundle",
        recorded.bundle,
    )
    assert result.returncode == 0, result.stderr
    assert "session sess-1: clean; 9 entries" in result.stderr
    assert "4 decisions re-checked" in result.stderr
    assert f"claim-signing key {recorded.key_thumbprint}" in result.stderr
    report = run_cmcp("replay-audit", "--db", recorded.db, "--json").json()
    assert report["ok"] is True
    assert report["sessions"][0]["audit_chain"] == recorded.claim["gateway"]["audit_chain"]
    assert report["sessions"][0]["claim_key_thumbprint"] == recorded.key_thumbprint


def test_a_log_that_lacks_a_member_the_claim_states_matches_no_claim(
    recorded: RecordedSession, tmp_path: Path
) -> None:
    """Fail closed: a session_start without the model (its chain re-hashed, as whoever
    holds the log can) cannot vouch for the claim's model, whatever else matches."""

    def without_model(fields: dict[str, object]) -> None:
        del fields["model"]

    log = write(tmp_path, reseal(exported(recorded), without_model, 0))
    expected = "the log cannot vouch for the claim: session_start records no model"
    result = run_cmcp("replay-audit", "--log", log, "--claim", recorded.claim_path, "--json")
    assert result.returncode == 1
    messages = [p["message"] for p in result.json()["sessions"][0]["problems"]]
    assert messages == [expected]
    verified = run_cmcp(
        "verify", recorded.claim_path, "--allow-software", "--audit-log", log, "--json"
    )
    assert verified.returncode == 1
    reasons = {c["name"]: c["reason"] for c in verified.json()["checks"] if c["status"] == "fail"}
    assert set(reasons) == set(LOG_CHECKS)
    assert set(reasons.values()) == {expected}


def test_a_different_bundle_is_refused(recorded: RecordedSession, quickstart: Path) -> None:
    (quickstart / "policies" / "tools.cedar").write_text("permit(principal, action, resource);\n")
    (replay,) = replay_chains(exported(recorded)).values()
    recheck_decisions(
        replay, exported(recorded), compile_bundle(read_bundle(quickstart / "policies"))
    )
    (problem,) = replay.problems
    assert problem.kind is ProblemKind.NOT_REPLAYABLE
    assert replay.decisions_checked == 0
    result = run_cmcp("replay-audit", "--db", recorded.db, "--bundle", quickstart / "policies")
    assert result.returncode == 1
    assert "decisions not re-checked: the session recorded sha256:" in result.stderr


def test_session_selection_and_usage_errors(tmp_path: Path) -> None:
    first = record_session(tmp_path, session_id="a")
    record_session(tmp_path, session_id="b", db=first.db)
    ambiguous = run_cmcp("replay-audit", "--db", first.db)
    assert ambiguous.returncode == 2
    assert "holds 2 sessions" in ambiguous.stderr
    assert run_cmcp("replay-audit", "--db", first.db, "--all").returncode == 0
    assert run_cmcp("replay-audit", "--db", first.db, "--session", "b").returncode == 0
    assert run_cmcp("replay-audit", "--db", first.db, "--session", "zzz").returncode == 2
    assert run_cmcp("replay-audit", "--log", first.db).returncode == 2  # a store is not JSONL
    assert run_cmcp("replay-audit").returncode == 2
    assert run_cmcp("replay-audit", "--db", tmp_path / "missing.db").returncode == 2
    assert list(iter_lines(first.db, "a"))


@pytest.mark.parametrize("segment", [1, 2, 3, 5])
@pytest.mark.parametrize("name", sorted(set(TAMPERING) - {"reseal"}))
def test_segmented_replay_finds_what_whole_replay_finds(
    recorded: RecordedSession, name: str, segment: int
) -> None:
    tamper, first_bad, kind = TAMPERING[name]
    lines = tamper(exported(recorded))
    (whole,) = replay_chains(lines).values()
    (parts,) = replay_chains(lines, segment_lines=segment).values()
    assert parts.first_bad_seq == whole.first_bad_seq == first_bad
    assert kind in {p.kind for p in parts.problems}


@pytest.mark.parametrize("segment", [1, 4, 7])
def test_segmented_replay_of_interleaved_sessions_adds_up(tmp_path: Path, segment: int) -> None:
    first = record_session(tmp_path, session_id="a", faults=3)
    record_session(tmp_path, session_id="b", db=first.db)
    a_lines, b_lines = list(iter_lines(first.db, "a")), list(iter_lines(first.db, "b"))
    interleaved = a_lines[:5] + b_lines[:4] + a_lines[5:] + b_lines[4:]
    whole = replay_chains(interleaved)
    parts = replay_chains(interleaved, segment_lines=segment)
    assert [s.to_json() for s in parts.values()] == [s.to_json() for s in whole.values()]
    assert all(not s.problems for s in parts.values())
    assert parts["a"].state.calls.faulted == 3


def test_worker_processes_agree_with_one_process(tmp_path: Path) -> None:
    recorded = record_session(
        tmp_path, calls=[("get_weather", {"city": str(n)}) for n in range(400)]
    )
    lines = exported(recorded)
    lines[300] = edit_content(lines, 300)[300]
    del lines[700]
    assert threading.active_count() == 1  # otherwise replay_log would not fork its workers
    single = replay_chains(lines)
    parallel = replay_log(write(tmp_path, lines), workers=2, slice_bytes=60_000)
    assert [s.to_json() for s in parallel.values()] == [s.to_json() for s in single.values()]
    (replay,) = parallel.values()
    assert replay.first_bad_seq == 300
    assert {p.kind for p in replay.problems} == {ProblemKind.EDITED, ProblemKind.GAP}


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.data())
def test_any_flipped_byte_is_reported_and_nothing_raises(
    recorded: RecordedSession, data: st.DataObject
) -> None:
    lines = exported(recorded)
    index = data.draw(st.integers(0, len(lines) - 1))
    line = bytearray(lines[index])
    offset = data.draw(st.integers(0, len(line) - 1))
    line[offset] ^= data.draw(st.integers(1, 255))
    lines[index] = bytes(line)
    replays = replay_chains(lines)
    for replay in replays.values():
        recheck_decisions(replay, lines, BUNDLE)
    assert any(r.problems for r in replays.values())


@pytest.mark.parametrize("store", ["sqlite", "jsonl"])
def test_workers_reading_their_own_slices_agree(tmp_path: Path, store: str) -> None:
    assert threading.active_count() == 1  # otherwise replay_log would not fork its workers
    recorded = record_session(
        tmp_path, calls=[("get_weather", {"city": str(n)}) for n in range(150)]
    )
    record_session(tmp_path, session_id="second", db=recorded.db)
    path = recorded.db
    if store == "jsonl":
        path = write(tmp_path, exported(recorded))
    whole = replay_chains(read_log_lines(path))
    sliced = replay_log(path, workers=2, slice_bytes=9_000, slice_rows=17)
    assert len(log_slices(path, slice_bytes=9_000, slice_rows=17)) > 5
    assert [s.to_json() for s in sliced.values()] == [s.to_json() for s in whole.values()]
    assert all(not s.problems for s in sliced.values())
    one = replay_log(path, session_id="second", workers=2, slice_bytes=9_000, slice_rows=17)
    assert list(one) == ["second"]
    assert one["second"].to_json() == whole["second"].to_json()


def test_unreadable_lines_are_located_in_their_slice(
    tmp_path: Path, recorded: RecordedSession
) -> None:
    lines = exported(recorded)
    lines[4] = b"not json at all"
    path = write(tmp_path, lines)
    offset = sum(len(line) + 1 for line in lines[:4])
    sliced = replay_log(path, workers=2, slice_bytes=1_500)
    (problem,) = [p for r in sliced.values() for p in r.problems if p.kind is ProblemKind.MALFORMED]
    assert problem.message.startswith(f"byte {offset}:")
    (whole_problem,) = [
        p
        for r in replay_chains(lines).values()
        for p in r.problems
        if p.kind is ProblemKind.MALFORMED
    ]
    assert whole_problem.message.startswith("line 5:")
