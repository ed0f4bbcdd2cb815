"""Crash recovery at the library level: the store's lock and process records, the status
of every kind of open chain, and recovery that finishes an interrupted chain but never
one whose entries were removed."""

from __future__ import annotations

import io
import json
import sqlite3
from pathlib import Path

import pytest

from cmcp_cli.attestation import software
from cmcp_cli.audit.logfile import export_jsonl
from cmcp_cli.audit.processes import (
    StoreInUseError,
    gateway_processes,
    live_process,
    lock_store,
    record_start,
    record_stop,
)
from cmcp_cli.audit.report import ReplayRequest, replay_audit
from cmcp_cli.audit.session_record import SessionPolicy
from cmcp_cli.audit.status import Status
from cmcp_cli.audit.store import AuditStore, iter_lines
from cmcp_cli.catalog.model import load_catalog
from cmcp_cli.evidence.attesting import Attestor
from cmcp_cli.evidence.claim_files import write_claim
from cmcp_cli.evidence.recovery import recover_sessions
from cmcp_cli.evidence.session import ClosedSession, EvidenceSession
from cmcp_cli.gateway.enforcement.wiring import authorizer_for, tool_resources
from cmcp_cli.policy.bundle import read_bundle
from cmcp_cli.policy.engine import compile_bundle
from tests.support import QUICKSTART, run_cmcp

BUNDLE = compile_bundle(read_bundle(QUICKSTART / "policies"))
CATALOG = load_catalog(QUICKSTART / "catalog.json")
TOOLS = {tool.name: tool for tool in tool_resources(CATALOG)}
ATTESTOR = Attestor.load(software.SPEC, "test")
POLICY = SessionPolicy(
    bundle_hash=BUNDLE.hash,
    policy_version="1.0.0",
    catalog_hash=CATALOG.hash,
    enforcement_mode="enforcing",
    data_class_order=("public", "internal", "confidential", "restricted", "secret"),
)


def open_session(
    db: Path, session_id: str, process: str, *, in_flight: int = 1, close: bool = False
) -> ClosedSession | None:
    """A session of gateway process `process`: one answered call, `in_flight` forwarded
    calls without outcome, one denied call; closed only when `close`."""
    authorizer = authorizer_for(BUNDLE, CATALOG)
    with AuditStore(db) as store:
        evidence = EvidenceSession(
            store=store, session_id=session_id, policy=POLICY, attestor=ATTESTOR, process_id=process
        )
        evidence.decide_call(
            authorizer, call_id="done", agent_id="a", tool=TOOLS["get_weather"], arguments={}
        )
        evidence.outcome(call_id="done", response={"content": []}, latency_us=5)
        for n in range(in_flight):
            verdict = evidence.decide_call(
                authorizer,
                call_id=f"flying-{n}",
                agent_id="a",
                tool=TOOLS["get_weather"],
                arguments={"city": str(n)},
            )
            assert verdict.forwarded
        denied = evidence.decide_call(
            authorizer, call_id="no", agent_id="a", tool=TOOLS["delete_records"], arguments={}
        )
        assert not denied.forwarded
        if close:
            for n in range(in_flight):
                evidence.outcome(call_id=f"flying-{n}", response={}, latency_us=1)
            return evidence.close()
    return None


def ran_and_stopped(db: Path, process: str) -> None:
    """Record `process` as a gateway that held the store and stopped cleanly."""
    lock = lock_store(db, process)
    record_start(db, lock.holder)
    record_stop(db, process)
    lock.release()


def statuses(db: Path) -> dict[str, Status]:
    report = replay_audit(ReplayRequest(log=db, expect_sqlite=True, all_sessions=True))
    return {sid: status.status for sid, status in report.statuses.items()}


def recover(db: Path, claims: Path, process: str = "proc-new") -> tuple[list[str], list[str]]:
    claims.mkdir(exist_ok=True)
    lock = lock_store(db, process)
    try:
        record_start(db, lock.holder)
        with AuditStore(db) as store:
            report = recover_sessions(
                store, attestor=ATTESTOR, claims_dir=claims, process_id=process
            )
    finally:
        lock.release()
    return [r.session_id for r in report.recovered], [t.session_id for t in report.truncated]


def test_one_gateway_per_store_and_the_lock_names_the_live_process(tmp_path: Path) -> None:
    db = tmp_path / "audit.db"
    assert live_process(db) is None
    first = lock_store(db, "proc-a")
    try:
        assert live_process(db) == "proc-a"
        with pytest.raises(StoreInUseError) as refused:
            lock_store(db, "proc-b", wait_seconds=0.2)
        assert "proc-a" in refused.value.message and "pid" in refused.value.message
        assert refused.value.hint is not None and "audit.path" in refused.value.hint
    finally:
        first.release()
    assert live_process(db) is None
    second = lock_store(db, "proc-b")  # free again once released
    second.release()


def test_every_status_of_a_session(tmp_path: Path) -> None:
    db = tmp_path / "audit.db"
    open_session(db, "ended", "proc-old", close=True)
    open_session(db, "crashed", "proc-dead")
    open_session(db, "stopped", "proc-clean")
    open_session(db, "running", "proc-live")
    ran_and_stopped(db, "proc-clean")
    live_process_lock = lock_store(db, "proc-live")
    try:
        found = statuses(db)
        assert found == {
            "ended": Status.ENDED,
            "crashed": Status.INTERRUPTED,
            "stopped": Status.TRUNCATED,
            "running": Status.OPEN,
        }
        report = replay_audit(ReplayRequest(log=db, expect_sqlite=True, all_sessions=True))
        assert not report.ok
        problems = {s.session_id: [p.kind.value for p in s.problems] for s in report.sessions}
        assert problems["running"] == [] and problems["ended"] == []
        assert problems["crashed"] == ["interrupted"]
        assert problems["stopped"] == ["truncated"]
    finally:
        live_process_lock.release()


def test_recovery_finishes_an_interrupted_chain_and_its_claim_verifies(tmp_path: Path) -> None:
    db, claims = tmp_path / "audit.db", tmp_path / "claims"
    open_session(db, "s1", "proc-dead", in_flight=2)
    before = len(list(iter_lines(db, "s1")))
    assert recover(db, claims) == (["s1"], [])
    entries = [json.loads(line) for line in iter_lines(db, "s1")]
    added = entries[before:]
    assert [e["type"] for e in added] == ["fault", "fault", "session_end"]
    assert [e["call_id"] for e in added[:2]] == ["flying-0", "flying-1"]
    assert all(e["stage"] == "interrupted" and "proc-dead" in e["error"] for e in added[:2])
    end = added[-1]
    assert end["reason"] == "interrupted"
    assert end["recovered_by"]["process"] == "proc-new"
    claim = json.loads((claims / "s1.claim.json").read_text())
    assert claim["gateway"]["recovery"] == {
        "interrupted_process": "proc-dead",
        "process": "proc-new",
    }
    assert claim["gateway"]["call_summary"]["faulted"] == 2
    assert (claims / "s1.record.json").is_file()
    assert statuses(db) == {"s1": Status.RECOVERED}
    log = tmp_path / "s1.jsonl"
    with log.open("wb") as out:
        export_jsonl(db, out, "s1")
    verified = run_cmcp(
        "verify", claims / "s1.claim.json", "--allow-software", "--audit-log", log, "--json"
    )
    assert verified.returncode == 0, verified.stdout + verified.stderr
    checks = {c["name"]: c for c in verified.json()["checks"]}
    assert checks["recovery"]["status"] == "pass"
    assert "proc-dead" in checks["recovery"]["reason"]
    assert "proc-new" in checks["recovery"]["reason"]
    # a second start finds nothing left to recover
    assert recover(db, claims, "proc-newer") == ([], [])


def _delete_row(db: Path, session_id: str, seq: int) -> None:
    connection = sqlite3.connect(db)
    with connection:
        connection.execute(
            "DELETE FROM audit_entries WHERE session_id = ? AND seq = ?", (session_id, seq)
        )
    connection.close()


def _remove_end(db: Path, session_id: str) -> None:
    connection = sqlite3.connect(db)
    with connection:
        connection.execute(
            "DELETE FROM audit_entries WHERE id = "
            "(SELECT MAX(id) FROM audit_entries WHERE session_id = ?)",
            (session_id,),
        )
    connection.close()


@pytest.mark.parametrize("how", ["gap", "claim exists", "stopped cleanly"])
def test_a_truncated_chain_is_never_laundered(tmp_path: Path, how: str) -> None:
    db, claims = tmp_path / "audit.db", tmp_path / "claims"
    claims.mkdir()
    if how == "gap":
        open_session(db, "s1", "proc-dead")
        _delete_row(db, "s1", 2)
    elif how == "claim exists":
        closed = open_session(db, "s1", "proc-dead", close=True)
        assert closed is not None
        _remove_end(db, "s1")  # the session_end removed; the claim it was issued with stays
        write_claim(claims, "s1", closed)
        (claims / "s1.record.json").unlink()
    else:
        open_session(db, "s1", "proc-clean", close=True)
        _remove_end(db, "s1")
        ran_and_stopped(db, "proc-clean")
    lines = list(iter_lines(db, "s1"))
    assert recover(db, claims) == ([], ["s1"])
    assert list(iter_lines(db, "s1")) == lines  # nothing appended
    assert not (claims / "s1.record.json").exists()
    claim = claims / "s1.claim.json" if how == "claim exists" else None
    report = replay_audit(ReplayRequest(log=db, expect_sqlite=True, claim=claim))
    assert report.statuses["s1"].status is Status.TRUNCATED
    assert not report.ok


def test_an_export_cannot_tell_open_from_truncated(tmp_path: Path) -> None:
    db = tmp_path / "audit.db"
    open_session(db, "s1", "proc-dead")
    log = tmp_path / "s1.jsonl"
    buffer = io.BytesIO()
    export_jsonl(db, buffer)
    log.write_bytes(buffer.getvalue())
    report = replay_audit(ReplayRequest(log=log, expect_sqlite=False))
    assert report.statuses["s1"].status is Status.TRUNCATED
    (problem,) = report.sessions[0].problems
    assert "JSONL export cannot tell" in problem.message
    replayed = run_cmcp("replay-audit", "--db", db, "--json")
    assert replayed.returncode == 1
    (session,) = replayed.json()["sessions"]
    assert session["status"] == "interrupted"
    assert "start the gateway on this store" in session["problems"][0]["message"]


def test_processes_are_recorded_at_start_and_clean_stop(tmp_path: Path) -> None:
    db = tmp_path / "audit.db"
    with AuditStore(db):
        pass
    lock = lock_store(db, "proc-a")
    record_start(db, lock.holder)
    assert gateway_processes(db)["proc-a"].stopped_at is None
    record_stop(db, "proc-a")
    lock.release()
    recorded = gateway_processes(db)["proc-a"]
    assert recorded.stopped_at is not None and recorded.pid > 0 and recorded.host
