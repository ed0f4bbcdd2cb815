"""Upstreams and configs for the `cmcp catalog` tests: tool servers on the official MCP SDK
2.x and 1.x (tests/catalog_upstream.py, tests/compat/catalog_upstream_v1.py) whose tools
come from a JSON file, over streamable HTTP (started once) or stdio (spawned by cmcp)."""

from __future__ import annotations

import json
import os
import secrets
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tests.gateway_support import Served, free_port, start_process
from tests.support import QUICKSTART
from tests.test_gateway_compat import mcp1_python

TESTS = Path(__file__).resolve().parent
SERVER_V2 = TESTS / "catalog_upstream.py"
SERVER_V1 = TESTS / "compat" / "catalog_upstream_v1.py"
TOKEN_VARIABLE = "CATALOG_TEST_TOKEN"  # noqa: S105 - the name of a variable, not a secret
TOKEN = "Bearer " + secrets.token_urlsafe(24)
PAGE_SIZE = 2  # every listing of five tools takes three pages


def tools(prefix: str) -> list[dict[str, Any]]:
    """Five `tools/list` entries named `<prefix>_a` ... `<prefix>_e`: read-only ones, one
    with a title and an output schema, and one the upstream does not call read-only. Their
    argument is `city`, which the quickstart's Cedar schema knows."""
    listed: list[dict[str, Any]] = []
    for letter in "abcde":
        tool: dict[str, Any] = {
            "name": f"{prefix}_{letter}",
            "description": f"Tool {letter} of {prefix}.",
            "inputSchema": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
            "annotations": {"readOnlyHint": letter != "b"},
        }
        if letter == "c":
            tool["title"] = f"Tool C of {prefix}"
            tool["outputSchema"] = {"type": "object", "properties": {"n": {"type": "integer"}}}
        listed.append(tool)
    return listed


def write_tools(path: Path, listed: Sequence[Mapping[str, Any]]) -> Path:
    path.write_text(json.dumps(list(listed), indent=2))
    return path


@dataclass(frozen=True)
class HttpUpstreams:
    """The two HTTP upstreams a test module shares: SDK 2.x (bearer token required) and
    SDK 1.x, each listing five tools in pages of two."""

    v2: Served
    v1: Served

    def stop(self) -> None:
        self.v2.stop()
        self.v1.stop()


def start_http_upstreams(folder: Path) -> HttpUpstreams:
    v2_port = free_port()
    v2 = start_process(
        [
            sys.executable,
            str(SERVER_V2),
            "--tools",
            str(write_tools(folder / "h2.json", tools("h2"))),
            "--page-size",
            str(PAGE_SIZE),
            "--http",
            str(v2_port),
            "--token-env",
            TOKEN_VARIABLE,
        ],
        v2_port,
        folder / "h2.log",
        {**_environ(), TOKEN_VARIABLE: TOKEN},
    )
    try:
        v1_port = free_port()
        v1 = start_process(
            [
                str(mcp1_python()),
                str(SERVER_V1),
                "--tools",
                str(write_tools(folder / "h1.json", tools("h1"))),
                "--page-size",
                str(PAGE_SIZE),
                "--http",
                str(v1_port),
            ],
            v1_port,
            folder / "h1.log",
            _environ(),
        )
    except BaseException:
        v2.stop()
        raise
    return HttpUpstreams(v2, v1)


def running_http_upstreams(folder: Path) -> Iterator[HttpUpstreams]:
    upstreams = start_http_upstreams(folder)
    try:
        yield upstreams
    finally:
        upstreams.stop()


def http_v2(served: Served) -> dict[str, Any]:
    """The config of the SDK 2.x HTTP upstream, its token read from TOKEN_VARIABLE."""
    return {
        "transport": "streamable-http",
        "url": served.url,
        "headers_from_env": {"Authorization": TOKEN_VARIABLE},
    }


def http_v1(served: Served) -> dict[str, Any]:
    return {"transport": "streamable-http", "url": served.url}


def stdio_v2(tools_file: Path) -> dict[str, Any]:
    command = [sys.executable, str(SERVER_V2), "--tools", str(tools_file)]
    return {"transport": "stdio", "command": [*command, "--page-size", str(PAGE_SIZE)]}


def stdio_v1(tools_file: Path) -> dict[str, Any]:
    command = [str(mcp1_python()), str(SERVER_V1), "--tools", str(tools_file)]
    return {"transport": "stdio", "command": [*command, "--page-size", str(PAGE_SIZE)]}


def write_catalog_config(folder: Path, upstreams: Mapping[str, Mapping[str, Any]]) -> Path:
    """A dev-mode config under `folder` with these upstreams, the quickstart's policies
    (public tools callable by anyone) and a catalog at `folder/catalog.json`, which does
    not exist yet."""
    config = {
        "attestation": {"provider": "auto", "enforcement_mode": "enforcing"},
        "policy_bundle_path": str(QUICKSTART / "policies"),
        "catalog_path": str(folder / "catalog.json"),
        "listen_addr": f"127.0.0.1:{free_port()}",
        "upstreams": dict(upstreams),
        "audit": {"path": str(folder / "audit.db")},
        "claims": {"dir": str(folder / "claims")},
    }
    path = folder / "cmcp-config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def _environ() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("CMCP_")}
