"""`cmcp validate-bundle` and `cmcp validate-config`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from cmcp_cli.cli import render
from cmcp_cli.cli.options import ConfigSource, JsonFlag
from cmcp_cli.errors import ExitCode
from cmcp_cli.gateway.preflight.report import ConfigReport, check_start_config
from cmcp_cli.policy.report import BundleReport, validate_bundle

BundlePath = Annotated[
    Path,
    typer.Option(
        "--bundle-path", help="Directory with *.cedar files, manifest.json, optional schema."
    ),
]
ExpectedHash = Annotated[
    str | None,
    typer.Option("--expected-hash", help="Fail (exit 1) unless the bundle hash is exactly this."),
]
Baseline = Annotated[
    Path | None,
    typer.Option("--baseline", help="An earlier --json report: explain a mismatch file by file."),
]


def validate_bundle_command(
    bundle_path: BundlePath,
    expected_hash: ExpectedHash = None,
    baseline: Baseline = None,
    as_json: JsonFlag = False,
) -> int:
    """Load, hash and compile a policy bundle; print its hash (stdout) and files."""
    report = validate_bundle(bundle_path, expected_hash, baseline)
    if as_json:
        render.emit_json(report.to_json())
    else:
        _render_bundle(report)
        render.emit_line(report.hash)
    return int(ExitCode.FAILED if report.matches is False else ExitCode.OK)


def _render_bundle(report: BundleReport) -> None:
    source = report.bundle.source
    render.err.print(f"[bold]policy bundle {escape(str(source.root))}[/bold]")
    files = Table()
    files.add_column("file")
    files.add_column("sha256", no_wrap=True)
    for bundle_file in source.files:
        files.add_row(escape(bundle_file.path), bundle_file.digest.removeprefix("sha256:"))
    render.err.print(files)
    policies = Table()
    for column in ("id", "effect", "where", "annotations"):
        policies.add_column(column)
    for info in report.bundle.policies.values():
        notes = ", ".join(f"@{k}({v!r})" for k, v in info.annotations.items() if k != "id")
        policies.add_row(escape(info.id), info.effect, escape(info.location), escape(notes))
    render.err.print(policies)
    schema = "validated against schema.cedarschema" if report.bundle.has_schema else "no schema"
    render.err.print(
        f"{len(report.bundle.policies)} policies in {len(source.files)} files, {schema}; "
        f"manifest version {escape(source.manifest.version)} by {escape(source.manifest.author)}"
    )
    for warning in report.warnings:
        render.err.print(f"[yellow]warning:[/yellow] {warning}")
    render.err.print(f"bundle hash [bold]{report.hash}[/bold]")
    if report.matches is False:
        render.err.print(
            "[bold red]error:[/bold red] the bundle hash does not match the pinned hash"
        )
        render.err.print(f"[red]- expected {report.expected_hash}[/red]")
        render.err.print(f"[green]+ actual   {report.hash}[/green]")
        for change in report.changes:
            mark = {"added": "[green]+", "removed": "[red]-", "changed": "[yellow]~"}[change.change]
            render.err.print(f"  {mark} {escape(change.path)} ({change.change})[/]")
        if not report.changes:
            render.err.print(
                "  every file's digest is listed above; pass --baseline with an earlier "
                "--json report to see which files changed"
            )
        render.err.print(
            "  [dim]hint:[/dim] if the change is intended, pin the new hash; otherwise "
            "restore the bundle that was reviewed"
        )
    elif report.matches:
        render.err.print("[green]matches the pinned hash[/green]")


def validate_config_command(
    config: ConfigSource = None,
    as_json: JsonFlag = False,
) -> int:
    """Check a config and everything it references; report every problem at once."""
    report = check_start_config(config)
    if as_json:
        render.emit_json(report.to_json())
    else:
        render_config_report(report)
    return int(ExitCode.OK if report.ok else ExitCode.FAILED)


def render_config_report(report: ConfigReport) -> None:
    render.err.print(
        f"[bold]config {escape(str(report.config_path or 'from the environment'))}[/bold]"
    )
    summary = Table(show_header=False)
    summary.add_column("setting")
    summary.add_column("value", overflow="fold")
    for key, value in report.to_json().items():
        if key in ("config", "ok", "errors", "warnings", "notes") or value is None:
            continue
        shown = ", ".join(value) if isinstance(value, list) else str(value)
        summary.add_row(key.replace("_", " "), escape(shown))
    render.err.print(summary)
    for note in report.notes:
        render.err.print(f"  [cyan]note[/cyan] {escape(note)}")
    render.problems(report.problems)
    errors, warnings = len(report.errors), len(report.warnings)
    if report.ok:
        render.err.print(
            f"[green]config is valid[/green] ({warnings} warning{'s' * (warnings != 1)})"
        )
    else:
        render.err.print(
            f"[bold red]config is not valid:[/bold red] {errors} error{'s' * (errors != 1)}, "
            f"{warnings} warning{'s' * (warnings != 1)}"
        )
