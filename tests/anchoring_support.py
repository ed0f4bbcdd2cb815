"""A served gateway anchoring in the transparency double: its config, its sessions through
the official MCP SDK, and bounded waits on what it serves about anchoring."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from mcp.client.session import ClientSession
from mcp.client.streamable_http import streamable_http_client

from cmcp_cli.testing.transparency import RunningTransparency
from tests.gateway_support import Served, request, start_gateway, write_config

WAIT_SECONDS = 30.0
OPERATOR = "operator-token-of-the-anchoring-tests"  # a test's own token
_Found = TypeVar("_Found")


def anchored_config(
    folder: Path,
    upstream: Served,
    double: RunningTransparency,
    *,
    protocol: str = "scrapi",
    per_call: bool = True,
    timeout: int = 3,
) -> Path:
    anchor = {
        "url": double.url,
        "protocol": protocol,
        "log_key": str(double.folder / "log-key.pem"),
        "ca_file": str(double.folder / "ca.pem"),
        "timeout_seconds": timeout,
        "retry_initial_seconds": 1,
        "retry_max_seconds": 2,
    }
    return write_config(
        folder, upstream.url, claims={"per_call": per_call}, trace={"anchor": anchor}
    )


async def calls(url: str, cities: tuple[str, ...]) -> list[float]:
    """One SDK session calling get_weather for each city; the seconds each call took."""
    took: list[float] = []
    async with (
        streamable_http_client(url) as (read, write),
        ClientSession(read, write) as session,
    ):
        await session.initialize()
        for city in cities:
            started = time.monotonic()
            answer = await session.call_tool("get_weather", {"city": city})
            took.append(time.monotonic() - started)
            assert answer.content[0].text == f"Sunny, 21 C in {city}"  # type: ignore[union-attr]
    return took


def until(what: str, probe: Callable[[], _Found | None], seconds: float = WAIT_SECONDS) -> _Found:
    """`probe()` once it answers something, polled for at most `seconds`."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        found = probe()
        if found is not None:
            return found
        time.sleep(0.1)
    raise AssertionError(f"{what}: not within {seconds} s")


def start_anchoring(config: Path) -> Served:
    """`cmcp start` with `config` and OPERATOR as its operator token."""
    return start_gateway(config, {"CMCP_OPERATOR_TOKEN": OPERATOR})


def get_json(served: Served, path: str, token: str | None = None) -> tuple[int, Any]:
    headers = {} if token is None else {"authorization": f"Bearer {token}"}
    status, _, body = request(served.port, "GET", path, headers=headers)
    return status, json.loads(body) if body else None


def metric(served: Served, name: str) -> int:
    status, _, body = request(served.port, "GET", "/metrics")
    assert status == 200, body
    for line in body.decode().splitlines():
        if line.startswith(f"{name} "):
            return int(float(line.split()[1]))
    raise AssertionError(f"/metrics has no {name}:\n{body.decode()}")


def anchoring(served: Served, token: str | None = OPERATOR) -> dict[str, Any]:
    """The anchoring detail of /readyz, as the holder of `token` (None: anyone) sees it."""
    status, detail = get_json(served, "/readyz", token)
    assert status == 200, detail
    return dict(detail["anchoring"])


def receipt_of(served: Served, session: str, sequence: int | None = None) -> dict[str, Any]:
    """The receipt `/trace/{session}?receipt` serves, once it serves one."""
    path = f"/trace/{session}?receipt" + ("" if sequence is None else f"&sequence={sequence}")

    def probe() -> dict[str, Any] | None:
        status, body = get_json(served, path)
        if status == 200:
            return dict(body)
        assert status == 409 and body["pending"] is True, (status, body)
        return None

    return until(f"GET {path} answering 200", probe)


def sessions_in(claims: Path) -> list[str]:
    return sorted({p.name.split(".", 1)[0] for p in claims.glob("*.claim.json")})
