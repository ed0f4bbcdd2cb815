"""The `cmcp` Typer application and its single error boundary."""

from __future__ import annotations

import sys
from collections.abc import Sequence

import typer

from cmcp_cli import __version__
from cmcp_cli.cli import render
from cmcp_cli.cli.bridge import bridge_command
from cmcp_cli.cli.catalog import catalog_app
from cmcp_cli.cli.evidence import replay_audit_command, verify_command
from cmcp_cli.cli.measure import MEASURE_HELP, measure_app
from cmcp_cli.cli.plugins import plugins_command
from cmcp_cli.cli.sign import sign_bundle_command
from cmcp_cli.cli.start import start_command
from cmcp_cli.cli.validate import validate_bundle_command, validate_config_command
from cmcp_cli.errors import CmcpError, ExitCode


def _version(value: bool) -> None:
    if value:
        render.emit_line(f"cmcp {__version__}")
        raise typer.Exit


def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """cMCP command line."""


def _measure_placeholder() -> None:
    """Listed in `cmcp --help`; `cmcp measure ...` gets the real group instead."""


def build_app(*, with_measurers: bool = False) -> typer.Typer:
    """The whole CLI. `measure` gets its subcommands from the installed providers, which
    are looked up only when that command runs (`with_measurers`)."""
    app = typer.Typer(
        name="cmcp",
        help="cMCP: decide, enforce, audit and attest every MCP tool call.",
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_enable=False,
        context_settings={"help_option_names": ["-h", "--help"]},
    )
    app.callback()(_root)
    app.command("start")(start_command)
    app.command("validate-bundle")(validate_bundle_command)
    app.command("sign-bundle")(sign_bundle_command)
    app.command("validate-config")(validate_config_command)
    app.add_typer(catalog_app())
    app.command("verify")(verify_command)
    app.command("replay-audit")(replay_audit_command)
    if with_measurers:
        app.add_typer(measure_app())
    else:
        app.command("measure", help=MEASURE_HELP)(_measure_placeholder)
    app.command("plugins")(plugins_command)
    app.command("bridge")(bridge_command)
    return app


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; every user-facing failure is rendered here and becomes an exit code.

    Anything that is not a `CmcpError` is a bug and propagates with its traceback.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    json_mode = "--json" in args
    try:
        app = build_app(with_measurers=args[:1] == ["measure"])
        result = app(args=args, prog_name="cmcp", standalone_mode=False)
    except CmcpError as exc:
        if json_mode:
            render.emit_json(exc.to_json())
        render.error(exc)
        return int(exc.exit_code)
    except typer.Exit as exc:
        return int(exc.exit_code)
    except typer.Abort:
        render.err.print("aborted")
        return 130
    except typer.TyperException as exc:  # a command line that does not parse; shows usage
        exc.show()  # type: ignore[attr-defined]
        return int(getattr(exc, "exit_code", ExitCode.USAGE))
    return int(result) if isinstance(result, int) else int(ExitCode.OK)
