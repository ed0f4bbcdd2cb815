"""The test tree's device provider (tests/device_plugin/cmcp_testgpu.py), installed as a
real distribution with an entry point into a temporary site: in-process through
`sys.path`, and for `cmcp` subprocesses through PYTHONPATH."""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from importlib.metadata import EntryPoint, distributions
from pathlib import Path

from cmcp_cli.attestation.api import ProviderSpec
from cmcp_cli.attestation.manager import ENTRY_POINT_GROUP, ProviderRegistry, load_providers

PLUGIN = Path(__file__).resolve().parent / "device_plugin" / "cmcp_testgpu.py"
MODULE = "cmcp_testgpu"


def install_device_plugin(site: Path) -> Path:
    """`cmcp-testgpu` 1.0.0 in `site`: the module and its dist-info with the entry point."""
    site.mkdir(parents=True, exist_ok=True)
    shutil.copy(PLUGIN, site / f"{MODULE}.py")
    info = site / "cmcp_testgpu-1.0.0.dist-info"
    info.mkdir(exist_ok=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: cmcp-testgpu\nVersion: 1.0.0\n")
    (info / "entry_points.txt").write_text(f"[{ENTRY_POINT_GROUP}]\ntestgpu = {MODULE}:plugin\n")
    return site


def entry_points_of(site: Path) -> list[EntryPoint]:
    return [
        entry
        for dist in distributions(path=[str(site)])
        for entry in dist.entry_points
        if entry.group == ENTRY_POINT_GROUP
    ]


def registry_with(site: Path) -> ProviderRegistry:
    """The built-in software provider and the test site's providers (testgpu, testtee)."""
    return load_providers(plugins=entry_points_of(site))


def spec(registry: ProviderRegistry, name: str) -> ProviderSpec:
    return registry.providers[name].spec


@contextmanager
def on_path(site: Path) -> Iterator[None]:
    """Import the site's modules in-process while the caller's context lasts."""
    sys.path.insert(0, str(site))
    try:
        yield
    finally:
        sys.path.remove(str(site))
        sys.modules.pop(MODULE, None)


def subprocess_env(site: Path) -> dict[str, str]:
    """PYTHONPATH for a `cmcp` subprocess that discovers the site's plugin beside the rest."""
    inherited = os.environ.get("PYTHONPATH", "")
    return {"PYTHONPATH": os.pathsep.join(p for p in (str(site), inherited) if p)}
