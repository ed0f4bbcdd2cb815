"""`cmcp plugins`: the attestation providers installed here, and any that failed to load."""

from __future__ import annotations

from rich.markup import escape
from rich.table import Table

from cmcp_cli.attestation.api import ProviderScope
from cmcp_cli.attestation.inventory import ProviderInventory, ProviderRow, ProviderState, inventory
from cmcp_cli.cli import render
from cmcp_cli.cli.options import JsonFlag
from cmcp_cli.errors import ExitCode


def plugins_command(as_json: JsonFlag = False) -> int:
    """List attestation providers: distribution, what each attests (the platform, or
    devices beside it), evidence types, hardware here, failures."""
    report = inventory()
    if as_json:
        render.emit_json(report.to_json())
    else:
        _render(report)
    return int(ExitCode.OK)


def _render(report: ProviderInventory) -> None:
    table = Table()
    for column in ("provider", "distribution", "version", "attests", "evidence types", "here"):
        table.add_column(column)
    for row in report.providers:
        table.add_row(
            escape(row.name),
            escape(row.distribution),
            escape(row.version),
            _attests(row),
            escape(", ".join(row.evidence_types)),
            _here(row),
        )
    render.err.print(table)
    for failure in report.failures:
        origin = f" ({escape(failure.distribution)})" if failure.distribution else ""
        render.err.print(
            f"[red]failed to load[/red] {escape(failure.source)}{origin}: {escape(failure.error)}"
        )


def _attests(row: ProviderRow) -> str:
    """The platform a provider attests, or for a device provider that it attests devices
    beside the platform (what `attestation.gpu_required` asks for)."""
    if row.scope is ProviderScope.DEVICE:
        return f"devices beside the CPU ({escape(row.platform)}); attestation.gpu_required"
    return escape(row.platform)


def _here(row: ProviderRow) -> str:
    if row.state is ProviderState.DETECTED:
        return "[green]detected[/green]"
    if row.state is ProviderState.NOT_DETECTED:
        return f"[dim]{escape(row.detail)}[/dim]"
    colour = "yellow" if row.state is ProviderState.UNAVAILABLE else "red"
    hint = f"\n[dim]hint:[/dim] {escape(row.hint)}" if row.hint else ""
    return f"[{colour}]{row.state.value}[/{colour}]: {escape(row.detail)}{hint}"
