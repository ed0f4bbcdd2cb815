"""Installable as released: the wheels of cmcp-gateway and of every plugin are built from a
clean copy of the sources, installed into a fresh venv with no index (their dependencies come
from .wheelhouse/, which `scripts/dev.sh setup` fills), and then used with no source tree and
no editable install in sight: `cmcp --version`, `cmcp plugins`, `cmcp measure software` and
the quickstart demo run from that venv alone.

The plugins' `collector` extra (tpm2-pytss, compiled against libtss2) is not installed: the
providers load and verify without it, and nothing here collects on hardware.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tomllib
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.gateway_support import quickstart_on_free_ports
from tests.support import REPO

pytestmark = pytest.mark.wheels

WHEELHOUSE = REPO / ".wheelhouse"
PLUGINS = sorted(p.parent for p in (REPO / "plugins").glob("*/pyproject.toml"))
# provider name -> the distribution that ships it
PROVIDERS = {
    "tpm": "cmcp-tpm",
    "sev-snp": "cmcp-sev",
    "tdx": "cmcp-tdx",
    "opaque": "cmcp-opaque",
    "gpu-cc": "cmcp-gpucc",
    "azure-sev-snp": "cmcp-azure",
    "azure-tdx": "cmcp-azure",
}
# distribution -> the name of its `cmcp` entry point (one plugin may declare several providers)
ENTRY_POINTS = {
    "cmcp-tpm": "tpm",
    "cmcp-sev": "sev-snp",
    "cmcp-tdx": "tdx",
    "cmcp-opaque": "opaque",
    "cmcp-gpucc": "gpu-cc",
    "cmcp-azure": "azure",
}
_IGNORED = shutil.ignore_patterns(
    "__pycache__", "*.pyc", "*.egg-info", "build", "dist", ".state", ".mypy_cache"
)


def _project(root: Path) -> dict[str, Any]:
    project: dict[str, Any] = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    return project


def _isolated_env() -> dict[str, str]:
    """This process's environment without what would let the source tree or another index in:
    no PYTHONPATH, no pip settings of this machine or user, no cmcp settings."""
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in {"PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV"}
        and not key.startswith(("PIP_", "CMCP_"))
    }
    env["PIP_CONFIG_FILE"] = os.devnull
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    env["PYTHONNOUSERSITE"] = "1"
    return env


def _run(command: Sequence[str | Path], cwd: Path, timeout: float = 120) -> str:
    completed = subprocess.run(
        [str(part) for part in command],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=_isolated_env(),
        timeout=timeout,
        check=False,
    )
    assert completed.returncode == 0, (
        f"{' '.join(map(str, command))} exited {completed.returncode}\n"
        f"stdout:\n{completed.stdout}\nstderr:\n{completed.stderr}"
    )
    return completed.stdout


@dataclass(frozen=True)
class Release:
    wheels: dict[str, Path]  # distribution name -> wheel
    venv: Path
    scratch: Path  # a folder outside the source tree to run from

    @property
    def python(self) -> Path:
        return self.venv / "bin" / "python"

    @property
    def cmcp(self) -> Path:
        return self.venv / "bin" / "cmcp"

    def run(self, *command: str | Path, cwd: Path | None = None) -> str:
        return _run(command, cwd or self.scratch)


@pytest.fixture(scope="module")
def release(tmp_path_factory: pytest.TempPathFactory) -> Release:
    if not (WHEELHOUSE / ".cmcp-setup").is_file():
        pytest.fail(
            f"{WHEELHOUSE} is missing or incomplete: run scripts/dev.sh setup (it downloads the "
            "wheels of the runtime dependencies once, so that this test installs offline)"
        )
    base = tmp_path_factory.mktemp("release")
    # A clean copy: a build/ folder left in the tree would put stale modules into the wheel.
    sources = base / "sources"
    sources.mkdir()
    shutil.copytree(REPO / "src", sources / "cmcp-gateway" / "src", ignore=_IGNORED)
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(REPO / name, sources / "cmcp-gateway" / name)
    for plugin in PLUGINS:
        shutil.copytree(plugin, sources / plugin.name, ignore=_IGNORED)
    dist = base / "dist"
    projects = [sources / "cmcp-gateway", *(sources / p.name for p in PLUGINS)]
    offline = ("--no-index", "--find-links", WHEELHOUSE)
    # The build backend (setuptools, wheel) comes from the wheelhouse too, into pip's
    # isolated build environment.
    _run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", *offline, "-w", dist, *projects],
        cwd=base,
        timeout=240,
    )
    wheels = {}
    for wheel in sorted(dist.glob("*.whl")):
        distribution = wheel.name.split("-")[0].replace("_", "-")
        wheels[distribution] = wheel
    expected = {"cmcp-gateway", *(_project(p)["name"] for p in PLUGINS)}
    assert set(wheels) == expected, f"built {sorted(wheels)}, expected {sorted(expected)}"

    venv = base / "venv"
    _run([sys.executable, "-m", "venv", venv], cwd=base)
    _run(
        [
            venv / "bin" / "python",
            "-m",
            "pip",
            "install",
            *offline,
            "--find-links",
            dist,
            "-c",
            REPO / "constraints.txt",
            *sorted(wheels),
            "mcp",
        ],
        cwd=base,
        timeout=240,
    )
    scratch = base / "scratch"
    scratch.mkdir()
    return Release(wheels, venv, scratch)


def _wheel_text(wheel: Path, member_suffix: str) -> str:
    with zipfile.ZipFile(wheel) as archive:
        (name,) = [n for n in archive.namelist() if n.endswith(member_suffix)]
        return archive.read(name).decode()


def test_each_wheel_carries_its_package_data_entry_point_and_dependency(
    release: Release,
) -> None:
    with zipfile.ZipFile(release.wheels["cmcp-gateway"]) as archive:
        names = set(archive.namelist())
    assert {"cmcp_cli/py.typed", "cmcp_cli/cli/app.py"} <= names
    metadata = _wheel_text(release.wheels["cmcp-gateway"], ".dist-info/METADATA")
    assert "\nName: cmcp-gateway\n" in metadata
    assert "cmcp = cmcp_cli.cli.app:main" in _wheel_text(
        release.wheels["cmcp-gateway"], ".dist-info/entry_points.txt"
    )
    data = {
        "cmcp-sev": ["cmcp_sev/roots/milan.pem", "cmcp_sev/roots/genoa.pem"],
        "cmcp-tdx": ["cmcp_tdx/data/intel-sgx-root-ca.pem"],
        "cmcp-tpm": [],
        "cmcp-opaque": [],
        "cmcp-gpucc": [
            "cmcp_gpucc/roots/nvidia-device-identity-ca.pem",
            "cmcp_gpucc/roots/nvidia-corim-signing-root-ca.pem",
        ],
        "cmcp-azure": [],
    }
    assert set(ENTRY_POINTS) == set(PROVIDERS.values())
    for distribution, entry_point in ENTRY_POINTS.items():
        wheel = release.wheels[distribution]
        package = distribution.replace("-", "_")
        with zipfile.ZipFile(wheel) as archive:
            names = set(archive.namelist())
        assert {f"{package}/py.typed", f"{package}/plugin.py", *data[distribution]} <= names
        entry_points = _wheel_text(wheel, ".dist-info/entry_points.txt")
        assert f"[cmcp]\n{entry_point} = {package}.plugin" in entry_points, entry_points
        requires = [
            line.removeprefix("Requires-Dist: ")
            for line in _wheel_text(wheel, ".dist-info/METADATA").splitlines()
            if line.startswith("Requires-Dist: ")
        ]
        # the PyPI name `cmcp` belongs to another project: nothing may depend on it
        assert "cmcp-gateway>=0.1" in requires
        assert not [r for r in requires if r.split(">")[0].split("=")[0].strip() == "cmcp"]


def test_the_venv_runs_the_installed_wheels_not_the_source_tree(release: Release) -> None:
    probe = release.run(
        release.python,
        "-c",
        "import json, sys, sysconfig, cmcp_cli, cmcp_tpm, cmcp_sev, cmcp_tdx, cmcp_azure\n"
        "print(json.dumps({'purelib': sysconfig.get_paths()['purelib'], 'path': sys.path,"
        " 'files': [m.__file__ for m in (cmcp_cli, cmcp_tpm, cmcp_sev, cmcp_tdx, cmcp_azure)]}))",
    )
    found = json.loads(probe)
    site = Path(found["purelib"])
    assert site.is_relative_to(release.venv)
    for module_file in found["files"]:
        assert Path(module_file).is_relative_to(site), module_file
    repo = str(REPO)
    assert not [entry for entry in found["path"] if entry.startswith(repo)], found["path"]
    listed = json.loads(release.run(release.python, "-m", "pip", "list", "--format", "json"))
    installed = {row["name"]: row for row in listed}
    assert {"cmcp-gateway", *PROVIDERS.values(), "mcp"} <= set(installed)
    assert "cmcp" not in installed
    assert not [row for row in listed if "editable_project_location" in row]
    editable = release.run(release.python, "-m", "pip", "list", "--editable", "--format", "json")
    assert json.loads(editable) == []


def test_cmcp_version_and_plugins_come_from_the_wheels(release: Release) -> None:
    version = _project(REPO)["version"]
    assert release.run(release.cmcp, "--version") == f"cmcp {version}\n"
    report = json.loads(release.run(release.cmcp, "plugins", "--json"))
    rows = {row["name"]: row for row in report["providers"]}
    assert report["failures"] == []
    for provider, distribution in PROVIDERS.items():
        assert rows[provider]["distribution"] == distribution
        assert rows[provider]["version"] == _project(REPO / "plugins" / distribution)["version"]
    assert rows["software-only"]["distribution"] == "cmcp-gateway"
    assert rows["software-only"]["version"] == version


def test_the_gateway_digest_of_the_wheel_is_the_installed_one(release: Release) -> None:
    installed = release.run(release.cmcp, "measure", "software")
    of_wheel = release.run(
        release.cmcp, "measure", "software", "--installation", release.wheels["cmcp-gateway"]
    )
    assert installed.startswith("sha256:")
    assert installed == of_wheel


def test_an_azure_measurement_needs_no_collector_extra(release: Release) -> None:
    """An operator measures on any machine: the Azure measurer runs from the wheels without
    tpm2-pytss, on the paravisor's report of a genuine Azure SEV-SNP VM."""
    report = (
        REPO.parent
        / "shared"
        / "attestation-vectors"
        / "azure-cvm"
        / "trustee-milan-hcl-report.bin"
    )
    if not report.is_file():
        pytest.skip(f"the shared attestation vectors are not at {report.parent}")
    measured = release.run(release.cmcp, "measure", "azure-sev-snp", "--hcl-report", report)
    assert measured == "sha384:" + report.read_bytes()[32 + 0x90 : 32 + 0xC0].hex() + "\n"


def test_the_quickstart_demo_runs_on_the_installed_wheels(release: Release) -> None:
    quickstart = quickstart_on_free_ports(release.scratch / "quickstart")
    listen = yaml.safe_load((quickstart / "cmcp-config.yaml").read_text())["listen_addr"]
    completed = subprocess.run(
        [str(release.python), "demo.py"],
        capture_output=True,
        text=True,
        cwd=quickstart,
        env=_isolated_env(),
        timeout=180,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    assert "quickstart OK" in completed.stderr
    assert f"cMCP gateway on http://{listen}/mcp" in completed.stderr
    assert f"$ {release.cmcp} start --config cmcp-config.yaml" in completed.stderr
    assert "VERIFIED (software mode accepted with --allow-software)" in completed.stderr
