"""`cmcp measure`: subcommands declared by the installed providers, the measurement alone
on stdout (what `attestation.expected_measurement` takes), details with `--json`, and
clear errors for unusable input."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import zipfile
from pathlib import Path

import rfc8785

from tests.support import QUICKSTART, REPO, independent_bundle_hash, run_cmcp

PACKAGE = REPO / "src" / "cmcp_cli"


def independent_gateway_digest(files: dict[str, bytes]) -> str:
    """The documented gateway digest preimage, computed with hashlib and rfc8785 only."""
    listing = {name: "sha256:" + hashlib.sha256(data).hexdigest() for name, data in files.items()}
    preimage = rfc8785.dumps({"cmcp_gateway": 1, "files": listing})
    return "sha256:" + hashlib.sha256(preimage).hexdigest()


def source_files() -> dict[str, bytes]:
    return {
        path.relative_to(PACKAGE).as_posix(): path.read_bytes()
        for path in sorted(PACKAGE.rglob("*.py"))
        if "__pycache__" not in path.parts
    }


def test_software_measurement_is_the_gateway_digest_of_this_installation() -> None:
    result = run_cmcp("measure", "software")
    assert result.returncode == 0, result.stderr
    assert result.stdout == independent_gateway_digest(source_files()) + "\n"
    assert "expected_measurement" in result.stderr


def test_software_measurement_of_a_wheel_matches_the_installed_code(tmp_path: Path) -> None:
    wheel = tmp_path / "cmcp_gateway-0.0.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for name, data in source_files().items():
            archive.writestr(f"cmcp_cli/{name}", data)
        archive.writestr("cmcp_gateway-0.0.0.dist-info/METADATA", "Name: cmcp-gateway\n")
    result = run_cmcp("measure", "software", "--installation", wheel, "--json")
    assert result.returncode == 0, result.stderr
    report = result.json()
    assert report["measurement"] == independent_gateway_digest(source_files())
    assert report["provider"] == "software-only"
    assert report["details"]["installation"] == str(wheel)


def test_with_a_config_the_report_names_its_bundle_and_catalog() -> None:
    config = QUICKSTART / "cmcp-config.yaml"
    report = run_cmcp("measure", "software", "--config", config, "--json").json()
    assert report["details"]["bundle_hash"] == independent_bundle_hash(QUICKSTART / "policies")
    catalog = QUICKSTART / "catalog.json"
    assert report["details"]["catalog_hash"].startswith("sha256:") and catalog.exists()


def test_each_provider_declares_its_own_options() -> None:
    listing = run_cmcp("measure", "--help")
    assert listing.returncode == 0
    assert "software" in listing.stdout and "tpm" in listing.stdout
    software = run_cmcp("measure", "software", "--help")
    assert "--installation" in software.stdout and "--config" in software.stdout


def test_unusable_input_exits_2_naming_the_problem(tmp_path: Path) -> None:
    not_a_package = run_cmcp("measure", "software", "--installation", tmp_path)
    assert not_a_package.returncode == 2
    assert f"{tmp_path} is not a cmcp_cli package directory" in not_a_package.stderr
    assert "hint:" in not_a_package.stderr
    unknown = run_cmcp("measure", "no-such-provider")
    assert unknown.returncode == 2
    assert "No such command 'no-such-provider'" in unknown.stderr
    bad_config = tmp_path / "cmcp-config.yaml"
    bad_config.write_text("listen_addr: [1, 2]\n")
    broken = run_cmcp("measure", "software", "--config", bad_config, "--json")
    assert broken.returncode == 1
    assert "cannot be computed" in broken.stderr


def test_the_module_entry_point_runs_measure_too() -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "cmcp_cli", "measure", "software"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.startswith("sha256:")
