"""A provider whose optional dependency is missing is unavailable, never a crash: a host
where `import tpm2_pytss` fails (as it does without libtss2) lists the TPM provider as
unavailable with the install hint, `validate-config` notes that `auto` passes it over (and
refuses a config that names it), and `cmcp start` passes it over or refuses cleanly."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.gateway_support import Served, request, start_gateway, write_config
from tests.support import run_cmcp

INSTALL = "install cmcp-tpm[collector] (needs libtss2)"
MISSING = "libtss2-esys.so.0: cannot open shared object file"


@pytest.fixture
def without_tss(tmp_path: Path) -> dict[str, str]:
    """An environment whose Python cannot import tpm2_pytss, as on a host without libtss2."""
    shadow = tmp_path / "no-libtss2"
    (shadow / "tpm2_pytss").mkdir(parents=True)
    (shadow / "tpm2_pytss" / "__init__.py").write_text(f"raise ImportError({MISSING!r})\n")
    path = os.pathsep.join(filter(None, [str(shadow), os.environ.get("PYTHONPATH")]))
    return {"PYTHONPATH": path, "CMCP_DEV_MODE": "1"}


def tpm_row(env: dict[str, str]) -> dict[str, object]:
    result = run_cmcp("plugins", "--json", env=env)
    assert result.returncode == 0, result.stderr
    (row,) = [row for row in result.json()["providers"] if row["name"] == "tpm"]
    return dict(row)


def test_cmcp_plugins_lists_the_provider_as_unavailable(without_tss: dict[str, str]) -> None:
    row = tpm_row(without_tss)
    assert (row["state"], row["detected"], row["hint"]) == ("unavailable", False, INSTALL)
    assert MISSING in str(row["detail"])
    human = run_cmcp("plugins", env=without_tss)
    assert human.returncode == 0
    assert "unavailable" in human.stderr and "cmcp-tpm[collector]" in human.stderr
    assert "Traceback" not in human.stderr
    assert tpm_row({})["state"] != "unavailable"  # with tpm2-pytss importable it loads


def test_auto_passes_over_it_and_says_why(
    tmp_path: Path, upstream: Served, without_tss: dict[str, str]
) -> None:
    config = write_config(tmp_path, upstream.url)
    checked = run_cmcp("validate-config", "--config", config, "--json", env=without_tss)
    assert checked.returncode == 0, checked.stdout
    # the device providers installed here have notes of their own
    notes = [n for n in checked.json()["notes"] if not n.startswith("devices: ")]
    (note,) = [n for n in notes if n.startswith("auto passes over tpm, unavailable here")]
    # the Azure providers, tried before tpm, read the vTPM through tpm2-pytss as well
    others = {n.partition(",")[0] for n in notes if n is not note}
    assert others <= {"auto passes over azure-sev-snp", "auto passes over azure-tdx"}, notes
    assert MISSING in note and INSTALL in note
    gateway = start_gateway(config, without_tss)
    try:
        assert request(gateway.port, "GET", "/readyz")[0] == 200
    finally:
        assert gateway.stop() == 0
    announced = gateway.output()
    assert "passed over  tpm: unavailable here" in announced and INSTALL in announced
    assert "Traceback" not in announced


def test_a_provider_chosen_by_name_that_cannot_load_is_refused(
    tmp_path: Path, without_tss: dict[str, str]
) -> None:
    config = write_config(tmp_path, "http://127.0.0.1:9/mcp", attestation={"provider": "tpm"})
    checked = run_cmcp("validate-config", "--config", config, "--json", env=without_tss)
    assert checked.returncode == 1
    (error,) = checked.json()["errors"]
    assert error["message"].startswith("attestation.provider: tpm is unavailable here")
    assert error["hint"] == INSTALL
    started = run_cmcp("start", "--config", config, env=without_tss)
    assert started.returncode == 1
    assert "tpm is unavailable here" in started.stderr and INSTALL in started.stderr
    assert "Traceback" not in started.stderr


def test_a_gateway_for_another_host_is_still_measured_here(
    tmp_path: Path, without_tss: dict[str, str]
) -> None:
    """Measuring needs no tpm2-pytss: a build host without it measures a TPM gateway."""
    config = write_config(tmp_path, "http://127.0.0.1:9/mcp", attestation={"provider": "tpm"})
    measured = run_cmcp("measure", "tpm", "--config", config, "--json", env=without_tss)
    assert measured.returncode == 0, measured.stderr
    assert measured.json()["measurement"].startswith("sha256:")


def test_the_azure_providers_name_their_own_install(without_tss: dict[str, str]) -> None:
    """They read the vTPM through tpm2-pytss too, installed by cmcp-azure's own extra."""
    result = run_cmcp("plugins", "--json", env=without_tss)
    assert result.returncode == 0, result.stderr
    rows = {row["name"]: row for row in result.json()["providers"]}
    for name in ("azure-sev-snp", "azure-tdx"):
        row = rows[name]
        assert (row["state"], row["detected"]) == ("unavailable", False), row
        assert row["hint"] == "install cmcp-azure[collector] (needs libtss2; Debian: libtss2-dev)"
        assert MISSING in str(row["detail"])
