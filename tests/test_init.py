"""`cmcp init` through the real CLI: against an official SDK 2.x server over loopback HTTP
and over stdio, then `cmcp start` on what it wrote, with no hand edits, and an official SDK
client whose read-only call runs and whose write call waits for the operator."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from mcp.client.session import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

from cmcp_cli.catalog.model import load_catalog
from cmcp_cli.gateway.setup.init import planned_files
from cmcp_cli.gateway.setup.starter_policy import bundle_files
from cmcp_cli.policy.bundle import read_bundle
from cmcp_cli.policy.decision import Effect
from cmcp_cli.policy.engine import compile_bundle
from cmcp_cli.policy.request import (
    MessageFacts,
    MessageKind,
    ToolResource,
    message_request,
    message_target,
    tool_call_request,
)
from tests.gateway_support import Served, free_port, request, start_gateway, start_process
from tests.support import QUICKSTART, REPO, CliResult, run_cmcp
from tests.test_gateway_compat import start_upstream_v1

SERVER = REPO / "tests" / "init_upstream_server.py"
NOTE = "the note says hello"
APPROVAL_REQUIRED = -32041  # docs/gateway.md, "Errors the gateway itself answers"


@pytest.fixture(scope="module")
def sdk_upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """tests/init_upstream_server.py over streamable HTTP: read_note (readOnlyHint) and
    write_note (no annotations)."""
    port = free_port()
    log = tmp_path_factory.mktemp("init-upstream") / "upstream.log"
    served = start_process([sys.executable, str(SERVER), "--http", str(port)], port, log)
    yield served
    served.stop()


def init(folder: Path, *args: str, cwd: Path | None = None, **env: str) -> CliResult:
    """`cmcp init --json` on a free loopback port; its exit code and its JSON document."""
    listen = f"127.0.0.1:{free_port()}"
    return run_cmcp("init", folder, "--listen", listen, *args, "--json", env=env, cwd=cwd)


async def agent(url: str, operator_token: str, port: int) -> dict[str, Any]:
    """An SDK client: the read-only call, the write call (held), the operator's approval
    over HTTP, and the write call again."""
    seen: dict[str, Any] = {}
    async with (
        streamable_http_client(url) as (read, write),
        ClientSession(read, write) as client,
    ):
        await client.initialize()
        seen["listed"] = sorted(tool.name for tool in (await client.list_tools()).tools)
        seen["read"] = await client.call_tool("read_note", {})
        try:
            await client.call_tool("write_note", {"text": "changed"})
        except MCPError as exc:
            seen["held"] = exc.error
        else:
            raise AssertionError("write_note ran without an operator's approval")
        approval = f"/approvals/{seen['held'].data['approval_id']}"
        headers = {"authorization": f"Bearer {operator_token}"}
        seen["approval"] = await asyncio.to_thread(
            request, port, "POST", approval, {"decision": "approve"}, headers
        )
        seen["ran"] = await client.call_tool("write_note", {"text": "changed"})
    return seen


def test_init_then_start_serves_the_upstream_with_no_hand_edits(
    tmp_path: Path, sdk_upstream: Served
) -> None:
    folder = tmp_path / "gateway"
    result = init(folder, "--upstream-url", sdk_upstream.url, "--name", "notes")
    assert result.returncode == 0, result.stderr
    report = result.json()
    assert report["ok"] is True
    assert report["validation"]["errors"] == [] and report["validation"]["warnings"] == []
    assert [(t["name"], t["groups"], t["data_class"], t["decision"]) for t in report["tools"]] == [
        ("read_note", ["read-only"], "internal", "allow"),
        ("write_note", ["read-write"], "internal", "escalate"),
    ]
    assert sorted(report["written"]) == sorted(p.as_posix() for p in planned_files())
    assert report["next"]["command"] == (
        f"CMCP_DEV_MODE=1 cmcp start --config {folder / 'cmcp-config.yaml'}"
    )
    token_file = folder / "operator-token"
    assert f'-H "Authorization: Bearer $(cat {token_file})"' in report["next"]["approve"]
    assert token_file.stat().st_mode & 0o777 == 0o600
    token = token_file.read_text().strip()
    config = yaml.safe_load((folder / "cmcp-config.yaml").read_text())
    assert config["auth"] == {
        "operator_token_sha256": "sha256:" + hashlib.sha256(token.encode()).hexdigest()
    }
    assert token not in (folder / "cmcp-config.yaml").read_text()

    # the starter bundle compiles, and its hash is the one validate-config reported: pinnable
    bundle_hash = report["validation"]["bundle_hash"]
    pinned = run_cmcp(
        "validate-bundle", "--bundle-path", folder / "policies", "--expected-hash", bundle_hash
    )
    assert pinned.returncode == 0, pinned.stderr
    # the catalog is what the upstream advertises: no drift
    diff = run_cmcp("catalog", "diff", "--config", folder / "cmcp-config.yaml")
    assert diff.returncode == 0, diff.stderr

    gateway = start_gateway(folder / "cmcp-config.yaml")
    try:
        seen = asyncio.run(agent(gateway.url, token, gateway.port))
    finally:
        gateway.stop()
    assert seen["listed"] == ["read_note", "write_note"]
    assert seen["read"].content[0].text == NOTE
    held = seen["held"]
    assert held.code == APPROVAL_REQUIRED, held
    assert held.data["decision"] == "escalate"
    assert "read-write-tools-need-approval" in held.data["policy_ids"]
    status, _, body = seen["approval"]
    assert status == 200, body
    assert json.loads(body)["status"] == "approved"
    assert seen["ran"].content[0].text == "note replaced: changed"


def test_init_with_a_stdio_command_pins_its_executable_and_serves(tmp_path: Path) -> None:
    """The command is split like a shell's, its executable found on PATH and pinned, and
    its relative argument keeps working from another folder (the config's cwd)."""
    venv_bin = Path(sys.executable).parent
    folder = tmp_path / "gateway"
    result = init(
        folder,
        "--upstream-command",
        f"python {SERVER.name}",
        cwd=SERVER.parent,
        PATH=f"{venv_bin}{os.pathsep}{os.environ['PATH']}",
    )
    assert result.returncode == 0, result.stderr
    report = result.json()
    python = venv_bin / "python"
    digest = "sha256:" + hashlib.sha256(python.read_bytes()).hexdigest()
    assert report["upstream"] == {
        "name": "upstream",
        "transport": "stdio",
        "command": [str(python), SERVER.name],
        "cwd": str(SERVER.parent),
        "executable_sha256": digest,
        "protocol_version": report["upstream"]["protocol_version"],
    }
    assert report["validation"]["warnings"] == []  # the executable is pinned
    assert [(t["name"], t["decision"]) for t in report["tools"]] == [
        ("read_note", "allow"),
        ("write_note", "escalate"),
    ]
    config = yaml.safe_load((folder / "cmcp-config.yaml").read_text())
    assert config["upstreams"]["upstream"]["executable_sha256"] == digest

    gateway = start_gateway(folder / "cmcp-config.yaml")
    try:
        answer = asyncio.run(read_note(gateway.url))
    finally:
        gateway.stop()
    assert answer == NOTE


async def read_note(url: str) -> str:
    async with (
        streamable_http_client(url) as (read, write),
        ClientSession(read, write) as client,
    ):
        await client.initialize()
        result = await client.call_tool("read_note", {})
    text: str = result.content[0].text  # type: ignore[union-attr]
    return text


def test_init_refuses_a_folder_holding_its_files_unless_forced(
    tmp_path: Path, sdk_upstream: Served
) -> None:
    folder = tmp_path / "gateway"
    (folder / "policies").mkdir(parents=True)
    (folder / "cmcp-config.yaml").write_text("mine\n")
    extra = 'permit (principal, action == Action::"list_roots", resource);\n'
    (folder / "policies" / "extra.cedar").write_text(extra)

    refused = init(folder, "--upstream-url", sdk_upstream.url)
    assert refused.returncode == 2, refused.stderr
    assert "cmcp-config.yaml, policies/extra.cedar" in refused.json()["message"]
    assert "--force" in refused.json()["hint"]
    assert (folder / "cmcp-config.yaml").read_text() == "mine\n"
    assert sorted(p.name for p in folder.rglob("*")) == [
        "cmcp-config.yaml",
        "extra.cedar",
        "policies",
    ]

    operator = "o" * 40  # the gateway prefers it to the token file: the hint says so
    forced = init(
        folder, "--upstream-url", sdk_upstream.url, "--force", CMCP_OPERATOR_TOKEN=operator
    )
    assert forced.returncode == 0, forced.stderr
    report = forced.json()
    assert '-H "Authorization: Bearer $CMCP_OPERATOR_TOKEN"' in report["next"]["approve"]
    assert report["kept"] == ["policies/extra.cedar"]  # never deleted; part of the bundle
    assert (folder / "policies" / "extra.cedar").read_text() == extra
    assert "transport: streamable-http" in (folder / "cmcp-config.yaml").read_text()
    assert report["validation"]["policy_count"] == 5


def test_init_against_an_unreachable_upstream_writes_nothing(tmp_path: Path) -> None:
    folder = tmp_path / "gateway"
    url = f"http://127.0.0.1:{free_port()}/mcp"
    result = init(folder, "--upstream-url", url)
    assert result.returncode == 2, result.stderr
    failure = result.json()
    assert "nothing was written" in failure["message"]
    assert url in json.dumps(failure["problems"])
    assert "is up and serves MCP" in failure["problems"][0]["hint"]
    assert not folder.exists()


def test_init_leaves_a_folder_that_fails_validation_for_inspection(
    tmp_path: Path, sdk_upstream: Served
) -> None:
    folder = tmp_path / "gateway"
    result = init(folder, "--upstream-url", sdk_upstream.url, CMCP_DEV_MODE="maybe")
    assert result.returncode == 1, result.stderr
    report = result.json()
    assert report["ok"] is False
    assert (
        "CMCP_DEV_MODE='maybe' is neither 1 nor 0" in report["validation"]["errors"][0]["message"]
    )
    assert (folder / "cmcp-config.yaml").is_file() and (folder / "catalog.json").is_file()
    human = run_cmcp(
        "init",
        tmp_path / "again",
        "--upstream-url",
        sdk_upstream.url,
        env={"CMCP_DEV_MODE": "maybe"},
    )
    assert human.returncode == 1
    assert "left in" in human.stderr and "for inspection" in human.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((), "give exactly one of --upstream-url and --upstream-command"),
        (
            ("--upstream-url", "http://127.0.0.1:1/mcp", "--upstream-command", "x"),
            "give exactly one of --upstream-url and --upstream-command",
        ),
        (("--upstream-url", "ftp://host/mcp"), "is not an http:// or https:// URL"),
        (("--upstream-command", "python 'unclosed"), "cannot be split into words"),
        (("--upstream-command", "no-such-program-here"), "is not a file here nor a program"),
        (("--upstream-url", "http://127.0.0.1:1/mcp", "--name", "a b"), "not a usable upstream"),
        (("--upstream-url", "http://127.0.0.1:1/mcp", "--data-class", "x"), "is not one of"),
    ],
)
def test_init_refuses_unusable_arguments_before_contacting_anything(
    tmp_path: Path, args: tuple[str, ...], message: str
) -> None:
    folder = tmp_path / "gateway"
    result = run_cmcp("init", folder, *args, "--json")
    assert result.returncode == 2, result.stderr
    assert message in result.json()["message"]
    assert not folder.exists()


def test_init_listens_on_loopback_only(tmp_path: Path) -> None:
    result = run_cmcp(
        "init", tmp_path, "--upstream-url", "http://127.0.0.1:1/mcp", "--listen", "0.0.0.0:8443"
    )
    assert result.returncode == 2
    assert "loopback only" in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_the_starter_bundle_decides_as_its_comments_say(tmp_path: Path) -> None:
    """Read-only tools run, read-write ones are held (and an approval could grant them),
    a tool in neither group is denied; of the other messages only tool listings pass."""
    files = bundle_files(server="notes", listen="127.0.0.1:8443", authored_at=datetime.now(UTC))
    for name, content in files.items():
        (tmp_path / name).write_text(content)
    bundle = compile_bundle(read_bundle(tmp_path))
    tools = {
        "read": ("read-only",),
        "write": ("read-write",),
        "other": ("finance",),
        "none": (),
    }
    authorizer = bundle.authorizer(
        ToolResource(name=name, server="notes", groups=groups, data_class="internal")
        for name, groups in tools.items()
    )
    decided = {
        name: authorizer.decide(
            tool_call_request(
                agent_id="anyone",
                tool=name,
                arguments={"x": 1},
                data_class="internal",
                session_max_sensitivity="internal",
                platform="software-only",
            )
        )
        for name in tools
    }
    assert {name: d.effect for name, d in decided.items()} == {
        "read": Effect.ALLOW,
        "write": Effect.ESCALATE,
        "other": Effect.DENY,
        "none": Effect.DENY,
    }
    assert decided["write"].policy_ids == ("read-write-tools", "read-write-tools-need-approval")
    facts = MessageFacts(
        agent_id="anyone",
        server="notes",
        data_class="internal",
        session_max_sensitivity="internal",
        platform="software-only",
    )
    messages: dict[MessageKind, tuple[str, dict[str, Any]]] = {
        MessageKind.LIST_TOOLS: ("notes", {}),
        MessageKind.READ_RESOURCE: ("file:///a", {"uri": "file:///a"}),
        MessageKind.GET_PROMPT: ("p", {"name": "p"}),
        MessageKind.CREATE_MESSAGE: ("notes", {"messages": [], "maxTokens": 5}),
        MessageKind.ELICIT: ("notes", {"message": "?", "requestedSchema": {"properties": {}}}),
        MessageKind.LIST_ROOTS: ("notes", {}),
    }
    effects = {}
    for kind, (target, params) in messages.items():
        entity = message_target(kind, server="notes", target=target, data_class="internal")
        effects[kind] = authorizer.decide(message_request(kind, facts, entity, params), entity)
    assert {kind: d.effect for kind, d in effects.items()} == {
        kind: Effect.ALLOW if kind is MessageKind.LIST_TOOLS else Effect.DENY for kind in messages
    }


def test_init_with_a_command_that_is_no_mcp_server_writes_nothing(tmp_path: Path) -> None:
    folder = tmp_path / "gateway"
    result = run_cmcp("init", folder, "--upstream-command", "true")  # exits at once
    assert result.returncode == 2
    assert "could not list the tools of 1 upstream; nothing was written" in result.stderr
    assert "its process exited with code 0" in result.stderr
    assert "starts and speaks MCP on stdout" in result.stderr
    assert "Traceback" not in result.stderr and "never retrieved" not in result.stderr
    assert not folder.exists()


def test_init_pins_an_sdk_1x_server_as_the_gateway_compares_it(tmp_path: Path) -> None:
    """The 1.x SDK server advertises the quickstart's definitions: init pins each with the
    hash the quickstart catalog computes, and none declares readOnlyHint, so each is held."""
    upstream = start_upstream_v1(tmp_path)
    try:
        result = init(tmp_path / "gateway", "--upstream-url", upstream.url, "--name", "demo")
    finally:
        upstream.stop()
    assert result.returncode == 0, result.stderr
    written = load_catalog(tmp_path / "gateway" / "catalog.json")
    quickstart = load_catalog(QUICKSTART / "catalog.json")
    assert {name: tool.definition_hash for name, tool in written.tools.items()} == {
        name: tool.definition_hash for name, tool in quickstart.tools.items()
    }
    assert {(t["name"], t["groups"][0], t["decision"]) for t in result.json()["tools"]} == {
        (name, "read-write", "escalate") for name in quickstart.tools
    }


def test_init_sends_an_upstream_credential_named_by_its_variable(tmp_path: Path) -> None:
    """A server that refuses requests without its credential: init without it writes
    nothing; with --header-from-env it lists the tools, and only the variable's name is
    written anywhere."""
    secret = "Bearer init-test-" + "s" * 24
    port = free_port()
    command = [sys.executable, str(SERVER), "--http", str(port), "--require", f"X-Key={secret}"]
    upstream = start_process(command, port, tmp_path / "guarded.log")
    try:
        url = upstream.url
        refused = init(tmp_path / "without", "--upstream-url", url)
        unset = init(tmp_path / "unset", "--upstream-url", url, "--header-from-env", "X-Key=KEY")
        folder = tmp_path / "gateway"
        result = init(folder, "--upstream-url", url, "--header-from-env", "X-Key=KEY", KEY=secret)
    finally:
        upstream.stop()
    assert refused.returncode == 2 and "nothing was written" in refused.json()["message"]
    assert "401" in json.dumps(refused.json()["problems"])
    assert unset.returncode == 2
    assert "KEY is not set" in unset.json()["problems"][0]["hint"]
    assert not (tmp_path / "without").exists() and not (tmp_path / "unset").exists()
    assert result.returncode == 0, result.stderr
    report = result.json()
    assert report["upstream"]["headers_from_env"] == {"X-Key": "KEY"}
    assert [tool["name"] for tool in report["tools"]] == ["read_note", "write_note"]
    config = yaml.safe_load((folder / "cmcp-config.yaml").read_text())
    assert config["upstreams"]["upstream"]["headers_from_env"] == {"X-Key": "KEY"}
    assert not any("init-test-" in path.read_text() for path in folder.rglob("*") if path.is_file())


def test_header_from_env_is_checked_before_anything_is_contacted(tmp_path: Path) -> None:
    url = "http://127.0.0.1:1/mcp"
    for args, message in (
        (("--upstream-url", url, "--header-from-env", "X-Key"), "is not HEADER=VARIABLE"),
        (("--upstream-url", url, "--header-from-env", "X Key=K"), "is not HEADER=VARIABLE"),
        (("--upstream-url", url, "--header-from-env", "X-Key=1K"), "is not HEADER=VARIABLE"),
        (
            ("--upstream-url", url, "--header-from-env", "A=K", "--header-from-env", "a=L"),
            "names the header 'a' twice",
        ),
        (("--upstream-command", "true", "--header-from-env", "A=K"), "is for --upstream-url"),
    ):
        result = run_cmcp("init", tmp_path, *args, "--json")
        assert result.returncode == 2, (args, result.stderr)
        assert message in result.json()["message"]
    assert list(tmp_path.iterdir()) == []


def test_init_in_the_current_folder_writes_a_folder_that_can_move(tmp_path: Path) -> None:
    """DIR defaults to the current folder; a stdio server started from there gets `cwd: .`,
    so the folder keeps working when moved as a whole (the interpreter stays absolute)."""
    here = tmp_path / "project"
    here.mkdir()
    shutil.copy(SERVER, here / SERVER.name)
    venv_bin = Path(sys.executable).parent
    path = f"{venv_bin}{os.pathsep}{os.environ['PATH']}"
    command = f"python {SERVER.name}"
    result = run_cmcp("init", "--upstream-command", command, "--json", cwd=here, env={"PATH": path})
    assert result.returncode == 0, result.stderr
    report = result.json()
    assert report["next"]["command"] == "CMCP_DEV_MODE=1 cmcp start --config cmcp-config.yaml"
    config = yaml.safe_load((here / "cmcp-config.yaml").read_text())
    assert config["upstreams"]["upstream"]["cwd"] == "."
    assert config["upstreams"]["upstream"]["command"] == [str(venv_bin / "python"), SERVER.name]

    moved = tmp_path / "moved"
    here.rename(moved)
    diff = run_cmcp("catalog", "diff", "--config", moved / "cmcp-config.yaml", cwd=tmp_path)
    assert diff.returncode == 0, diff.stderr


def test_init_shows_what_an_upstream_says_with_control_characters_escaped(
    tmp_path: Path,
) -> None:
    """A tool name is the upstream's word: one carrying a terminal escape sequence is
    shown escaped, and pinned exactly."""
    name = "paint\x1b[2J\x1b[31mred"
    port = free_port()
    environment = {**os.environ, "INIT_TEST_EXTRA_TOOL": name}
    command = [sys.executable, str(SERVER), "--http", str(port)]
    upstream = start_process(command, port, tmp_path / "odd.log", environment)
    try:
        folder = tmp_path / "gateway"
        result = run_cmcp("init", folder, "--upstream-url", upstream.url)
    finally:
        upstream.stop()
    assert result.returncode == 0, result.stderr
    assert "\x1b" not in result.stderr
    assert "paint\\x1b[2J\\x1b[31mred" in result.stderr
    assert name in load_catalog(folder / "catalog.json").tools
