"""The gateway's own appraisal of its evidence, on a real software TPM (swtpm) enrolled as a
privacy CA would enrol it, with its test roots: through `cmcp start` (the MCP SDK as client,
`/readyz`, the audit log, `cmcp verify` and the TRACE conformance suite on the claim) and
through the library for the verdicts a gateway cannot be made to reach on demand (a wrong
root, a session or a re-attestation below `trace.appraisal.required_status`).

What a swtpm appraisal proves: that the quote is bound to the session's key and policy, is
signed by an AK certified to the root given, of a TPM whose EK chains to the root given, and
that the PCRs replay to the pinned measurement. The roots here are the test's own, so it
proves the protocol, not that any hardware isolates the gateway.
"""

from __future__ import annotations

import asyncio
import copy
import json
import secrets
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from trace_tests.modules import tr_apr

from cmcp_cli import __version__
from cmcp_cli.attestation.api import CheckStatus, GatewayFacts
from cmcp_cli.attestation.manager import ProviderRegistry, load_providers
from cmcp_cli.attestation.measurement import installation_digest
from cmcp_cli.audit.entry import open_line
from cmcp_cli.audit.session_record import SessionPolicy
from cmcp_cli.audit.store import AuditStore, iter_lines
from cmcp_cli.claim.appraisal import policy_document, policy_ref, unix_seconds
from cmcp_cli.claim.keys import ClaimKey
from cmcp_cli.claim.model import sign_claim
from cmcp_cli.config_trace import AppraisalConfig
from cmcp_cli.errors import ExitCode
from cmcp_cli.evidence.appraisal_config import read_appraisal
from cmcp_cli.evidence.attesting import AppraisalBelowRequiredError, Attestor
from cmcp_cli.evidence.freshness import renew_evidence
from cmcp_cli.evidence.recovery import recover_sessions
from cmcp_cli.evidence.session import EvidenceSession
from cmcp_cli.policy.bundle import read_bundle
from cmcp_cli.policy.engine import compile_bundle
from cmcp_cli.verify.claim import VerifyOptions, verify_document
from cmcp_tpm import plugin
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
from tests.sessions import probe_measurement, record_session
from tests.support import QUICKSTART, run_cmcp
from tests.tpm_support import EnrolledTpm, enrolled_tpm

testing = pytest.importorskip("cmcp_tpm.testing", reason="the cmcp-tpm plugin is absent")

OPERATOR_TOKEN = secrets.token_urlsafe(32)
OPERATOR = {"authorization": f"Bearer {OPERATOR_TOKEN}"}
RUNTIME_VERIFIER = f"urn:cmcp:runtime-appraisal:cmcp-gateway/{__version__}"
REGISTRY = load_providers()


@dataclass(frozen=True)
class Rig(EnrolledTpm):
    other_root: Path  # a CA that certified nothing of this TPM


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    if testing.tss is None:
        pytest.skip("tpm2-pytss is not installed: the TPM collector cannot run here")
    folder = tmp_path_factory.mktemp("tpm")
    with enrolled_tpm(folder) as enrolled:
        other = folder / "other.pem"
        other.write_bytes(testing.TestCa.create("another CA").root_pem)
        yield Rig(enrolled.tpm, enrolled.settings, enrolled.roots, other)


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


def _entries(db: Path, kind: str) -> list[dict[str, Any]]:
    found = [open_line(line).fields for line in iter_lines(db)]
    return [dict(fields) for fields in found if fields["type"] == kind]


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
    (start,) = _entries(tmp_path / "audit.db", "session_start")
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
    (start,) = _entries(tmp_path / "audit.db", "session_start")
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


def _attestor(
    rig: Rig, *, roots: tuple[Path, ...], pins: tuple[str, ...] = (), **more: Any
) -> Attestor:
    inputs = read_appraisal(AppraisalConfig(trust_roots=roots, **more), REGISTRY)
    attestor = Attestor.load(plugin.SPEC, "test", rig.settings)
    bundle = compile_bundle(read_bundle(QUICKSTART / "policies"))
    attestor.collector.prepare(
        GatewayFacts(bundle.hash, "sha256:" + "00" * 32, installation_digest()), rig.settings
    )
    return replace(attestor, pins=pins, appraisal=inputs)


def _measurement(rig: Rig) -> str:
    attestor = _attestor(rig, roots=rig.roots)
    try:
        return probe_measurement(attestor)
    finally:
        attestor.close()


def test_a_wrong_root_is_contraindicated(tmp_path: Path, rig: Rig) -> None:
    pins = (_measurement(rig),)
    attestor = _attestor(rig, roots=(rig.other_root, rig.roots[1]), pins=pins)
    try:
        recorded = record_session(tmp_path, attestor=attestor, start=datetime.now(UTC))
    finally:
        attestor.close()
    assert recorded.claim["trace"]["appraisal"]["status"] == "contraindicated"
    (start,) = _entries(recorded.db, "session_start")
    failed = {check["name"]: check for check in start["appraisal_checks"]}
    assert failed["tpm.ak.certificate"]["status"] == "fail", failed
    # the claim is honest about it; an auditor with the right roots still judges the quote
    code, report = verify(recorded.claim_path, *rig.trust_args(), "--audit-log", recorded.db)
    assert statuses(report)["appraisal"] == "pass" and code == 0, report
    # and one given the wrong root fails the chain the gateway failed
    code, report = verify(recorded.claim_path, "--trust-root", str(rig.other_root))
    assert code == 1 and statuses(report)["tpm.ak.certificate"] == "fail"


def test_a_session_below_the_required_status_is_not_opened(tmp_path: Path, rig: Rig) -> None:
    attestor = _attestor(rig, roots=rig.roots, required_status="affirming")
    try:
        with pytest.raises(AppraisalBelowRequiredError) as refused:
            record_session(tmp_path, attestor=attestor, start=datetime.now(UTC))
    finally:
        attestor.close()
    assert "appraised warning, below trace.appraisal.required_status affirming" in (
        refused.value.message
    )
    assert "measurement skipped" in refused.value.message
    assert (
        refused.value.hint is not None and "attestation.expected_measurement" in refused.value.hint
    )
    assert _entries(tmp_path / "audit.db", "session_start") == []


def test_a_re_attestation_below_the_required_status_fails_closed(tmp_path: Path, rig: Rig) -> None:
    pins = (_measurement(rig),)
    attestor = _attestor(rig, roots=rig.roots, pins=pins, required_status="warning")
    wrong = replace(
        attestor,
        appraisal=read_appraisal(
            AppraisalConfig(trust_roots=(rig.other_root, rig.roots[1]), required_status="warning"),
            REGISTRY,
        ),
    )
    renewals = []

    def renew(session: EvidenceSession) -> None:
        renewals.append(renew_evidence(session, wrong, policy="warn_only"))

    try:
        recorded = record_session(
            tmp_path, attestor=attestor, start=datetime.now(UTC), during=renew
        )
    finally:
        attestor.close()
    (renewal,) = renewals
    assert not renewal.fresh and renewal.policy == "fail_closed"  # whatever warn_only says
    assert renewal.reason == (
        "the evidence is appraised contraindicated, below trace.appraisal.required_status warning"
    )
    (entry,) = _entries(recorded.db, "attestation")
    assert entry["appraisal"]["status"] == "contraindicated"
    assert "tpm.ak.certificate" in {check["name"] for check in entry["appraisal_checks"]}
    # the claim carries the newest evidence and states its appraisal, as the log does
    assert recorded.claim["trace"]["appraisal"] == entry["appraisal"]
    (start,) = _entries(recorded.db, "session_start")
    assert start["appraisal"]["status"] == "affirming"


def _insider(claim: dict[str, Any], key: ClaimKey, **appraisal: Any) -> dict[str, Any]:
    """The claim with its appraisal changed and re-signed by the session's own key."""
    changed = copy.deepcopy(claim)
    changed["trace"]["appraisal"] = {**changed["trace"]["appraisal"], **appraisal}
    return sign_claim(changed, key)


def test_an_insider_cannot_restate_the_gateways_appraisal(tmp_path: Path, rig: Rig) -> None:
    key = ClaimKey.generate()
    attestor = _attestor(rig, roots=rig.roots)
    try:
        recorded = record_session(tmp_path, attestor=attestor, key=key, start=datetime.now(UTC))
    finally:
        attestor.close()
    options = VerifyOptions(trust_roots=tuple(root.read_bytes() for root in rig.roots))
    genuine = verify_document(recorded.claim, options, REGISTRY)
    assert {c.name: c.status for c in genuine.checks}["appraisal"] is CheckStatus.PASS
    assert genuine.exit_code is ExitCode.OK, genuine.checks
    ref = recorded.claim["trace"]["appraisal"]["policy_ref"]
    for forged in (
        {"verifier": "urn:cmcp:runtime-appraisal:cmcp-gateway/9.9.9"},
        {"verifier": "https://verifier.example/appraisal"},
        {"policy_ref": ref[:-1]},
        {"policy_ref": ref.upper()},
        {"timestamp": recorded.claim["trace"]["appraisal"]["timestamp"] - 60},
        {"status": "none"},
    ):
        report = verify_document(_insider(recorded.claim, key, **forged), options, REGISTRY)
        checks = {c.name: c.status for c in report.checks}
        assert checks["signature"] is CheckStatus.PASS
        assert checks["appraisal"] is CheckStatus.FAIL, forged
        assert report.exit_code is ExitCode.FAILED

    # the gateway's own appraisal written over a software-mode claim
    software_claim = record_session(tmp_path / "software", key=key).claim
    stated = recorded.claim["trace"]["appraisal"]
    report = verify_document(
        _insider(software_claim, key, **stated), VerifyOptions(allow_software=True), REGISTRY
    )
    assert {c.name: c.status for c in report.checks}["appraisal"] is CheckStatus.FAIL
    assert report.exit_code is ExitCode.FAILED


def test_a_recovering_process_appraises_its_own_evidence(tmp_path: Path, rig: Rig) -> None:
    """A session its process left open is closed by the next, whose own quote is appraised:
    the recovery claim states that appraisal, as `session_end.recovered_by` records it."""
    pins = (_measurement(rig),)
    attestor = _attestor(rig, roots=rig.roots, pins=pins)
    db, claims = tmp_path / "audit.db", tmp_path / "claims"
    claims.mkdir()
    bundle = compile_bundle(read_bundle(QUICKSTART / "policies"))
    policy = SessionPolicy(
        bundle_hash=bundle.hash,
        policy_version="1.0.0",
        catalog_hash="sha256:" + "22" * 32,
        enforcement_mode="enforcing",
        data_class_order=("public", "internal"),
    )
    try:
        with AuditStore(db) as store:
            EvidenceSession(
                store=store, session_id="left-open", policy=policy, attestor=attestor,
                process_id="gone",
            )  # fmt: skip
            report = recover_sessions(store, attestor=attestor, claims_dir=claims)
    finally:
        attestor.close()
    (recovered,) = report.recovered
    claim = json.loads(recovered.claim.read_text())
    (end,) = _entries(db, "session_end")
    assert claim["gateway"]["recovery"]["interrupted_process"] == "gone"
    assert claim["trace"]["appraisal"] == end["recovered_by"]["appraisal"]
    assert claim["trace"]["appraisal"]["status"] == "affirming"
    assert end["recovered_by"]["appraisal_checks"] == []
    code, checked = verify(recovered.claim, *rig.trust_args(), "--audit-log", db)
    assert code == 0, checked
    assert statuses(checked)["appraisal"] == "pass" and statuses(checked)["log: issuer"] == "pass"


def _appraisal(report: Any) -> Any:
    (check,) = [check for check in report.checks if check.name == "appraisal"]
    return check


def test_a_status_better_than_the_same_inputs_earn_fails(tmp_path: Path, rig: Rig) -> None:
    """An auditor whose inputs name the claim's policy_ref holds the gateway's inputs, so
    this verifier's checks reproduce its verdict: an insider's better status fails. Under
    other inputs the stated status is the gateway's under its own, passed on form with the
    reason saying so; a verifier that cannot load here still applies the form rules."""
    key = ClaimKey.generate()
    attestor = _attestor(rig, roots=rig.roots)  # no pin: the measurement check is skipped
    try:
        recorded = record_session(tmp_path, attestor=attestor, key=key, start=datetime.now(UTC))
    finally:
        attestor.close()
    measurement = recorded.claim["trace"]["runtime"]["measurement"]
    same = VerifyOptions(trust_roots=tuple(root.read_bytes() for root in rig.roots))
    assert recorded.claim["trace"]["appraisal"]["status"] == "warning"
    honest = _appraisal(verify_document(recorded.claim, same, REGISTRY))
    assert honest.status is CheckStatus.PASS and "reproduce ('warning')" in honest.reason

    forged = _insider(recorded.claim, key, status="affirming")
    report = verify_document(forged, same, REGISTRY)
    check = _appraisal(report)
    assert check.status is CheckStatus.FAIL and report.exit_code is ExitCode.FAILED
    assert "states the gateway's own appraisal 'affirming'" in check.reason
    assert "this verifier's checks of the evidence find 'warning'" in check.reason

    # the auditor pins the measurement the gateway did not: other inputs, judged on form
    other = replace(same, expected_measurements=(measurement,))
    check = _appraisal(verify_document(forged, other, REGISTRY))
    assert check.status is CheckStatus.PASS, check
    assert "the auditor's inputs differ from the gateway's" in check.reason
    assert "urn:cmcp:appraisal-policy:sha256:" in check.reason.split("they name ", 1)[1]

    # the tpm verifier cannot load here: the evidence is unjudged, the form still is
    tpm = REGISTRY.providers["tpm"]
    absent = replace(tpm, spec=replace(tpm.spec, verifier="cmcp_tpm.absent_module:Verifier"))
    unloadable = ProviderRegistry({**REGISTRY.providers, "tpm": absent}, REGISTRY.failures)
    report = verify_document(recorded.claim, same, unloadable)
    statuses_here = {c.name: c.status for c in report.checks}
    assert statuses_here["evidence"] is CheckStatus.SKIP, report.checks
    assert _appraisal(report).status is CheckStatus.SKIP
    ref = recorded.claim["trace"]["appraisal"]["policy_ref"]
    for wrong in (
        {"policy_ref": ref[:-1]},
        {"verifier": "urn:cmcp:runtime-appraisal:cmcp-gateway/9.9"},
    ):
        report = verify_document(_insider(recorded.claim, key, **wrong), same, unloadable)
        assert _appraisal(report).status is CheckStatus.FAIL, wrong
        assert report.exit_code is ExitCode.FAILED
