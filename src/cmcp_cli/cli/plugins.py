"""`cmcp plugins`: the attestation providers installed here, and any that failed to load."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from cmcp_cli.attestation.inventory import ProviderInventory, inventory
from cmcp_cli.cli import render
from cmcp_cli.errors import ExitCode

JsonFlag = Annotated[bool, typer.Option("--json", help="Print a JSON report on stdout.")]


def plugins_command(as_json: JsonFlag = False) -> int:
    """List attestation providers: distribution, evidence types, hardware here, failures."""
    report = inventory()
    if as_json:
        render.emit_json(report.to_json())
    else:
        _render(report)
    return int(ExitCode.OK)


def _render(report: ProviderInventory) -> None:
    table = Table()
    for column in ("provider", "distribution", "version", "platform", "evidence types", "here"):
        table.add_column(column)
    for row in report.providers:
        here = "[green]detected[/green]" if row.detected else f"[dim]{escape(row.detail)}[/dim]"
        table.add_row(
            escape(row.name),
            escape(row.distribution),
            escape(row.version),
            escape(row.platform),
            escape(", ".join(row.evidence_types)),
            here,
        )
    render.err.print(table)
    for failure in report.failures:
        origin = f" ({escape(failure.distribution)})" if failure.distribution else ""
        render.err.print(
            f"[red]failed to load[/red] {escape(failure.source)}{origin}: {escape(failure.error)}"
        )
