"""Who reads what a session leaves: its claim, TRACE record and audit chain go to the
session's own agent and the operator only, also after the gateway restarts; /metrics
names no agent to agents. Two agents and an operator against `cmcp start` on loopback."""

from __future__ import annotations

import json
import signal
import sqlite3
from pathlib import Path

import pytest

from cmcp_cli.audit.store import session_start
from tests.gateway_support import INIT, Served, request, start_gateway, write_config
from tests.sessions import record_session

RISK, PAYMENTS = "spiffe://bank.example/agent/risk", "spiffe://bank.example/agent/payments"
RISK_TOKEN, PAYMENTS_TOKEN, OPERATOR_TOKEN = "r" * 40, "p" * 40, "o" * 40
AS_RISK = {"authorization": f"Bearer {RISK_TOKEN}"}
AS_PAYMENTS = {"authorization": f"Bearer {PAYMENTS_TOKEN}"}
AS_OPERATOR = {"authorization": f"Bearer {OPERATOR_TOKEN}"}
NOBODY = {"authorization": "Bearer " + "x" * 40}


@pytest.fixture
def two_agents(tmp_path: Path, upstream: Served) -> tuple[Path, dict[str, str]]:
    auth = {
        "bearer_tokens": [
            {"agent": RISK, "token_env": "RISK_TOKEN"},
            {"agent": PAYMENTS, "token_env": "PAYMENTS_TOKEN"},
        ]
    }
    env = {
        "RISK_TOKEN": RISK_TOKEN,
        "PAYMENTS_TOKEN": PAYMENTS_TOKEN,
        "CMCP_OPERATOR_TOKEN": OPERATOR_TOKEN,
    }
    # claims per call: each claim is also served by its sequence number, by the same rule
    return write_config(tmp_path, upstream.url, auth=auth, claims={"per_call": True}), env


def open_session(gateway: Served, caller: dict[str, str]) -> str:
    status, headers, body = request(gateway.port, "POST", "/mcp", INIT, caller)
    assert status == 200, body
    return headers["mcp-session-id"]


def close_session(gateway: Served, caller: dict[str, str], session_id: str) -> None:
    status, _, body = request(gateway.port, "POST", f"/sessions/{session_id}/close", None, caller)
    assert status == 200, body


def get(gateway: Served, path: str, caller: dict[str, str] | None) -> tuple[int, bytes]:
    status, _, body = request(gateway.port, "GET", path, None, caller)
    return status, body


def claimed_session(body: bytes) -> str:
    return str(json.loads(body)["gateway"]["session_id"])


def test_a_claim_and_its_audit_chain_are_read_by_their_agent_and_the_operator_only(
    two_agents: tuple[Path, dict[str, str]],
) -> None:
    config, env = two_agents
    gateway = start_gateway(config, env)
    try:
        risk = open_session(gateway, AS_RISK)
        close_session(gateway, AS_RISK, risk)
        payments = open_session(gateway, AS_PAYMENTS)
        close_session(gateway, AS_PAYMENTS, payments)

        for path in (
            f"/trace/{risk}",
            f"/trace/{risk}?format=record",
            f"/trace/{risk}?sequence=1",
            f"/trace/{risk}?sequence=1&format=record",
            f"/audit/{risk}",
        ):
            assert get(gateway, path, AS_RISK)[0] == 200, path
            assert get(gateway, path, AS_OPERATOR)[0] == 200, path
            assert get(gateway, path, None)[0] == 401, path
            assert get(gateway, path, NOBODY)[0] == 401, path
            # another agent learns nothing, not even that the session exists
            unknown = "n" * len(risk)
            status, body = get(gateway, path, AS_PAYMENTS)
            status_unknown, body_unknown = get(gateway, path.replace(risk, unknown), AS_PAYMENTS)
            assert status == status_unknown == 404, path
            assert body.replace(risk.encode(), unknown.encode()) == body_unknown, path
        assert get(gateway, f"/trace/{payments}", AS_RISK)[0] == 404
        assert get(gateway, f"/audit/{payments}", AS_RISK)[0] == 404

        # latest is the caller's own; the operator's is the gateway's
        status, body = get(gateway, "/trace/latest", AS_RISK)
        assert (status, claimed_session(body)) == (200, risk)
        status, body = get(gateway, "/trace/latest", AS_PAYMENTS)
        assert (status, claimed_session(body)) == (200, payments)
        status, body = get(gateway, "/trace/latest", AS_OPERATOR)
        assert (status, claimed_session(body)) == (200, payments)
        assert get(gateway, "/trace/latest", None)[0] == 401
    finally:
        gateway.stop()


def test_ownership_holds_for_sessions_of_an_earlier_gateway_process(
    two_agents: tuple[Path, dict[str, str]],
) -> None:
    config, env = two_agents
    first = start_gateway(config, env)
    try:
        closed = open_session(first, AS_RISK)
        close_session(first, AS_RISK, closed)
        left_open = open_session(first, AS_RISK)  # its process dies with it open
    finally:
        first.stop(signal.SIGKILL)

    second = start_gateway(config, env)
    try:
        for path in (f"/trace/{closed}", f"/audit/{closed}", f"/audit/{left_open}"):
            assert get(second, path, AS_RISK)[0] == 200, path
            assert get(second, path, AS_OPERATOR)[0] == 200, path
            assert get(second, path, AS_PAYMENTS)[0] == 404, path
        # whether or not the interrupted session has a claim (yet), it is not another's
        assert get(second, f"/trace/{left_open}", AS_PAYMENTS)[0] == 404
    finally:
        second.stop()


def test_metrics_name_agents_to_the_operator_only(
    two_agents: tuple[Path, dict[str, str]],
) -> None:
    config, env = two_agents
    gateway = start_gateway(config, env)
    try:
        open_session(gateway, AS_RISK)
        open_session(gateway, AS_RISK)
        open_session(gateway, AS_PAYMENTS)
        assert get(gateway, "/metrics", None)[0] == 401
        for agent in (AS_RISK, AS_PAYMENTS):
            status, body = get(gateway, "/metrics", agent)
            text = body.decode()
            assert status == 200
            assert "cmcp_sessions_open 3" in text.splitlines()
            assert "agent" not in text
            assert RISK not in text and PAYMENTS not in text
        status, body = get(gateway, "/metrics", AS_OPERATOR)
        lines = body.decode().splitlines()
        assert status == 200
        assert "cmcp_sessions_open 3" in lines
        assert f'cmcp_agent_sessions_open{{agent="{RISK}"}} 2' in lines
        assert f'cmcp_agent_sessions_open{{agent="{PAYMENTS}"}} 1' in lines
    finally:
        gateway.stop()


def test_a_session_start_that_was_edited_names_no_owner(tmp_path: Path) -> None:
    recorded = record_session(tmp_path)
    start = session_start(recorded.db, recorded.session_id)
    assert start is not None
    assert start.fields["agent"] == "anonymous"
    assert session_start(recorded.db, "no-such-session") is None
    with sqlite3.connect(recorded.db) as connection:
        connection.execute(
            "UPDATE audit_entries SET line = CAST(replace(line, ?, ?) AS BLOB) WHERE seq = 0",
            (b'"agent":"anonymous"', b'"agent":"someone-else"'),
        )
    assert session_start(recorded.db, recorded.session_id) is None
