"""Running the official MCP conformance suite (npm `@modelcontextprotocol/conformance`, server
mode) and reading its verdicts.

`scripts/dev.sh setup` installs a pinned Node.js and one pinned suite per protocol revision
under `.conformance/` in the repository (see docs/conformance.md). The suite writes one
folder per scenario, `<out>/server-<scenario>-<timestamp>/checks.json`, a list of checks
whose `status` is SUCCESS, FAILURE, WARNING, INFO or SKIPPED. A scenario passes when it
wrote its checks and none of them is a FAILURE: the suite's own summary counts the same way.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support import REPO

INSTALL = Path(os.environ.get("CMCP_CONFORMANCE_DIR", REPO / ".conformance"))


@dataclass(frozen=True)
class Edition:
    """One run of the suite: a protocol revision, tested by one installed suite version."""

    label: str  # names the test case and the report
    revision: str  # --spec-version
    folder: str  # under INSTALL
    version: str  # pinned in scripts/dev.sh


# The 0.1.x line is the released suite of 2025-11-25; only 0.2.0 has the 2026-07-28 scenarios.
# 0.2.0 also runs 2025-11-25, stricter: its server-sse-polling speaks the negotiated version,
# so the server primes and closes the stream and the client resumes with Last-Event-ID
# (0.1.16 sends 2025-03-26 there, and resumability goes unexercised).
EDITIONS = (
    Edition("2025-11-25", "2025-11-25", "suite-2025-11-25", "0.1.16"),
    Edition("2026-07-28", "2026-07-28", "suite-2026-07-28", "0.2.0-alpha.12"),
    Edition("2025-11-25-alpha12", "2025-11-25", "suite-2026-07-28", "0.2.0-alpha.12"),
)
SUITE_SECONDS = 600  # one whole `--suite all` run; a hung scenario ends it, not the test run
SCENARIO_DIR = re.compile(r"^server-(?P<name>.+)-\d{4}-\d{2}-\d{2}T[\d-]+Z$")
RUNNING = re.compile(r"^=== Running scenario: (?P<name>\S+) ===$", re.MULTILINE)
SETUP_HINT = "run `scripts/dev.sh setup` (it installs Node.js and the suite into .conformance/)"
# The test records each edition's side-by-side table under this name; tests/conftest.py
# prints them after the run, also from a pytest-xdist worker, whose output is not shown.
TABLE_PROPERTY = "conformance-table"


@dataclass(frozen=True)
class Suite:
    revision: str
    node: Path
    entry: Path  # the package's `conformance` command, run by `node`
    version: str

    def command(self, url: str, out: Path) -> list[str]:
        return [
            str(self.node),
            str(self.entry),
            "server",
            "--url",
            url,
            "--suite",
            "all",
            "--spec-version",
            self.revision,
            "--output-dir",
            str(out),
        ]


@dataclass
class Scenario:
    name: str
    passed: bool
    counts: dict[str, int] = field(default_factory=dict)  # check status -> how many
    failures: list[str] = field(default_factory=list)  # "<check id>: <the suite's message>"
    succeeded: dict[str, int] = field(default_factory=dict)  # check id -> SUCCESS count
    warnings: dict[str, str] = field(default_factory=dict)  # check id -> the suite's message

    def summary(self) -> str:
        ok, bad = self.counts.get("SUCCESS", 0), self.counts.get("FAILURE", 0)
        warned = self.counts.get("WARNING", 0)
        return f"{'pass' if self.passed else 'FAIL'} ({ok} ok, {bad} failed, {warned} warn)"

    def as_json(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "counts": self.counts,
            "failures": self.failures,
            "warnings": self.warnings,
        }


def locate(edition: Edition) -> Suite:
    """The installed Node binary and suite of `edition`; a clear error when absent."""
    folder, version = edition.folder, edition.version
    nodes = sorted((INSTALL / "node" / "node_modules").glob("node-linux-*/bin/node"))
    if not nodes:
        raise AssertionError(f"no Node.js under {INSTALL / 'node'}: {SETUP_HINT}")
    package = INSTALL / folder / "node_modules" / "@modelcontextprotocol" / "conformance"
    try:
        manifest = json.loads((package / "package.json").read_text())
    except (OSError, ValueError) as exc:
        raise AssertionError(
            f"the conformance suite {version} is not in {package}: {SETUP_HINT}"
        ) from exc
    if manifest.get("version") != version:
        raise AssertionError(
            f"{package} holds version {manifest.get('version')}, the tests pin {version}: {SETUP_HINT}"
        )
    entry = package / manifest["bin"]["conformance"]
    return Suite(edition.revision, nodes[0], entry, version)


def run(suite: Suite, url: str, out: Path, log: Path) -> dict[str, Scenario]:
    """Run every server scenario of the suite's revision against `url` and read the verdicts.

    A scenario the suite announced but wrote no checks for (it crashed, or the run timed
    out) is a failure carrying the tail of the suite's output."""
    out.mkdir(parents=True, exist_ok=True)
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("NODE_", "npm_"))}
    try:
        completed = subprocess.run(
            suite.command(url, out),
            capture_output=True,
            text=True,
            timeout=SUITE_SECONDS,
            env=environment,
            check=False,
        )
        output = completed.stdout + completed.stderr
    except subprocess.TimeoutExpired as exc:
        output = _text(exc.stdout) + _text(exc.stderr)
        output += f"\n(the suite did not finish within {SUITE_SECONDS} s and was killed)"
    log.write_text(output)
    written = read_results(out)
    tail = "\n".join(output.strip().splitlines()[-5:])
    results: dict[str, Scenario] = {}  # in the order the suite ran them
    for name in [*RUNNING.findall(output), *written]:
        if name not in results:
            results[name] = written.get(name) or Scenario(
                name, False, failures=[f"no checks written; the suite's output ends:\n{tail}"]
            )
    if not results:
        raise AssertionError(f"the conformance suite ran no scenario against {url}:\n{tail}")
    return results


def read_results(out: Path) -> dict[str, Scenario]:
    results: dict[str, Scenario] = {}
    for checks_file in sorted(out.glob("server-*/checks.json")):
        matched = SCENARIO_DIR.match(checks_file.parent.name)
        if matched is None:
            continue
        name = matched["name"]
        checks: list[dict[str, Any]] = json.loads(checks_file.read_text())
        verdict = Scenario(name, True)
        for check in checks:
            status, check_id = str(check.get("status")), str(check.get("id"))
            message = str(check.get("errorMessage") or check.get("description"))
            verdict.counts[status] = verdict.counts.get(status, 0) + 1
            if status == "FAILURE":
                verdict.failures.append(f"{check_id}: {message}")
            elif status == "SUCCESS":
                verdict.succeeded[check_id] = verdict.succeeded.get(check_id, 0) + 1
            elif status == "WARNING":
                verdict.warnings[check_id] = message
        verdict.passed = not verdict.failures
        results[name] = verdict
    return results


def _text(data: str | bytes | None) -> str:
    if isinstance(data, bytes):
        return data.decode(errors="replace")
    return data or ""


def lost(direct: Mapping[str, Scenario], gateway: Mapping[str, Scenario]) -> list[str]:
    """Scenarios that pass against the upstream directly but not through the gateway."""
    return [
        name
        for name, verdict in direct.items()
        if verdict.passed and not (name in gateway and gateway[name].passed)
    ]


def degraded(
    direct: Mapping[str, Scenario], gateway: Mapping[str, Scenario]
) -> dict[str, list[str]]:
    """Scenarios passing both ways in which a check that succeeds directly does not succeed
    through the gateway, with the suite's warning for each such check. The suite passes a
    scenario with warnings (a SHOULD of the spec missed) and with checks it found not
    applicable (a JSON answer where the server streamed SSE skips every resumability check),
    so a relay can lose behaviour without losing the scenario."""
    found: dict[str, list[str]] = {}
    for name, verdict in direct.items():
        through = gateway.get(name)
        if not (verdict.passed and through is not None and through.passed):
            continue
        weaker = [
            f"{check}: {through.warnings.get(check, 'did not succeed')}"
            for check, count in verdict.succeeded.items()
            if through.succeeded.get(check, 0) < count
        ]
        if weaker:
            found[name] = weaker
    return found


def table(title: str, direct: Mapping[str, Scenario], gateway: Mapping[str, Scenario]) -> str:
    """The two runs side by side, one scenario a row, in the suite's order."""
    names = list(direct) + [name for name in gateway if name not in direct]
    width = max(len(name) for name in names)
    missing = Scenario("", False, failures=["not run"])
    gone, weaker = lost(direct, gateway), degraded(direct, gateway)
    rows = [
        f"MCP conformance {title}: direct {passed(direct)}, through cmcp {passed(gateway)}",
        f"  {'scenario':<{width}}  {'direct':<32}  through the gateway",
    ]
    for name in names:
        left = direct.get(name, missing).summary()
        right = gateway.get(name, missing).summary()
        marker = "  LOST" if name in gone else "  degraded" if name in weaker else ""
        rows.append(f"  {name:<{width}}  {left:<32}  {right}{marker}")
    return "\n".join(rows)


def passed(results: Mapping[str, Scenario]) -> str:
    return f"{sum(r.passed for r in results.values())}/{len(results)}"
