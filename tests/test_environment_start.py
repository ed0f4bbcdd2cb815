"""The container-style start: `cmcp start` with no config file, configured by environment
variables alone, in front of the quickstart's upstream (official MCP SDK) over loopback,
with an SDK client; its catalog pinned at first contact, recorded in the claim, reused on
the next start and checked there; and every unsafe or incomplete environment refused."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx2
import pytest
from mcp.client.session import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

from tests.gateway_support import Served, free_port, start_from_environment, start_upstream
from tests.support import MANIFEST, QUICKSTART, run_cmcp

TOKEN = "agent-token-" + "a" * 32
OPERATOR = "operator-token-" + "o" * 32
UPSTREAM_CREDENTIAL = "Bearer upstream-credential-" + "u" * 24
QUERY_KEY = "query-key-" + "q" * 24
SECRETS = (TOKEN, OPERATOR, UPSTREAM_CREDENTIAL, QUERY_KEY)
# A bundle for tools pinned at first contact: they are in group read-only or read-write.
POLICIES = """
@id("list-tools")
permit (principal, action == Action::"list_tools", resource);

@id("read-write-tools")
permit (principal, action == Action::"call_tool", resource in Tools::"read-write");
"""


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("bundle")
    (root / "tools.cedar").write_text(POLICIES)
    (root / "manifest.json").write_text(json.dumps(MANIFEST))
    return root


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """An empty working directory: no cmcp-config.yaml."""
    here = tmp_path / "container"
    here.mkdir()
    return here


def environment(bundle: Path, upstream: Served, port: int, **more: str) -> dict[str, str]:
    return {
        "CEDAR_POLICY_PATH": str(bundle),
        "UPSTREAM_MCP_URL": f"{upstream.url}?key={QUERY_KEY}",
        "CMCP_LISTEN_ADDR": f"127.0.0.1:{port}",
        "CMCP_DEV_MODE": "1",
        "CMCP_BEARER_TOKEN": TOKEN,
        "CMCP_OPERATOR_TOKEN": OPERATOR,
        "CMCP_UPSTREAM_AUTHORIZATION_ENV": "UPSTREAM_AUTH",
        "UPSTREAM_AUTH": UPSTREAM_CREDENTIAL,
        **more,
    }


async def call(url: str, tool: str, arguments: dict[str, Any]) -> tuple[list[str], Any]:
    """An agent's session through the gateway: the tools it lists, and the call's text
    result or the gateway's error."""
    headers = {"authorization": f"Bearer {TOKEN}"}
    async with (
        httpx2.AsyncClient(headers=headers) as http,
        streamable_http_client(url, http_client=http) as (read, write),
        ClientSession(read, write) as client,
    ):
        await client.initialize()
        tools = sorted(tool.name for tool in (await client.list_tools()).tools)
        try:
            result = await client.call_tool(tool, arguments)
        except MCPError as exc:
            return tools, exc.error
        return tools, result.content[0].text  # type: ignore[union-attr]


def served_session(
    folder: Path, env: Mapping[str, str], port: int, tool: str, arguments: dict[str, Any]
) -> tuple[list[str], Any, str]:
    """Start from `env`, run one agent session, stop: what the agent saw and the log."""
    gateway = start_from_environment(folder, env, port)
    try:
        tools, outcome = asyncio.run(call(gateway.url, tool, arguments))
    finally:
        assert gateway.stop() == 0, gateway.output()
    return tools, outcome, gateway.output()


def the_claim(claims: Path, seen: set[Path]) -> dict[str, Any]:
    (path,) = set(claims.glob("*.claim.json")) - seen
    seen.add(path)
    claim: dict[str, Any] = json.loads(path.read_text())
    return claim


def verify(claim: dict[str, Any], folder: Path) -> tuple[Any, str]:
    path = folder.parent / "checked.claim.json"
    path.write_text(json.dumps(claim))
    pins = ("--allow-software", "--audit-log", folder / "cmcp-state" / "audit.db")
    as_json = run_cmcp("verify", path, *pins, "--json")
    assert as_json.returncode == 0, as_json.stdout
    human = run_cmcp("verify", path, *pins)
    assert human.returncode == 0, human.stderr
    return as_json.json(), " ".join(human.stderr.split())


def test_the_environment_alone_serves_pins_at_first_contact_and_checks_later_starts(
    bundle: Path, upstream: Served, folder: Path, tmp_path: Path
) -> None:
    port = free_port()
    env = environment(bundle, upstream, port)
    tools, weather, output = served_session(folder, env, port, "get_weather", {"city": "Oslo"})
    assert weather == "Sunny, 21 C in Oslo"
    assert "get_weather" in tools and len(tools) == 5
    # the config it built, printed with every secret left out
    said = " ".join(output.split())
    assert "config from the environment (CEDAR_POLICY_PATH, UPSTREAM_MCP_URL" in said
    assert f"policy_bundle_path: {bundle}" in said
    assert f"catalog_path: {folder / 'cmcp-state' / 'catalog.json'}" in said
    assert "catalog_pinning: first-contact" in said
    assert f"url: {upstream.url}?key=hidden" in said
    assert "Authorization: UPSTREAM_AUTH" in said
    assert "secrets read from CMCP_BEARER_TOKEN, CMCP_OPERATOR_TOKEN, UPSTREAM_AUTH" in said
    assert "catalog pinned at first contact: 5 tools (5 from upstream)" in said
    assert "(5 tools), pinning first-contact" in said
    for secret in SECRETS:
        assert secret not in output
    # the catalog it pinned: every tool approved as advertised
    catalog_path = folder / "cmcp-state" / "catalog.json"
    pinned = catalog_path.read_bytes()
    entries = json.loads(pinned)["tools"]
    assert {entry["name"] for entry in entries} == set(tools)
    assert {(e["server"], e["data_class"], tuple(e["groups"])) for e in entries} == {
        ("upstream", "internal", ("read-write",))
    }
    # the claim says how its catalog came to be, and the log vouches for it
    claims, seen = folder / "cmcp-state" / "claims", set[Path]()
    claim = the_claim(claims, seen)
    assert claim["gateway"]["catalog"]["pinning"] == "first-contact"
    assert claim["gateway"]["catalog"]["drift_detected"] is False
    report, human = verify(claim, folder)
    assert report["catalog_pinning"] == "first-contact"
    assert "catalog pinning first-contact: the catalog is whatever the upstreams advertised" in (
        human
    )

    # a later start reuses the pinned catalog: an upstream whose tool changed is drift
    drifting = start_upstream(tmp_path, drift="get_weather")
    try:
        env = environment(bundle, drifting, port)
        tools, blocked, output = served_session(folder, env, port, "get_weather", {"city": "Oslo"})
    finally:
        drifting.stop()
    assert catalog_path.read_bytes() == pinned
    assert "catalog pinned at first contact" not in output
    assert "get_weather" not in tools
    assert blocked.code == -32042 and "drift" in blocked.message
    claim = the_claim(claims, seen)
    assert claim["gateway"]["catalog"] == {
        "hash": claim["gateway"]["catalog"]["hash"],
        "drift_detected": True,
        "pinning": "first-contact",
    }
    report, _ = verify(claim, folder)
    assert report["catalog_pinning"] == "first-contact"


def test_an_explicit_catalog_path_is_served_and_claimed_as_explicit(
    upstream: Served, folder: Path
) -> None:
    port = free_port()
    env = environment(
        QUICKSTART / "policies",
        upstream,
        port,
        CMCP_CATALOG_PATH=str(QUICKSTART / "catalog.json"),
        CMCP_UPSTREAM_NAME="demo",  # the server the quickstart catalog routes its tools to
        CMCP_STATE_DIR="state",
    )
    _, weather, output = served_session(folder, env, port, "get_weather", {"city": "Paris"})
    assert weather == "Sunny, 21 C in Paris"
    said = " ".join(output.split())
    assert "catalog_pinning: explicit" in said and "pinned at first contact" not in said
    assert not (folder / "state" / "catalog.json").exists()
    (path,) = (folder / "state" / "claims").glob("*.claim.json")
    claim = json.loads(path.read_text())
    assert claim["gateway"]["catalog"]["pinning"] == "explicit"
    checked = run_cmcp(
        "verify", path, "--allow-software", "--audit-log", folder / "state" / "audit.db", "--json"
    )
    assert checked.returncode == 0, checked.stdout
    assert checked.json()["catalog_pinning"] == "explicit"


UNSAFE: dict[str, tuple[dict[str, str | None], int, tuple[str, ...]]] = {
    "listening off loopback with no token": (
        {"CMCP_LISTEN_ADDR": "0.0.0.0:8443", "CMCP_BEARER_TOKEN": None, "CMCP_DEV_MODE": None},
        1,
        (
            "environment (CMCP_LISTEN_ADDR): listen_addr: 0.0.0.0:8443 is reachable from "
            "other hosts but no agent credential is configured",
        ),
    ),
    "dev mode off loopback": (
        {"CMCP_LISTEN_ADDR": "0.0.0.0:8443"},
        1,
        ("CMCP_DEV_MODE=1 admits anonymous agents, so it listens on loopback only",),
    ),
    "a short token": (
        {"CMCP_BEARER_TOKEN": "short"},
        1,
        ("CMCP_BEARER_TOKEN is shorter than 32 characters",),
    ),
    "no upstream": (
        {"UPSTREAM_MCP_URL": None},
        1,
        ("environment: UPSTREAM_MCP_URL is not set", "hint: set it to the upstream MCP server's"),
    ),
    "no policy": (
        {"CEDAR_POLICY_PATH": None},
        1,
        ("environment: CEDAR_POLICY_PATH is not set", "hint: set it to the policy bundle"),
    ),
    "only the variables that shape it": (
        {"CEDAR_POLICY_PATH": None, "UPSTREAM_MCP_URL": None},
        2,
        (
            "no config: there is no cmcp-config.yaml in",
            "CMCP_UPSTREAM_AUTHORIZATION_ENV, CMCP_LISTEN_ADDR are set, but the environment "
            "start needs CEDAR_POLICY_PATH and UPSTREAM_MCP_URL",
        ),
    ),
    "an upstream URL that is not http": (
        {"UPSTREAM_MCP_URL": "ftp://127.0.0.1/mcp"},
        1,
        (
            "environment (UPSTREAM_MCP_URL): upstreams.upstream.url: 'ftp://127.0.0.1/mcp' "
            "is not an http:// or https:// URL",
        ),
    ),
    "a password in the upstream URL": (
        {"UPSTREAM_MCP_URL": "http://me:hunter2hunter2@127.0.0.1:9/mcp"},
        1,
        ("UPSTREAM_MCP_URL holds a password, which is not sent to the upstream",),
    ),
    "a bundle that is not there": (
        {"CEDAR_POLICY_PATH": "no-such-bundle"},
        1,
        ("environment (CEDAR_POLICY_PATH): policy_bundle_path:",),
    ),
    "a data class outside the order": (
        {"CMCP_FIRST_CONTACT_DATA_CLASS": "top-secret"},
        1,
        (
            "environment (CMCP_FIRST_CONTACT_DATA_CLASS): first_contact_data_class: tools "
            "pinned at first contact would get data class 'top-secret', which is not in the "
            "order",
        ),
    ),
    "a data class with an explicit catalog": (
        {
            "CMCP_FIRST_CONTACT_DATA_CLASS": "public",
            "CMCP_CATALOG_PATH": str(QUICKSTART / "catalog.json"),
        },
        1,
        ("is set, but catalog_pinning is explicit",),
    ),
}


@pytest.mark.parametrize("case", list(UNSAFE))
def test_an_unsafe_or_incomplete_environment_is_refused_saying_why(
    case: str, bundle: Path, upstream: Served, folder: Path
) -> None:
    changes, code, messages = UNSAFE[case]
    env = environment(bundle, upstream, free_port())
    for name, value in changes.items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    for command in ("start", "validate-config"):
        result = run_cmcp(command, env=env, cwd=folder)
        said = " ".join(result.stderr.split())
        assert result.returncode == code, (command, result.stderr)
        for message in messages:
            assert message in said, (command, message, said)
        for secret in SECRETS:
            assert secret not in result.stderr + result.stdout
    # nothing was served, so nothing was pinned or recorded
    assert not (folder / "cmcp-state").exists()


def test_validate_config_checks_the_environment_and_notes_the_pin_to_come(
    bundle: Path, upstream: Served, folder: Path
) -> None:
    env = environment(bundle, upstream, free_port())
    result = run_cmcp("validate-config", "--json", env=env, cwd=folder)
    assert result.returncode == 0, result.stdout
    report = result.json()
    assert report["config"] == "environment" and report["ok"] is True
    assert report["catalog_pinning"] == "first-contact" and report["catalog_hash"] is None
    assert report["upstreams"] == ["upstream"]
    # one note of the catalog (and one per installed device provider, said as on any host)
    (note,) = [n for n in report["notes"] if not n.startswith("devices: ")]
    catalog = folder / "cmcp-state" / "catalog.json"
    assert note.startswith(f"catalog_path {catalog} does not exist yet: catalog_pinning is ")
    assert "trust on first use" in note
    human = run_cmcp("validate-config", env=env, cwd=folder)
    assert human.returncode == 0
    assert "config from the environment" in " ".join(human.stderr.split())
    assert not catalog.exists()  # checking contacts no upstream and writes nothing


def test_a_config_file_and_the_environment_start_together(
    bundle: Path, upstream: Served, folder: Path
) -> None:
    """Found in the working directory, the file is as much a config as the variables:
    refused. Named with --config, it is served and the variables are said to be ignored;
    so it is, found here, when only variables that shape an environment start are set
    (as an image may set them by default)."""
    env = environment(bundle, upstream, free_port())
    (folder / "cmcp-config.yaml").write_text(
        (QUICKSTART / "cmcp-config.yaml")
        .read_text()
        .replace("./policies", str(QUICKSTART / "policies"))
        .replace("./catalog.json", str(QUICKSTART / "catalog.json"))
    )
    for command in ("start", "validate-config"):
        result = run_cmcp(command, env=env, cwd=folder)
        said = " ".join(result.stderr.split())
        assert result.returncode == 2, said
        assert f"both {folder / 'cmcp-config.yaml'} and the environment start" in said
        assert "which one to serve is ambiguous" in said
        assert "pass --config cmcp-config.yaml to serve the file" in said
    chosen = run_cmcp(
        "validate-config", "--config", "cmcp-config.yaml", "--json", env=env, cwd=folder
    )
    assert chosen.returncode == 0, chosen.stdout
    (warning,) = [w for w in chosen.json()["warnings"] if "not read" in w["message"]]
    assert warning["message"] == (
        "CEDAR_POLICY_PATH, UPSTREAM_MCP_URL, CMCP_UPSTREAM_AUTHORIZATION_ENV, CMCP_LISTEN_ADDR "
        "are set but not read: the config file cmcp-config.yaml is served"
    )
    shaping = {"CMCP_STATE_DIR": "/var/lib/cmcp", "CMCP_LISTEN_ADDR": "127.0.0.1:9"}
    found = run_cmcp("validate-config", "--json", env=shaping, cwd=folder)
    assert found.returncode == 0, found.stdout
    report = found.json()
    assert report["config"] == str(folder / "cmcp-config.yaml")
    assert report["listen_addr"] == "127.0.0.1:8443"  # the file's, not the variable's
    (warning,) = [w for w in report["warnings"] if "not read" in w["message"]]
    assert warning["message"].startswith("CMCP_LISTEN_ADDR, CMCP_STATE_DIR are set but not read")
