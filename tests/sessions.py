"""A library-level session (no gateway): the quickstart bundle deciding real calls,
recorded in a real SQLite store, closed into a signed claim."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cmcp_cli.attestation import software
from cmcp_cli.attestation.measurement import installation_digest
from cmcp_cli.audit.entry import open_line
from cmcp_cli.audit.session_record import SessionPolicy
from cmcp_cli.audit.store import AuditStore, iter_lines
from cmcp_cli.catalog.model import load_catalog
from cmcp_cli.claim.keys import ClaimKey
from cmcp_cli.evidence.attesting import Attestor, attest_key
from cmcp_cli.evidence.session import EvidenceSession
from cmcp_cli.gateway.enforcement.wiring import authorizer_for, tool_resources
from cmcp_cli.policy.bundle import read_bundle
from cmcp_cli.policy.engine import compile_bundle
from tests.support import QUICKSTART

DEFAULT_CALLS: tuple[tuple[str, dict[str, Any]], ...] = (
    ("get_weather", {"city": "Oslo"}),
    ("delete_records", {"table": "customers"}),
    ("lookup_customer", {"customer_id": "c-42"}),
    ("get_weather", {"city": "Zürich 🌧"}),
)


@dataclass(frozen=True)
class RecordedSession:
    db: Path
    claim_path: Path
    record_path: Path
    claim: dict[str, Any]
    record: dict[str, Any]
    session_id: str
    key_thumbprint: str
    bundle: Path


class StepClock:
    """A clock that moves a millisecond per reading, from a fixed start."""

    def __init__(self, start: datetime) -> None:
        self.now = start

    def __call__(self) -> datetime:
        self.now += timedelta(milliseconds=1)
        return self.now


def record_session(
    folder: Path,
    *,
    session_id: str = "sess-1",
    calls: Sequence[tuple[str, dict[str, Any]]] = DEFAULT_CALLS,
    db: Path | None = None,
    start: datetime | None = None,
    faults: int = 0,
    attestor: Attestor | None = None,
    key: ClaimKey | None = None,
    during: Callable[[EvidenceSession], None] | None = None,
    catalog_pinning: str = "explicit",
    challenge: str | None = None,
) -> RecordedSession:
    """Record a session of `calls` (and `faults`); `during` adds more entries after
    them, before the session closes."""
    bundle = compile_bundle(read_bundle(QUICKSTART / "policies"))
    catalog = load_catalog(QUICKSTART / "catalog.json")
    authorizer = authorizer_for(bundle, catalog)
    resources = {tool.name: tool for tool in tool_resources(catalog)}
    db = db or folder / "audit.db"
    clock = StepClock(start or datetime.now(UTC) - timedelta(minutes=5))
    policy = SessionPolicy(
        bundle_hash=bundle.hash,
        policy_version=bundle.source.manifest.version,
        catalog_hash=catalog.hash,
        enforcement_mode="enforcing",
        data_class_order=("public", "internal", "confidential", "restricted", "secret"),
        model_provider="anthropic",
        model_id="claude-test",
        catalog_pinning=catalog_pinning,
    )
    with AuditStore(db) as store:
        session = EvidenceSession(
            store=store,
            session_id=session_id,
            policy=policy,
            attestor=attestor or Attestor.load(software.SPEC, "0.1.0"),
            key=key,
            clock=clock,
            challenge=challenge,
        )
        recorder = session.recorder
        for index, (tool, arguments) in enumerate(calls):
            call_id = f"call-{index}"
            verdict = session.decide_call(
                authorizer,
                call_id=call_id,
                agent_id="anonymous",
                tool=resources[tool],
                arguments=arguments,
            )
            if verdict.forwarded:
                session.outcome(
                    call_id=call_id,
                    response={"content": [{"type": "text", "text": "ok"}]},
                    latency_us=1200 + index,
                    redactions={"email": 1} if verdict.decision.effect.value == "redact" else None,
                )
        for index in range(faults):
            recorder.fault(
                error="upstream closed the connection", stage="forward", call_id=f"f-{index}"
            )
        if during is not None:
            during(session)
        closed = session.close(reason="client closed the session")
    claim_path = folder / f"{session_id}.claim.json"
    record_path = folder / f"{session_id}.trace.json"
    claim_path.write_text(json.dumps(closed.claim, ensure_ascii=False, indent=2), encoding="utf-8")
    record_path.write_text(json.dumps(closed.trace_record, ensure_ascii=False), encoding="utf-8")
    return RecordedSession(
        db=db,
        claim_path=claim_path,
        record_path=record_path,
        claim=closed.claim,
        record=closed.trace_record,
        session_id=session_id,
        key_thumbprint=session.key.thumbprint,
        bundle=QUICKSTART / "policies",
    )


def probe_measurement(attestor: Attestor) -> str:
    """The measurement `attestor` reports, from one attestation of a throwaway key (the
    binding's hashes do not enter it): what an operator pins."""
    return attest_key(
        attestor,
        key=ClaimKey.generate(),
        bundle_hash="sha256:" + "00" * 32,
        catalog_hash="sha256:" + "00" * 32,
        gateway_digest=installation_digest(),
        process_id="probe",
    ).issuer.measurement


def entries_of(db: Path, kind: str) -> list[dict[str, Any]]:
    """The fields of every entry of `kind` in the audit store at `db`, in order."""
    found = [open_line(line).fields for line in iter_lines(db)]
    return [dict(fields) for fields in found if fields["type"] == kind]
