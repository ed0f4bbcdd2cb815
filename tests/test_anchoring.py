"""Anchoring (`trace.anchor`) end to end: `cmcp start` as a real process, the official MCP
SDK as the agent, the transparency double as a real HTTPS service speaking SCRAPI and
registry-anchor-v1, and each stored receipt checked by scitt-cose and `cmcp verify`."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mcp.client.session import ClientSession
from mcp.client.streamable_http import streamable_http_client
from scitt_cose import verify_receipt

from cmcp_cli.claim.anchor import anchor_id, anchor_leaf_bytes
from cmcp_cli.claim.keys import b64url_decode
from cmcp_cli.claim.receipt import check_receipt
from cmcp_cli.evidence.anchor_queue import receipt_path
from cmcp_cli.testing.transparency import DRAFT09_PENDING_POLLS, RunningTransparency
from tests.anchoring_support import (
    anchored_config,
    anchoring,
    calls,
    get_json,
    metric,
    receipt_of,
    sessions_in,
    start_anchoring,
    until,
)
from tests.gateway_support import Served, start_gateway, write_config
from tests.support import run_cmcp
from tests.transparency_support import client

TRACE_TESTS = Path(sys.executable).parent / "trace-tests"


@pytest.fixture
def double(tmp_path: Path) -> Iterator[RunningTransparency]:
    with RunningTransparency.start(tmp_path / "ts") as running:
        yield running


def check_stored(claim_file: Path, receipt: dict[str, Any], double: RunningTransparency) -> None:
    """The receipt stands for the claim's record: by scitt-cose under the double's log key,
    by every check of `claim.receipt.check_receipt` and of `cmcp verify --receipt
    --log-key --audit-log` (exit 0: the log gives the same `transparency`), and by the
    conformance suite's TR-ANC checks."""
    claim = json.loads(claim_file.read_text())
    record = claim["trace"]
    assert receipt["anchor_id"] == anchor_id(record)
    assert (
        receipt["transparency"]
        == record["transparency"]
        == f"{double.url}/entries/" + (anchor_id(record))
    )
    log_key = (double.folder / "log-key.pem").read_bytes()
    result = verify_receipt(
        b64url_decode(receipt["cose_receipt"]),
        leaf_entry_hex=anchor_leaf_bytes(record).hex(),
        log_public_key_pem=log_key,
    )
    assert result.ok, result.errors
    assert f"sha256:{result.root}" == receipt["merkle_root"]
    stored = claim_file.parent / claim_file.name.replace(".claim.json", ".receipt.json")
    assert json.loads(stored.read_text()) == receipt
    assert stored.read_bytes().count(b"\n") == 1  # one line of JSON
    findings = check_receipt(record, json.loads(stored.read_text()), log_key)
    assert [(f.name, f.ok) for f in findings] == [
        ("receipt.shape", True),
        ("receipt.record", True),
        ("receipt.inclusion", True),
        ("receipt.log_signature", True),
    ], findings
    verified = run_cmcp(
        "verify",
        claim_file,
        "--allow-software",
        "--receipt",
        stored,
        "--log-key",
        double.folder / "log-key.pem",
        "--audit-log",
        claim_file.parent.parent / "audit.db",
        "--json",
    )
    assert verified.returncode == 0, verified.stdout + verified.stderr
    checks = {c["name"]: c["status"] for c in verified.json()["checks"]}
    assert {n: s for n, s in checks.items() if n.startswith("receipt")} == {
        "receipt.shape": "pass",
        "receipt.record": "pass",
        "receipt.inclusion": "pass",
        "receipt.log_signature": "pass",
    }, checks
    # the conformance suite's TR-ANC-001 (the URI) and TR-ANC-002 (inclusion) on the record
    record_file = claim_file.parent / claim_file.name.replace(".claim.json", ".record.json")
    assert json.loads(record_file.read_text()) == record
    command = [str(TRACE_TESTS), "verify", "--record", str(record_file), "--level", "2"]
    suite = subprocess.run(
        [*command, "--expected-nonce", "A" * 22, "--receipt", str(stored)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    anchor_lines = [line.split() for line in suite.stdout.splitlines() if "TR-ANC" in line]
    assert [line[:2] for line in anchor_lines] == [["TR-ANC", "PASS"]] * 2, suite.stdout
    assert "inclusion proven" in suite.stdout, suite.stdout


def found_at_the_service(
    receipt: dict[str, Any], record: dict[str, Any], double: RunningTransparency
) -> None:
    """The receipt document's `entry` is where the service keeps the record: `GET` of it
    answers a COSE receipt (SCRAPI) or a registry document carrying one (registry-anchor-v1)
    that proves the record's leaf under the log key."""
    with client(double.ca_file) as http:
        answer = http.get(receipt["entry"])
    assert answer.status_code == 200, (receipt["entry"], answer.status_code, answer.text)
    cose = answer.content
    if "/records/" in receipt["entry"]:
        cose = b64url_decode(answer.json()["receipt"])
    found = verify_receipt(
        cose,
        leaf_entry_hex=anchor_leaf_bytes(record).hex(),
        log_public_key_pem=double.log_key.read_bytes(),
    )
    assert found.ok, found.errors


@pytest.mark.parametrize("protocol", ["scrapi", "registry-anchor-v1"])
def test_each_claim_is_anchored_and_its_receipt_served_and_verified(
    tmp_path: Path, upstream: Served, double: RunningTransparency, protocol: str
) -> None:
    config = anchored_config(tmp_path, upstream, double, protocol=protocol)
    gateway = start_anchoring(config)
    claims = tmp_path / "claims"
    try:
        asyncio.run(calls(gateway.url, ("Paris", "Oslo")))
        (session,) = sessions_in(claims)
        # two per-call claims and the final one, each its own record and receipt
        receipts = {n: receipt_of(gateway, session, n) for n in (1, 2, 3)}
        assert receipt_of(gateway, session) == receipts[3]  # the latest is claim 3
        assert len({r["anchor_id"] for r in receipts.values()}) == 3
        assert {r["protocol"] for r in receipts.values()} == {protocol}
        # a receipt is served once on disk, a moment before the worker counts it
        until("nothing pending", lambda: anchoring(gateway)["pending"] == 0 or None)
        assert metric(gateway, "cmcp_anchor_submitted_total") == 3
        assert metric(gateway, "cmcp_anchor_pending") == 0
        assert not list(claims.glob("*.anchor.json"))
    finally:
        assert gateway.stop() == 0, gateway.output()
    for sequence, receipt in receipts.items():
        claim_file = claims / f"{session}.{sequence}.claim.json"
        check_stored(claim_file, receipt, double)
        # the double names its entries by anchor id: the transparency URI for SCRAPI, and
        # the registry's record URL (its 201's Location) for registry-anchor-v1
        kind = "entries" if protocol == "scrapi" else "records"
        assert receipt["entry"] == f"{double.url}/{kind}/{receipt['anchor_id']}", receipt
        found_at_the_service(receipt, json.loads(claim_file.read_text())["trace"], double)
    posted = [r for r in double.service.requests() if r["method"] == "POST"]
    wanted = "/entries" if protocol == "scrapi" else "/records"
    assert {r["path"] for r in posted} == {wanted}


def anchored_once(
    tmp_path: Path, upstream: Served, double: RunningTransparency, mode: str, city: str
) -> dict[str, Any]:
    """One session's call through a gateway anchoring to `double` in `mode`: its final
    claim's receipt, which passes every verifier (`check_stored`)."""
    double.service.set_mode(mode)
    gateway = start_anchoring(anchored_config(tmp_path, upstream, double, per_call=False))
    try:
        asyncio.run(calls(gateway.url, (city,)))
        (session,) = sessions_in(tmp_path / "claims")
        receipt = receipt_of(gateway, session)
    finally:
        assert gateway.stop() == 0, gateway.output()
    check_stored(tmp_path / "claims" / f"{session}.claim.json", receipt, double)
    return receipt


def test_an_async_registration_is_polled_to_its_receipt(
    tmp_path: Path, upstream: Served, double: RunningTransparency
) -> None:
    anchored_once(tmp_path, upstream, double, "async", "Lima")
    paths = [r["path"] for r in double.service.requests()]
    assert any(p.startswith("/operations/") for p in paths), paths


def test_a_draft09_registration_is_polled_through_its_302s_to_its_receipt(
    tmp_path: Path, upstream: Served, double: RunningTransparency
) -> None:
    """SCRAPI draft-09: the double answers 303 to the entry, 302 while pending, then 200
    with `application/scitt-receipt+cose`; the gateway stores that receipt and it verifies
    (`cmcp verify --receipt --log-key`, scitt-cose, the conformance suite)."""
    receipt = anchored_once(tmp_path, upstream, double, "draft09", "Quito")
    entry = f"/entries/{receipt['anchor_id']}"
    asked = [(r["method"], r["path"], r["status"]) for r in double.service.requests()]
    assert asked == [
        ("POST", "/entries", 303),
        *[("GET", entry, 302)] * DRAFT09_PENDING_POLLS,
        ("GET", entry, 200),
    ], asked


def test_a_service_naming_its_own_entry_ids_is_where_the_receipt_says(
    tmp_path: Path, upstream: Served, double: RunningTransparency
) -> None:
    """A SCRAPI service that assigns its own entry ids (scitt-ccf-ledger's `2.34`) answers
    303 to `/entries/2.1`: the record's transparency URI does not resolve there (404), and
    the receipt document's `entry` names the URL that does, whose receipt proves the
    record; `cmcp verify`, scitt-cose and the suite pass on the stored document."""
    double.service.set_mode("own-ids")
    gateway = start_anchoring(anchored_config(tmp_path, upstream, double, per_call=False))
    try:
        asyncio.run(calls(gateway.url, ("Accra",)))
        (session,) = sessions_in(tmp_path / "claims")
        receipt = receipt_of(gateway, session)
        claim_file = tmp_path / "claims" / f"{session}.claim.json"
        record = json.loads(claim_file.read_text())["trace"]
        with client(double.ca_file) as http:
            assert http.get(record["transparency"]).status_code == 404
        found_at_the_service(receipt, record, double)
    finally:
        double.service.set_mode("up")
        assert gateway.stop() == 0, gateway.output()
    assert receipt["entry"] == f"{double.url}/entries/2.1", receipt
    assert receipt["transparency"] == record["transparency"] != receipt["entry"]
    check_stored(claim_file, receipt, double)
    asked = [(r["method"], r["path"], r["status"]) for r in double.service.requests()]
    assert asked[:2] == [("POST", "/entries", 303), ("GET", "/entries/2.1", 200)], asked


def test_a_service_down_or_slow_leaves_calls_as_fast_and_anchors_once_up(
    tmp_path: Path, upstream: Served, double: RunningTransparency
) -> None:
    """Each call's claim is queued while the service answers 503, then while it answers
    only after the client's timeout (3 s): calls take no longer than with it up; the
    records stay pending with their error, retried with backoff; once up, all anchor."""
    gateway = start_anchoring(anchored_config(tmp_path, upstream, double, timeout=3))
    claims = tmp_path / "claims"
    try:
        up = asyncio.run(calls(gateway.url, ("Paris", "Oslo", "Rome")))
        until("the first session anchored", lambda: anchoring(gateway)["pending"] == 0 or None)
        before = set(sessions_in(claims))
        double.service.set_mode("down")
        down = asyncio.run(calls(gateway.url, ("Paris", "Oslo", "Rome")))
        (down_session,) = set(sessions_in(claims)) - before
        double.service.set_mode("slow")
        slow = asyncio.run(calls(gateway.url, ("Paris", "Oslo", "Rome")))
        # an attempt in slow mode waits 3 s for its answer: a call that waited on one
        # would take that long; none does, nor is slower than with the service up by
        # more than scheduling noise
        assert max(down + slow) < 1.5, (up, down, slow)
        assert max(down + slow) < max(up) + 1.0, (up, down, slow)
        detail = until("pending anchors", lambda: _pending_with_errors(gateway))
        assert detail["pending"] >= 4 and detail["oldest"], detail
        assert metric(gateway, "cmcp_anchor_failures_total") >= 2
        assert metric(gateway, "cmcp_anchor_pending") >= 4
        pending = until("a retried record", lambda: _attempted(gateway, down_session))
        assert pending["last_error"], pending
        double.service.set_mode("up")
        until("every record anchored", lambda: anchoring(gateway)["pending"] == 0 or None)
        assert not list(claims.glob("*.anchor.json"))
        anchored = metric(gateway, "cmcp_anchor_submitted_total")
        assert anchored == len(list(claims.glob("*.*.claim.json"))) == 12
    finally:
        assert gateway.stop() == 0, gateway.output()
    final = receipt_path(claims, f"{down_session}.1")
    check_stored(claims / f"{down_session}.1.claim.json", json.loads(final.read_text()), double)


def _pending_with_errors(gateway: Served) -> dict[str, Any] | None:
    detail = anchoring(gateway)
    return detail if detail["pending"] >= 4 and detail["last_error"] else None


def _attempted(gateway: Served, session: str) -> dict[str, Any] | None:
    """The 409 body of the session's first claim's receipt once it was attempted twice."""
    status, body = get_json(gateway, f"/trace/{session}?receipt&sequence=1")
    assert status == 409 and body["pending"] is True, (status, body)
    return dict(body) if body["attempts"] >= 2 else None


@pytest.mark.parametrize("mode", ["wrong-key", "tamper", "other-leaf"])
def test_a_receipt_that_does_not_prove_the_record_is_refused_and_kept_pending(
    tmp_path: Path, upstream: Served, double: RunningTransparency, mode: str
) -> None:
    double.service.set_mode(mode)
    gateway = start_anchoring(anchored_config(tmp_path, upstream, double, per_call=False))
    claims = tmp_path / "claims"
    try:
        asyncio.run(calls(gateway.url, ("Kyiv",)))
        (session,) = sessions_in(claims)
        until("a refused receipt", lambda: metric(gateway, "cmcp_anchor_rejected_total") or None)
        status, body = get_json(gateway, f"/trace/{session}?receipt")
        assert status == 409 and body["pending"] is True, body
        assert body["attempts"] >= 1 and "receipt refused" in body["last_error"], body
        assert "receipt refused" in anchoring(gateway)["last_error"]
        assert not (claims / f"{session}.receipt.json").exists()
        assert (claims / f"{session}.anchor.json").exists()
        double.service.set_mode("up")
        receipt = receipt_of(gateway, session)
    finally:
        assert gateway.stop() == 0, gateway.output()
    check_stored(claims / f"{session}.claim.json", receipt, double)


def test_a_registry_entry_that_disagrees_with_its_receipt_is_refused(
    tmp_path: Path, upstream: Served, double: RunningTransparency
) -> None:
    double.service.set_mode("disagree")
    config = anchored_config(
        tmp_path, upstream, double, protocol="registry-anchor-v1", per_call=False
    )
    gateway = start_anchoring(config)
    try:
        asyncio.run(calls(gateway.url, ("Oslo",)))
        (session,) = sessions_in(tmp_path / "claims")
        until("a refused entry", lambda: metric(gateway, "cmcp_anchor_rejected_total") or None)
        status, body = get_json(gateway, f"/trace/{session}?receipt")
        assert status == 409 and "disagree with its COSE receipt" in body["last_error"], body
        # /readyz answers anyone the counts; what the service answered, only the operator
        for token in (None, "not-the-operator-token"):
            seen = anchoring(gateway, token)
            assert "last_error" not in seen and seen["rejected"] >= 1, (token, seen)
            assert seen["pending"] == 1 and double.url not in json.dumps(seen), seen
        assert "disagree with its COSE receipt" in anchoring(gateway)["last_error"]
    finally:
        assert gateway.stop() == 0, gateway.output()


def test_records_pending_at_a_sigkill_are_anchored_after_restart(
    tmp_path: Path, upstream: Served, double: RunningTransparency
) -> None:
    """SIGKILL with per-call claims pending (the service down) and the session open: the
    next process recovers the session (its final claim queued too) and, the service up,
    anchors every record, each receipt verifying; a damaged pending file stays counted."""
    double.service.set_mode("down")
    config = anchored_config(tmp_path, upstream, double)
    claims = tmp_path / "claims"
    gateway = start_anchoring(config)
    try:
        asyncio.run(_calls_left_open(gateway.url))
        # each record is queued before its claim is written: wait for both
        until("two claims pending", lambda: _two_pending(claims))
    finally:
        gateway.stop(signal.SIGKILL)
    (session,) = sessions_in(claims)
    damaged = claims / "damaged.anchor.json"
    damaged.write_text("{")  # a pending file that cannot be read: counted, never dropped
    double.service.set_mode("up")
    restarted = start_anchoring(config)
    try:
        receipts = {n: receipt_of(restarted, session, n) for n in (1, 2)}
        final = receipt_of(restarted, session)  # the recovery's claim
        detail = until("only the damaged file", lambda: _only_damaged(restarted))
        assert detail["last_error"] is None and session not in json.dumps(detail), detail
        assert metric(restarted, "cmcp_anchor_pending") == 1
        assert damaged.read_text() == "{"
    finally:
        assert restarted.stop() == 0, restarted.output()
    for sequence, receipt in receipts.items():
        check_stored(claims / f"{session}.{sequence}.claim.json", receipt, double)
    check_stored(claims / f"{session}.claim.json", final, double)
    assert final["anchor_id"] not in {r["anchor_id"] for r in receipts.values()}


def _two_pending(claims: Path) -> bool | None:
    queued, written = claims.glob("*.anchor.json"), claims.glob("*.*.record.json")
    return (len(list(queued)), len(list(written))) == (2, 2) or None


def _only_damaged(gateway: Served) -> dict[str, Any] | None:
    detail = anchoring(gateway)
    return detail if (detail["pending"], detail["unreadable"]) == (1, 1) else None


async def _calls_left_open(url: str) -> None:
    """Two calls in a session that is never closed (the process is killed under it)."""
    async with (
        streamable_http_client(url, terminate_on_close=False) as (read, write),
        ClientSession(read, write) as session,
    ):
        await session.initialize()
        for city in ("Paris", "Oslo"):
            await session.call_tool("get_weather", {"city": city})


def test_without_anchoring_nothing_is_queued_and_receipt_is_404(
    tmp_path: Path, upstream: Served
) -> None:
    gateway = start_gateway(write_config(tmp_path, upstream.url, claims={"per_call": True}))
    claims = tmp_path / "claims"
    try:
        asyncio.run(calls(gateway.url, ("Rome",)))
        (session,) = sessions_in(claims)
        status, body = get_json(gateway, f"/trace/{session}?receipt&sequence=1")
        assert status == 404 and "anchoring is off" in body["error"], body
        status, detail = get_json(gateway, "/readyz")
        assert "anchoring" not in detail
    finally:
        assert gateway.stop() == 0, gateway.output()
    claim = json.loads((claims / f"{session}.1.claim.json").read_text())
    assert "transparency" not in claim["trace"]
    assert not list(claims.glob("*.anchor.json")) and not list(claims.glob("*.receipt.json"))
