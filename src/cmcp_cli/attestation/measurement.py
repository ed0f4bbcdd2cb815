"""The software digest of this cMCP installation: what `build_provenance.digest` and the
binding's `gateway` member name.

sha256 over JCS({"cmcp_gateway": 1, "files": {<path in cmcp_cli>: "sha256:<hex>"}}) for
every Python source file of the installed package, the same construction as the bundle
hash, so a platform engineer can recompute it from a wheel.
"""

from __future__ import annotations

import functools
import hashlib
import zipfile
from pathlib import Path, PurePosixPath

from cmcp_cli.claim.canonical import canonical_sha256

_PACKAGE_ROOT = Path(__file__).resolve().parent.parent
_PACKAGE = "cmcp_cli"


@functools.cache
def installation_digest(root: Path = _PACKAGE_ROOT) -> str:
    files = {
        path.relative_to(root).as_posix(): path.read_bytes()
        for path in sorted(root.rglob("*.py"))
        if "__pycache__" not in path.parts
    }
    return _digest(files)


def wheel_digest(wheel: Path) -> str:
    """The same digest from a cmcp-gateway wheel, before it is installed."""
    with zipfile.ZipFile(wheel) as archive:
        files = {
            PurePosixPath(name).relative_to(_PACKAGE).as_posix(): archive.read(name)
            for name in archive.namelist()
            if name.startswith(f"{_PACKAGE}/") and name.endswith(".py")
        }
    if not files:
        raise ValueError(f"the archive holds no {_PACKAGE}/ package")
    return _digest(files)


def _digest(files: dict[str, bytes]) -> str:
    listing = {name: "sha256:" + hashlib.sha256(data).hexdigest() for name, data in files.items()}
    return canonical_sha256({"cmcp_gateway": 1, "files": listing})
