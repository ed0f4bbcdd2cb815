"""The audit chain as written: entries, hashes, the SQLite store, group commit, export."""

from __future__ import annotations

import hashlib
import io
import signal
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import rfc8785

from cmcp_cli.audit.entry import GENESIS_PREV, EntryError, open_line, seal
from cmcp_cli.audit.logfile import export_jsonl, read_log_lines
from cmcp_cli.audit.recorder import SessionRecorder
from cmcp_cli.audit.replay import ProblemKind, replay_chains
from cmcp_cli.audit.store import AuditStore, AuditStoreError, iter_lines, session_ids
from tests.sessions import record_session

START = {
    "bundle_hash": "sha256:" + "1" * 64,
    "catalog_hash": "sha256:" + "2" * 64,
    "key_thumbprint": "k",
    "platform": "software-only",
    "evidence_digest": "sha256:" + "3" * 64,
    "gateway_version": "0.1.0",
    "enforcement_mode": "enforcing",
    "data_class_order": ["public", "internal", "confidential"],
}


def test_entry_hash_is_sha256_of_jcs_without_hash(tmp_path: Path) -> None:
    recorded = record_session(tmp_path)
    for line in iter_lines(recorded.db):
        entry = open_line(line)
        body = {k: v for k, v in entry.fields.items() if k != "hash"}
        assert entry.hash == "sha256:" + hashlib.sha256(rfc8785.dumps(body)).hexdigest()
        assert line == rfc8785.dumps(dict(entry.fields))  # stored bytes are the canonical form
    first = open_line(next(iter_lines(recorded.db)))
    assert first.type == "session_start"
    assert first.prev == GENESIS_PREV
    assert first.fields["bundle_hash"] == recorded.claim["trace"]["policy"]["bundle_hash"]
    assert first.fields["key_thumbprint"] == recorded.key_thumbprint
    assert set(first.fields) >= {"v", "seq", "session_id", "ts", "type", "prev", "hash"}
    assert first.fields["ts"].endswith("Z") and len(first.fields["ts"]) == 27


def test_claim_counters_come_from_the_entries(tmp_path: Path) -> None:
    recorded = record_session(tmp_path, faults=2)
    summary = recorded.claim["gateway"]["call_summary"]
    assert summary == {
        "total": 4,
        "allowed": 2,
        "denied": 1,
        "redacted": 1,
        "escalated": 0,
        "faulted": 2,
        "tools_invoked": ["get_weather", "lookup_customer"],
        "by_kind": {
            "call_tool": {
                "total": 4,
                "allowed": 2,
                "denied": 1,
                "redacted": 1,
                "escalated": 0,
                "faulted": 2,  # the faults name their calls: tool calls, so counted here
            }
        },
    }
    # denied calls touch no data: the session maximum is the redacted lookup's class
    assert recorded.claim["trace"]["data_class"] == "confidential"
    (replay,) = replay_chains(iter_lines(recorded.db)).values()
    assert replay.state.calls.to_json() == summary
    assert replay.state.audit_chain_json() == recorded.claim["gateway"]["audit_chain"]


def test_floats_and_unhashable_values_are_refused() -> None:
    with pytest.raises(EntryError, match="no canonical form"):
        seal({"v": 1, "seq": 0, "x": float("nan")})
    with pytest.raises(EntryError, match="must not carry a hash"):
        seal({"hash": "sha256:" + "0" * 64})


def base_entry(**extra: object) -> dict[str, object]:
    return {
        "v": 1,
        "seq": 0,
        "session_id": "s",
        "ts": "2026-11-21T09:00:00.000000Z",
        "type": "session_start",
        "prev": GENESIS_PREV,
        **extra,
    }


def test_the_hash_member_is_cut_wherever_it_sorts() -> None:
    first = seal(base_entry())  # "hash" sorts before every base field
    assert first.line.startswith(b'{"hash":')
    assert open_line(first.line) == first
    middle = seal(base_entry(call_id="c", data_class="public"))
    assert open_line(middle.line) == middle


@pytest.mark.parametrize("nested_key", ["a", "z"])
def test_an_entry_holding_its_own_hash_again_is_edited_not_accepted(nested_key: str) -> None:
    sealed = seal(base_entry())
    forged = {**sealed.fields, nested_key: {"hash": sealed.hash}}  # before and after `hash`
    line = rfc8785.dumps(forged)
    assert line.count(b'"hash":"' + sealed.hash.encode()) == 2
    with pytest.raises(EntryError, match="edited"):
        open_line(line)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"v": True}, "entry format True"),
        ({"seq": -1}, "seq -1"),
        ({"session_id": ""}, "session_id"),
        ({"type": 3}, "type"),
        ({"prev": "sha256:" + "A" * 64}, "prev"),
        ({"hash": 7}, "hash"),
    ],
)
def test_base_fields_are_typed(change: dict[str, object], message: str) -> None:
    fields = {**seal(base_entry()).fields, **change}
    with pytest.raises(EntryError, match=message):
        open_line(rfc8785.dumps(fields))
    missing = {k: v for k, v in fields.items() if k not in ("ts", "prev")}
    with pytest.raises(EntryError, match="missing prev, ts"):
        open_line(rfc8785.dumps(missing))


def test_concurrent_sessions_share_group_commits(tmp_path: Path) -> None:
    store = AuditStore(tmp_path / "audit.db")
    recorders = [SessionRecorder(store, f"s{i}") for i in range(8)]
    for recorder in recorders:
        recorder.start(START)

    def work(recorder: SessionRecorder) -> None:
        for n in range(50):
            recorder.fault(error=f"e{n}", stage="forward", call_id=f"{recorder.session_id}-{n}")
        recorder.end({"reason": "done"})

    threads = [threading.Thread(target=work, args=(r,)) for r in recorders]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    store.close()
    assert session_ids(tmp_path / "audit.db") == [f"s{i}" for i in range(8)]
    replays = replay_chains(iter_lines(tmp_path / "audit.db"))
    assert all(
        not r.problems and r.state.length == 52 and r.state.calls.faulted == 50
        for r in replays.values()
    )
    with sqlite3.connect(tmp_path / "audit.db") as connection:
        assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


@pytest.mark.parametrize("durability", ["fsync", "os"])
def test_durability_settings_are_applied(tmp_path: Path, durability: str) -> None:
    with AuditStore(tmp_path / "a.db", durability=durability) as store:  # type: ignore[arg-type]
        SessionRecorder(store, "s").start(START)
    assert len(list(iter_lines(tmp_path / "a.db"))) == 1


def test_a_duplicate_entry_fails_that_append_only(tmp_path: Path) -> None:
    with AuditStore(tmp_path / "a.db") as store:
        entry = seal(
            {"v": 1, "seq": 0, "session_id": "s", "ts": "t", "type": "x", "prev": GENESIS_PREV}
        )
        store.append(entry)
        with pytest.raises(AuditStoreError, match="UNIQUE"):
            store.append(entry)
        unsealed = {k: v for k, v in entry.fields.items() if k != "hash"}
        store.append(seal({**unsealed, "seq": 1}))
    assert len(list(iter_lines(tmp_path / "a.db"))) == 2


def test_closed_store_refuses_appends(tmp_path: Path) -> None:
    store = AuditStore(tmp_path / "a.db")
    store.close()
    with pytest.raises(AuditStoreError, match="closed"):
        store.append(
            seal(
                {"v": 1, "seq": 0, "session_id": "s", "ts": "t", "type": "x", "prev": GENESIS_PREV}
            )
        )


def test_jsonl_export_is_the_stored_bytes(tmp_path: Path) -> None:
    first = record_session(tmp_path, session_id="a")
    record_session(tmp_path, session_id="b", db=first.db)
    buffer = io.BytesIO()
    assert export_jsonl(first.db, buffer, "b") == 9
    exported = tmp_path / "b.jsonl"
    exported.write_bytes(buffer.getvalue())
    assert list(read_log_lines(exported)) == list(iter_lines(first.db, "b"))
    everything = io.BytesIO()
    assert export_jsonl(first.db, everything) == 18
    assert session_ids(first.db) == ["a", "b"]


WRITER = """
import sys
from pathlib import Path
from cmcp_cli.audit.recorder import SessionRecorder
from cmcp_cli.audit.store import AuditStore
store = AuditStore(Path(sys.argv[1]))
recorder = SessionRecorder(store, "killed")
recorder.start({start})
for n in range(100_000):
    entry = recorder.fault(error="e", stage="forward", call_id=str(n))
    print(entry.seq, flush=True)  # printed only after append() returned: durable
"""


def test_a_killed_writer_loses_no_acknowledged_entry(tmp_path: Path) -> None:
    db = tmp_path / "audit.db"
    with subprocess.Popen(
        [sys.executable, "-c", WRITER.format(start=repr(START)), str(db)],
        stdout=subprocess.PIPE,
        text=True,
    ) as writer:
        assert writer.stdout is not None
        acknowledged = -1
        for line in writer.stdout:
            acknowledged = int(line)
            if acknowledged >= 200:
                break
        writer.send_signal(signal.SIGKILL)
        writer.wait(timeout=30)
    (replay,) = replay_chains(iter_lines(db)).values()
    assert replay.state.length > acknowledged  # every acknowledged entry survived
    kinds = {p.kind for p in replay.problems}
    assert kinds == {ProblemKind.TRUNCATED}  # no corruption: only the missing session_end
