"""Real processes on loopback for gateway tests: the demo upstream (official MCP SDK) and
`cmcp start` itself, each started, waited for with a bounded loop, and stopped."""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2
import pytest
import yaml
from mcp.client.session import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

from cmcp_cli.config import ENV_START
from tests.support import CMCP, QUICKSTART, run_cmcp

STARTUP_SECONDS = 30.0
# A raw JSON-RPC initialize, for tests that speak HTTP to the gateway without an SDK.
INIT = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-06-18",
        "capabilities": {},
        "clientInfo": {"name": "raw", "version": "1"},
    },
}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def quickstart_on_free_ports(target: Path) -> Path:
    """A copy of examples/quickstart at `target` whose config names free ports for the
    gateway and the demo upstream (the demo reads both from it)."""
    shutil.copytree(QUICKSTART, target, ignore=shutil.ignore_patterns(".state", "__pycache__"))
    config = target / "cmcp-config.yaml"
    text = config.read_text()
    for default in ("127.0.0.1:8443", "127.0.0.1:8765"):
        assert default in text, f"{config} no longer names {default}"
        text = text.replace(default, f"127.0.0.1:{free_port()}")
    config.write_text(text)
    return target


@dataclass
class Served:
    process: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/mcp"

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        return int(self.process.returncode)

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def start_process(
    command: list[str],
    port: int,
    log: Path,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> Served:
    """Start a server and wait, bounded, until it answers HTTP on `port`."""
    with log.open("wb") as handle:  # the child keeps its own descriptor
        process = subprocess.Popen(
            command,
            stdout=handle,
            stderr=subprocess.STDOUT,
            env=dict(env or os.environ),
            cwd=cwd,
        )
    served = Served(process, port, log)
    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"{command[:3]} exited early:\n{served.output()}")
        try:
            status, _, _ = request(port, "GET", "/healthz")
        except OSError:
            time.sleep(0.1)
            continue
        if status:
            return served
    served.stop(signal.SIGKILL)
    raise AssertionError(
        f"{command[:3]} did not answer within {STARTUP_SECONDS} s:\n{served.output()}"
    )


def start_upstream(
    folder: Path, *, drift: str | None = None, drift_later: str | None = None
) -> Served:
    port = free_port()
    command = [sys.executable, str(QUICKSTART / "demo_upstream.py"), "--port", str(port)]
    if drift is not None:
        command += ["--drift", drift]
    if drift_later is not None:
        command += ["--drift-later", drift_later]
    return start_process(command, port, folder / f"upstream-{port}.log", None)


def write_config(folder: Path, upstream_url: str, **overrides: Any) -> Path:
    config: dict[str, Any] = {
        "attestation": {"provider": "auto", "enforcement_mode": "enforcing"},
        "policy_bundle_path": str(QUICKSTART / "policies"),
        "catalog_path": str(QUICKSTART / "catalog.json"),
        "listen_addr": f"127.0.0.1:{free_port()}",
        "upstreams": {"demo": {"transport": "streamable-http", "url": upstream_url}},
        "audit": {"path": str(folder / "audit.db")},
        "claims": {"dir": str(folder / "claims")},
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(config.get(key), dict):
            config[key] = {**config[key], **value}
        else:
            config[key] = value
    path = folder / "cmcp-config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def start_gateway(config: Path, env: Mapping[str, str] | None = None) -> Served:
    port = int(yaml.safe_load(config.read_text())["listen_addr"].rsplit(":", 1)[1])
    environment = {k: v for k, v in os.environ.items() if not k.startswith("CMCP_")}
    environment.update({"CMCP_DEV_MODE": "1", **(env or {})})
    command = [str(CMCP), "start", "--config", str(config)]
    return start_process(command, port, config.parent / f"gateway-{port}.log", environment)


def start_from_environment(folder: Path, env: Mapping[str, str], port: int) -> Served:
    """`cmcp start` with no config file, in `folder`, configured by `env` alone (no CMCP_*
    variable of this process leaks in) and listening on `port` (`CMCP_LISTEN_ADDR`)."""
    environment = {
        k: v for k, v in os.environ.items() if not k.startswith("CMCP_") and k not in ENV_START
    }
    environment.update(env)
    log = folder.parent / f"{folder.name}-gateway-{port}.log"
    return start_process([str(CMCP), "start"], port, log, environment, cwd=folder)


def request(
    port: int,
    method: str,
    path: str,
    body: bytes | dict[str, Any] | None = None,
    headers: Mapping[str, str] | None = None,
) -> tuple[int, dict[str, str], bytes]:
    """One raw HTTP request on loopback: status, lower-case headers, body."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        data = json.dumps(body).encode() if isinstance(body, dict) else body
        sent = {"content-type": "application/json", "accept": "application/json, text/event-stream"}
        sent.update(headers or {})
        connection.request(method, path, body=data, headers=sent)
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        connection.close()


@asynccontextmanager
async def sdk_session(url: str, challenge: str | None = None) -> AsyncIterator[ClientSession]:
    """An initialized session of the official MCP SDK client with the gateway at `url`;
    with `challenge`, the HTTP client it is given sends it as the `Cmcp-Challenge` header
    of every request."""
    async with AsyncExitStack() as stack:
        http = None
        if challenge is not None:
            headers = {"Cmcp-Challenge": challenge}
            http = await stack.enter_async_context(httpx2.AsyncClient(headers=headers))
        read, write = await stack.enter_async_context(streamable_http_client(url, http_client=http))
        session = await stack.enter_async_context(ClientSession(read, write))
        await session.initialize()
        yield session


async def weather_session(url: str, challenge: str | None = None) -> str:
    """One session of the official MCP SDK client through the gateway at `url` (opened
    with `challenge`, if any): it asks the quickstart's get_weather for Paris and returns
    the answer's text."""
    async with sdk_session(url, challenge) as session:
        weather = await session.call_tool("get_weather", {"city": "Paris"})
        return weather.content[0].text  # type: ignore[union-attr]


async def agent_calls(url: str, challenge: str | None = None) -> tuple[str, dict[str, Any]]:
    """An agent's session through the gateway at `url` (opened with `challenge`, if any):
    the quickstart's get_weather for Paris (allowed: its text) and delete_records (denied:
    the JSON-RPC error)."""
    async with sdk_session(url, challenge) as session:
        weather = await session.call_tool("get_weather", {"city": "Paris"})
        with pytest.raises(MCPError) as denied:
            await session.call_tool("delete_records", {"table": "users"})
        return weather.content[0].text, denied.value.error.model_dump()  # type: ignore[union-attr]


def session_claim(folder: Path, upstream: Served, attestation: dict[str, Any]) -> tuple[Path, Path]:
    """Start the gateway with `attestation`, run `agent_calls` through it, stop it: its
    config and the one claim it wrote."""
    config = write_config(folder, upstream.url, attestation=attestation)
    gateway = start_gateway(config)
    try:
        allowed, denied = asyncio.run(agent_calls(gateway.url))
    finally:
        assert gateway.stop() == 0, gateway.output()
    assert "Paris" in allowed and denied["code"] == -32040
    (claim,) = sorted((folder / "claims").glob("*.claim.json"))
    return config, claim


def verify(claim: Path, *args: str | Path) -> tuple[int, dict[str, Any]]:
    """`cmcp verify CLAIM ARGS --json`: its exit code and report."""
    result = run_cmcp("verify", claim, *args, "--json")
    return result.returncode, result.json()


def statuses(report: dict[str, Any]) -> dict[str, str]:
    """Each check of a `cmcp verify --json` report, by name: its status."""
    return {check["name"]: check["status"] for check in report["checks"]}
