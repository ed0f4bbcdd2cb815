"""The README's main command runs the quickstart demo; it must pass end to end, and what it
prints must serve a newcomer: every command on one line (copyable as printed), and no
warning the demo does not explain."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from tests.gateway_support import quickstart_on_free_ports
from tests.support import CMCP

HASH = r"sha256:[0-9a-f]{64}"
CLAIM = r"\.state/claims/[A-Za-z0-9_-]+\.claim\.json"
# The commands the demo shows, each a whole line: `$ ` and the command, nothing folded away.
COMMANDS = [
    r"\$ cmcp validate-config --config cmcp-config\.yaml",
    r"\$ cmcp validate-bundle --bundle-path policies",
    rf"\$ cmcp validate-bundle --bundle-path policies --expected-hash {HASH}",
    rf"\$ {re.escape(sys.executable)} demo_upstream\.py --port \d+",
    rf"\$ {re.escape(str(CMCP))} start --config cmcp-config\.yaml",
    rf"\$ cmcp verify {CLAIM} --allow-software --policy-hash {HASH} --audit-log \.state/audit\.db",
    rf"\$ cmcp replay-audit --db \.state/audit\.db --claim {CLAIM} --bundle policies",
]
# Lines that carry a command or an identifier to copy, each whole on its line.
COPYABLE = [
    r"  claim-signing key (\S{43}) \(pin it: cmcp verify --trusted-key \1\)",
    rf"session \S+: clean; 11 entries, tip {HASH}, 5 calls, 5 decisions re-checked; "
    r"ended: closed by gateway process [0-9a-f]{32}",
]
# The warnings the quickstart gives on purpose, and the demo's note on each.
EXPLAINED = {
    "  warning cmcp-config.yaml: auth: no operator token: escalated calls cannot be approved "
    "(each session's claim and audit chain stay readable by its own agent)": "The warning above "
    "is expected here: the demo makes no call that needs an operator's approval.",
    "warning: no permit names create_message: upstreams cannot sample the agent's model": (
        "The create_message warning is the quickstart bundle's choice"
    ),
}
NOISE = re.compile(
    r"\w+Warning\b|\[notice\]|Traceback|\bDEPRECAT|\[WARNING\]|\[ERROR\]|is not read by cMCP",
    re.IGNORECASE,
)


@pytest.fixture(scope="module")
def demo_output(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The demo's output, run once from a private copy of the quickstart on free ports."""
    quickstart = quickstart_on_free_ports(tmp_path_factory.mktemp("demo") / "quickstart")
    env = {k: v for k, v in os.environ.items() if not k.startswith("CMCP_")}
    completed = subprocess.run(
        [sys.executable, "demo.py"],
        capture_output=True,
        text=True,
        cwd=quickstart,
        env=env,
        timeout=120,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    return completed.stdout + completed.stderr


def test_quickstart_demo_passes(demo_output: str) -> None:
    assert "quickstart OK" in demo_output
    for decision in ("allow", "deny", "redact"):
        assert f" {decision} " in demo_output
    assert "VERIFIED (software mode accepted with --allow-software)" in demo_output
    assert ": clean; 11 entries" in demo_output
    assert "5 decisions re-checked" in demo_output
    assert "[REDACTED:email]" in demo_output


def test_every_command_is_printed_whole_on_one_line(demo_output: str) -> None:
    lines = demo_output.splitlines()
    shown = [line for line in lines if line.startswith("$ ")]
    assert len(shown) == len(COMMANDS), shown
    for pattern, line in zip(COMMANDS, shown, strict=True):
        assert re.fullmatch(pattern, line), f"{line!r} is not the whole command {pattern!r}"
    for pattern in COPYABLE:
        assert [line for line in lines if re.fullmatch(pattern, line)], pattern


def test_every_warning_is_one_the_demo_explains(demo_output: str) -> None:
    lines = demo_output.splitlines()
    assert not [line for line in lines if NOISE.search(line)]
    notes = tuple(EXPLAINED.values())
    warnings = {line for line in lines if "warning" in line.lower() and not line.startswith(notes)}
    expected = {*EXPLAINED, "config is valid (1 warning)"}
    assert warnings <= expected, warnings - expected
    for warning, note in EXPLAINED.items():
        at = lines.index(warning)
        assert [line for line in lines[at:] if line.startswith(note)], note
