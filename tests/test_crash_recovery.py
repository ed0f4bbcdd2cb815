"""A gateway SIGKILLed under load, with calls in flight, and started again on its store.

`cmcp start` (dev mode, software provider) serves an official-SDK upstream with a slow
tool; official-SDK clients call it concurrently, some with quick calls in a loop, some
with calls that are still running upstream when the gateway is killed. The restarted
gateway recovers every session the dead one left open: each ends with a claim that
verifies against its log as the operator exports it, and `cmcp replay-audit --all`
exits 0 and reports them as recovered. A second gateway on a store in use is refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import yaml
from mcp.client.session import ClientSession
from mcp.client.streamable_http import streamable_http_client

from tests.gateway_support import (
    STARTUP_SECONDS,
    Served,
    free_port,
    request,
    start_gateway,
    start_process,
    write_config,
)
from tests.matrix_rig import MANIFEST, UPSTREAM_V2, advertised, catalog_entries
from tests.support import CMCP, run_cmcp

OPERATOR_TOKEN = secrets.token_urlsafe(32)
OPERATOR = {"authorization": f"Bearer {OPERATOR_TOKEN}"}
POLICY = """\
@id("call-tools")
permit (principal, action == Action::"call_tool", resource);

@id("list-tools")
permit (principal, action == Action::"list_tools", resource);
"""
SLOW_CLIENTS = 4  # each has a call running upstream when the gateway dies
BUSY_CLIENTS = 4  # each calls a quick tool in a loop until the gateway dies
WAIT_SECONDS = 30.0


async def slow_client(url: str, tag: str, stop: asyncio.Event) -> None:
    async with streamable_http_client(url) as (read, write), ClientSession(read, write) as session:
        await session.initialize()
        await session.call_tool("h2_chatty", {})
        await session.call_tool("h2_slow", {"seconds": 120, "tag": tag})


async def busy_client(url: str, calls: list[int], index: int, stop: asyncio.Event) -> None:
    async with streamable_http_client(url) as (read, write), ClientSession(read, write) as session:
        await session.initialize()
        while not stop.is_set():
            await session.call_tool("h2_chatty", {})
            calls[index] += 1


async def finished_client(url: str) -> None:
    """A session that ends normally before the crash (the client closes it)."""
    async with streamable_http_client(url) as (read, write), ClientSession(read, write) as session:
        await session.initialize()
        await session.call_tool("h2_chatty", {})


class Load:
    """The clients, on their own event loop in a thread, so the test can kill the gateway
    while their calls are in flight."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.calls = [0] * BUSY_CLIENTS
        self.loop: asyncio.AbstractEventLoop | None = None
        self.stop = asyncio.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        asyncio.run(self._clients())

    async def _clients(self) -> None:
        self.loop = asyncio.get_running_loop()
        tasks = [slow_client(self.url, f"t{n}", self.stop) for n in range(SLOW_CLIENTS)]
        tasks += [busy_client(self.url, self.calls, n, self.stop) for n in range(BUSY_CLIENTS)]
        async with asyncio.timeout(WAIT_SECONDS * 3):
            # every client fails once its gateway is killed: that is the point
            await asyncio.gather(*tasks, return_exceptions=True)

    def end(self) -> None:
        assert self.loop is not None
        # Every client may have failed already, and its loop closed, once the gateway died.
        with contextlib.suppress(RuntimeError):
            self.loop.call_soon_threadsafe(self.stop.set)
        self.thread.join(timeout=WAIT_SECONDS)
        assert not self.thread.is_alive(), "the clients did not finish after the gateway died"


def wait_for(condition: Any, what: str) -> None:
    deadline = time.monotonic() + WAIT_SECONDS
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def setup(folder: Path) -> tuple[Path, Served, Path]:
    state = folder / "upstream-state"
    state.mkdir()
    port = free_port()
    command = [sys.executable, str(UPSTREAM_V2), "--prefix", "h2", "--state", str(state)]
    upstream = start_process([*command, "--port", str(port)], port, folder / "upstream.log")
    catalog = folder / "catalog.json"
    tools = asyncio.run(advertised(upstream.url))
    catalog.write_text(json.dumps({"catalog_version": 1, "tools": catalog_entries("h2", tools)}))
    bundle = folder / "bundle"
    bundle.mkdir()
    (bundle / "manifest.json").write_text(json.dumps(MANIFEST))
    (bundle / "crash.cedar").write_text(POLICY)
    config = write_config(
        folder,
        upstream.url,
        policy_bundle_path=str(bundle),
        catalog_path=str(catalog),
        attestation={"provider": "software-only"},
    )
    settings = yaml.safe_load(config.read_text())
    settings["upstreams"] = {"h2": {"transport": "streamable-http", "url": upstream.url}}
    config.write_text(yaml.safe_dump(settings))
    return config, upstream, state


def second_start_is_refused(config: Path, first: Served) -> None:
    """Another gateway on the same store (on another port) is refused at start."""
    other = config.with_name("other-config.yaml")
    settings = yaml.safe_load(config.read_text())
    settings["listen_addr"] = f"127.0.0.1:{free_port()}"
    other.write_text(yaml.safe_dump(settings))
    environment = {k: v for k, v in os.environ.items() if not k.startswith("CMCP_")}
    environment["CMCP_DEV_MODE"] = "1"
    refused = subprocess.run(
        [str(CMCP), "start", "--config", str(other)],
        capture_output=True,
        text=True,
        env=environment,
        timeout=STARTUP_SECONDS,
        check=False,
    )
    assert refused.returncode == 1, refused.stdout + refused.stderr
    said = " ".join(refused.stderr.split())  # as one line, however the terminal wrapped it
    assert "is in use by gateway process" in said, said
    assert f"pid {first.process.pid}" in said, said
    assert "audit.path" in said, said  # the fix


def test_a_killed_gateway_s_sessions_are_recovered_on_restart(tmp_path: Path) -> None:
    config, upstream, state = setup(tmp_path)
    claims, db = tmp_path / "claims", tmp_path / "audit.db"
    environment = {"CMCP_OPERATOR_TOKEN": OPERATOR_TOKEN}
    restarted: Served | None = None
    gateway = start_gateway(config, environment)
    try:
        second_start_is_refused(config, gateway)
        asyncio.run(finished_client(gateway.url))
        wait_for(lambda: len(list(claims.glob("*.claim.json"))) == 1, "the closed session's claim")
        load = Load(gateway.url)
        load.thread.start()
        wait_for(
            lambda: (
                all((state / f"started-h2-t{n}").exists() for n in range(SLOW_CLIENTS))
                and min(load.calls) >= 2
            ),
            "slow calls running upstream and quick calls under way",
        )
        assert gateway.stop(signal.SIGKILL) == -signal.SIGKILL
        load.end()
        assert len(list(claims.glob("*.claim.json"))) == 1  # the killed sessions have none

        before = run_cmcp("replay-audit", "--db", db, "--all", "--json")
        assert before.returncode == 1  # interrupted, not yet recovered
        statuses = [s["status"] for s in before.json()["sessions"]]
        assert sorted(statuses) == ["ended"] + ["interrupted"] * (SLOW_CLIENTS + BUSY_CLIENTS)

        restarted = start_gateway(config, environment)
        replayed = run_cmcp("replay-audit", "--db", db, "--all", "--json")
        assert replayed.returncode == 0, replayed.stdout + replayed.stderr
        sessions = replayed.json()["sessions"]
        recovered = [s for s in sessions if s["status"] == "recovered"]
        assert len(recovered) == SLOW_CLIENTS + BUSY_CLIENTS, sessions
        assert [s["status"] for s in sessions if s not in recovered] == ["ended"]
        killed = {s["process"] for s in recovered}
        assert len(killed) == 1 and None not in killed
        assert {s["recovered_by"] for s in recovered} - killed and None not in {
            s["recovered_by"] for s in recovered
        }
        human = run_cmcp("replay-audit", "--db", db, "--all")
        assert human.returncode == 0
        assert human.stderr.count("recovered") >= len(recovered), human.stderr
        assert restarted.output().count("recovered session") == len(recovered)

        unknown = 0
        for session in sessions:
            session_id = session["session_id"]
            status, _, exported = request(
                restarted.port, "GET", f"/audit/{session_id}", None, OPERATOR
            )
            assert status == 200, exported
            log = tmp_path / f"{session_id}.jsonl"
            log.write_bytes(exported)
            claim = claims / f"{session_id}.claim.json"
            status, _, body = request(restarted.port, "GET", f"/trace/{session_id}", None, OPERATOR)
            assert (status, json.loads(body)) == (200, json.loads(claim.read_text()))
            verified = run_cmcp("verify", claim, "--allow-software", "--audit-log", log, "--json")
            assert verified.returncode == 0, verified.stdout + verified.stderr
            checks = {c["name"]: c for c in verified.json()["checks"]}
            entries = [json.loads(line) for line in exported.splitlines()]
            if session["status"] == "recovered":
                assert checks["recovery"]["status"] == "pass", checks["recovery"]
                assert entries[-1]["reason"] == "interrupted"
                faults = [e for e in entries if e["type"] == "fault"]
                assert all(f["stage"] == "interrupted" for f in faults), faults
                unknown += len(faults)
            else:
                assert checks["recovery"]["status"] == "skip"
        # every slow call was in flight; a busy client's call may have been too
        assert SLOW_CLIENTS <= unknown <= SLOW_CLIENTS + BUSY_CLIENTS

        assert restarted.stop() == 0  # a clean stop: nothing was open
        restarted = None
        after = run_cmcp("replay-audit", "--db", db, "--all", "--json")
        assert after.returncode == 0, after.stdout
    finally:
        for served in (restarted, gateway, upstream):
            if served is not None:
                served.stop()
