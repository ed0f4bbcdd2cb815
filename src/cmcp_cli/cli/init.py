"""`cmcp init`: a folder with a working config, a starter policy and a pinned catalog."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from cmcp_cli.catalog.pinning import visible
from cmcp_cli.cli import render
from cmcp_cli.cli.options import JsonFlag
from cmcp_cli.cli.validate import render_config_report
from cmcp_cli.errors import ExitCode
from cmcp_cli.gateway.setup.init import InitResult, init_folder
from cmcp_cli.gateway.setup.starter_config import HttpTarget
from cmcp_cli.gateway.setup.target import (
    DEFAULT_DATA_CLASS,
    DEFAULT_LISTEN,
    DEFAULT_NAME,
    InitRequest,
)

Folder = Annotated[
    Path,
    typer.Argument(
        metavar="DIR", help="The folder to write into (created if missing).", show_default=True
    ),
]
UpstreamUrl = Annotated[
    str | None,
    typer.Option("--upstream-url", help="The MCP endpoint of a running server (streamable HTTP)."),
]
UpstreamCommand = Annotated[
    str | None,
    typer.Option(
        "--upstream-command",
        help="The command that starts a stdio server, quoted as one argument "
        '(split like a shell: "python server.py --root /srv").',
    ),
]
HeaderFromEnv = Annotated[
    list[str] | None,
    typer.Option(
        "--header-from-env",
        help="HEADER=VARIABLE: a header the HTTP upstream needs (its credential), its value "
        "read from the environment variable; repeat for several.",
    ),
]
Name = Annotated[str, typer.Option("--name", help="The upstream's name in config and catalog.")]
DataClass = Annotated[
    str, typer.Option("--data-class", help="The data class every approved tool gets.")
]
Listen = Annotated[str, typer.Option("--listen", help="The gateway's loopback HOST:PORT.")]
Force = Annotated[
    bool, typer.Option("--force", help="Overwrite the files init writes if they exist.")
]

_DECISION_STYLE = {"allow": "green", "redact": "yellow", "escalate": "yellow", "deny": "red"}


def init_command(
    folder: Folder = Path(),
    upstream_url: UpstreamUrl = None,
    upstream_command: UpstreamCommand = None,
    header_from_env: HeaderFromEnv = None,
    name: Name = DEFAULT_NAME,
    data_class: DataClass = DEFAULT_DATA_CLASS,
    listen: Listen = DEFAULT_LISTEN,
    force: Force = False,
    as_json: JsonFlag = False,
) -> int:
    """Write a config, a starter policy bundle and a catalog approving every tool of one
    upstream into DIR, check them as validate-config does, and print the next command."""
    request = InitRequest(
        folder=folder,
        upstream_url=upstream_url,
        upstream_command=upstream_command,
        name=name,
        data_class=data_class,
        listen=listen,
        headers_from_env=tuple(header_from_env or ()),
        force=force,
    )
    result = init_folder(request)
    if as_json:
        render.emit_json(result.to_json())
    else:
        _render(result)
    return int(ExitCode.OK if result.ok else ExitCode.FAILED)


def _render(result: InitResult) -> None:
    target = result.target
    where = target.url if isinstance(target, HttpTarget) else " ".join(target.command)
    render.err.print(
        f"upstream [bold]{escape(result.name)}[/bold]: {escape(where)} "
        f"(MCP {escape(visible(result.protocol_version))})",
        soft_wrap=True,
    )
    tools = Table(title=f"{len(result.tools)} tools approved into the catalog")
    for column in ("tool", "groups", "data class", "starter policy"):
        tools.add_column(column)
    for tool in result.tools:
        style = _DECISION_STYLE.get(tool.decision, "red")
        shown = "held for approval" if tool.decision == "escalate" else tool.decision
        tools.add_row(
            escape(visible(tool.name)),  # the upstream's word: nothing in it reaches the terminal
            escape(", ".join(tool.groups)),
            escape(tool.data_class),
            f"[{style}]{escape(shown)}[/{style}]",
        )
    render.err.print(tools)
    render.err.print(f"wrote in {escape(str(result.folder))}:")
    for path in result.written:
        render.err.print(f"  {escape(path.as_posix())}")
    for path in result.kept:
        render.err.print(
            f"  [yellow]kept[/yellow] {escape(path.as_posix())} (part of the policy bundle)"
        )
    render.err.print(
        f"  [dim]{escape(result.operator_token_path.name)} holds the operator's token "
        "(readable by you alone): keep it secret[/dim]"
    )
    render.err.print()
    render_config_report(result.report)
    render.err.print()
    if not result.ok:
        render.err.print(
            f"[bold red]the folder does not pass validate-config[/bold red]; its files are "
            f"left in {escape(str(result.folder))} for inspection"
        )
        return
    render.err.print("[bold]next:[/bold]")
    render.err.print(f"  {escape(result.next.command)}", soft_wrap=True)
    render.err.print(f"  [dim]{escape(result.next.note)}[/dim]")
    render.err.print("a call held for approval is approved by the operator with:")
    render.err.print(f"  {escape(result.next.approve)}", soft_wrap=True)
