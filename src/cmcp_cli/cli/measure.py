"""`cmcp measure <provider>`: one subcommand per installed provider with a measurer, its
options declared by the provider itself (so `cmcp measure tpm --help` shows the TPM's).

The subcommands are Typer commands whose signatures are built from the provider's
`MeasureOption`s. The measurement alone goes to stdout, ready to paste into
`attestation.expected_measurement`; `--json` prints it with the provider's details.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from cmcp_cli.attestation.api import MeasureOption, ProviderScope
from cmcp_cli.attestation.manager import ProviderRegistry, load_providers
from cmcp_cli.attestation.software import NAME as SOFTWARE
from cmcp_cli.cli import render
from cmcp_cli.cli.options import JsonFlag
from cmcp_cli.errors import ExitCode, UsageError
from cmcp_cli.gateway.preflight import measuring

# `cmcp measure software` reads better than the provider's full name.
ALIASES = {"software": SOFTWARE}

ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config",
        help="A cmcp config: measure what that gateway would report (its policy bundle, and "
        "this provider's settings as defaults).",
    ),
]
MEASURE_HELP = (
    "Precompute the measurement a host will report: the exact string for "
    "attestation.expected_measurement. One subcommand per installed provider."
)


def measure_app(registry: ProviderRegistry | None = None) -> typer.Typer:
    registry = registry or load_providers()
    app = typer.Typer(
        name="measure",
        help=MEASURE_HELP,
        no_args_is_help=True,
    )
    aliases = {name: alias for alias, name in ALIASES.items()}
    for name in measuring.measurers(registry):
        help_text = registry.providers[name].spec.description or f"Measure for {name}."
        command = _command(registry, name)
        app.command(aliases.get(name, name), help=help_text)(command)
        if name in aliases:  # the provider's own name works too
            app.command(name, help=help_text, hidden=True)(command)
    return app


def _command(registry: ProviderRegistry, name: str) -> Callable[..., int]:
    try:
        options: Sequence[MeasureOption] = measuring.measure_options(registry, name)
        problem = None
    except Exception as exc:  # noqa: BLE001 - a plugin's broken measurer is reported on use
        options, problem = (), f"{type(exc).__name__}: {exc}"
    by_parameter = {option.name.replace("-", "_"): option.name for option in options}
    # A device provider's measurement is not the platform's: the auditor pins it in the
    # provider's own platform policy table.
    if registry.providers[name].spec.scope is ProviderScope.DEVICE:
        where = f"pin it in the auditor's [{name}] platform policy (cmcp verify --platform-policy)"
    else:
        where = "paste it into attestation.expected_measurement"

    def run(*, config: Path | None = None, as_json: bool = False, **given: Any) -> int:
        if problem is not None:
            raise UsageError(
                f"the {name} provider's measurer failed to load: {problem}",
                hint="reinstall its plugin; `cmcp plugins` lists load failures",
            )
        values = {
            by_parameter[key]: tuple(value) if isinstance(value, list) else (value,)
            for key, value in given.items()
            if value is not None and value != []
        }
        result = measuring.measure(registry, name, values, config)
        if as_json:
            report = {"provider": name, "measurement": result.measurement}
            render.emit_json({**report, "details": dict(result.details)})
        else:
            render.emit_line(result.measurement)
            render.err.print(f"[dim]{escape(name)} measurement: {escape(where)}[/dim]")
            for note in result.notes:
                render.line(escape(note))
        return int(ExitCode.OK)

    parameters = [_parameter(option) for option in options]
    parameters += [
        inspect.Parameter(
            "config", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=ConfigOption
        ),
        inspect.Parameter(
            "as_json", inspect.Parameter.KEYWORD_ONLY, default=False, annotation=JsonFlag
        ),
    ]
    run.__signature__ = inspect.Signature(parameters, return_annotation=int)  # type: ignore[attr-defined]
    run.__annotations__ = {p.name: p.annotation for p in parameters} | {"return": int}
    return run


def _parameter(option: MeasureOption) -> inspect.Parameter:
    declared = typer.Option(f"--{option.name}", metavar=option.metavar, help=option.help)
    kind: Any = list[str] if option.multiple else str
    if option.required:
        return inspect.Parameter(
            option.name.replace("-", "_"),
            inspect.Parameter.KEYWORD_ONLY,
            annotation=Annotated[kind, declared],
        )
    return inspect.Parameter(
        option.name.replace("-", "_"),
        inspect.Parameter.KEYWORD_ONLY,
        default=None,
        annotation=Annotated[kind | None, declared],
    )
