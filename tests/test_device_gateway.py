"""A real `cmcp start` (development mode: software CPU) with the test tree's device
provider installed in a temporary site: a session of the official MCP SDK client whose
claim carries each test GPU's evidence under the CPU's binding, through `cmcp verify` and
`cmcp replay-audit`; and `attestation.gpu_required` refusing a start with no GPU to attest,
in `cmcp start`, `cmcp validate-config` and `cmcp plugins` alike."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from tests.device_support import install_device_plugin, subprocess_env
from tests.gateway_support import Served, start_gateway, weather_session, write_config
from tests.support import QUICKSTART, run_cmcp


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return install_device_plugin(tmp_path_factory.mktemp("site"))


def _config(folder: Path, upstream: Served, devices: int, *, required: bool) -> Path:
    attestation = {"gpu_required": required, "providers": {"testgpu": {"devices": devices}}}
    return write_config(folder, upstream.url, attestation=attestation)


def _checks(report: dict[str, Any]) -> dict[str, str]:
    return {check["name"]: check["status"] for check in report["checks"]}


def test_a_session_carries_each_gpus_evidence_through_verify_and_replay_audit(
    tmp_path: Path, upstream: Served, site: Path
) -> None:
    env = subprocess_env(site)
    gateway = start_gateway(_config(tmp_path, upstream, 2, required=True), env=env)
    try:
        result = asyncio.run(weather_session(gateway.url))
    finally:
        assert gateway.stop() == 0, gateway.output()
    assert "Paris" in result
    assert "devices      testgpu, attested in every session" in gateway.output()
    (claim_path,) = sorted((tmp_path / "claims").glob("*.claim.json"))
    claim = json.loads(claim_path.read_text())
    attestation = claim["gateway"]["attestation"]
    assert claim["trace"]["runtime"]["platform"] == "software-only"
    assert [d["device"] for d in attestation["devices"]] == ["GPU 0 (Test GPU)", "GPU 1 (Test GPU)"]
    assert {d["evidence"]["nonce"] for d in attestation["devices"]} == {attestation["binding"]}
    db = tmp_path / "audit.db"
    verified = run_cmcp(
        "verify", claim_path, "--allow-software", "--audit-log", db, "--json", env=env
    )
    assert verified.returncode == 0, verified.stdout + verified.stderr
    checks = _checks(verified.json())
    for index in (0, 1):
        for name in ("format", "signature", "nonce"):
            assert checks[f"devices[{index}].testgpu.{name}"] == "pass"
    assert checks["log: issuer"] == "pass" and checks["binding"] == "pass"
    replayed = run_cmcp(
        "replay-audit",
        "--db",
        db,
        "--claim",
        claim_path,
        "--bundle",
        QUICKSTART / "policies",
        "--json",
        env=env,
    )
    assert replayed.returncode == 0, replayed.stdout + replayed.stderr
    # an auditor's host without the device plugin cannot judge the GPUs: not verifiable
    bare = run_cmcp("verify", claim_path, "--allow-software", "--json")
    assert bare.returncode == 3, bare.stdout
    assert _checks(bare.json())["devices[0].evidence"] == "skip"
    assert "devices[0], devices[1]" in bare.json()["verdict"]


def test_gpu_required_without_a_detected_gpu_refuses_to_start(
    tmp_path: Path, upstream: Served, site: Path
) -> None:
    env = {"CMCP_DEV_MODE": "1", **subprocess_env(site)}
    config = _config(tmp_path, upstream, 0, required=True)
    started = run_cmcp("start", "--config", config, env=env)
    assert started.returncode != 0
    text = " ".join(started.stderr.split())
    assert "gpu_required" in text and "testgpu: not detected" in text, text
    assert "cmcp-gpucc[collector]" in text, text
    checked = run_cmcp("validate-config", "--config", config, "--json", env=env)
    assert checked.returncode != 0
    (error,) = checked.json()["errors"]
    assert error["message"].startswith("attestation.gpu_required: true, but no device")


def test_an_undetected_gpu_is_said_in_the_start_log_when_not_required(
    tmp_path: Path, upstream: Served, site: Path
) -> None:
    env = subprocess_env(site)
    config = _config(tmp_path, upstream, 0, required=False)
    checked = run_cmcp("validate-config", "--config", config, "--json", env=env)
    assert any("testgpu: not detected" in note for note in checked.json()["notes"])
    gateway = start_gateway(config, env=env)
    try:
        asyncio.run(weather_session(gateway.url))
    finally:
        assert gateway.stop() == 0, gateway.output()
    assert "not attested testgpu: not detected, no test GPU here" in gateway.output()
    (claim_path,) = sorted((tmp_path / "claims").glob("*.claim.json"))
    assert "devices" not in json.loads(claim_path.read_text())["gateway"]["attestation"]


def test_plugins_lists_the_device_provider_as_attesting_devices(site: Path) -> None:
    listed = run_cmcp("plugins", "--json", env=subprocess_env(site))
    assert listed.returncode == 0, listed.stderr
    (row,) = [p for p in listed.json()["providers"] if p["name"] == "testgpu"]
    assert row["scope"] == "device" and row["state"] == "not-detected"
    assert "no test GPU here" in row["detail"]
    shown = run_cmcp("plugins", env=subprocess_env(site))
    assert "devices beside the CPU" in " ".join(shown.stderr.split())
