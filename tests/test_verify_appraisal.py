"""The `appraisal` check of `cmcp verify`: a claim's trace.appraisal must be exactly what its
evidence states and its verifier confirmed, so that an insider holding the gateway's key
cannot write an appraisal into a claim. Judged on claims recorded by the library over the
software provider and over the opaque provider (asking the token service double, a real
HTTPS process), re-signed with the session's own key after each change."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from cmcp_cli.attestation.api import Appraisal, CheckStatus, EvidenceVerdict
from cmcp_cli.attestation.manager import load_providers
from cmcp_cli.claim.keys import ClaimKey
from cmcp_cli.claim.model import NO_APPRAISAL_VERIFIER, sign_claim
from cmcp_cli.claim.signing import signed
from cmcp_cli.errors import ExitCode
from cmcp_cli.evidence.attesting import Attestor
from cmcp_cli.evidence.freshness import renew_evidence
from cmcp_cli.evidence.session import EvidenceSession
from cmcp_cli.verify.appraisal import appraisal_check, record_appraisal_check
from cmcp_cli.verify.claim import VerifyOptions, VerifyReport, verify_document
from cmcp_opaque import plugin
from cmcp_opaque.testing import AUDIENCE
from cmcp_opaque.token_service import RunningService
from tests.sessions import record_session

REGISTRY = load_providers()
NONE = {"status": "none", "verifier": NO_APPRAISAL_VERIFIER}
ISSUER = "https://opaque.example/attest"


# What appraisal_check reads of a claim beside its appraisal: a claim over TPM evidence.
GENERATED_AT = "2026-12-02T18:00:00.250Z"
TPM_CLAIM: dict[str, Any] = {
    "trace": {"runtime": {"platform": "tpm2"}},
    "gateway": {"gateway_version": "1.4.0", "attestation": {"generated_at": GENERATED_AT}},
}
OWN = {
    "status": "warning",
    "verifier": "urn:cmcp:runtime-appraisal:cmcp-gateway/1.4.0",
    "policy_ref": "urn:cmcp:appraisal-policy:sha256:" + "ab" * 32,
    "timestamp": 1796234400,
}


def verdict(appraisal: Appraisal | None) -> EvidenceVerdict:
    return EvidenceVerdict((), hardware_attested=False, appraisal=appraisal)


@pytest.mark.parametrize(
    ("stated", "confirmed", "passes"),
    [
        (NONE, None, True),
        ({"status": "affirming", "verifier": ISSUER}, Appraisal("affirming", ISSUER), True),
        ({"status": "none", "verifier": ISSUER}, Appraisal("none", ISSUER), True),
        ({"status": "affirming", "verifier": ISSUER}, None, False),
        ({"status": "none", "verifier": ISSUER}, None, False),
        (NONE, Appraisal("affirming", ISSUER), False),
        ({"status": "affirming", "verifier": ISSUER}, Appraisal("warning", ISSUER), False),
        (
            {"status": "affirming", "verifier": "https://other/"},
            Appraisal("affirming", ISSUER),
            False,
        ),
    ],
)
def test_the_claim_states_exactly_the_confirmed_appraisal(
    stated: dict[str, str], confirmed: Appraisal | None, passes: bool
) -> None:
    check = appraisal_check(stated, verdict(confirmed), TPM_CLAIM)
    assert check.name == "appraisal"
    assert (check.status is CheckStatus.PASS) is passes, check.reason


_DROP = object()


@pytest.mark.parametrize(
    ("change", "passes", "says"),
    [
        ({}, True, "the gateway's own appraisal of its hardware evidence"),
        ({"status": "affirming"}, True, "'affirming'"),
        ({"status": "contraindicated"}, True, "'contraindicated'"),
        ({"status": "none"}, False, "which an appraisal does not find"),
        (
            {"verifier": "urn:cmcp:runtime-appraisal:cmcp-gateway/1.3.9"},
            False,
            "names cmcp-gateway 1.3.9, but the claim was issued by gateway version 1.4.0",
        ),
        (
            {"verifier": "urn:cmcp:runtime-appraisal:other-gateway/1.4.0"},
            False,
            "its evidence states no appraisal",
        ),
        (
            {"verifier": "urn:cmcp:runtime-appraisal:cmcp-gateway/"},
            False,
            "its evidence states no appraisal",
        ),
        (
            {"policy_ref": "urn:cmcp:appraisal-policy:sha256:" + "AB" * 32},
            False,
            "not urn:cmcp:appraisal-policy:sha256:<64 hex>",
        ),
        (
            {"policy_ref": "urn:cmcp:appraisal-policy:sha256:" + "ab" * 31},
            False,
            "not urn:cmcp:appraisal-policy:sha256:<64 hex>",
        ),
        ({"policy_ref": "https://policy.example/p"}, False, "not urn:cmcp:appraisal-policy"),
        ({"policy_ref": _DROP}, False, "names policy None"),
        ({"timestamp": _DROP}, False, "states no timestamp"),
        ({"timestamp": 1796234401}, False, "not when the evidence the claim carries"),
        ({"timestamp": 1796234399}, False, "not when the evidence the claim carries"),
    ],
)
def test_the_gateways_own_appraisal_passes_only_in_its_own_form(
    change: dict[str, Any], passes: bool, says: str
) -> None:
    stated = {**OWN, **change}
    stated = {name: value for name, value in stated.items() if value is not _DROP}
    check = appraisal_check(stated, verdict(None), TPM_CLAIM)
    assert (check.status is CheckStatus.PASS) is passes, check.reason
    assert says in check.reason


def test_the_gateways_own_appraisal_over_software_evidence_fails() -> None:
    software = copy.deepcopy(TPM_CLAIM)
    software["trace"]["runtime"]["platform"] = "software-only"
    check = appraisal_check(OWN, verdict(None), software)
    assert check.status is CheckStatus.FAIL
    assert "over software-only evidence, which is never appraised" in check.reason
    # over a third party's confirmed appraisal the gateway's name is not the one confirmed
    check = appraisal_check(OWN, verdict(Appraisal("affirming", ISSUER)), TPM_CLAIM)
    assert check.status is CheckStatus.FAIL


@pytest.mark.parametrize(
    ("platform", "change", "status", "says"),
    [
        ("tpm2", {}, CheckStatus.SKIP, "only the evidence of its GatewayClaim can confirm"),
        ("software-only", {}, CheckStatus.FAIL, "over software-only evidence"),
        ("tpm2", {"status": "none"}, CheckStatus.FAIL, "which an appraisal does not find"),
        ("tpm2", {"policy_ref": "urn:x:y"}, CheckStatus.FAIL, "not urn:cmcp:appraisal-policy"),
        ("tpm2", {"timestamp": _DROP}, CheckStatus.FAIL, "states no timestamp"),
    ],
)
def test_a_standalone_record_states_the_gateways_own_appraisal_only_in_its_form(
    platform: str, change: dict[str, Any], status: CheckStatus, says: str
) -> None:
    stated = {name: value for name, value in {**OWN, **change}.items() if value is not _DROP}
    check = record_appraisal_check(stated, platform)
    assert check.status is status and says in check.reason, check.reason


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningService]:
    running = RunningService.start(tmp_path_factory.mktemp("token-service"))
    yield running
    running.stop()


def judged(claim: dict[str, Any], options: VerifyOptions) -> VerifyReport:
    return verify_document(claim, options, REGISTRY)


def status_of(report: VerifyReport, name: str) -> CheckStatus:
    return next(check.status for check in report.checks if check.name == name)


def insider(claim: dict[str, Any], key: ClaimKey, appraisal: dict[str, str]) -> dict[str, Any]:
    changed = copy.deepcopy(claim)
    del changed["signature"]
    changed["trace"]["appraisal"] = appraisal
    return sign_claim(changed, key)


def test_an_opaque_claim_states_its_tokens_appraisal_and_no_other(
    tmp_path: Path, service: RunningService
) -> None:
    settings = {"url": service.url(), "ca_file": str(service.ca_file), "timeout": 2}
    key = ClaimKey.generate()
    # the claim is issued after the token (its time window is judged at the claim's time)
    start = datetime.now(UTC) + timedelta(seconds=2)
    attestor = Attestor.load(plugin.SPEC, "test", settings)
    recorded = record_session(tmp_path, attestor=attestor, key=key, start=start)
    claim = recorded.claim
    assert claim["trace"]["appraisal"] == {"status": "affirming", "verifier": service.issuer}
    pins = {"keys": str(service.jwks_file), "issuer": service.issuer, "audience": AUDIENCE}
    options = VerifyOptions(platform_policy={"opaque": pins})

    genuine = judged(claim, options)
    assert status_of(genuine, "appraisal") is CheckStatus.PASS, genuine.checks
    assert not genuine.failed and genuine.exit_code is ExitCode.NOT_VERIFIABLE

    for forged in (
        {"status": "warning", "verifier": service.issuer},
        {"status": "affirming", "verifier": "https://another-verifier.example/"},
        NONE,
    ):
        report = judged(insider(claim, key, forged), options)
        assert status_of(report, "signature") is CheckStatus.PASS
        assert status_of(report, "appraisal") is CheckStatus.FAIL, forged
        assert report.exit_code is ExitCode.FAILED

    # its standalone TRACE record carries no token: the appraisal cannot be confirmed there
    record = judged(recorded.record, VerifyOptions(allow_software=True))
    assert status_of(record, "appraisal") is CheckStatus.SKIP
    assert record.exit_code is ExitCode.NOT_VERIFIABLE

    # without pinned keys the token's appraisal is confirmed by nobody: the claim fails
    unpinned = judged(claim, VerifyOptions())
    assert status_of(unpinned, "appraisal") is CheckStatus.FAIL
    assert unpinned.exit_code is ExitCode.FAILED


def test_renewed_evidence_brings_its_own_appraisal(tmp_path: Path, service: RunningService) -> None:
    settings = {"url": service.url(), "ca_file": str(service.ca_file), "timeout": 2}
    attestor = Attestor.load(plugin.SPEC, "test", settings)
    renewals = []

    def renew(session: EvidenceSession) -> None:
        service.set_mode("warning")
        try:
            renewals.append(renew_evidence(session, attestor, policy="warn_only"))
        finally:
            service.set_mode("succeed")

    start = datetime.now(UTC) + timedelta(seconds=2)
    recorded = record_session(tmp_path, attestor=attestor, start=start, during=renew)
    (renewal,) = renewals
    assert not renewal.fresh and renewal.reason is not None
    assert f"from affirming by {service.issuer} to warning by" in renewal.reason
    # the claim carries the newest token, and states that token's appraisal
    claim = recorded.claim
    assert claim["trace"]["appraisal"] == {"status": "warning", "verifier": service.issuer}
    pins = {"keys": str(service.jwks_file), "issuer": service.issuer, "audience": AUDIENCE}
    options = VerifyOptions(platform_policy={"opaque": pins}, audit_log=recorded.db)
    report = judged(claim, options)
    assert status_of(report, "appraisal") is CheckStatus.PASS, report.checks
    assert status_of(report, "log: issuer") is CheckStatus.PASS, report.checks
    assert report.exit_code is ExitCode.NOT_VERIFIABLE, report.checks


def test_a_software_claim_cannot_be_given_an_appraisal(tmp_path: Path) -> None:
    key = ClaimKey.generate()
    claim = record_session(tmp_path, key=key).claim
    assert claim["trace"]["appraisal"] == NONE
    options = VerifyOptions(allow_software=True)
    assert status_of(judged(claim, options), "appraisal") is CheckStatus.PASS
    forged = insider(claim, key, {"status": "affirming", "verifier": ISSUER})
    report = judged(forged, options)
    assert status_of(report, "appraisal") is CheckStatus.FAIL
    assert report.exit_code is ExitCode.FAILED
    record = record_session(tmp_path / "record", key=key).record
    assert judged(record, options).exit_code is ExitCode.OK
    forged_record = copy.deepcopy(record)
    del forged_record["signature"]
    forged_record["appraisal"] = {"status": "affirming", "verifier": ISSUER}
    report = judged(signed(forged_record, key), options)
    assert status_of(report, "appraisal") is CheckStatus.SKIP
    assert report.exit_code is ExitCode.NOT_VERIFIABLE
