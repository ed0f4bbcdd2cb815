"""The README's main command runs the quickstart demo; it must pass end to end."""

from __future__ import annotations

import subprocess
import sys

from tests.support import QUICKSTART


def test_quickstart_demo_passes() -> None:
    completed = subprocess.run(
        [sys.executable, str(QUICKSTART / "demo.py")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    assert "quickstart OK" in completed.stderr
    for decision in ("allow", "deny", "redact"):
        assert f" {decision} " in completed.stderr
    assert "VERIFIED (software mode accepted with --allow-software)" in completed.stderr
    assert ": clean; 11 entries" in completed.stderr
    assert "5 decisions re-checked" in completed.stderr
    assert "[REDACTED:email]" in completed.stderr
