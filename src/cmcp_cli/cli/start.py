"""`cmcp start`: serve the gateway."""

from __future__ import annotations

import os

import yaml
from rich.markup import escape

from cmcp_cli.cli import render
from cmcp_cli.cli.options import ConfigSource
from cmcp_cli.config import HttpUpstream
from cmcp_cli.config_document import ConfigDocument
from cmcp_cli.config_environment import (
    secret_variables,
    shown_data,
    shown_url,
    start_variables,
)
from cmcp_cli.errors import ExitCode
from cmcp_cli.gateway.runtime import GatewayRuntime
from cmcp_cli.gateway.server import StartHooks, run_gateway
from cmcp_cli.gateway.setup.first_contact import FirstContact


def start_command(config: ConfigSource = None) -> int:
    """Serve MCP on listen_addr: every tool call decided, enforced, audited and claimed."""
    hooks = StartHooks(document=_show_document, pinned=_show_pinned, announce=_announce)
    run_gateway(config, hooks=hooks)
    render.err.print("gateway stopped; every open session was closed and its claim written")
    return int(ExitCode.OK)


def _show_document(document: ConfigDocument) -> None:
    """A config built from the environment, as the file it stands for would read."""
    if document.path is not None:
        return
    variables = start_variables(os.environ)
    render.err.print(f"[bold]config from the environment[/bold] ({escape(', '.join(variables))})")
    text = yaml.safe_dump(shown_data(document), sort_keys=False, allow_unicode=True)
    render.err.print(escape(text.rstrip()), highlight=False, soft_wrap=True)
    secrets = secret_variables(os.environ)
    if secrets:
        render.err.print(f"secrets read from {escape(', '.join(secrets))} (values not shown)")


def _show_pinned(pinned: FirstContact) -> None:
    counts = ", ".join(f"{count} from {escape(name)}" for name, count in pinned.servers.items())
    render.err.print(
        f"[yellow]catalog pinned at first contact[/yellow]: {pinned.tools} tools ({counts}) "
        f"approved as data class {escape(pinned.data_class)} and written to "
        f"{escape(str(pinned.path))} (trust on first use: review it)"
    )


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
    _show_appraisal(runtime)
    for reason in runtime.passed_over:
        render.err.print(f"  passed over  {escape(reason)}")
    for device in runtime.attestor.devices:
        render.err.print(f"  devices      {escape(device.spec.name)}, attested in every session")
    for reason in runtime.devices_left_out:
        render.err.print(f"  not attested {escape(reason)}")
    render.err.print(
        f"  policy       {runtime.bundle.hash} ({config.attestation.enforcement_mode})"
    )
    catalog = runtime.catalog
    pending = f", {len(catalog.pending)} pending review, not served" if catalog.pending else ""
    render.err.print(
        f"  catalog      {catalog.hash} ({len(catalog.tools)} tools{pending}), "
        f"pinning {config.catalog_pinning}"
    )
    for name, upstream in sorted(runtime.upstreams.items()):
        configured = config.upstreams.get(name)
        where = (
            shown_url(configured.url)
            if isinstance(configured, HttpUpstream)
            else upstream.describe()
        )
        render.err.print(f"  upstream     {escape(name)} -> {escape(where)}")
    render.err.print(f"  audit        {config.audit.path} (durability {config.audit.durability})")
    render.err.print(f"  claims       {config.claims.dir}")
    for recovered in runtime.recovery.recovered:
        render.err.print(f"[yellow]{escape(recovered.describe())}[/yellow]")
    for truncated in runtime.recovery.truncated:
        render.err.print(f"[bold red]{escape(truncated.describe())}[/bold red]")


def _show_appraisal(runtime: GatewayRuntime) -> None:
    """The gateway's own appraisal: the first one, when evidence was taken at start; else
    what each collection of evidence will be appraised with."""
    detail = runtime.attestor.appraisal_detail(operator=True)
    if not detail["appraised"]:
        render.err.print(f"  appraisal    none ({escape(detail['reason'])})")
        return
    latest, required = detail["latest"], detail["required_status"]
    if latest is None:
        inputs = detail["inputs"]
        render.err.print(
            f"  appraisal    of every collection of evidence by the "
            f"{escape(runtime.attestor.spec.name)} verifier: {len(inputs['trust_roots'])} "
            f"trust root(s), {len(inputs['collateral'])} collateral, platform policy "
            f"{escape(str(inputs['platform_policy'] or 'none'))}; required {required}"
        )
        return
    render.err.print(
        f"  appraisal    {latest['status']} (required {required}), {escape(latest['policy_ref'])}"
    )
    for check in latest["not_passed"]:
        render.err.print(
            f"    {escape(check['name'])} {check['status']}: {escape(check['reason'])}"
        )
