"""Policy reload through the real CLI: `cmcp start` serving, the official MCP SDK client,
bundles signed with `cmcp sign-bundle`, SIGHUP and the interval check, and the audit store
read back with `cmcp replay-audit`."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
from mcp.client.session import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

from cmcp_cli.audit.entry import open_line
from cmcp_cli.audit.logfile import read_log_lines
from tests.gateway_support import Served, start_gateway, write_config
from tests.reload_support import (
    WAIT_SECONDS,
    bundle_hash,
    claims,
    metric,
    policy_status,
    quickstart_copy,
    reload_by_signal,
    rewrite,
    sign,
    wait_for,
    write_keys,
)
from tests.support import QUICKSTART, run_cmcp


async def weather(session: ClientSession) -> str:
    """'allow' or 'deny': what the session's bundle decides for get_weather."""
    try:
        await session.call_tool("get_weather", {"city": "Paris"})
    except MCPError as exc:
        denial = exc.error
    else:
        return "allow"
    assert isinstance(denial.data, dict), denial  # a policy's denial, not another error
    assert denial.data["policy_ids"] == ["no-weather"]
    return "deny"


def policy_loads(audit: Path) -> dict[str, list[dict[str, Any]]]:
    """The policy_load entries of every session, by session id."""
    found: dict[str, list[dict[str, Any]]] = {}
    for line in read_log_lines(audit):
        entry = open_line(line)
        if entry.type == "policy_load":
            found.setdefault(entry.session_id, []).append(dict(entry.fields))
    return found


@pytest.fixture
def signed_gateway(tmp_path: Path, upstream: Served) -> Any:
    """A gateway whose bundle (a copy of the quickstart's, version 1.0.0) may be replaced
    by a higher version signed with `operator.pem`; reloaded on SIGHUP only."""
    private, public = write_keys(tmp_path, "operator")
    bundle = quickstart_copy(tmp_path / "policies")
    config = write_config(
        tmp_path,
        upstream.url,
        policy_bundle_path=str(bundle),
        policy={"reload": {"signing_keys": [str(public)]}},
    )
    served = start_gateway(config)
    yield served, bundle, private
    served.stop()


def test_a_signed_higher_version_is_taken_by_new_sessions_while_open_ones_keep_theirs(
    signed_gateway: tuple[Served, Path, Path],
) -> None:
    served, bundle, key = signed_gateway
    old_hash = policy_status(served)["bundle_hash"]
    assert old_hash == bundle_hash(QUICKSTART / "policies")

    async def scenario() -> dict[str, str]:
        seen: dict[str, str] = {}
        async with (
            streamable_http_client(served.url) as (read, write),
            ClientSession(read, write) as old,
        ):
            await old.initialize()
            seen["old before"] = await weather(old)
            new_hash = sign(rewrite(bundle, version="1.1.0"), key)
            event = await asyncio.to_thread(reload_by_signal, served)
            assert event["taken"] is True, event
            assert event["bundle_hash"] == new_hash
            assert event["rule"] == "signature"
            assert policy_status(served)["bundle_hash"] == new_hash
            seen["old after"] = await weather(old)
            async with (
                streamable_http_client(served.url) as (read2, write2),
                ClientSession(read2, write2) as new,
            ):
                await new.initialize()
                seen["new"] = await weather(new)
            seen["old at end"] = await weather(old)
            seen["new hash"] = new_hash
        return seen

    seen = asyncio.run(scenario())
    assert seen["old before"] == seen["old after"] == seen["old at end"] == "allow"
    assert seen["new"] == "deny"  # the reloaded bundle forbids what the first allows
    assert metric(served, "cmcp_policy_reloads_total") == {"": 1.0}
    assert metric(served, "cmcp_policy_generation") == {"": 1.0}

    by_bundle = {c["trace"]["policy"]["bundle_hash"]: c for c in claims(served.log.parent)}
    assert set(by_bundle) == {old_hash, seen["new hash"]}
    old_session = by_bundle[old_hash]["gateway"]["session_id"]
    new_session = by_bundle[seen["new hash"]]["gateway"]["session_id"]
    audit = served.log.parent / "audit.db"
    loads = policy_loads(audit)
    # the load is in the chain of the session open when it happened, naming both bundles
    assert [
        (e["bundle_hash"], e["taken"], e["previous_bundle_hash"]) for e in loads[old_session]
    ] == [(seen["new hash"], True, old_hash)]
    assert new_session not in loads
    for claim in by_bundle.values():  # each claim still matches its chain, entry included
        path = served.log.parent / "claims" / f"{claim['gateway']['session_id']}.claim.json"
        verified = run_cmcp("verify", path, "--allow-software", "--audit-log", audit, "--json")
        assert verified.returncode == 0, verified.stdout

    # each session is decided again with its own bundle, picked by the hash it recorded
    quickstart = QUICKSTART / "policies"
    both = run_cmcp(
        "replay-audit", "--db", audit, "--all", "--bundle", quickstart, "--bundle", bundle, "--json"
    )
    assert both.returncode == 0, both.stdout
    report = both.json()
    assert sorted(report["bundle_hashes"]) == sorted([old_hash, seen["new hash"]])
    checked = {s["session_id"]: s for s in report["sessions"]}
    # the SDK lists tools after a call's first result: 3 calls and 1 listing, 1 denied call
    assert checked[old_session]["decisions_checked"] == 4
    assert checked[new_session]["decisions_checked"] == 1
    assert not checked[old_session]["problems"] and not checked[new_session]["problems"]
    # with the old bundle alone, the new session cannot be decided again, and says so
    one = run_cmcp("replay-audit", "--db", audit, "--all", "--bundle", quickstart, "--json")
    assert one.returncode == 1
    problems = {s["session_id"]: s["problems"] for s in one.json()["sessions"]}
    assert problems[old_session] == []
    assert [p["kind"] for p in problems[new_session]] == ["not_replayable"]
    assert seen["new hash"] in problems[new_session][0]["message"]


def test_refused_bundles_leave_the_running_one_serving(
    signed_gateway: tuple[Served, Path, Path], tmp_path: Path
) -> None:
    served, bundle, key = signed_gateway
    running = policy_status(served)["bundle_hash"]
    stranger, _ = write_keys(tmp_path, "stranger")

    def refused(reason: str) -> dict[str, Any]:
        event = reload_by_signal(served)
        assert event["taken"] is False, event
        assert reason in event["reason"], event
        assert event["previous_bundle_hash"] == running
        assert policy_status(served)["bundle_hash"] == running
        return event

    async def open_session_keeps_deciding() -> None:
        async with (
            streamable_http_client(served.url) as (read, write),
            ClientSession(read, write) as session,
        ):
            await session.initialize()
            assert await weather(session) == "allow"

    async def scenario() -> None:
        async with (
            streamable_http_client(served.url) as (read, write),
            ClientSession(read, write) as open_one,
        ):
            await open_one.initialize()
            rewrite(bundle, version="1.1.0")  # not signed
            await asyncio.to_thread(refused, "is not signed")
            sign(rewrite(bundle, version="1.1.0"), stranger)
            await asyncio.to_thread(refused, "not by any of policy.reload.signing_keys")
            sign(rewrite(bundle, version="0.9.0"), key)
            await asyncio.to_thread(refused, "is not above the running 1.0.0")
            sign(rewrite(bundle, version="1.0.0"), key)  # a re-release under the same version
            await asyncio.to_thread(refused, "is not above the running 1.0.0")
            sign(rewrite(bundle, version="1.1.0-rc1"), key)
            await asyncio.to_thread(refused, "cannot be ordered")
            broken = rewrite(bundle, version="1.1.0", extra="permit (principal, action")
            _sign_without_compiling(broken, key)
            await asyncio.to_thread(refused, "does not compile")
            (bundle / "manifest.json").unlink()
            await asyncio.to_thread(refused, "manifest.json is missing")
            assert await weather(open_one) == "allow"
            await open_session_keeps_deciding()
            # and a good one is still taken afterwards
            good = sign(rewrite(bundle, version="1.2.0"), key)
            event = await asyncio.to_thread(reload_by_signal, served)
            assert (event["taken"], event["bundle_hash"]) == (True, good)

    asyncio.run(scenario())
    refusals = metric(served, "cmcp_policy_reload_refusals_total")
    assert refusals == {
        'reason="attestation"': 0.0,
        'reason="invalid"': 1.0,
        'reason="not_allowed"': 5.0,
        'reason="unreadable"': 1.0,
    }
    assert len(claims(served.log.parent)) == 2
    # the session open throughout holds every event; the one opened in between, none
    (loads,) = policy_loads(served.log.parent / "audit.db").values()
    assert [e["taken"] for e in loads] == [False] * 7 + [True]
    assert loads[-2]["bundle_hash"] is None  # an unreadable bundle has no hash to record
    assert "refused" in served.output() and "manifest.json is missing" in served.output()


def _sign_without_compiling(bundle: Path, key: Path) -> None:
    """A valid signature over a bundle that does not compile: the compile must refuse it
    (`cmcp sign-bundle` would not sign it)."""
    from cmcp_cli.policy.acceptance import load_private_key, sign_bundle
    from cmcp_cli.policy.bundle import read_bundle

    sign_bundle(read_bundle(bundle), load_private_key(key))


def test_pinned_hashes_on_an_interval(tmp_path: Path, upstream: Served) -> None:
    """Only a pinned hash is taken, found by the interval check without any signal."""
    bundle = quickstart_copy(tmp_path / "policies")
    pinned = bundle_hash(rewrite(tmp_path / "pinned", version="1.0.0"))
    config = write_config(
        tmp_path,
        upstream.url,
        policy_bundle_path=str(bundle),
        policy_reload_interval_seconds=1,
        policy={"reload": {"accept_hashes": [pinned]}},
    )
    served = start_gateway(config)
    try:
        rewrite(bundle, version="1.0.0", extra=NOT_PINNED)
        unpinned = bundle_hash(bundle)
        status = wait_for(
            served, lambda s: s["reload"]["refused"] == 1, "the unpinned bundle was not refused"
        )
        assert status["reload"]["last"]["bundle_hash"] == unpinned
        assert "not one of policy.reload.accept_hashes" in status["reload"]["last"]["reason"]
        assert status["bundle_hash"] != unpinned
        rewrite(bundle, version="1.0.0")  # the pinned bundle: a version need not rise here
        status = wait_for(served, lambda s: s["bundle_hash"] == pinned, "pinned bundle not taken")
        assert status["reload"]["last"]["rule"] == "pinned-hash"
        assert status["reload"]["refused"] == 1  # refused once, not at every interval

        async def one_call() -> str:
            async with (
                streamable_http_client(served.url) as (read, write),
                ClientSession(read, write) as session,
            ):
                await session.initialize()
                return await weather(session)

        assert asyncio.run(one_call()) == "deny"  # a new session runs the pinned bundle
    finally:
        served.stop()
    # no session was open at either event: each went into a session of its own, claimed
    audit = tmp_path / "audit.db"
    loads = policy_loads(audit)
    events = sorted((e for entries in loads.values() for e in entries), key=lambda e: e["at"])
    assert [(e["bundle_hash"], e["taken"]) for e in events] == [(unpinned, False), (pinned, True)]
    assert all(len(entries) == 1 for entries in loads.values())
    for session_id in loads:
        claim = tmp_path / "claims" / f"{session_id}.claim.json"
        verified = run_cmcp("verify", claim, "--allow-software", "--audit-log", audit, "--json")
        assert verified.returncode == 0, verified.stdout


NOT_PINNED = """
@id("not-pinned")
forbid (principal, action == Action::"call_tool", resource == Tool::"lookup_customer");
"""


def test_the_grace_period_closes_sessions_of_the_old_bundle_with_their_claims(
    tmp_path: Path, upstream: Served
) -> None:
    private, public = write_keys(tmp_path, "operator")
    bundle = quickstart_copy(tmp_path / "policies")
    config = write_config(
        tmp_path,
        upstream.url,
        policy_bundle_path=str(bundle),
        policy={"reload": {"signing_keys": [str(public)], "grace_seconds": 1}},
    )
    served = start_gateway(config)
    try:

        async def scenario() -> tuple[str, list[dict[str, Any]]]:
            async with (
                streamable_http_client(served.url) as (read, write),
                ClientSession(read, write) as old,
            ):
                await old.initialize()
                assert await weather(old) == "allow"
                sign(rewrite(bundle, version="2"), private)  # another scheme than 1.0.0
                refused = await asyncio.to_thread(reload_by_signal, served)
                assert "different numbers of parts" in refused["reason"], refused
                new_hash = sign(rewrite(bundle, version="1.0.1"), private)
                assert (await asyncio.to_thread(reload_by_signal, served))["taken"] is True
                written = await asyncio.to_thread(wait_for_claims, tmp_path, 1)
                with pytest.raises(MCPError) as closed:  # the gateway closed it
                    await old.call_tool("get_weather", {"city": "Paris"})
                assert "session" in closed.value.error.message.lower()
            return new_hash, written

        new_hash, written = asyncio.run(scenario())
    finally:
        served.stop()
    (claim,) = written
    assert claim["trace"]["policy"]["bundle_hash"] != new_hash
    session_id = claim["gateway"]["session_id"]
    ends = [
        open_line(line).fields
        for line in read_log_lines(tmp_path / "audit.db", session_id)
        if open_line(line).type == "session_end"
    ]
    assert [end["reason"] for end in ends] == ["policy reloaded"]
    verified = run_cmcp(
        "verify",
        tmp_path / "claims" / f"{session_id}.claim.json",
        "--allow-software",
        "--audit-log",
        tmp_path / "audit.db",
        "--json",
    )
    assert verified.returncode == 0, verified.stdout


def wait_for_claims(folder: Path, count: int) -> list[dict[str, Any]]:
    deadline = time.monotonic() + WAIT_SECONDS
    while time.monotonic() < deadline:
        found = claims(folder)
        if len(found) >= count:
            return found
        time.sleep(0.1)
    raise AssertionError(f"fewer than {count} claims in {folder / 'claims'} after {WAIT_SECONDS} s")
