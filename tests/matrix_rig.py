"""The relay matrix's rig: one `cmcp start` in front of four official-SDK upstreams (tools
of tests/matrix_upstream.py under the prefixes `h2` SDK 2.x HTTP, `s2` SDK 2.x stdio,
`h1` SDK 1.x HTTP, `s1` SDK 1.x stdio), the policy that decides their server-initiated
requests by context, and agents whose model and user answer predictably."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mcp_types as types
import pytest
import yaml
from mcp import StdioServerParameters
from mcp.client.session import ClientRequestContext, ClientSession
from mcp.client.stdio import stdio_client
from mcp.client.streamable_http import streamable_http_client
from pydantic import FileUrl

from cmcp_cli.audit.logfile import read_log_lines
from tests.gateway_support import (
    Served,
    free_port,
    request,
    start_gateway,
    start_process,
    write_config,
)
from tests.support import REPO, run_cmcp

UPSTREAM_V2 = REPO / "tests" / "matrix_upstream.py"
COMPAT = REPO / "tests" / "compat"
MCP1_PYTHON = REPO / ".venv-mcp1" / "bin" / "python"
MANIFEST = {"version": "1.0.0", "authored_at": "2026-12-02T05:00:00Z", "author": "tests"}
WAIT_SECONDS = 15.0
SESSION_SECONDS = 60.0
POLICY_DENIED = -32040
ROOT = "file:///srv/project"
OPERATOR_TOKEN = secrets.token_urlsafe(32)  # exports each session's audit chain
OPERATOR = {"authorization": f"Bearer {OPERATOR_TOKEN}"}

POLICY = """\
@id("call-tools")
permit (principal, action == Action::"call_tool", resource);

@id("list-tools")
permit (principal, action == Action::"list_tools", resource);

// The agent's model writes short answers for any upstream ...
@id("sampling-short")
permit (principal, action == Action::"create_message", resource)
when { context.max_tokens == 10 };

// ... and longer ones with e-mail addresses masked; anything else is refused.
@id("sampling-redacted")
@redact("email")
permit (principal, action == Action::"create_message", resource)
when { context.max_tokens == 20 };

// The user is asked who holds the card ...
@id("elicit-holder")
permit (principal, action == Action::"elicit", resource)
when { context.message == "Who holds the card?" };

// ... and for the card number, which never reaches the upstream; nothing else is asked.
@id("elicit-card-redacted")
@redact("card")
permit (principal, action == Action::"elicit", resource)
when { context.message == "Card number?" };

// Roots are shown only while the session has touched public data only.
@id("roots-while-public")
permit (principal, action == Action::"list_roots", resource)
when { context.session_max_sensitivity == "public" };
"""

# (tool suffix, arguments), what the upstream answers through the gateway, in order
RELAY_STEPS: list[tuple[str, dict[str, Any], str]] = [
    ("chatty", {}, "chatty done"),
    ("client_roots", {}, "roots: " + json.dumps([ROOT])),  # the session is public so far
    ("ask_model", {"max_tokens": 10}, "model said: plain words"),
    ("ask_model", {"max_tokens": 20}, "model said: write to [REDACTED:email]"),
    ("ask_model", {"max_tokens": 30}, f"refused {POLICY_DENIED}"),
    ("ask_user", {"question": "Who holds the card?"}, "user accept: Ada"),
    ("ask_user", {"question": "Card number?"}, "user accept: [REDACTED:card]"),
    ("ask_user", {"question": "Your PIN?"}, f"refused {POLICY_DENIED}"),
    ("client_roots", {}, f"refused {POLICY_DENIED}"),  # ask_model is confidential
]
# the client's callbacks that ran: never for a denied request
RELAY_ASKED = [
    "roots",
    "sampling:write something",
    "sampling:write something",
    "elicit:Who holds the card?",
    "elicit:Card number?",
]
RELAY_KINDS = {
    "create_message": {"total": 3, "allowed": 1, "redacted": 1, "denied": 1},
    "elicit": {"total": 3, "allowed": 1, "redacted": 1, "denied": 1},
    "list_roots": {"total": 2, "allowed": 1, "redacted": 0, "denied": 1},
    "call_tool": {"total": len(RELAY_STEPS), "allowed": len(RELAY_STEPS), "denied": 0},
}
CONFIDENTIAL = {"ask_model"}


def sha256_of(executable: Path) -> str:
    return "sha256:" + hashlib.sha256(executable.resolve().read_bytes()).hexdigest()


@dataclass
class Matrix:
    gateway: Served
    http: dict[str, Served]  # the HTTP upstreams by prefix (stdio ones are the gateway's)
    state: Path
    claims: Path
    bundle: Path
    seen_claims: set[Path] = field(default_factory=set)

    def new_claim(self) -> dict[str, Any]:
        """The one claim written since the test began, checked with `cmcp verify` and
        `cmcp replay-audit` against its session's audit chain as the operator exports it."""
        deadline = time.monotonic() + WAIT_SECONDS
        fresh: list[Path] = []
        while time.monotonic() < deadline:
            fresh = sorted(set(self.claims.glob("*.claim.json")) - self.seen_claims)
            if fresh:
                break
            time.sleep(0.1)
        assert len(fresh) == 1, f"expected one new claim, found {fresh}"
        self.seen_claims.update(fresh)
        document: dict[str, Any] = json.loads(fresh[0].read_text())
        session_id = document["gateway"]["session_id"]
        status, _, exported = request(
            self.gateway.port, "GET", f"/audit/{session_id}", None, OPERATOR
        )
        assert status == 200, exported
        log = self.claims.parent / f"{session_id}.jsonl"
        log.write_bytes(exported)
        verified = run_cmcp("verify", fresh[0], "--allow-software", "--audit-log", log, "--json")
        assert verified.returncode == 0, verified.stdout + verified.stderr
        # the chain's hashes and links, matched with the claim, every request decided again
        replay: list[str | Path] = ["--log", log, "--claim", fresh[0], "--bundle", self.bundle]
        replayed = run_cmcp("replay-audit", *replay, "--json")
        assert replayed.returncode == 0, replayed.stdout + replayed.stderr
        return document

    def entries(self, session_id: str) -> list[dict[str, Any]]:
        return [
            json.loads(line) for line in read_log_lines(self.claims.parent / "audit.db", session_id)
        ]

    def restart(self, prefix: str) -> None:
        """Stop an HTTP upstream and start it again on its port: it forgets its sessions."""
        served = self.http[prefix]
        served.stop()
        command = [str(part) for part in served.process.args]  # type: ignore[union-attr]
        log = served.log.with_name(f"{served.log.stem}-restarted.log")
        self.http[prefix] = start_process(command, served.port, log)

    def cancelled(self, prefix: str, tag: str) -> bool:
        """Whether the upstream wrote its record of a cancellation, waiting for it, bounded."""
        marker = self.state / f"cancelled-{prefix}-{tag}"
        deadline = time.monotonic() + WAIT_SECONDS
        while not marker.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        return marker.exists()


def upstream_commands(state: Path) -> dict[str, list[str]]:
    """How each upstream runs, by prefix (an HTTP one gets `--port` added)."""
    v2 = [sys.executable, str(UPSTREAM_V2)]
    v1 = [str(MCP1_PYTHON), str(COMPAT / "matrix_upstream_v1.py")]
    return {
        "h2": [*v2, "--prefix", "h2", "--state", str(state)],
        "s2": [*v2, "--prefix", "s2", "--state", str(state), "--stdio"],
        "h1": [*v1, "--prefix", "h1", "--state", str(state)],
        "s1": [*v1, "--prefix", "s1", "--state", str(state), "--stdio"],
    }


async def advertised(target: str | list[str]) -> list[dict[str, Any]]:
    """The tools an upstream advertises, listed directly: a URL or a stdio command."""
    if isinstance(target, str):
        async with (
            streamable_http_client(target) as (read, write),
            ClientSession(read, write) as session,
        ):
            await session.initialize()
            listed = await session.list_tools()
    else:
        server = StdioServerParameters(command=target[0], args=target[1:])
        async with stdio_client(server) as (read, write), ClientSession(read, write) as session:
            await session.initialize()
            listed = await session.list_tools()
    return [tool.model_dump(by_alias=True, exclude_none=True) for tool in listed.tools]


def catalog_entries(prefix: str, tools: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        {
            "name": tool["name"],
            "server": prefix,
            "groups": ["matrix"],
            "data_class": "confidential"
            if tool["name"].removeprefix(f"{prefix}_") in CONFIDENTIAL
            else "public",
            "definition": {k: v for k, v in tool.items() if k != "name"},
        }
        for tool in tools
    ]


@contextlib.contextmanager
def running_matrix(folder: Path) -> Iterator[Matrix]:
    """The four upstreams and one gateway in front of them, deciding by POLICY."""
    if not MCP1_PYTHON.exists():
        pytest.fail(f"{MCP1_PYTHON} is missing: run `scripts/dev.sh setup` (the SDK 1.x venv)")
    state = folder / "upstream-state"
    state.mkdir()
    commands = upstream_commands(state)
    http: dict[str, Served] = {}
    gateway: Served | None = None
    try:
        for prefix in ("h2", "h1"):
            port = free_port()
            command = [*commands[prefix], "--port", str(port)]
            http[prefix] = start_process(command, port, folder / f"upstream-{prefix}.log")
        entries: list[dict[str, Any]] = []
        upstreams: dict[str, Any] = {}
        for prefix, command in commands.items():
            if prefix in http:
                tools = asyncio.run(advertised(http[prefix].url))
                upstreams[prefix] = {"transport": "streamable-http", "url": http[prefix].url}
            else:
                tools = asyncio.run(advertised(command))
                upstreams[prefix] = {
                    "transport": "stdio",
                    "command": command,
                    "executable_sha256": sha256_of(Path(command[0])),
                }
            entries += catalog_entries(prefix, tools)
        catalog = folder / "catalog.json"
        catalog.write_text(json.dumps({"catalog_version": 1, "tools": entries}))
        bundle = folder / "bundle"
        bundle.mkdir()
        (bundle / "manifest.json").write_text(json.dumps(MANIFEST))
        (bundle / "matrix.cedar").write_text(POLICY)
        config = write_config(
            folder, http["h2"].url, policy_bundle_path=str(bundle), catalog_path=str(catalog)
        )
        settings = yaml.safe_load(config.read_text())
        settings["upstreams"] = upstreams  # these four instead of write_config's `demo`
        config.write_text(yaml.safe_dump(settings))
        gateway = start_gateway(config, {"CMCP_OPERATOR_TOKEN": OPERATOR_TOKEN})
        yield Matrix(gateway, http, state, folder / "claims", bundle)
    finally:
        if gateway is not None:
            gateway.stop()
        for served in http.values():
            served.stop()


# The official SDK 2.x ClientSession (2025-11-25: initialize, a session id, SSE streams)


class Agent:
    """Callbacks of an agent whose model and user answer predictably; what ran is kept."""

    def __init__(self) -> None:
        self.asked: list[str] = []
        self.ids: list[Any] = []  # the request ids the client saw: the gateway's own
        self.progress: list[tuple[float, float | None, str | None]] = []
        self.logs: list[Any] = []

    async def sampling(
        self, context: ClientRequestContext, params: types.CreateMessageRequestParams
    ) -> types.CreateMessageResult:
        self.ids.append(context.request_id)
        content = params.messages[0].content
        self.asked.append(f"sampling:{getattr(content, 'text', '')}")
        text = "plain words" if params.max_tokens == 10 else "write to ada@example.org"
        return types.CreateMessageResult(
            role="assistant", content=types.TextContent(type="text", text=text), model="m"
        )

    async def elicitation(
        self, context: ClientRequestContext, params: types.ElicitRequestParams
    ) -> types.ElicitResult:
        self.ids.append(context.request_id)
        self.asked.append(f"elicit:{params.message}")
        answer = "Ada" if params.message == "Who holds the card?" else "4111 1111 1111 1111"
        return types.ElicitResult(action="accept", content={"answer": answer})

    async def roots(self, context: ClientRequestContext) -> types.ListRootsResult:
        self.ids.append(context.request_id)
        self.asked.append("roots")
        return types.ListRootsResult(roots=[types.Root(uri=FileUrl(ROOT))])

    async def log(self, params: types.LoggingMessageNotificationParams) -> None:
        self.logs.append(params.data)

    async def on_progress(self, progress: float, total: float | None, message: str | None) -> None:
        self.progress.append((progress, total, message))


def text_of(result: object) -> str:
    """The text of a tool result's first block (the SDK's CallToolResult or FastMCP's)."""
    content = getattr(result, "content", None)
    assert isinstance(content, list) and content, result
    block = content[0]
    assert isinstance(block, types.TextContent), result
    return block.text


async def sdk2_relay(url: str, prefix: str) -> tuple[list[str], Agent]:
    agent = Agent()
    answers: list[str] = []
    async with (
        asyncio.timeout(SESSION_SECONDS),
        streamable_http_client(url) as (read, write),
        ClientSession(
            read,
            write,
            sampling_callback=agent.sampling,
            elicitation_callback=agent.elicitation,
            list_roots_callback=agent.roots,
            logging_callback=agent.log,
        ) as session,
    ):
        await session.initialize()
        for suffix, arguments, _ in RELAY_STEPS:
            result = await session.call_tool(
                f"{prefix}_{suffix}", arguments, progress_callback=agent.on_progress
            )
            answers.append(text_of(result))
    return answers, agent


def check_relay(
    matrix: Matrix, answers: list[str], asked: list[str], ids: list[Any]
) -> dict[str, Any]:
    """What every client x upstream pairing must see, and its claim's counts."""
    assert answers == [expected for _, _, expected in RELAY_STEPS]
    assert asked == RELAY_ASKED
    # the upstreams' requests reach the client under ids the gateway assigned
    assert all(isinstance(i, str) and i.startswith("cmcp-") for i in ids), ids
    assert len(set(ids)) == len(ids) == len(RELAY_ASKED)
    claim = matrix.new_claim()
    by_kind = claim["gateway"]["call_summary"]["by_kind"]
    for kind, counts in RELAY_KINDS.items():
        found = by_kind[kind]
        assert {key: found[key] for key in counts} == counts, (kind, found)
        assert found["faulted"] == 0, (kind, found)
    return claim


def run_v1_client(*args: str) -> dict[str, Any]:
    command = [str(MCP1_PYTHON), str(COMPAT / "matrix_client_v1.py"), *args]
    completed = subprocess.run(
        command, capture_output=True, text=True, timeout=SESSION_SECONDS + 30, check=False
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    seen: dict[str, Any] = json.loads(completed.stdout)
    return seen
