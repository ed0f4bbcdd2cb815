"""The gpu-cc provider end to end: `cmcp start` in development mode (software CPU) as a real
subprocess whose `pynvml` is the NVML test double (plugins/cmcp-gpucc/tests/nvml_double),
serving NVIDIA's genuine Hopper report (driver 535.86.09) and device chain from ../shared; an
official MCP SDK client session; the claim carrying that report beside the CPU's evidence;
and `cmcp verify` judging it.

A real GPU signs a fresh report over the session's binding; the double replays a recorded
one, so among the device's hardware checks exactly `gpu.nonce` fails. With the genuine RIMs
of that driver and VBIOS stapled, what MANIFEST.md says of them holds at any claim time:
the driver RIM fails its XML-DSig (NVIDIA's measurement-mismatch sample was edited after
signing), the VBIOS RIM's signer expired on 2025-12-12, so the measurements are not
appraised (skip), and with no OCSP response stapled revocation is "not checked" (skip).
RIMs made from the report's own blocks under a test CoRIM root pass every RIM check, the
appraisal included, and leave the nonce the only failure. `gpu_required` refuses a start the
double's GPU cannot serve, and `cmcp plugins` and `validate-config` say the same before.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.serialization import Encoding

from cmcp_cli.testing.vectors import shared_vectors
from cmcp_gpucc import spdm
from cmcp_gpucc.rim_signing import RimPki, issue, rim_from_blocks
from tests.gateway_support import Served, start_gateway, weather_session, write_config
from tests.support import REPO, run_cmcp

DOUBLE = REPO / "plugins" / "cmcp-gpucc" / "tests" / "nvml_double"
REPORT = "nvat-hopper-535.86.09-attestation-report.hex"
DRIVER_RIM = "nvat-rim-NV_GPU_DRIVER_GH100_535.86.09_measurement_mismatch.xml"
VBIOS_RIM = "nvat-rim-NV_GPU_VBIOS_1010_0200_882_96005E0001_measurement_mismatch.xml"
# The device checks that judge the GPU's own signed evidence, and what each must say.
HARDWARE = {
    "format": "pass",
    "signature": "pass",
    "chain": "pass",
    "nonce": "fail",  # the double replays a report made for NVIDIA's nonce, not the binding
    "architecture": "pass",
    "versions": "pass",
    "debug": "pass",
}
STAPLED_RIMS = {
    "rim.driver": "fail",  # reference digest mismatch: edited after NVIDIA signed it
    "rim.vbios": "fail",  # its HCC RIM L4 Signer expired 2025-12-12
    "measurements": "skip",  # no verified RIM to compare with
    "revocation": "skip",  # no OCSP response stapled: not checked
    "fwid": "skip",  # a 535 driver's report states no FWID
}


@pytest.fixture(scope="module")
def vectors() -> Path:
    return shared_vectors(REPO, "nvidia-gpucc")


def nvml_env(folder: Path, vectors: Path, state: str = "ok") -> dict[str, str]:
    """The environment of a `cmcp` whose `pynvml` is the double."""
    inherited = os.environ.get("PYTHONPATH", "")
    return {
        "PYTHONPATH": os.pathsep.join(p for p in (str(DOUBLE), inherited) if p),
        "NVML_DOUBLE_VECTORS": str(vectors),
        "NVML_DOUBLE_STATE": state,
        "NVML_DOUBLE_GPUS": "hopper-535",
        "NVML_DOUBLE_NONCE_LOG": str(folder / "nonces.log"),
    }


def gpu_config(folder: Path, upstream: Served, **gpu: Any) -> Path:
    attestation = {"gpu_required": True, "providers": {"gpu-cc": gpu}}
    return write_config(folder, upstream.url, attestation=attestation)


def device_checks(report: dict[str, Any]) -> dict[str, str]:
    prefix = "devices[0].gpu."
    return {
        check["name"].removeprefix(prefix): check["status"]
        for check in report["checks"]
        if check["name"].startswith(prefix)
    }


def test_a_session_claim_carries_the_genuine_gpu_report_and_only_its_nonce_fails(
    tmp_path: Path, upstream: Served, vectors: Path
) -> None:
    env = nvml_env(tmp_path, vectors)
    rims = [str(vectors / DRIVER_RIM), str(vectors / VBIOS_RIM)]
    gateway = start_gateway(gpu_config(tmp_path, upstream, rims=rims), env=env)
    try:
        assert "Paris" in asyncio.run(weather_session(gateway.url))
    finally:
        assert gateway.stop() == 0, gateway.output()
    assert "devices      gpu-cc, attested in every session" in gateway.output()

    (claim_path,) = sorted((tmp_path / "claims").glob("*.claim.json"))
    claim = json.loads(claim_path.read_text())
    attestation = claim["gateway"]["attestation"]
    assert claim["trace"]["runtime"]["platform"] == "software-only"  # the CPU's, not the GPU's
    (device,) = attestation["devices"]
    assert device["provider"] == "gpu-cc" and device["evidence_type"] == "nvidia-gpu-cc-v1"
    assert (
        device["device"]
        == "GPU 0 (NVIDIA H100 80GB HBM3, GPU-0d7e1a3c-5b39-4d2e-9c41-53a3e1f0c535)"
    )
    evidence = device["evidence"]
    genuine = bytes.fromhex((vectors / REPORT).read_text())
    assert base64.b64decode(evidence["report"]) == genuine
    assert len(evidence["certificates"]) == 5
    assert evidence["nvml"]["driver_version"] == "535.86.09"
    assert evidence["rims"] == {
        "driver": base64.b64encode((vectors / DRIVER_RIM).read_bytes()).decode(),
        "vbios": base64.b64encode((vectors / VBIOS_RIM).read_bytes()).decode(),
    }
    # the gateway asked the GPU for a report over this session's binding
    asked = (tmp_path / "nonces.log").read_text().split()
    assert attestation["binding"] in asked
    assert genuine[4:36].hex() != attestation["binding"]

    verified = run_cmcp(
        "verify", claim_path, "--allow-software", "--audit-log", tmp_path / "audit.db", "--json"
    )
    assert verified.returncode == 1, verified.stdout + verified.stderr
    report = verified.json()
    assert report["hardware_attested"] is False
    checks = device_checks(report)
    assert {name: checks[name] for name in HARDWARE} == HARDWARE
    assert {name: checks[name] for name in STAPLED_RIMS} == STAPLED_RIMS
    reasons = {c["name"]: c["reason"] for c in report["checks"]}
    assert "is not the session binding" in reasons["devices[0].gpu.nonce"]
    assert "NVIDIA Hopper (GH100)" in reasons["devices[0].gpu.architecture"]
    assert "expired at 2025-12-12" in reasons["devices[0].gpu.rim.vbios"]
    assert "reference digest does not match" in reasons["devices[0].gpu.rim.driver"]
    failed = {c["name"] for c in report["checks"] if c["status"] == "fail"}
    assert failed == {f"devices[0].gpu.{name}" for name in ("nonce", "rim.driver", "rim.vbios")}
    statuses = {c["name"]: c["status"] for c in report["checks"]}
    assert statuses["binding"] == "pass" and statuses["audit log"] == "pass"


def test_rims_that_describe_the_gpu_appraise_its_measurements_through_the_gateway(
    tmp_path: Path, upstream: Served, vectors: Path
) -> None:
    """No public RIM pair appraises a public report clean (MANIFEST.md), so the RIMs here
    are made from the genuine report's own blocks and signed under a test CoRIM root, which
    the auditor trusts beside NVIDIA's device root."""
    blocks = spdm.parse(bytes.fromhex((vectors / REPORT).read_text())).digests()
    until = datetime(2100, 1, 1, tzinfo=UTC)
    root = issue("cMCP Test CoRIM signing Root CA", None, ca=True, not_after=until)
    ca = issue("cMCP Test Reference Value GH100 CA", root, ca=True, not_after=until)
    l3 = issue("cMCP Test Reference Value L3 GH100", ca, ca=True, path_length=0, not_after=until)
    pki = RimPki(root, ca, l3, issue("cMCP Test RIM L4 Signer", l3, ca=False, not_after=until))
    driver, vbios = tmp_path / "driver.xml", tmp_path / "vbios.xml"
    driver.write_bytes(pki.sign(rim_from_blocks(blocks, [7, *range(21, 41)], version="535.86.09")))
    vbios.write_bytes(
        pki.sign(rim_from_blocks(blocks, [*range(7), *range(8, 13)], version="96.00.5E.00.01"))
    )
    env = nvml_env(tmp_path, vectors)
    config = gpu_config(tmp_path, upstream, rims=[str(vbios), str(driver)])
    gateway = start_gateway(config, env=env)
    try:
        asyncio.run(weather_session(gateway.url))
    finally:
        assert gateway.stop() == 0, gateway.output()
    (claim_path,) = sorted((tmp_path / "claims").glob("*.claim.json"))
    # the GPU's roots are the [gpu-cc] table's (--trust-root is the CPU's), named relative
    # to the policy file's folder while verify runs from another
    auditor = tmp_path / "auditor"
    auditor.mkdir()
    (auditor / "roots.pem").write_bytes(
        (vectors / "nvidia-device-identity-ca.pem").read_bytes()
        + pki.root.cert.public_bytes(Encoding.PEM)
    )
    policy = auditor / "platform-policy.toml"
    policy.write_text('[gpu-cc]\nallow_unchecked_revocation = true\ntrust_roots = ["roots.pem"]\n')
    verified = run_cmcp(
        "verify", claim_path, "--allow-software", "--platform-policy", policy, "--json",
        cwd=tmp_path,
    )  # fmt: skip
    assert verified.returncode == 1, verified.stdout + verified.stderr
    checks = device_checks(verified.json())
    assert {name: checks[name] for name in HARDWARE} == HARDWARE
    assert checks["rim.driver"] == checks["rim.vbios"] == checks["measurements"] == "pass"
    assert checks["revocation"] == "skip"  # allowed by the policy, and still said
    failed = {c["name"] for c in verified.json()["checks"] if c["status"] == "fail"}
    assert failed == {"devices[0].gpu.nonce"}  # the replayed report is all that is wrong


def test_gpu_required_with_cc_off_refuses_the_start_with_the_reason(
    tmp_path: Path, upstream: Served, vectors: Path
) -> None:
    env = {"CMCP_DEV_MODE": "1", **nvml_env(tmp_path, vectors, state="cc-off")}
    started = run_cmcp("start", "--config", gpu_config(tmp_path, upstream), env=env)
    assert started.returncode != 0
    text = " ".join(started.stderr.split())
    assert "attestation.gpu_required" in text and "no device can be attested here" in text, text
    assert "gpu-cc: not detected, confidential computing is off on the GPUs" in text, text
    assert not (tmp_path / "nonces.log").exists()  # no report was asked for
    checked = run_cmcp(
        "validate-config", "--config", tmp_path / "cmcp-config.yaml", "--json", env=env
    )
    (error,) = checked.json()["errors"]
    assert "confidential computing is off on the GPUs" in error["message"]


def test_a_detected_gpu_whose_rims_do_not_fit_refuses_the_start(
    tmp_path: Path, upstream: Served, vectors: Path
) -> None:
    env = {"CMCP_DEV_MODE": "1", **nvml_env(tmp_path, vectors)}
    wrong = [str(vectors / "nvat-rim-NV_GPU_DRIVER_GH100_550.144.03.xml"), str(vectors / VBIOS_RIM)]
    config = write_config(
        tmp_path, upstream.url, attestation={"providers": {"gpu-cc": {"rims": wrong}}}
    )
    started = run_cmcp("start", "--config", config, env=env)
    assert started.returncode != 0
    text = " ".join(started.stderr.split())
    assert "the gpu-cc device provider detected GPU 0 (NVIDIA H100 80GB HBM3)" in text, text
    assert "has no driver RIM for GPU 0 (NVIDIA H100 80GB HBM3), whose driver version is " in text


def test_plugins_and_validate_config_say_which_gpus_the_gateway_will_attest(
    tmp_path: Path, upstream: Served, vectors: Path
) -> None:
    env = nvml_env(tmp_path, vectors)
    listed = run_cmcp("plugins", "--json", env=env)
    assert listed.returncode == 0, listed.stderr
    (row,) = [p for p in listed.json()["providers"] if p["name"] == "gpu-cc"]
    assert row["scope"] == "device" and row["state"] == "detected"
    assert row["detail"] == "GPU 0 (NVIDIA H100 80GB HBM3): CC mode on, driver 535.86.09"
    checked = run_cmcp(
        "validate-config", "--config", gpu_config(tmp_path, upstream), "--json", env=env
    )
    assert checked.returncode == 0, checked.stdout
    assert any(
        note.startswith("devices: gpu-cc detected GPU 0 (NVIDIA H100 80GB HBM3)")
        for note in checked.json()["notes"]
    )
    unready = run_cmcp("plugins", "--json", env=nvml_env(tmp_path, vectors, state="not-ready"))
    (row,) = [p for p in unready.json()["providers"] if p["name"] == "gpu-cc"]
    assert row["state"] == "not-detected"
    assert "do not accept work yet (CC ready state off)" in row["detail"]
