"""Claims per call (`claims.per_call`), through a served gateway, the official MCP SDK as
the agent and the real `cmcp` CLI as the auditor."""

from __future__ import annotations

import asyncio
import json
import signal
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mcp.client.session import ClientSession
from mcp.client.streamable_http import streamable_http_client

from tests.gateway_support import INIT, Served, request, start_gateway, write_config
from tests.support import CliResult, run_cmcp

CALLS = 5
CITIES = ("Paris", "Oslo", "Lima", "Rome", "Kyiv")
WAIT_SECONDS = 10.0


@pytest.fixture
def per_call(tmp_path: Path, upstream: Served) -> Iterator[Served]:
    served = start_gateway(write_config(tmp_path, upstream.url, claims={"per_call": True}))
    yield served
    served.stop()


def claims_dir(served: Served) -> Path:
    return served.log.parent / "claims"


def written(folder: Path, pattern: str) -> Path:
    """The one file matching `pattern`, waiting (bounded) for the gateway to write it."""
    deadline = time.monotonic() + WAIT_SECONDS
    while time.monotonic() < deadline:
        found = sorted(folder.glob(pattern))
        if found:
            assert len(found) == 1, found
            return found[0]
        time.sleep(0.05)
    raise AssertionError(f"no {pattern} in {folder} within {WAIT_SECONDS} s")


async def five_calls(served: Served) -> dict[str, Any]:
    """Five tool calls in one session; between them, what /trace serves."""
    seen: dict[str, Any] = {}
    async with (
        streamable_http_client(served.url) as (read, write),
        ClientSession(read, write) as session,
    ):
        await session.initialize()
        for index, city in enumerate(CITIES):
            answer = await session.call_tool("get_weather", {"city": city})
            assert answer.content[0].text == f"Sunny, 21 C in {city}"  # type: ignore[union-attr]
            if index == 0:
                first = await asyncio.to_thread(written, claims_dir(served), "*.1.claim.json")
                seen["session"] = first.name.split(".")[0]
        trace = f"/trace/{seen['session']}"
        # served at once: /trace waits for the claim being written, whose entry is durable
        seen["fifth"] = await asyncio.to_thread(request, served.port, "GET", f"{trace}?sequence=5")
        seen["latest"] = await asyncio.to_thread(request, served.port, "GET", trace)
        seen["record"] = await asyncio.to_thread(
            request, served.port, "GET", f"{trace}?sequence=2&format=record"
        )
        for query in ("sequence=0", "sequence=x", "sequence=1&sequence=2"):
            seen[query] = await asyncio.to_thread(request, served.port, "GET", f"{trace}?{query}")
        seen["unissued"] = await asyncio.to_thread(
            request, served.port, "GET", f"{trace}?sequence=99"
        )
    return seen


def verify(*args: str | Path) -> CliResult:
    return run_cmcp("verify", *args, "--allow-software", "--json")


def failed_checks(result: CliResult) -> set[str]:
    return {c["name"] for c in result.json()["checks"] if c["status"] == "fail"}


def test_five_calls_yield_five_linked_claims_and_the_last_at_the_end(
    per_call: Served, tmp_path: Path
) -> None:
    seen = asyncio.run(five_calls(per_call))
    session = seen["session"]
    status, _, body = seen["fifth"]
    assert status == 200, body
    fifth = json.loads(body)
    assert fifth["gateway"]["sequence_number"] == 5
    assert json.loads(seen["latest"][2]) == fifth  # while the session is open, its latest
    status, _, record = seen["record"]
    assert status == 200 and "signature" in json.loads(record)
    for query in ("sequence=0", "sequence=x", "sequence=1&sequence=2"):
        assert seen[query][0] == 400, query
    # not issued yet, and the session is open: it may come, and the answer says how
    status, _, body = seen["unissued"]
    assert status == 409
    assert json.loads(body)["error"] == (
        f"session {session!r} is still open and has no claim 99 yet: close it "
        f"(POST /sessions/{session}/close), then GET /trace/{session}; each tool call "
        "issues the next claim (claims.per_call)"
    )

    folder = claims_dir(per_call)
    paths = [folder / f"{session}.{n}.claim.json" for n in range(1, CALLS + 2)]
    claims = [json.loads(path.read_text()) for path in paths]  # the client's DELETE closed it
    assert [c["gateway"]["sequence_number"] for c in claims] == [1, 2, 3, 4, 5, 6]
    assert claims[0]["gateway"]["previous_claim"] is None
    assert all(c["gateway"]["previous_claim"].startswith("sha256:") for c in claims[1:])
    assert claims[4] == fifth
    # each claim counts the calls up to it; the last one, at the end, all of them
    assert [c["gateway"]["call_summary"]["by_kind"]["call_tool"]["total"] for c in claims] == [
        1, 2, 3, 4, 5, 5
    ]  # fmt: skip
    assert json.loads((folder / f"{session}.claim.json").read_text()) == claims[-1]
    status, _, latest = request(per_call.port, "GET", f"/trace/{session}")
    assert status == 200 and json.loads(latest) == claims[-1]

    audit = per_call.log.parent / "audit.db"
    with sqlite3.connect(audit) as db:
        lines = [row[0] for row in db.execute("SELECT line FROM audit_entries ORDER BY id")]
    entries = [json.loads(line) for line in lines]
    assert [e["type"] for e in entries].count("claim") == CALLS
    for path in paths:  # each alone, against the log as of its own issuance
        alone = verify(path, "--audit-log", str(audit))
        assert alone.returncode == 0, (path.name, alone.stdout)
    # a claim's standalone TRACE record too
    standalone = verify(folder / f"{session}.3.record.json", "--audit-log", str(audit))
    assert standalone.returncode == 0, standalone.stdout
    chained = verify(*paths, "--audit-log", str(audit))
    assert chained.returncode == 0, chained.stdout
    report = chained.json()
    assert report["kind"] == "claim-sequence"
    assert {c["name"]: c["status"] for c in report["checks"]} == {
        "sequence: claims": "pass",
        "sequence: session": "pass",
        "sequence: key": "pass",
        "sequence: numbers": "pass",
        "sequence: links": "pass",
    }
    replayed = run_cmcp("replay-audit", "--db", audit, "--all", "--claim", paths[2], "--json")
    assert replayed.returncode == 0, replayed.stdout

    removed = verify(*paths[:2], *paths[3:])
    assert removed.returncode == 1
    assert failed_checks(removed) == {"sequence: numbers", "sequence: links"}
    reordered = verify(paths[0], paths[2], paths[1], *paths[3:])
    assert reordered.returncode == 1
    assert failed_checks(reordered) == {"sequence: numbers", "sequence: links"}
    repeated = verify(*paths[:3], paths[2], *paths[3:])
    assert repeated.returncode == 1
    assert failed_checks(repeated) == {"sequence: numbers", "sequence: links"}
    # a tail of the sequence verifies on its own: its first link points before it
    assert verify(*paths[3:]).returncode == 0
    # a claim 1 that is not the one claim 2 links to: the link breaks
    substitute = json.loads(paths[0].read_text())
    substitute["gateway"]["previous_claim"] = "sha256:" + "0" * 64
    forged = tmp_path / "forged.claim.json"
    forged.write_text(json.dumps(substitute))
    substituted = verify(forged, paths[1])
    assert substituted.returncode == 1
    assert "sequence: links" in failed_checks(substituted)


def test_without_per_call_a_session_has_one_claim_as_before(gateway: Served) -> None:
    asyncio.run(five_calls_plain(gateway))
    folder = gateway.log.parent / "claims"
    (claim,) = folder.glob("*.claim.json")
    assert len(claim.name.split(".")) == 3  # <session>.claim.json, no numbered files
    document = json.loads(claim.read_text())
    assert document["gateway"]["sequence_number"] == 1
    assert document["gateway"]["previous_claim"] is None
    audit = gateway.log.parent / "audit.db"
    with sqlite3.connect(audit) as db:
        lines = [row[0] for row in db.execute("SELECT line FROM audit_entries")]
    assert all(json.loads(line)["type"] != "claim" for line in lines)
    verified = verify(claim, "--audit-log", str(audit))
    assert verified.returncode == 0, verified.stdout


async def five_calls_plain(served: Served) -> None:
    async with (
        streamable_http_client(served.url) as (read, write),
        ClientSession(read, write) as session,
    ):
        await session.initialize()
        for city in CITIES:
            await session.call_tool("get_weather", {"city": city})


def test_a_killed_gateway_s_recovery_claim_continues_the_sequence(
    tmp_path: Path, upstream: Served
) -> None:
    config = write_config(tmp_path, upstream.url, claims={"per_call": True})
    gateway = start_gateway(config)
    restarted: Served | None = None
    try:
        status, headers, _ = request(gateway.port, "POST", "/mcp", INIT)
        assert status == 200
        session = headers["mcp-session-id"]
        for number, city in enumerate(CITIES[:2], start=2):
            call = {
                "jsonrpc": "2.0",
                "id": number,
                "method": "tools/call",
                "params": {"name": "get_weather", "arguments": {"city": city}},
            }
            status, _, body = request(
                gateway.port, "POST", "/mcp", call, {"mcp-session-id": session}
            )
            assert status == 200 and b"Sunny" in body, body
        folder = claims_dir(gateway)
        written(folder, f"{session}.2.claim.json")
        assert gateway.stop(signal.SIGKILL) == -signal.SIGKILL

        restarted = start_gateway(config)  # recovers the session before it serves
        paths = [folder / f"{session}.{n}.claim.json" for n in (1, 2)]
        final = folder / f"{session}.claim.json"
        recovery = json.loads(final.read_text())
        assert recovery["gateway"]["sequence_number"] == 3
        assert "recovery" in recovery["gateway"]
        audit = tmp_path / "audit.db"
        chained = verify(*paths, final, "--audit-log", str(audit))
        assert chained.returncode == 0, chained.stdout
        checks = {c["name"]: c["reason"] for c in chained.json()["checks"]}
        assert "recovering process's key" in checks["sequence: key"]
    finally:
        for served in (restarted, gateway):
            if served is not None:
                served.stop()
