"""The gateway's own appraisal at the library level, on an enrolled swtpm: a wrong root,
the required status at session open and at re-attestation, an insider restating the
appraisal, a recovering process appraising its own evidence, and `cmcp verify` reconciling
a stated status with the one the same inputs earn."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from cmcp_cli.attestation.api import CheckStatus, GatewayFacts
from cmcp_cli.attestation.manager import ProviderRegistry, load_providers
from cmcp_cli.attestation.measurement import installation_digest
from cmcp_cli.audit.session_record import SessionPolicy
from cmcp_cli.audit.store import AuditStore
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
from tests.gateway_support import (
    statuses,
    verify,
)
from tests.sessions import entries_of, probe_measurement, record_session
from tests.support import QUICKSTART
from tests.tpm_support import AppraisalRig, appraisal_rig

testing = pytest.importorskip("cmcp_tpm.testing", reason="the cmcp-tpm plugin is absent")


REGISTRY = load_providers()


Rig = AppraisalRig


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    if testing.tss is None:
        pytest.skip("tpm2-pytss is not installed: the TPM collector cannot run here")
    with appraisal_rig(tmp_path_factory.mktemp("tpm")) as made:
        yield made


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
    (start,) = entries_of(recorded.db, "session_start")
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
    assert entries_of(tmp_path / "audit.db", "session_start") == []


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
    (entry,) = entries_of(recorded.db, "attestation")
    assert entry["appraisal"]["status"] == "contraindicated"
    assert "tpm.ak.certificate" in {check["name"] for check in entry["appraisal_checks"]}
    # the claim carries the newest evidence and states its appraisal, as the log does
    assert recorded.claim["trace"]["appraisal"] == entry["appraisal"]
    (start,) = entries_of(recorded.db, "session_start")
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
    (end,) = entries_of(db, "session_end")
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
