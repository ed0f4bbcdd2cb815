"""The quickstart, end to end: what `scripts/dev.sh demo` runs.

1. `cmcp validate-config` checks the quickstart config and everything it references.
2. `cmcp validate-bundle` prints the bundle hash, and passes again when pinned to it.
3. A dev-mode evidence session decides three tool calls with the quickstart bundle (an
   allowed call, a denied call and a redacted call), records each in the hash-chained
   SQLite audit store, and closes with a signed claim.
4. `cmcp verify --allow-software` and `cmcp replay-audit` check that claim and chain.
Every step runs the real `cmcp` console script or the real library; a failure stops the
demo with a non-zero exit code. State goes to examples/quickstart/.state/.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from cmcp_cli.attestation import software
from cmcp_cli.audit.store import AuditStore
from cmcp_cli.catalog.model import load_catalog
from cmcp_cli.evidence.session import Attestor, EvidenceSession, SessionPolicy
from cmcp_cli.gateway.wiring import authorizer_for, tool_resources
from cmcp_cli.policy.bundle import read_bundle
from cmcp_cli.policy.decision import Effect
from cmcp_cli.policy.engine import compile_bundle
from cmcp_cli.policy.request import ANONYMOUS_AGENT

HERE = Path(__file__).resolve().parent
STATE = HERE / ".state" / "demo"
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

    step("3. a dev-mode session: decide, record and claim three tool calls")
    bundle = compile_bundle(read_bundle(HERE / "policies"))
    catalog = load_catalog(HERE / "catalog.json")
    authorizer = authorizer_for(bundle, catalog)
    tools = {tool.name: tool for tool in tool_resources(catalog)}
    calls = [
        ("get_weather", {"city": "Oslo"}, Effect.ALLOW),
        ("delete_records", {"table": "customers"}, Effect.DENY),
        ("lookup_customer", {"customer_id": "c-42"}, Effect.REDACT),
    ]
    shutil.rmtree(STATE, ignore_errors=True)
    STATE.mkdir(parents=True)
    policy = SessionPolicy(
        bundle_hash=bundle.hash,
        policy_version=bundle.source.manifest.version,
        catalog_hash=catalog.hash,
        enforcement_mode="enforcing",
        data_class_order=("public", "internal", "confidential", "restricted", "secret"),
    )
    table = Table()
    for column in ("agent", "tool", "arguments", "decision", "policies", "why"):
        table.add_column(column)
    failures = 0
    with AuditStore(STATE / "audit.db") as store:
        session = EvidenceSession(
            store=store,
            session_id="demo-session",
            policy=policy,
            attestor=Attestor(software.SPEC, software.SoftwarePlugin.version),
        )
        for index, (tool, arguments, expected) in enumerate(calls):
            verdict = session.decide_call(
                authorizer,
                call_id=f"call-{index}",
                agent_id=ANONYMOUS_AGENT,
                tool=tools[tool],
                arguments=arguments,
            )
            decision = verdict.decision
            if verdict.forwarded:  # a real gateway forwards here and records what came back
                response = {"content": [{"type": "text", "text": f"{tool} result"}]}
                session.outcome(call_id=f"call-{index}", response=response, latency_us=1000)
            failures += decision.effect is not expected
            table.add_row(
                ANONYMOUS_AGENT,
                tool,
                str(arguments),
                _styled(decision.effect),
                ", ".join(decision.policy_ids) or "-",
                _why(decision),
            )
        closed = session.close(reason="demo finished")
    console.print(table)
    claim_path = STATE / "demo-session.claim.json"
    claim_path.write_text(json.dumps(closed.claim, indent=2, ensure_ascii=False), encoding="utf-8")
    console.print(f"claim written to {claim_path.relative_to(HERE)}")

    step("4. verify the claim offline and replay the audit chain")
    run(
        "verify",
        str(claim_path.relative_to(HERE)),
        "--allow-software",
        "--policy-hash",
        bundle.hash,
        "--audit-log",
        ".state/demo/audit.db",
    )
    run(
        "replay-audit",
        "--db",
        ".state/demo/audit.db",
        "--claim",
        str(claim_path.relative_to(HERE)),
        "--bundle",
        "policies",
    )
    if failures:
        console.print(
            f"[bold red]{failures} decision(s) differ from what the quickstart expects[/bold red]"
        )
        return 1
    console.print(
        "[green]quickstart OK:[/green] config valid, bundle pinned, calls recorded, "
        "claim verified, chain replayed"
    )
    console.print(
        "[dim]The gateway (`cmcp start`) runs this same session on live MCP calls once it "
        "lands; CHANGELOG.md says which parts of cMCP have.[/dim]"
    )
    return 0


def _styled(effect: Effect) -> str:
    style = {"allow": "green", "deny": "red", "redact": "yellow"}.get(effect.value, "")
    return f"[{style}]{effect.value}[/{style}]"


def _why(decision: Any) -> str:
    why = "; ".join(decision.reasons)
    if decision.effect is Effect.REDACT:
        spec = decision.redaction
        detectors, fields = ", ".join(sorted(spec.detectors)), ", ".join(spec.pointers)
        why += f" (detectors: {detectors}; fields: {fields})"
    return str(why)


if __name__ == "__main__":
    raise SystemExit(main())
