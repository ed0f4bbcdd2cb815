"""The quickstart, end to end: what `scripts/dev.sh demo` runs.

1. `cmcp validate-config` checks the quickstart config and everything it references.
2. `cmcp validate-bundle` prints the bundle hash, and passes again when pinned to it.
3. The demo MCP server (official MCP SDK) and the gateway (`cmcp start`, dev mode) start.
4. An agent using the official MCP SDK client connects to the gateway and makes an allowed,
   a denied and a redacted call; leaving closes its session, and the gateway writes the
   session's signed claim.
5. `cmcp verify --allow-software` and `cmcp replay-audit` check that claim and its chain.

Every step runs the real `cmcp` console script or the real SDK over loopback HTTP; a
failure stops the demo with a non-zero exit code. State goes to examples/quickstart/.state/.
The ports are the ones cmcp-config.yaml names (`listen_addr` and the demo upstream's `url`).
"""

from __future__ import annotations

import asyncio
import http.client
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import yaml
from mcp.client.session import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError
from rich.console import Console
from rich.table import Table
from rich.text import Text

HERE = Path(__file__).resolve().parent
STATE = HERE / ".state"
CMCP = Path(sys.executable).with_name("cmcp")
CONFIG = "cmcp-config.yaml"
console = Console(stderr=True, highlight=False, width=None if sys.stderr.isatty() else 150)
ENV = {**os.environ, "CMCP_DEV_MODE": "1"}


def ports() -> tuple[int, int]:
    """The gateway's and the demo upstream's ports, as cmcp-config.yaml says."""
    config = yaml.safe_load((HERE / CONFIG).read_text())
    gateway = urlsplit(f"//{config['listen_addr']}").port
    upstream = urlsplit(config["upstreams"]["demo"]["url"]).port
    if gateway is None or upstream is None:
        raise SystemExit(f"{CONFIG} names no port in listen_addr or upstreams.demo.url")
    return gateway, upstream


GATEWAY_PORT, UPSTREAM_PORT = ports()


def step(title: str) -> None:
    console.rule(f"[bold]{title}")


def show_command(command: list[str]) -> None:
    """A command on one line, never folded, so that it can be copied and run."""
    console.print(Text("$ " + shlex.join(command), style="dim"), soft_wrap=True)


def note(text: str) -> None:
    console.print(Text(text, style="cyan"), soft_wrap=True)


def require_free(port: int, setting: str) -> None:
    """Stop before starting anything when another program holds a port the demo needs."""
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            console.print(
                f"[bold red]port {port} on 127.0.0.1 is in use by another program; stop it, "
                f"or change {setting} in {CONFIG} to a free port[/bold red]",
                soft_wrap=True,
            )
            raise SystemExit(1) from None


def run(*args: str) -> str:
    """Run the cmcp console script, show its output, stop the demo if it fails."""
    show_command(["cmcp", *args])
    completed = subprocess.run(  # noqa: S603 - our own console script
        [str(CMCP), *args], capture_output=True, text=True, env=ENV, check=False, cwd=HERE
    )
    sys.stderr.write(completed.stderr)
    if completed.returncode != 0:
        console.print(
            f"[bold red]cmcp exited {completed.returncode}; the demo stops here[/bold red]"
        )
        raise SystemExit(completed.returncode)
    return completed.stdout.strip()


def start(command: list[str], port: int, what: str) -> subprocess.Popen[bytes]:
    show_command(command)
    process = subprocess.Popen(command, env=ENV, cwd=HERE)  # noqa: S603 - ours
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            console.print(f"[bold red]{what} exited with {process.returncode}[/bold red]")
            raise SystemExit(1)
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            connection.request("GET", "/healthz")
            connection.getresponse().read()
            connection.close()
        except OSError:
            time.sleep(0.1)
        else:
            return process
    process.kill()
    console.print(f"[bold red]{what} did not answer on port {port} within 30 s[/bold red]")
    raise SystemExit(1)


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()


async def agent() -> list[tuple[str, str, str, str]]:
    """An agent built on the official SDK, pointed at the gateway instead of the server."""
    calls = [
        ("get_weather", {"city": "Oslo"}),
        ("delete_records", {"table": "customers"}),
        ("lookup_customer", {"customer_id": "c-1"}),
    ]
    rows = []
    url = f"http://127.0.0.1:{GATEWAY_PORT}/mcp"
    async with (
        streamable_http_client(url) as (read, write),
        ClientSession(read, write) as session,
    ):
        await session.initialize()
        for tool, arguments in calls:
            try:
                result = await session.call_tool(tool, arguments)
            except MCPError as exc:
                decision = (exc.error.data or {}).get("decision", "error")
                rows.append((tool, str(arguments), f"[red]{decision}[/red]", exc.error.message))
                continue
            shown = str(result.structured_content or result.content[0].text)  # type: ignore[union-attr]
            redacted = "[REDACTED:" in shown
            rows.append(
                (
                    tool,
                    str(arguments),
                    "[yellow]redact[/yellow]" if redacted else "[green]allow[/green]",
                    shown,
                )
            )
        # Reading a resource is decided too (read_resource), and redacted as its permit says.
        notes = await session.read_resource("notes://desk/today")
        text = notes.contents[0].text  # type: ignore[union-attr]
        decision = "[yellow]redact[/yellow]" if "[REDACTED:" in text else "[green]allow[/green]"
        rows.append(("resources/read", "notes://desk/today", decision, text))
    return rows


def main() -> int:
    require_free(GATEWAY_PORT, "listen_addr")
    require_free(UPSTREAM_PORT, "upstreams.demo.url")
    shutil.rmtree(STATE, ignore_errors=True)
    note(f"The commands below run in {HERE}, with cmcp = {CMCP}.")
    step("1. validate the quickstart configuration")
    run("validate-config", "--config", CONFIG)
    note(
        "The warning above is expected here: the demo makes no call that needs an operator's "
        "approval. A gateway that escalates calls needs CMCP_OPERATOR_TOKEN (docs/gateway.md)."
    )

    step("2. hash the policy bundle, then pin it")
    bundle_hash = run("validate-bundle", "--bundle-path", "policies")
    console.print(f"bundle hash on stdout: [bold]{bundle_hash}[/bold]")
    run("validate-bundle", "--bundle-path", "policies", "--expected-hash", bundle_hash)
    note(
        "The create_message warning is the quickstart bundle's choice: no upstream may use the "
        "agent's model. policies/messages.cedar shows the permit that would allow it."
    )

    step("3. start the demo MCP server and the gateway in front of it")
    upstream = start(
        [sys.executable, "demo_upstream.py", "--port", str(UPSTREAM_PORT)],
        UPSTREAM_PORT,
        "the demo MCP server",
    )
    gateway = None
    try:
        gateway = start([str(CMCP), "start", "--config", CONFIG], GATEWAY_PORT, "the gateway")

        step(
            "4. an agent (official MCP SDK client) calls three tools and reads a resource "
            "through the gateway"
        )
        rows = asyncio.run(agent())
        table = Table()
        for column in ("tool or message", "arguments", "decision", "what the agent got back"):
            table.add_column(column)
        for row in rows:
            table.add_row(*row)
        console.print(table)
    finally:
        if gateway is not None:
            stop(gateway)
        stop(upstream)
    claims = sorted((STATE / "claims").glob("*.claim.json"))
    if len(claims) != 1:
        console.print(
            f"[bold red]expected one claim in .state/claims, found {len(claims)}[/bold red]"
        )
        return 1
    claim = str(claims[0].relative_to(HERE))
    console.print(f"the session's claim: {claim}", soft_wrap=True)

    step("5. verify the claim offline and replay the audit chain")
    run(
        "verify",
        claim,
        "--allow-software",
        "--policy-hash",
        bundle_hash,
        "--audit-log",
        ".state/audit.db",
    )
    run("replay-audit", "--db", ".state/audit.db", "--claim", claim, "--bundle", "policies")
    decisions = [row[2] for row in rows]
    expected = ["[green]allow[/green]", "[red]deny[/red]", "[yellow]redact[/yellow]"]
    if decisions != [*expected, "[yellow]redact[/yellow]"]:
        console.print("[bold red]the decisions differ from what the quickstart expects[/bold red]")
        return 1
    console.print(
        "[green]quickstart OK:[/green] config valid, bundle pinned, calls decided and enforced "
        "by the gateway, claim verified, chain replayed"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
