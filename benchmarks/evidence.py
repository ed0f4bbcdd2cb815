"""Evidence-core benchmarks, each against a baseline measured in the same run.

replay     chain check of a JSONL log (default 1,000,000 entries) and of the same entries in
           the SQLite store: cmcp's replay against the reference check (json + rfc8785 +
           sha256, no linking) and a hash-only floor
           target: at least 100,000 entries per second
decisions  re-deciding recorded Cedar requests against deciding them directly
append     durable audit appends: 1, 4 and 16 concurrent sessions with group commit,
           with fsync and with durability "os"
verify     verifying the claim of a 10,000-call session against the independent TRACE
           verifier (agentrust-trace) on its record; target: under 50 ms
sign       issuing one claim (its record signed on its own, then the envelope; and with a
           transparency URI made from the record) against signing the envelope alone

  .venv/bin/python benchmarks/evidence.py [--entries 1000000] [--only replay] [--json]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import agentrust_trace
import rfc8785

from cmcp_cli.attestation.manager import load_providers
from cmcp_cli.audit.entry import GENESIS_PREV, open_line, seal
from cmcp_cli.audit.logfile import read_log_lines
from cmcp_cli.audit.matching import recheck_decisions
from cmcp_cli.audit.recorder import SessionRecorder
from cmcp_cli.audit.replay import replay_chains, replay_log
from cmcp_cli.audit.store import AuditStore
from cmcp_cli.claim.anchor import transparency_uri
from cmcp_cli.claim.keys import ClaimKey
from cmcp_cli.claim.model import sign_claim, unsigned
from cmcp_cli.claim.signing import signed
from cmcp_cli.policy.bundle import read_bundle
from cmcp_cli.policy.engine import compile_bundle
from cmcp_cli.policy.request import CedarRequest, ToolResource
from cmcp_cli.verify.claim import VerifyOptions, verify_document

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from tests.sessions import DEFAULT_CALLS, record_session  # noqa: E402 - shared session builder

REPLAY_TARGET = 100_000
VERIFY_TARGET_MS = 50.0
START_FIELDS = {
    "bundle_hash": "sha256:" + "1" * 64,
    "catalog_hash": "sha256:" + "2" * 64,
    "key_thumbprint": "k",
    "platform": "software-only",
    "evidence_digest": "sha256:" + "3" * 64,
    "gateway_version": "bench",
    "enforcement_mode": "enforcing",
    "data_class_order": ["public", "internal", "confidential"],
}


def _call_entry(seq: int, prev: str) -> dict[str, Any]:
    tool = ToolResource("lookup_customer", "demo", ("crm",), "confidential")
    return {
        "v": 1,
        "seq": seq,
        "session_id": "bench",
        "ts": "2026-11-21T09:00:00.000000Z",
        "type": "call",
        "prev": prev,
        "phase": "decision",
        "call_id": f"call-{seq}",
        "tool": tool.name,
        "decision": "redact",
        "policy_ids": ["customer-lookup-redacted"],
        "request_sha256": "sha256:" + hashlib.sha256(str(seq).encode()).hexdigest(),
        "data_class": "confidential",
        "forwarded": True,
        "cedar_request": {
            "principal": {"type": "Agent", "id": "anonymous"},
            "action": {"type": "Action", "id": "call_tool"},
            "resource": {"type": "Tool", "id": tool.name},
            "context": {
                "data_class": "confidential",
                "session_max_sensitivity": "confidential",
                "workflow_id": "",
                "arguments": {"customer_id": f"c-{seq}"},
                "platform": "software-only",
            },
            "entities": [tool.entity_json()],
        },
    }


def write_log(path: Path, entries: int) -> None:
    prev = GENESIS_PREV
    with path.open("wb") as out:
        start = seal(
            {
                "v": 1,
                "seq": 0,
                "session_id": "bench",
                "ts": "2026-11-21T09:00:00.000000Z",
                "type": "session_start",
                "prev": prev,
                **START_FIELDS,
            }
        )
        out.write(start.line + b"\n")
        prev = start.hash
        for seq in range(1, entries - 1):
            entry = seal(_call_entry(seq, prev))
            out.write(entry.line + b"\n")
            prev = entry.hash
        end = seal(
            {
                "v": 1,
                "seq": entries - 1,
                "session_id": "bench",
                "ts": "2026-11-21T09:00:00.000000Z",
                "type": "session_end",
                "prev": prev,
                "reason": "bench",
            }
        )
        out.write(end.line + b"\n")


def import_into_store(log: Path, db: Path, chunk: int = 20_000) -> None:
    """The same entries in the SQLite store, written by the store itself."""
    with AuditStore(db, "os") as store:
        pending = []
        for line in read_log_lines(log):
            pending.append(store.submit(open_line(line)))
            if len(pending) == chunk:
                pending[-1].result()
                pending.clear()
        if pending:
            pending[-1].result()


def _rate(count: int, seconds: float) -> float:
    return count / seconds if seconds else float("inf")


def bench_replay(entries: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as folder:
        log = Path(folder) / "audit.jsonl"
        started = time.perf_counter()
        write_log(log, entries)
        generated = time.perf_counter() - started
        started = time.perf_counter()
        (replay,) = replay_log(log).values()
        cmcp_seconds = time.perf_counter() - started
        assert not replay.problems, replay.problems[:3]
        assert replay.state.length == entries
        sample = min(entries, 50_000)
        started = time.perf_counter()
        for count, line in enumerate(read_log_lines(log)):
            if count == sample:
                break
            fields = json.loads(line)
            claimed = fields.pop("hash")
            assert "sha256:" + hashlib.sha256(rfc8785.dumps(fields)).hexdigest() == claimed
        reference_seconds = time.perf_counter() - started
        started = time.perf_counter()
        for line in read_log_lines(log):
            hashlib.sha256(line).digest()
        floor_seconds = time.perf_counter() - started
        db = Path(folder) / "audit.db"
        import_into_store(log, db)
        started = time.perf_counter()
        (from_store,) = replay_log(db).values()
        store_seconds = time.perf_counter() - started
        assert not from_store.problems
        assert from_store.state.length == entries
    rate = _rate(entries, cmcp_seconds)
    return {
        "entries": entries,
        "log_generation_s": round(generated, 1),
        "cmcp_replay_entries_per_s": round(rate),
        "cmcp_replay_from_store_entries_per_s": round(_rate(entries, store_seconds)),
        "reference_rfc8785_entries_per_s": round(_rate(sample, reference_seconds)),
        "hash_only_floor_entries_per_s": round(_rate(entries, floor_seconds)),
        "target_entries_per_s": REPLAY_TARGET,
        "meets_target": min(rate, _rate(entries, store_seconds)) >= REPLAY_TARGET,
    }


def bench_decisions(calls: int = 20_000) -> dict[str, Any]:
    bundle = compile_bundle(read_bundle(ROOT / "examples" / "quickstart" / "policies"))
    with tempfile.TemporaryDirectory() as folder:
        log = Path(folder) / "audit.jsonl"
        write_log(log, calls + 2)
        lines = list(read_log_lines(log))
    text = lines[0].decode().replace('"sha256:' + "1" * 64, '"' + bundle.hash)
    lines[0] = text.encode()  # the session's bundle, as the chain check is not measured here
    (replay,) = replay_chains(lines[:1]).values()
    replay.bundle_hash = bundle.hash
    started = time.perf_counter()
    recheck_decisions(replay, lines, bundle)
    replayed = time.perf_counter() - started
    tool = ToolResource("lookup_customer", "demo", ("crm",), "confidential")
    authorizer = bundle.authorizer([tool])
    request = CedarRequest.from_json(_call_entry(1, GENESIS_PREV)["cedar_request"])
    started = time.perf_counter()
    for _ in range(calls):
        authorizer.decide(request)
    direct = time.perf_counter() - started
    mismatches = [p for p in replay.problems if p.kind.value == "decision_mismatch"]
    return {
        "decisions": replay.decisions_checked,
        "mismatches": len(mismatches),
        "replay_decisions_per_s": round(_rate(replay.decisions_checked, replayed)),
        "direct_decisions_per_s": round(_rate(calls, direct)),
    }


def bench_append(per_writer: int = 300) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for durability in ("fsync", "os"):
        for writers in (1, 4, 16):
            with (
                tempfile.TemporaryDirectory() as folder,
                AuditStore(Path(folder) / "a.db", durability) as store,
            ):
                recorders = [SessionRecorder(store, f"s{i}") for i in range(writers)]
                for recorder in recorders:
                    recorder.start(START_FIELDS)

                def work(recorder: SessionRecorder) -> None:
                    for n in range(per_writer):
                        recorder.fault(error="bench", stage="forward", call_id=str(n))

                threads = [threading.Thread(target=work, args=(r,)) for r in recorders]
                started = time.perf_counter()
                for thread in threads:
                    thread.start()
                for thread in threads:
                    thread.join()
                seconds = time.perf_counter() - started
            results[f"{durability}_{writers}_writers_entries_per_s"] = round(
                _rate(writers * per_writer, seconds)
            )
    return results


def bench_verify(calls: int = 10_000, repeats: int = 15) -> dict[str, Any]:
    registry = load_providers()
    with tempfile.TemporaryDirectory() as folder:
        many = tuple(DEFAULT_CALLS[i % len(DEFAULT_CALLS)] for i in range(calls))
        recorded = record_session(Path(folder), calls=many)
        options = VerifyOptions(allow_software=True, trusted_key=recorded.key_thumbprint)
        ours: list[float] = []
        theirs: list[float] = []
        for _ in range(repeats):
            started = time.perf_counter()
            report = verify_document(recorded.claim, options, registry)
            ours.append((time.perf_counter() - started) * 1000)
            assert not report.failed
            started = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                agentrust_trace.verify_record(
                    recorded.record, recorded.record["cnf"]["jwk"], max_age_seconds=None
                )
            theirs.append((time.perf_counter() - started) * 1000)
        started = time.perf_counter()
        with_log = verify_document(
            recorded.claim, VerifyOptions(allow_software=True, audit_log=recorded.db), registry
        )
        with_log_ms = (time.perf_counter() - started) * 1000
        assert not with_log.failed
    median = statistics.median(ours)
    return {
        "calls": recorded.claim["gateway"]["call_summary"]["total"],
        "cmcp_verify_claim_ms_median": round(median, 2),
        "agentrust_trace_verify_record_ms_median": round(statistics.median(theirs), 2),
        "cmcp_verify_with_audit_log_ms": round(with_log_ms, 1),
        "target_ms": VERIFY_TARGET_MS,
        "meets_target": median < VERIFY_TARGET_MS,
    }


def bench_sign(repeats: int = 2_000) -> dict[str, Any]:
    """What signing a claim costs (off the call's path: at session end, or after each call
    with `claims.per_call`): its record on its own, then the envelope; and with the record's
    transparency URI made first; against signing the envelope alone."""
    with tempfile.TemporaryDirectory() as folder:
        recorded = record_session(Path(folder), calls=DEFAULT_CALLS)
    key = ClaimKey.generate()
    body = unsigned(recorded.claim)

    def anchored() -> dict[str, Any]:
        claim = {**body, "trace": dict(body["trace"])}
        claim["trace"]["transparency"] = transparency_uri("https://ts.example", claim["trace"])
        return sign_claim(claim, key)

    def median_us(work: Callable[[], object]) -> float:
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            work()
            times.append((time.perf_counter() - started) * 1e6)
        return round(statistics.median(times), 1)

    envelope = median_us(lambda: signed(body, key))
    claim = median_us(lambda: sign_claim(body, key))
    with_anchor = median_us(anchored)
    return {
        "envelope_only_us_median": envelope,
        "claim_us_median": claim,
        "claim_with_transparency_us_median": with_anchor,
        "claim_over_envelope": round(claim / envelope, 2),
    }


BENCHES: dict[str, Callable[[argparse.Namespace], dict[str, Any]]] = {
    "replay": lambda args: bench_replay(args.entries),
    "decisions": lambda _: bench_decisions(),
    "append": lambda _: bench_append(),
    "verify": lambda _: bench_verify(),
    "sign": lambda _: bench_sign(),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--entries", type=int, default=1_000_000)
    parser.add_argument("--only", choices=sorted(BENCHES))
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    report = {name: bench(args) for name, bench in BENCHES.items() if args.only in (None, name)}
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        for name, figures in report.items():
            print(name)
            for key, value in figures.items():
                print(f"  {key:<42} {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
