"""Whose roots judge which evidence, through a real `cmcp verify`: the auditor's
`--trust-root` roots judge the CPU platform's evidence only; a device provider's roots come
from its own platform-policy table, a relative path there taken from the policy file's
folder whatever the working directory. The claim's CPU (testtee) and its GPU (testgpu, the
test tree's device provider) each sign with a key only the auditor's root vouches for."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from cmcp_cli.claim.keys import ClaimKey
from cmcp_cli.evidence.attesting import Attestor, DeviceAttestor
from tests.device_plugin.cmcp_testgpu import signing_key
from tests.device_support import install_device_plugin, on_path, registry_with, spec, subprocess_env
from tests.sessions import RecordedSession, record_session
from tests.support import run_cmcp

CPU_SIGNER = "the auditor's CPU root"
GPU_SIGNER = "the auditor's GPU root"


def _public_pem(seed: str) -> bytes:
    public = signing_key(seed).public_key()
    return public.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    site = install_device_plugin(tmp_path_factory.mktemp("site"))
    with on_path(site):
        yield site


@pytest.fixture(scope="module")
def session(site: Path, tmp_path_factory: pytest.TempPathFactory) -> RecordedSession:
    registry = registry_with(site)
    cpu = Attestor.load(spec(registry, "testtee"), "1.0.0", {"devices": 1, "signer": CPU_SIGNER})
    gpu = DeviceAttestor.load(
        spec(registry, "testgpu"), "1.0.0", {"devices": 1, "signer": GPU_SIGNER}
    )
    attestor = replace(cpu, devices=(gpu,))
    return record_session(
        tmp_path_factory.mktemp("claim"), attestor=attestor, key=ClaimKey.generate()
    )


@pytest.fixture(scope="module")
def auditor(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The auditor's folder: the CPU root, the GPU root, and nothing else."""
    folder = tmp_path_factory.mktemp("auditor")
    (folder / "cpu.pem").write_bytes(_public_pem(CPU_SIGNER))
    (folder / "gpu.pem").write_bytes(_public_pem(GPU_SIGNER))
    return folder


def _policy(folder: Path, *roots: str) -> Path:
    path = folder / "policies" / "platform-policy.toml"
    path.parent.mkdir(exist_ok=True)
    listed = ", ".join(f'"{root}"' for root in roots)
    path.write_text(f"[testgpu]\ntrust_roots = [{listed}]\n")
    return path


def _verify(
    session: RecordedSession, site: Path, cwd: Path, *args: str | Path
) -> tuple[int, dict[str, str], dict[str, Any]]:
    result = run_cmcp(
        "verify", session.claim_path, *args, "--json", env=subprocess_env(site), cwd=cwd
    )
    assert result.returncode in (0, 1, 3), result.stdout + result.stderr
    report = result.json()
    return result.returncode, {c["name"]: c["status"] for c in report["checks"]}, report


def test_the_cpu_root_and_the_device_root_each_judge_their_own_evidence(
    session: RecordedSession, site: Path, auditor: Path, tmp_path: Path
) -> None:
    # the GPU root is named relative to the policy's folder, and verify runs elsewhere
    policy = _policy(auditor, "../gpu.pem")
    code, checks, report = _verify(
        session, site, tmp_path, "--trust-root", auditor / "cpu.pem", "--platform-policy", policy
    )
    assert code == 0 and report["hardware_attested"], report
    assert checks["testtee.signature"] == "pass"
    assert checks["devices[0].testgpu.signature"] == "pass"
    reasons = {c["name"]: c["reason"] for c in report["checks"]}
    assert "[testgpu] trust_roots" in reasons["devices[0].testgpu.signature"]
    assert "--trust-root" in reasons["testtee.signature"]


def test_the_cpu_root_never_reaches_the_device_verifier(
    session: RecordedSession, site: Path, auditor: Path, tmp_path: Path
) -> None:
    # --trust-root holds the GPU's root: had it gone to the device verifier, the device
    # would verify; it goes to the CPU's, which it does not vouch for
    code, checks, _ = _verify(session, site, tmp_path, "--trust-root", auditor / "gpu.pem")
    assert code == 1
    assert checks["testtee.signature"] == "fail"
    assert checks["devices[0].testgpu.signature"] == "fail"  # judged by its pinned test key


def test_a_wrong_device_root_fails_the_device_signature_alone(
    session: RecordedSession, site: Path, auditor: Path, tmp_path: Path
) -> None:
    policy = _policy(auditor, "../cpu.pem")
    code, checks, report = _verify(
        session, site, tmp_path, "--trust-root", auditor / "cpu.pem", "--platform-policy", policy
    )
    assert code == 1 and not report["hardware_attested"]
    failed = {name for name, status in checks.items() if status == "fail"}
    assert failed == {"devices[0].testgpu.signature"}


def test_a_relative_device_root_is_not_taken_from_the_working_directory(
    session: RecordedSession, site: Path, auditor: Path, tmp_path: Path
) -> None:
    # gpu.pem stands in the working directory, not beside the policy: it is not read
    (tmp_path / "gpu.pem").write_bytes(_public_pem(GPU_SIGNER))
    policy = _policy(auditor, "gpu.pem")
    result = run_cmcp(
        "verify", session.claim_path, "--trust-root", auditor / "cpu.pem",
        "--platform-policy", policy, env=subprocess_env(site), cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 2, result.stdout + result.stderr
    text = " ".join(result.stderr.split())
    assert f"{auditor / 'policies' / 'gpu.pem'} cannot be read" in text, text
    assert "folder of the platform-policy file" in text, text
