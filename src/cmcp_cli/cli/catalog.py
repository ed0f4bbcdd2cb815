"""`cmcp catalog pin` and `cmcp catalog diff`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from cmcp_cli.catalog.pinning import Approval, ToolChange, visible
from cmcp_cli.cli import render
from cmcp_cli.cli.options import JsonFlag
from cmcp_cli.errors import ExitCode, UsageError
from cmcp_cli.gateway.setup.catalog import CatalogDrift, PinOutcome, diff_catalog, pin_catalog

CATALOG_HELP = (
    "Pin the tools the configured upstreams advertise into the catalog, or show how they "
    "differ from it. Only tools are pinned: resources and prompts are decided by policy "
    "for each message."
)
PIN_HELP = (
    "Write or update the catalog at the config's catalog_path from the upstreams' "
    "tools/list (created when missing).\n\n"
    "New tools are added pending review: the gateway neither lists nor forwards them "
    "until a reviewer sets their data_class and groups (or --approve-new approves them). "
    "Changed definitions are shown as a diff and replaced only with --update; tools no "
    "longer advertised are dropped only with --prune. Only tools are pinned: resources "
    "and prompts are decided by policy for each message.\n\n"
    "Exit 0 once written (or already up to date), 1 when some tool could not be pinned, "
    "2 for unusable input."
)
DIFF_HELP = (
    "Compare the catalog with what the upstreams advertise now; write nothing.\n\n"
    "Exit 0 when in sync, 1 on any drift (a tool added, changed or removed upstream, or "
    "one that cannot be pinned), 2 for unusable input (the config, the catalog, or an "
    "upstream that cannot be listed)."
)
ConfigFile = Annotated[Path, typer.Option("--config", "-c", help="The config file.")]
Servers = Annotated[
    list[str] | None,
    typer.Option("--server", help="Only this upstream (repeat for several); default: all."),
]


def catalog_app() -> typer.Typer:
    app = typer.Typer(name="catalog", help=CATALOG_HELP, no_args_is_help=True)
    app.command("pin", help=PIN_HELP)(pin_command)
    app.command("diff", help=DIFF_HELP)(diff_command)
    return app


def pin_command(
    config: ConfigFile = Path("cmcp-config.yaml"),
    update: Annotated[
        bool,
        typer.Option(
            "--update",
            help="Replace changed definitions with the advertised ones (keeping each tool's "
            "data_class and groups).",
        ),
    ] = False,
    prune: Annotated[
        bool, typer.Option("--prune", help="Drop tools the upstreams no longer advertise.")
    ] = False,
    approve_new: Annotated[
        bool,
        typer.Option(
            "--approve-new",
            help="Approve new tools at once (needs --data-class) instead of adding them "
            "pending review.",
        ),
    ] = False,
    data_class: Annotated[
        str | None,
        typer.Option("--data-class", help="With --approve-new: the new tools' data class."),
    ] = None,
    group: Annotated[
        list[str] | None,
        typer.Option(
            "--group",
            help="With --approve-new: a group of the new tools (repeat for several); "
            "default: read-only or read-write, from each tool's readOnlyHint.",
        ),
    ] = None,
    server: Servers = None,
    as_json: JsonFlag = False,
) -> int:
    """Write or update the catalog from the upstreams' tools/list (created when missing)."""
    if approve_new != (data_class is not None):
        raise UsageError("--approve-new and --data-class go together", hint=_APPROVE_HINT)
    if group and not approve_new:
        raise UsageError("--group applies only with --approve-new", hint=_APPROVE_HINT)
    approval = (
        Approval(data_class, tuple(group) if group else None) if data_class is not None else None
    )
    outcome = pin_catalog(
        config, update=update, prune=prune, approve_new=approval, servers=server or None
    )
    if as_json:
        render.emit_json(outcome.to_json())
    else:
        _render_pin(outcome)
    return int(ExitCode.FAILED if outcome.drift.comparison.problems else ExitCode.OK)


_APPROVE_HINT = "e.g. --approve-new --data-class internal [--group read-only]"


def diff_command(
    config: ConfigFile = Path("cmcp-config.yaml"),
    server: Servers = None,
    as_json: JsonFlag = False,
) -> int:
    """Compare the catalog with what the upstreams advertise now; write nothing."""
    drift = diff_catalog(config, servers=server or None)
    if as_json:
        render.emit_json(drift.to_json())
    else:
        _render_drift(drift)
        comparison = drift.comparison
        if comparison.in_sync:
            render.err.print("[green]the catalog matches its upstreams[/green]")
        else:
            counts = comparison.counts()
            summary = ", ".join(f"{counts[k]} {k}" for k in ("added", "changed", "removed"))
            render.err.print(f"[bold red]drift:[/bold red] {summary}")
            render.err.print(
                f"  [dim]hint:[/dim] review it, then run `cmcp catalog pin --config "
                f"{escape(str(config))}` (--update, --prune)"
            )
    return int(ExitCode.OK if drift.comparison.in_sync else ExitCode.FAILED)


_STYLE = {"added": "green", "changed": "yellow", "removed": "red", "unchanged": "dim"}


def _render_drift(drift: CatalogDrift) -> None:
    render.err.print(f"[bold]catalog {escape(str(drift.catalog_path))}[/bold]")
    for name, found in drift.listed.items():
        render.err.print(
            f"  upstream {escape(name)}: {escape(found.location)} "
            f"({found.protocol_version}, {len(found.tools)} tools)"
        )
    table = Table()
    for column in ("tool", "upstream", "change", "status", "catalog hash", "upstream hash"):
        table.add_column(column, no_wrap=column.endswith("hash"))
    for change in drift.comparison.changes:
        style = _STYLE[change.change]
        table.add_row(
            _shown(change.name),
            escape(change.server),
            f"[{style}]{change.change}[/{style}]",
            _status(change),
            _short(change.pinned_hash),
            _short(change.live_hash),
        )
    render.err.print(table)
    for change in drift.comparison.of("changed"):
        render.err.print(f"[bold]{_shown(change.name)}[/bold] changed:")
        for line in change.diff.splitlines():
            style = "green" if line.startswith("+") else "red" if line.startswith("-") else ""
            shown = escape(line)
            render.err.print(f"[{style}]{shown}[/{style}]" if style else shown)
    render.problems(drift.comparison.problems)


def _shown(text: str) -> str:
    """Upstream text (a tool name) as printed for people: markup and controls escaped."""
    return escape(visible(text))


def _status(change: ToolChange) -> str:
    if change.change == "added":
        return "new"
    return "approved" if change.approved else "[yellow]pending review[/yellow]"


def _short(digest: str | None) -> str:
    return digest.removeprefix("sha256:")[:12] if digest else "-"


def _render_pin(outcome: PinOutcome) -> None:
    _render_drift(outcome.drift)
    path = escape(str(outcome.drift.catalog_path))
    for label, names in (
        ("added pending review", outcome.added_pending),
        ("added approved", outcome.added_approved),
        ("updated", outcome.updated),
        ("pruned", outcome.pruned),
        ("changed, not updated", outcome.not_updated),
        ("no longer advertised, kept", outcome.not_pruned),
    ):
        if names:
            render.err.print(f"  {label}: {', '.join(map(_shown, names))}")
    if not outcome.written and outcome.drift.comparison.in_sync:
        render.err.print(f"[green]catalog {path} matches its upstreams[/green]; nothing written")
    elif not outcome.written:
        render.err.print(f"catalog {path} left as it was")
    else:
        verb = "created" if outcome.created else "updated"
        render.err.print(f"[green]catalog {path} {verb}[/green] (hash {outcome.catalog_hash})")
    for step in outcome.next_steps:
        render.err.print(f"  [cyan]next[/cyan] {escape(step)}")
