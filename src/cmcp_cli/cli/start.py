"""`cmcp start`: serve the gateway."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from cmcp_cli.cli import render
from cmcp_cli.errors import ExitCode
from cmcp_cli.gateway.runtime import GatewayRuntime
from cmcp_cli.gateway.server import run_gateway

ConfigFile = Annotated[Path, typer.Option("--config", "-c", help="The config file.")]


def start_command(config: ConfigFile = Path("cmcp-config.yaml")) -> int:
    """Serve MCP on listen_addr: every tool call decided, enforced, audited and claimed."""
    run_gateway(config, announce=_announce)
    render.err.print("gateway stopped; every open session was closed and its claim written")
    return int(ExitCode.OK)


def _announce(runtime: GatewayRuntime) -> None:
    config = runtime.config
    scheme = "https" if config.tls.enabled else "http"
    render.err.print(f"[bold]cMCP gateway[/bold] on {scheme}://{config.listen_addr}/mcp")
    render.err.print(
        f"  attestation  {escape(runtime.attestor.spec.name)}"
        + (
            " [yellow](development mode: not hardware-attested)[/yellow]"
            if runtime.dev_mode
            else ""
        )
    )
    if runtime.measurement.matched is not None:
        render.err.print(f"  measurement  {runtime.measurement.matched} (pinned)")
    for reason in runtime.passed_over:
        render.err.print(f"  passed over  {escape(reason)}")
    render.err.print(
        f"  policy       {runtime.bundle.hash} ({config.attestation.enforcement_mode})"
    )
    catalog = runtime.catalog
    pending = f", {len(catalog.pending)} pending review, not served" if catalog.pending else ""
    render.err.print(f"  catalog      {catalog.hash} ({len(catalog.tools)} tools{pending})")
    for name, upstream in sorted(runtime.upstreams.items()):
        render.err.print(f"  upstream     {escape(name)} -> {escape(upstream.describe())}")
    render.err.print(f"  audit        {config.audit.path} (durability {config.audit.durability})")
    render.err.print(f"  claims       {config.claims.dir}")
    for recovered in runtime.recovery.recovered:
        render.err.print(f"[yellow]{escape(recovered.describe())}[/yellow]")
    for truncated in runtime.recovery.truncated:
        render.err.print(f"[bold red]{escape(truncated.describe())}[/bold red]")
