"""Input requests of 2026-07-28 `input_required` results, governed like the server-to-client
requests they stand for: an SDK 2.x client (2026-07-28) calls a tool of an SDK upstream
that asks for the user's name by elicitation; the gateway's policy denies the elicitation
in one run and redacts its answer in the other. The claims verify against their logs and
replay-audit decides every message again."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import mcp_types as types
from mcp import Client, MCPError
from mcp.client.session import ClientRequestContext

from tests.gateway_support import Served
from tests.support import run_cmcp
from tests.test_gateway_methods import MODERN, SESSION_SECONDS, start_stack, upstream_events

EVERYTHING_BUT_ELICIT = """
@id("everything-but-elicit")
permit (principal, action, resource) unless { action == Action::"elicit" };
"""
NO_ELICIT = (
    EVERYTHING_BUT_ELICIT
    + """
@id("ask-nothing")
forbid (principal, action == Action::"elicit", resource);
"""
)
NAMES_REDACTED = (
    EVERYTHING_BUT_ELICIT
    + """
@id("names-redacted")
@redact("/name")
permit (principal, action == Action::"elicit", resource);
"""
)


async def ask_name(url: str) -> dict[str, Any]:
    """Call `ask_name` as a 2026-07-28 client whose user answers "Ada"."""
    seen: dict[str, Any] = {"asked": []}

    async def elicit(
        context: ClientRequestContext, params: types.ElicitRequestParams
    ) -> types.ElicitResult | types.ErrorData:
        seen["asked"].append(params.message)
        return types.ElicitResult(action="accept", content={"name": "Ada"})

    async with asyncio.timeout(SESSION_SECONDS), Client(url, elicitation_callback=elicit) as client:
        seen["protocol"] = client.protocol_version
        try:
            answer = await client.call_tool("ask_name", {})
        except MCPError as exc:
            seen["error"] = exc.error
        else:
            seen["greeting"] = [c.text for c in answer.content if isinstance(c, types.TextContent)]
    return seen


def governed(folder: Path, policy: str) -> tuple[dict[str, Any], Served, dict[str, Any]]:
    """Run `ask_name` through a gateway deciding by `policy`; what the client saw, the
    upstream, and the elicit counts of the session's claim (checked against its log)."""
    upstream, gateway = start_stack(folder, policy=policy)
    try:
        try:
            seen = asyncio.run(ask_name(gateway.url))
        finally:
            gateway.stop()  # closes the session: its claim is written
    finally:
        upstream.stop()
    claims = [
        json.loads(path.read_text()) for path in sorted((folder / "claims").glob("*.claim.json"))
    ]
    by_kind = [claim["gateway"]["call_summary"]["by_kind"] for claim in claims]
    (elicits,) = [kinds["elicit"] for kinds in by_kind if "elicit" in kinds]
    audit = folder / "audit.db"
    for path in sorted((folder / "claims").glob("*.claim.json")):
        verified = run_cmcp("verify", path, "--allow-software", "--audit-log", audit, "--json")
        assert verified.returncode == 0, verified.stdout + verified.stderr
    replayed = run_cmcp(
        "replay-audit", "--db", audit, "--all", "--bundle", folder / "policies", "--json"
    )
    assert replayed.returncode == 0, replayed.stdout + replayed.stderr
    assert all(session["ok"] for session in replayed.json()["sessions"])
    return seen, upstream, elicits


def test_an_input_request_policy_denies_is_never_asked(tmp_path: Path) -> None:
    seen, upstream, elicits = governed(tmp_path, NO_ELICIT)
    assert seen["protocol"] == MODERN
    assert seen["asked"] == []  # the user was never asked
    refused = seen["error"]
    assert refused.code == -32040
    assert refused.data["kind"] == "elicit"
    assert refused.data["policy_ids"] == ["ask-nothing"]
    assert upstream_events(upstream, "answered") == []  # no retry reached the upstream
    assert (elicits["total"], elicits["denied"]) == (1, 1)


def test_an_input_response_is_redacted_before_the_upstream_gets_it(tmp_path: Path) -> None:
    seen, upstream, elicits = governed(tmp_path, NAMES_REDACTED)
    assert seen["asked"] == ["What is your name?"]
    (greeting,) = seen["greeting"]
    assert "Ada" not in greeting
    assert greeting.startswith("hello [REDACTED")
    (answered,) = upstream_events(upstream, "answered")
    assert "Ada" not in json.dumps(answered)
    assert answered["state"] == "asked-once"  # requestState went back untouched
    assert (elicits["total"], elicits["redacted"]) == (1, 1)
