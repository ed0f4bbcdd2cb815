"""The quickstart, end to end: what `scripts/dev.sh demo` runs.

1. `cmcp validate-config` checks the quickstart config and everything it references.
2. `cmcp validate-bundle` prints the bundle hash, and passes again when pinned to it.
3. The quickstart bundle decides three tool calls the way the gateway enforces them:
   an allowed call, a denied call and a redacted call.
Every step runs the real `cmcp` console script or the real policy engine; a failure
stops the demo with a non-zero exit code.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

from cmcp_cli.catalog.model import load_catalog
from cmcp_cli.gateway.wiring import authorizer_for
from cmcp_cli.policy.bundle import read_bundle
from cmcp_cli.policy.decision import Effect
from cmcp_cli.policy.engine import compile_bundle
from cmcp_cli.policy.request import ANONYMOUS_AGENT, tool_call_request

HERE = Path(__file__).resolve().parent
CMCP = Path(sys.executable).with_name("cmcp")
console = Console(stderr=True, highlight=False, width=None if sys.stderr.isatty() else 150)


def step(title: str) -> None:
    console.rule(f"[bold]{title}")


def run(*args: str) -> str:
    """Run the cmcp console script, show its output, stop the demo if it fails."""
    console.print(f"[dim]$ cmcp {' '.join(args)}[/dim]")
    env = {**os.environ, "CMCP_DEV_MODE": "1"}
    completed = subprocess.run(  # noqa: S603 - our own console script
        [str(CMCP), *args], capture_output=True, text=True, env=env, check=False, cwd=HERE
    )
    sys.stderr.write(completed.stderr)
    if completed.returncode != 0:
        console.print(
            f"[bold red]cmcp exited {completed.returncode}; the demo stops here[/bold red]"
        )
        raise SystemExit(completed.returncode)
    return completed.stdout.strip()


def main() -> int:
    step("1. validate the quickstart configuration")
    run("validate-config", "--config", "cmcp-config.yaml")

    step("2. hash the policy bundle, then pin it")
    bundle_hash = run("validate-bundle", "--bundle-path", "policies")
    console.print(f"bundle hash on stdout: [bold]{bundle_hash}[/bold]")
    run("validate-bundle", "--bundle-path", "policies", "--expected-hash", bundle_hash)

    step("3. decide three tool calls with the quickstart bundle")
    bundle = compile_bundle(read_bundle(HERE / "policies"))
    catalog = load_catalog(HERE / "catalog.json")
    authorizer = authorizer_for(bundle, catalog)
    calls = [
        ("get_weather", {"city": "Oslo"}, Effect.ALLOW),
        ("delete_records", {"table": "customers"}, Effect.DENY),
        ("lookup_customer", {"customer_id": "c-42"}, Effect.REDACT),
    ]
    table = Table()
    for column in ("agent", "tool", "arguments", "decision", "policies", "why"):
        table.add_column(column)
    failures = 0
    for tool, arguments, expected in calls:
        entry = catalog.tools[tool]
        decision = authorizer.decide(
            tool_call_request(
                agent_id=ANONYMOUS_AGENT,
                tool=tool,
                arguments=arguments,
                data_class=entry.data_class,
                session_max_sensitivity=entry.data_class,
                platform="software-only",
            )
        )
        failures += decision.effect is not expected
        why = "; ".join(decision.reasons)
        if decision.effect is Effect.REDACT:
            spec = decision.redaction
            detectors, fields = ", ".join(sorted(spec.detectors)), ", ".join(spec.pointers)
            why += f" (detectors: {detectors}; fields: {fields})"
        style = {"allow": "green", "deny": "red", "redact": "yellow"}.get(decision.effect.value, "")
        table.add_row(
            ANONYMOUS_AGENT,
            tool,
            str(arguments),
            f"[{style}]{decision.effect.value}[/{style}]",
            ", ".join(decision.policy_ids) or "-",
            why,
        )
    console.print(table)
    if failures:
        console.print(
            f"[bold red]{failures} decision(s) differ from what the quickstart expects[/bold red]"
        )
        return 1
    console.print(
        "[green]quickstart OK:[/green] config valid, bundle pinned, allow / deny / redact decided"
    )
    console.print(
        "[dim]These are the decisions the gateway enforces on live MCP calls; "
        "CHANGELOG.md says which parts of cMCP have landed.[/dim]"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
