"""The software digest of this cMCP installation: what `build_provenance.digest` and the
binding's `gateway` member name.

sha256 over JCS({"cmcp_gateway": 1, "files": {<path in cmcp_cli>: "sha256:<hex>"}}) for
every Python source file of the installed package, the same construction as the bundle
hash, so a platform engineer can recompute it from a wheel.
"""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path

from cmcp_cli.claim.canonical import canonical_sha256

_PACKAGE_ROOT = Path(__file__).resolve().parent.parent


@functools.cache
def installation_digest(root: Path = _PACKAGE_ROOT) -> str:
    files = {
        path.relative_to(root).as_posix(): "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*.py"))
        if "__pycache__" not in path.parts
    }
    return canonical_sha256({"cmcp_gateway": 1, "files": files})
