"""A governed message (here a resource read) that was forwarded and then cancelled, by
the session's end or by its client, still ends in a fault of its own call: every
forwarded decision has its outcome or its fault."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from cmcp_cli.audit.logfile import read_log_lines
from cmcp_cli.audit.replay import replay_chains
from tests.gateway_support import Served, request
from tests.test_gateway_methods import raw_session, start_stack, upstream_events

SLOW_URI = "test://items/slow"
WAIT_SECONDS = 15.0


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Served, Served]]:
    upstream, gateway = start_stack(tmp_path_factory.mktemp("cancelled"))
    yield upstream, gateway
    gateway.stop()
    upstream.stop()


def slow_read(gateway: Served, session: str, answers: list[dict[str, object]]) -> None:
    headers = {"mcp-session-id": session, "mcp-protocol-version": "2025-11-25"}
    read = {"jsonrpc": "2.0", "id": 7, "method": "resources/read", "params": {"uri": SLOW_URI}}
    _, _, body = request(gateway.port, "POST", "/mcp", read, headers)
    answers.append(json.loads(body.split(b"data: ")[-1]) if b"data: " in body else json.loads(body))


def started_reads(upstream: Served) -> int:
    return len(upstream_events(upstream, "slow-read"))


def entries(gateway: Served, session: str) -> list[dict[str, Any]]:
    db = gateway.log.parent / "audit.db"
    return [json.loads(line) for line in read_log_lines(db, session)]


@pytest.mark.parametrize("how", ["session closed", "client cancelled"])
def test_a_cancelled_resource_read_ends_in_its_own_fault(
    stack: tuple[Served, Served], how: str
) -> None:
    upstream, gateway = stack
    session = raw_session(gateway.port)
    before = started_reads(upstream)
    answers: list[dict[str, object]] = []
    reader = threading.Thread(target=slow_read, args=(gateway, session, answers), daemon=True)
    reader.start()
    deadline = time.monotonic() + WAIT_SECONDS
    while started_reads(upstream) == before:
        assert time.monotonic() < deadline, "the read never reached the upstream"
        time.sleep(0.05)
    headers = {"mcp-session-id": session, "mcp-protocol-version": "2025-11-25"}
    if how == "client cancelled":
        cancel = {
            "jsonrpc": "2.0",
            "method": "notifications/cancelled",
            "params": {"requestId": 7, "reason": "changed my mind"},
        }
        status, _, _ = request(gateway.port, "POST", "/mcp", cancel, headers)
        assert status == 202
        reader.join(timeout=WAIT_SECONDS)  # answered at once, before the session ends
    status, _, _ = request(gateway.port, "POST", f"/sessions/{session}/close", b"", headers)
    assert status == 200
    reader.join(timeout=WAIT_SECONDS)
    assert not reader.is_alive() and answers, "the read was never answered"
    chain = entries(gateway, session)
    (decision,) = [e for e in chain if e.get("phase") == "decision"]
    assert decision["forwarded"] is True
    faults = [e for e in chain if e["type"] == "fault"]
    assert [(f.get("call_id"), f.get("kind")) for f in faults] == [
        (decision["call_id"], "read_resource")
    ], faults
    assert chain[-1]["type"] == "session_end"
    db = gateway.log.parent / "audit.db"
    (replay,) = replay_chains(read_log_lines(db, session)).values()
    assert replay.problems == []
