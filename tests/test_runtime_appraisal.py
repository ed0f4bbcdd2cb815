"""The gateway's own appraisal of its evidence, on a real software TPM (swtpm) enrolled as a
privacy CA would enrol it, with its test roots: through `cmcp start` (the MCP SDK as client,
`/readyz`, the audit log, `cmcp verify` and the TRACE conformance suite on the claim). The
verdicts a gateway cannot be made to reach on demand are in test_runtime_appraisal_library.

What a swtpm appraisal proves: that the quote is bound to the session's key and policy, is
signed by an AK certified to the root given, of a TPM whose EK chains to the root given, and
that the PCRs replay to the pinned measurement. The roots here are the test's own, so it
proves the protocol, not that any hardware isolates the gateway.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from trace_tests.modules import tr_apr

from cmcp_cli import __version__
from cmcp_cli.attestation.manager import load_providers
from cmcp_cli.claim.appraisal import policy_document, policy_ref, unix_seconds
from tests.device_plugin.cmcp_testgpu import PINNED
from tests.device_support import install_device_plugin, subprocess_env
from tests.gateway_support import (
    Served,
    agent_calls,
    request,
    start_gateway,
    statuses,
    verify,
    weather_session,
    write_config,
)
from tests.sessions import entries_of
from tests.support import run_cmcp
from tests.tpm_support import AppraisalRig, appraisal_rig

testing = pytest.importorskip("cmcp_tpm.testing", reason="the cmcp-tpm plugin is absent")

OPERATOR_TOKEN = secrets.token_urlsafe(32)
OPERATOR = {"authorization": f"Bearer {OPERATOR_TOKEN}"}
RUNTIME_VERIFIER = f"urn:cmcp:runtime-appraisal:cmcp-gateway/{__version__}"
REGISTRY = load_providers()


Rig = AppraisalRig


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    if testing.tss is None:
        pytest.skip("tpm2-pytss is not installed: the TPM collector cannot run here")
    with appraisal_rig(tmp_path_factory.mktemp("tpm")) as made:
        yield made


def _config(folder: Path, upstream: Served, rig: Rig, **appraisal: Any) -> Path:
    """A tpm gateway's config on the rig, its `trace.appraisal` trusting the rig's roots
    and set as `appraisal` says."""
    attestation = {"provider": "tpm", "providers": {"tpm": rig.settings}}
    trace = {"appraisal": {"trust_roots": [str(root) for root in rig.roots], **appraisal}}
    return write_config(folder, upstream.url, attestation=attestation, trace=trace)


def _measure(config: Path) -> str:
    measured = run_cmcp("measure", "tpm", "--config", config)
    assert measured.returncode == 0, measured.stderr
    return measured.stdout.strip()


def _pin(config: Path, measurement: str) -> None:
    data = yaml.safe_load(config.read_text())
    data["attestation"]["expected_measurement"] = [measurement]
    config.write_text(yaml.safe_dump(data))


def _served_session(config: Path) -> tuple[dict[str, Any], dict[str, Any], str]:
    """Start the gateway, run an agent's session through it, read /readyz as the operator:
    the claim, the operator's readiness answer and the gateway's output. /readyz answers
    anyone, so what it shows without the operator's token is asserted here too: the
    appraisal's status, names and counts, never the input files' paths nor the reasons of
    the checks that did not pass."""
    gateway = start_gateway(config, {"CMCP_OPERATOR_TOKEN": OPERATOR_TOKEN})
    try:
        allowed, _ = asyncio.run(agent_calls(gateway.url))
        status, _, body = request(gateway.port, "GET", "/readyz", headers=OPERATOR)
        public_status, _, public_body = request(gateway.port, "GET", "/readyz")
        agent_status, _, agent_body = request(
            gateway.port, "GET", "/readyz", headers={"authorization": "Bearer not-the-operator"}
        )
    finally:
        assert gateway.stop() == 0, gateway.output()
    assert "Paris" in allowed and status == public_status == agent_status == 200
    ready, public = json.loads(body), json.loads(public_body)
    assert json.loads(agent_body)["appraisal"] == public["appraisal"]
    shown, full = public["appraisal"], ready["appraisal"]
    assert set(shown) == set(full) and shown["policy_ref"] == full["policy_ref"]
    assert shown["inputs"] == {
        "trust_roots": len(full["inputs"]["trust_roots"]),
        "collateral": len(full["inputs"]["collateral"]),
        "platform_policy": full["inputs"]["platform_policy"] is not None,
        "allow_debug": full["inputs"]["allow_debug"],
    }
    operator_only = {"not_passed"}
    assert {k: v for k, v in full["latest"].items() if k not in operator_only} == shown["latest"]
    assert "not_passed" not in shown["latest"]
    assert shown["latest"]["failed"] + shown["latest"]["skipped"] == len(
        full["latest"]["not_passed"]
    )
    paths = [*full["inputs"]["trust_roots"], *full["inputs"]["collateral"]]
    assert paths and not any(json.dumps(path)[1:-1] in public_body.decode() for path in paths)
    (claim_path,) = sorted((config.parent / "claims").glob("*.claim.json"))
    return json.loads(claim_path.read_text()), ready, gateway.output()


def _trace_tests_apr(claim: dict[str, Any]) -> dict[str, str]:
    """The TR-APR findings of the TRACE conformance suite at Level 1 on the claim's record,
    by code: status."""
    findings = tr_apr.check(claim["trace"], 1)
    found = {finding.code: finding.status.value for finding in findings}
    assert set(found) == {f"TR-APR-00{n}" for n in range(1, 6)}, findings
    return found


def test_a_pinned_tpm_with_its_roots_is_appraised_affirming(
    tmp_path: Path, upstream: Served, rig: Rig
) -> None:
    config = _config(tmp_path, upstream, rig, required_status="affirming")
    measurement = _measure(config)
    _pin(config, measurement)
    claim, ready, output = _served_session(config)

    appraisal = claim["trace"]["appraisal"]
    assert appraisal["status"] == "affirming"
    assert appraisal["verifier"] == RUNTIME_VERIFIER
    assert appraisal["timestamp"] == unix_seconds(claim["gateway"]["attestation"]["generated_at"])
    expected_ref = policy_ref(
        policy_document(
            provider="tpm",
            expected_measurements=[measurement],
            trust_roots=[root.read_bytes() for root in reversed(rig.roots)],
            collateral=[],
            platform_policy={},
            allow_debug=False,
        )
    )
    assert appraisal["policy_ref"] == expected_ref
    (start,) = entries_of(tmp_path / "audit.db", "session_start")
    assert start["appraisal"] == appraisal
    assert start["appraisal_checks"] == []  # every check passed

    detail = ready["appraisal"]
    assert detail["appraised"] is True and detail["required_status"] == "affirming"
    assert detail["policy_ref"] == expected_ref
    assert detail["latest"]["status"] == "affirming" and detail["latest"]["not_passed"] == []
    assert detail["made"] >= 2  # the first evidence at start, then the session's
    assert "appraisal affirming (required affirming)" in " ".join(output.split())

    claim_path = next((tmp_path / "claims").glob("*.claim.json"))
    code, report = verify(
        claim_path,
        *rig.trust_args(),
        "--expected-measurement",
        measurement,
        "--audit-log",
        tmp_path / "audit.db",
    )
    assert code == 0, report
    assert statuses(report)["appraisal"] == "pass"
    assert statuses(report)["log: issuer"] == "pass"
    # the conformance suite's appraisal checks, Level 1's affirming requirement included
    assert set(_trace_tests_apr(claim).values()) == {"pass"}


def test_without_a_pin_the_appraisal_is_a_warning_naming_the_skipped_check(
    tmp_path: Path, upstream: Served, rig: Rig
) -> None:
    config = _config(tmp_path, upstream, rig)
    claim, ready, output = _served_session(config)
    assert claim["trace"]["appraisal"]["status"] == "warning"
    (start,) = entries_of(tmp_path / "audit.db", "session_start")
    (skipped,) = start["appraisal_checks"]
    assert skipped["name"] == "measurement" and skipped["status"] == "skip"
    assert "attestation.expected_measurement pins nothing" in skipped["reason"]
    latest = ready["appraisal"]["latest"]
    assert latest["status"] == "warning" and latest["not_passed"] == [skipped]
    assert (latest["failed"], latest["skipped"]) == (0, 1)
    assert ready["appraisal"]["inputs"]["trust_roots"] == [str(root) for root in rig.roots]
    assert "of every collection of evidence by the tpm verifier: 2 trust root(s)" in " ".join(
        output.split()
    )
    claim_path = next((tmp_path / "claims").glob("*.claim.json"))
    code, report = verify(claim_path, *rig.trust_args())
    assert code == 0, report
    assert statuses(report)["appraisal"] == "pass"
    assert _trace_tests_apr(claim)["TR-APR-005"] == "fail"  # Level 1 wants affirming


def test_required_affirming_without_a_pin_does_not_start(
    tmp_path: Path, upstream: Served, rig: Rig
) -> None:
    config = _config(tmp_path, upstream, rig, required_status="affirming")
    started = run_cmcp("start", "--config", config)
    assert started.returncode != 0
    text = " ".join(started.stderr.split())
    assert "appraised warning, below trace.appraisal.required_status affirming" in text, text
    assert "measurement skipped (attestation.expected_measurement pins nothing" in text, text
    assert "cmcp measure tpm" in text, text
    assert not list((tmp_path / "claims").glob("*.claim.json"))


def test_a_platform_policy_its_verifier_refuses_stops_the_start(
    tmp_path: Path, upstream: Served, rig: Rig
) -> None:
    """validate-config judges the policy's tables and keys; their values are the verifiers'
    to judge, which `cmcp start` has them do on the first evidence (here the swtpm's, with
    the test tree's GPU beside it), so a table a verifier refuses stops the start instead of
    every session later. The same table with values it takes starts and serves."""
    site = install_device_plugin(tmp_path / "site")
    env = subprocess_env(site)
    policy = tmp_path / "platform.toml"
    policy.write_text('[testgpu]\ntrust_roots = "gpu.pem"\n')
    attestation = {
        "provider": "tpm",
        "providers": {"tpm": rig.settings, "testgpu": {"devices": 1}},
    }
    config = write_config(
        tmp_path,
        upstream.url,
        attestation=attestation,
        trace={
            "appraisal": {
                "trust_roots": [str(root) for root in rig.roots],
                "platform_policy": str(policy),
            }
        },
    )
    checked = run_cmcp("validate-config", "--config", config, "--json", env=env)
    assert checked.returncode == 0, checked.stdout
    started = run_cmcp("start", "--config", config, env=env)
    assert started.returncode != 0
    text = " ".join(started.stderr.split())
    assert "the gateway does not serve: the testgpu verifier refuses " in text, text
    assert "trace.appraisal.platform_policy: [testgpu] trust_roots must be a list" in text, text
    assert "fix the [testgpu] table of the platform policy" in text, text
    assert not list((tmp_path / "claims").glob("*.claim.json"))

    pem = PINNED.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    (tmp_path / "gpu.pem").write_bytes(pem)
    policy.write_text('[testgpu]\ntrust_roots = ["gpu.pem"]\n')
    gateway = start_gateway(config, env)
    try:
        assert "Paris" in asyncio.run(weather_session(gateway.url))
    finally:
        assert gateway.stop() == 0, gateway.output()
    (claim_path,) = (tmp_path / "claims").glob("*.claim.json")
    claim = json.loads(claim_path.read_text())
    assert claim["gateway"]["attestation"]["devices"][0]["provider"] == "testgpu"
    assert claim["trace"]["appraisal"]["status"] == "warning"  # the measurement is not pinned


# ---------------------------------------------------------------- through the library
