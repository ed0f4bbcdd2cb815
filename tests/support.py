"""Helpers shared by the tests: example paths, the real `cmcp` console script, hashes."""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import subprocess
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import rfc8785

from cmcp_cli.attestation.binding import compute_binding
from cmcp_cli.claim.keys import jwk_thumbprint
from cmcp_cli.config import ENV_START

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
    # none of cMCP's variables leaks in from the environment the tests run in
    base_env = {
        k: v for k, v in os.environ.items() if not k.startswith("CMCP_") and k not in ENV_START
    }
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


def independent_bundle_hash(root: Path) -> str:
    """The documented bundle hash preimage, computed with nothing but hashlib and rfc8785."""
    files = {}
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root)
        if path.is_file() and not any(part.startswith(".") for part in relative.parts):
            files[relative.as_posix()] = "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()
    preimage = rfc8785.dumps({"cmcp_bundle": 1, "files": files})
    return "sha256:" + hashlib.sha256(preimage).hexdigest()


def challenge() -> str:
    """A fresh verifier's challenge: 32 random bytes, base64url without padding."""
    return secrets.token_urlsafe(32)


def claim_binding(claim: Mapping[str, Any], nonce: str | None = None) -> str:
    """The binding of the claim's own key, policy, catalog and gateway digest, with
    `nonce` (version 2) or without (version 1), computed from the claim's members: hex,
    as the claim states it."""
    trace = claim["trace"]
    return compute_binding(
        key_thumbprint=jwk_thumbprint(trace["cnf"]["jwk"]),
        bundle_hash=trace["policy"]["bundle_hash"],
        catalog_hash=claim["gateway"]["catalog"]["hash"],
        gateway_digest=trace["build_provenance"]["digest"],
        nonce=nonce,
    ).hex()
