"""The public TRACE conformance suite (PyPI `agentrust-trace-tests`, its `trace-tests`
console script) run as a real process on a claim or record file, as an auditor runs it.

`trace-tests report --json` gives every finding of every level attempted; `trace-tests
verify --level N` gives the suite's verdict for one level as its exit code. Both are run,
so a test asserts the findings and the verdict the suite's own CLI reaches.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

TRACE_TESTS = Path(sys.executable).with_name("trace-tests")
SUITE_TIMEOUT_SECONDS = 60


@dataclass(frozen=True)
class SuiteReport:
    """One `trace-tests report --json` run: the levels it reached and its findings."""

    document: dict[str, Any]

    @property
    def highest_level(self) -> int | None:
        level = self.document["highest_level_passed"]
        assert level is None or isinstance(level, int), level
        return level

    def passed(self, level: int) -> bool:
        (outcome,) = (lv for lv in self.document["levels"] if lv["level"] == level)
        return bool(outcome["passed"])

    def findings(self, level: int) -> dict[str, str]:
        """Every finding the suite made at `level`, by code: its status. A code the suite
        reported twice at one level would be lost in the map, so it fails here."""
        at_level = [f for f in self.document["findings"] if f["level"] == level]
        assert at_level, f"the suite reported nothing at level {level}"
        repeated = [code for code, n in Counter(f["code"] for f in at_level).items() if n > 1]
        assert not repeated, f"codes reported more than once at level {level}: {repeated}"
        return {f["code"]: f["status"] for f in at_level}

    def messages(self, level: int) -> dict[str, str]:
        return {f["code"]: f["message"] for f in self.document["findings"] if f["level"] == level}


def _suite_args(nonce: str | None, receipt: Path | None) -> list[str]:
    args = []
    if nonce is not None:
        args += ["--expected-nonce", nonce]
    if receipt is not None:
        args += ["--receipt", str(receipt)]
    return args


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    assert TRACE_TESTS.exists(), f"{TRACE_TESTS} is missing: install the test extra"
    return subprocess.run(
        [str(TRACE_TESTS), *args],
        capture_output=True,
        text=True,
        timeout=SUITE_TIMEOUT_SECONDS,
        check=False,
    )


def suite_report(
    record: Path,
    out: Path,
    *,
    max_level: int,
    nonce: str | None = None,
    receipt: Path | None = None,
) -> SuiteReport:
    """`trace-tests report --record RECORD --max-level N --json OUT`: the parsed report."""
    result = _run(
        "report",
        "--record",
        str(record),
        "--max-level",
        str(max_level),
        "--json",
        str(out),
        *_suite_args(nonce, receipt),
    )
    assert result.returncode == 0, result.stdout + result.stderr
    document = json.loads(out.read_text())
    assert document["schema"] == "agentrust-io/trace-tests/report/1", document["schema"]
    return SuiteReport(document)


def suite_verify(
    record: Path, *, level: int, nonce: str | None = None, receipt: Path | None = None
) -> tuple[int, str]:
    """`trace-tests verify --record RECORD --level N`: its exit code (0 the level passes,
    1 it fails) and its output."""
    result = _run(
        "verify", "--record", str(record), "--level", str(level), *_suite_args(nonce, receipt)
    )
    assert result.returncode in (0, 1), result.stdout + result.stderr
    return result.returncode, result.stdout
