"""The reference gateway (PyPI cmcp-runtime) as benchmarks/gateway.py --reference runs it:
installed once into its own venv, with its bundle, catalog and config in its own formats."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

from mcp_load import BenchError


def install_reference(requirement: str) -> Path:
    """The venv holding `requirement`, under ~/.cache/cmcp-bench, made on first use."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "cmcp-bench"
    venv = cache / requirement.replace("==", "-")
    if not (venv / "bin" / "cmcp").is_file():
        print(f"installing {requirement} into {venv} ...", file=sys.stderr)
        for command in (
            [sys.executable, "-m", "venv", str(venv)],
            [str(venv / "bin" / "pip"), "install", "--quiet", requirement],
        ):
            done = subprocess.run(  # noqa: S603 - fixed commands, no shell
                command, capture_output=True, text=True, timeout=900, check=False
            )
            if done.returncode != 0:
                raise BenchError(f"cannot install {requirement}: {done.stderr.strip()[-500:]}")
    return venv


def write_reference_files(folder: Path, *, port: int, upstream_port: int, root: Path) -> None:
    """Its bundle (get_weather permitted), catalog and config, serving on `port`."""
    (folder / "policies").mkdir(parents=True)
    manifest = {
        "version": "1.0.0",
        "authored_at": "2026-11-21T00:00:00Z",
        "author_identity": "bench",
        "commit_sha": "0" * 40,
    }
    (folder / "policies" / "manifest.json").write_text(json.dumps(manifest))
    allow = 'permit (principal, action == Action::"GetWeather", resource);\n'
    (folder / "policies" / "allow.cedar").write_text(allow)
    (folder / "policies" / "schema.cedarschema").write_text("")
    catalog = json.loads((root / "examples" / "quickstart" / "catalog.json").read_text())
    tool = next(t for t in catalog["tools"] if t["name"] == "get_weather")["definition"]
    definition = {"description": tool["description"], "input_schema": tool["inputSchema"]}
    canonical = json.dumps(definition, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    entry = {
        "tool_name": "get_weather",
        "server": {
            "display_name": "bench",
            "transport": "streamable-http",
            "url": f"http://127.0.0.1:{upstream_port}/mcp",
            "tls_fingerprint": "SHA256:" + "A" * 43 + "=",  # its "unpinned (dev)" placeholder
        },
        "approved_definition": definition,
        "definition_hash": "sha256:" + hashlib.sha256(canonical.encode()).hexdigest(),
        "added_at": "2026-11-21T00:00:00Z",
        "approved_by": "bench",
    }
    (folder / "catalog.json").write_text(json.dumps([entry]))
    config = {
        "attestation": {"provider": "auto", "enforcement_mode": "enforcing"},
        "listen_addr": f"127.0.0.1:{port}",
        "policy_bundle_path": "./policies/",
        "catalog_path": "./catalog.json",
        "audit_db_path": "audit.db",
    }
    (folder / "cmcp-config.yaml").write_text(json.dumps(config))  # JSON is YAML
