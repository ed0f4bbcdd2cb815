"""Shared fixtures: example paths, bundle builders, and the real `cmcp` console script."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
QUICKSTART = REPO / "examples" / "quickstart"
MANIFEST = {"version": "1.0.0", "authored_at": "2026-11-21T09:00:00Z", "author": "tests"}
CMCP = Path(sys.executable).with_name("cmcp")


@dataclass(frozen=True)
class CliResult:
    returncode: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        return json.loads(self.stdout)


def run_cmcp(
    *args: str | Path, env: Mapping[str, str] | None = None, cwd: Path | None = None
) -> CliResult:
    """Run the installed `cmcp` console script, as a user would."""
    assert CMCP.exists(), f"{CMCP} is missing: install the project (scripts/dev.sh setup)"
    base_env = {k: v for k, v in os.environ.items() if not k.startswith("CMCP_")}
    base_env.update(env or {})
    completed = subprocess.run(
        [str(CMCP), *map(str, args)],
        capture_output=True,
        text=True,
        env=base_env,
        cwd=cwd,
        timeout=60,
        check=False,
    )
    return CliResult(completed.returncode, completed.stdout, completed.stderr)


BundleFactory = Callable[..., Path]


@pytest.fixture
def make_bundle(tmp_path: Path) -> BundleFactory:
    """Write a bundle: `make_bundle({"a.cedar": "...", "schema.cedarschema": "..."})`."""
    counter = 0

    def factory(
        files: Mapping[str, str | bytes], *, manifest: Mapping[str, Any] | None = MANIFEST
    ) -> Path:
        nonlocal counter
        counter += 1
        root = tmp_path / f"bundle{counter}"
        root.mkdir()
        if manifest is not None:
            (root / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
        for name, content in files.items():
            path = root / name
            path.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(content, bytes):
                path.write_bytes(content)
            else:
                path.write_text(content, encoding="utf-8")
        return root

    return factory


@pytest.fixture
def quickstart(tmp_path: Path) -> Path:
    """A private copy of examples/quickstart that a test may edit."""
    target = tmp_path / "quickstart"
    shutil.copytree(QUICKSTART, target, ignore=shutil.ignore_patterns(".state", "__pycache__"))
    return target
