"""Every leaf of a real claim changed, re-signed, and verified as an auditor would.

Two real claims, each with its audit log: a software-mode session and a session attested
by a software TPM (swtpm) whose AK a privacy CA certified. Every leaf of each claim but
its signature is changed in a way that keeps its type (a character flipped, a number
incremented, a flag toggled, a list grown or shrunk, an enumerated value swapped for
another valid one, an object given a member or relieved of one), and each change is then
signed twice:

- by a forger with a fresh key, the binding fixed up to that key (and, in software mode,
  the unsigned evidence's copy of it);
- by an insider holding the gateway's own key, the binding kept right.

Each is verified with the pins an auditor has: policy and catalog hash, the audit log,
the TPM roots and the expected measurement (and `--allow-software` for the software
claim), never the key. Every variant must be rejected, and every insider's variant by the
check `claim_variants.CAUGHT_BY` names for that leaf: the table is the map of which check
catches what.
"""

from __future__ import annotations

import copy
import json
import shutil
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from cmcp_cli.attestation import software
from cmcp_cli.attestation.api import CheckStatus, GatewayFacts
from cmcp_cli.attestation.manager import ProviderRegistry, load_providers
from cmcp_cli.attestation.measurement import installation_digest
from cmcp_cli.audit.matching import LOG_CHECKS, match_claim
from cmcp_cli.audit.replay import replay_log
from cmcp_cli.catalog.model import load_catalog
from cmcp_cli.claim.keys import ClaimKey
from cmcp_cli.claim.model import sign_claim, unsigned
from cmcp_cli.claim.signing import signed
from cmcp_cli.errors import ExitCode
from cmcp_cli.evidence.attesting import Attestor
from cmcp_cli.evidence.freshness import renew_evidence
from cmcp_cli.evidence.session import EvidenceSession
from cmcp_cli.gateway.enforcement.wiring import authorizer_for
from cmcp_cli.policy.bundle import read_bundle
from cmcp_cli.policy.engine import compile_bundle
from cmcp_cli.policy.request import MessageKind
from cmcp_cli.verify.claim import VerifyOptions, VerifyReport, verify_document
from tests.claim_variants import (
    ADDED,
    Variant,
    at,
    fix_binding,
    resigned,
    unchanged,
    variants,
)
from tests.sessions import RecordedSession, probe_measurement, record_session
from tests.support import QUICKSTART, run_cmcp

AK_HANDLE = 0x81010002


@dataclass(frozen=True)
class Subject:
    """A real claim, the key that signed it, and the pins an auditor verifies it with."""

    name: str
    recorded: RecordedSession
    key: ClaimKey
    options: VerifyOptions
    trust_args: tuple[str | Path, ...]  # the same pins, as `cmcp verify` options
    software: bool

    @property
    def claim(self) -> dict[str, Any]:
        return self.recorded.claim


def _pinned(attestor: Attestor) -> Attestor:
    """`attestor` as a gateway runs it with `expected_measurement` and `validity_seconds`
    set: its measurement pinned, so the claim names the pin it matched."""
    return replace(attestor, pins=(probe_measurement(attestor),), validity_seconds=3600)


def _more_of_the_session(session: EvidenceSession, attestor: Attestor) -> None:
    """Messages of other kinds (a listing answered, a prompt whose upstream failed, a
    sampling request denied), a drift, and a re-attestation, so every counter and flag is
    set and the claim carries evidence an attestation entry records."""
    assert renew_evidence(session, attestor, policy="fail_closed").fresh
    bundle = compile_bundle(read_bundle(QUICKSTART / "policies"))
    authorizer = authorizer_for(bundle, load_catalog(QUICKSTART / "catalog.json"))
    messages: tuple[tuple[MessageKind, str, dict[str, Any]], ...] = (
        (MessageKind.LIST_TOOLS, "demo", {}),
        (MessageKind.GET_PROMPT, "weather_report", {"name": "weather_report"}),
        (MessageKind.CREATE_MESSAGE, "demo", {"messages": [], "maxTokens": 10}),
    )
    for index, (kind, target, params) in enumerate(messages):
        call_id = f"m-{index}"
        verdict = session.decide_message(
            authorizer,
            call_id=call_id,
            agent_id="anonymous",
            kind=kind,
            server="demo",
            target=target,
            params=params,
            data_class="internal",
        )
        if kind is MessageKind.GET_PROMPT:
            session.recorder.fault(
                error="upstream went away", stage="forward", call_id=call_id, kind=kind.value
            )
        elif verdict.forwarded:
            session.outcome(call_id=call_id, response={"tools": []}, latency_us=900)
    session.recorder.drift(
        tool="get_weather", expected_hash="sha256:" + "1" * 64, advertised_hash="sha256:" + "2" * 64
    )


def _pins(recorded: RecordedSession) -> VerifyOptions:
    claim = recorded.claim
    return VerifyOptions(
        policy_hash=claim["trace"]["policy"]["bundle_hash"],
        catalog_hash=claim["gateway"]["catalog"]["hash"],
        expected_measurements=(claim["trace"]["runtime"]["measurement"],),
        audit_log=recorded.db,
        at=datetime.fromtimestamp(claim["trace"]["iat"] + 60, UTC),
    )


def _cli_pins(recorded: RecordedSession) -> tuple[str | Path, ...]:
    claim = recorded.claim
    return (
        "--policy-hash",
        claim["trace"]["policy"]["bundle_hash"],
        "--catalog-hash",
        claim["gateway"]["catalog"]["hash"],
        "--expected-measurement",
        claim["trace"]["runtime"]["measurement"],
        "--audit-log",
        recorded.db,
    )


@pytest.fixture(scope="module")
def registry() -> ProviderRegistry:
    return load_providers()


@pytest.fixture(scope="module")
def software_subject(tmp_path_factory: pytest.TempPathFactory) -> Subject:
    key = ClaimKey.generate()
    attestor = _pinned(Attestor.load(software.SPEC, "0.1.0"))
    recorded = record_session(
        tmp_path_factory.mktemp("software"),
        key=key,
        attestor=attestor,
        during=lambda session: _more_of_the_session(session, attestor),
        catalog_pinning="first-contact",  # the TPM session's is explicit: both are swapped
    )
    options = replace(_pins(recorded), allow_software=True)
    return Subject(
        "software", recorded, key, options, (*_cli_pins(recorded), "--allow-software"), True
    )


@pytest.fixture(scope="module")
def tpm_subject(tmp_path_factory: pytest.TempPathFactory) -> Subject:
    if shutil.which("swtpm") is None or shutil.which("swtpm_setup") is None:
        pytest.skip("swtpm is not installed (Debian: apt-get install swtpm swtpm-tools)")
    testing = pytest.importorskip("cmcp_tpm.testing", reason="the cmcp-tpm plugin is absent")
    if testing.tss is None:
        pytest.skip("tpm2-pytss is not installed: the TPM collector cannot run here")
    from cmcp_tpm import plugin

    folder = tmp_path_factory.mktemp("tpm")
    bundle = compile_bundle(read_bundle(QUICKSTART / "policies"))
    facts = GatewayFacts(bundle.hash, "sha256:" + "00" * 32, installation_digest())
    with testing.SoftwareTpm() as tpm:
        settings = {"tcti": tpm.tcti, "ak_handle": AK_HANDLE}
        first = Attestor.load(plugin.SPEC, "test", settings)
        first.collector.prepare(facts, settings)  # creates and persists the AK
        first.collector.close()
        ca = testing.TestCa.create()
        testing.enroll_attestation_key(tpm.tcti, AK_HANDLE, ca)  # as a privacy CA would
        attestor = Attestor.load(plugin.SPEC, "test", settings)
        attestor.collector.prepare(facts, settings)  # now with the AK certificate in NV
        attestor = _pinned(attestor)
        key = ClaimKey.generate()
        try:
            # now, not the helper's default of minutes ago: the swtpm's certificates are new
            recorded = record_session(
                folder,
                attestor=attestor,
                key=key,
                start=datetime.now(UTC),
                during=lambda session: _more_of_the_session(session, attestor),
            )
        finally:
            attestor.collector.close()
        roots = (ca.root_pem, tpm.ek_ca_pem)
    root_files: list[str | Path] = []
    for index, pem in enumerate(roots):
        path = folder / f"root-{index}.pem"
        path.write_bytes(pem)
        root_files += ["--trust-root", path]
    assert recorded.claim["gateway"]["attestation"]["evidence"]["ak_tie"]["status"] == "certified"
    options = replace(_pins(recorded), trust_roots=roots)
    return Subject("tpm", recorded, key, options, (*_cli_pins(recorded), *root_files), False)


@pytest.fixture(scope="module", params=["software", "tpm"])
def subject(request: pytest.FixtureRequest) -> Subject:
    found: Subject = request.getfixturevalue(f"{request.param}_subject")
    return found


def _resigned(subject: Subject, variant: Variant, key: ClaimKey) -> dict[str, Any]:
    forger = key is not subject.key
    return resigned(subject.claim, variant, key, forger=forger, software=subject.software)


def failed(report: VerifyReport) -> set[str]:
    return {check.name for check in report.checks if check.status is CheckStatus.FAIL}


def _verify(subject: Subject, claim: Any, registry: ProviderRegistry) -> VerifyReport:
    return verify_document(claim, subject.options, registry)


# -- the suite --------------------------------------------------------------------------


def test_the_genuine_claims_verify_with_every_log_check_passing(
    subject: Subject, registry: ProviderRegistry
) -> None:
    report = _verify(subject, subject.claim, registry)
    statuses = {check.name: check.status for check in report.checks}
    assert report.exit_code is ExitCode.OK, [c.to_json() for c in report.checks]
    assert report.hardware_attested is not subject.software
    for name in ("audit log", "policy pin", "catalog pin", "measurement", *LOG_CHECKS):
        assert statuses[name] is CheckStatus.PASS, name
    # the session is one a suite of changes can be measured against: every counter moves
    summary = subject.claim["gateway"]["call_summary"]
    assert subject.claim["gateway"]["catalog"]["drift_detected"] is True
    assert set(summary["by_kind"]) == {"call_tool", "list_tools", "get_prompt", "create_message"}
    assert summary["by_kind"]["get_prompt"]["faulted"] == 1 and summary["tools_invoked"]
    assert summary["by_kind"]["create_message"]["denied"] == 1
    assert subject.claim["trace"]["data_class"] == "confidential"
    pinning = "first-contact" if subject.software else "explicit"
    assert subject.claim["gateway"]["catalog"]["pinning"] == pinning
    # the evidence is the re-attestation's, under the pin it matched
    attestation = subject.claim["gateway"]["attestation"]
    assert attestation["measurement_pin"] == subject.claim["trace"]["runtime"]["measurement"]
    assert attestation["validity_seconds"] == 3600 and attestation["stale_warnings"] == 0


def test_a_claim_resignedunchanged_by_its_own_key_still_verifies(
    subject: Subject, registry: ProviderRegistry
) -> None:
    same = Variant("nothing changed", "", unchanged, "")
    report = _verify(subject, _resigned(subject, same, subject.key), registry)
    assert report.exit_code is ExitCode.OK, sorted(failed(report))


def test_a_claim_resignedunchanged_by_a_fresh_key_fails_the_issuer_check(
    subject: Subject, registry: ProviderRegistry
) -> None:
    same = Variant("nothing changed", "", unchanged, "")
    report = _verify(subject, _resigned(subject, same, ClaimKey.generate()), registry)
    expected = {"log: issuer"} if subject.software else {"log: issuer", "tpm.attest.extra_data"}
    assert failed(report) == expected
    (issuer,) = [check for check in report.checks if check.name == "log: issuer"]
    assert "trace.cnf.jwk" in issuer.reason and subject.recorded.key_thumbprint in issuer.reason


def test_every_leaf_changed_and_resigned_by_the_gateway_key_fails_its_named_check(
    subject: Subject, registry: ProviderRegistry
) -> None:
    found = list(variants(subject.claim))
    assert len(found) > 150
    missed = []
    for variant in found:
        report = _verify(subject, _resigned(subject, variant, subject.key), registry)
        if report.exit_code is not ExitCode.FAILED or variant.caught_by not in failed(report):
            missed.append((variant.label, variant.caught_by, sorted(failed(report))))
    assert not missed, "\n".join(map(str, [f"{len(missed)} of {len(found)}:", *missed]))


def test_every_leaf_changed_and_resigned_by_a_fresh_key_is_rejected(
    subject: Subject, registry: ProviderRegistry
) -> None:
    forger = ClaimKey.generate()
    missed = []
    for variant in variants(subject.claim):
        if variant.path.startswith("trace.cnf"):
            continue  # the forger's key replaces the key: nothing of the change is left
        report = _verify(subject, _resigned(subject, variant, forger), registry)
        # a malformed claim is refused before anything else is read; any other names the
        # forger's key as not the one the log records (or, for another session id, the log
        # holds no such session)
        named = {
            "format",
            "log: issuer",
            "audit log" if variant.path == "gateway.session_id" else "",
            # the record's own signature is checked before the issuer
            "signature" if variant.path == "trace.signature" else "",
        }
        if report.exit_code is not ExitCode.FAILED or not named & failed(report):
            missed.append((variant.label, sorted(failed(report))))
    assert not missed, "\n".join(map(str, missed))


def test_replay_audit_finds_every_change_the_log_determines(subject: Subject) -> None:
    """`replay-audit --claim` compares with `match_claim`, as verify does: each change the
    table gives to a log check is one of its mismatches, under that check's name."""
    replay = replay_log(subject.recorded.db)[subject.recorded.session_id]
    missed = []
    for variant in variants(subject.claim):
        if variant.path == "gateway.session_id":
            continue  # replay-audit then finds no such session in the log (exit 2)
        if variant.path == "trace.signature":
            continue  # the log determines no signature: verify's signature check finds it
        match = match_claim(replay, _resigned(subject, variant, subject.key))
        names = {check.name for check in match.checks if check.mismatches}
        expected = variant.caught_by if variant.caught_by in LOG_CHECKS else None
        if match.unmatched is not None or not names or (expected and expected not in names):
            missed.append((variant.label, variant.caught_by, sorted(names)))
    assert not missed, "\n".join(map(str, missed))


def test_every_leaf_of_a_trace_record_resigned_by_the_gateway_key_fails_its_check(
    software_subject: Subject, registry: ProviderRegistry
) -> None:
    """A standalone TRACE record has no gateway part: with the log, everything it does
    state is compared (its subject names the session, so a changed one finds none)."""
    subject = software_subject
    record = {k: v for k, v in subject.recorded.record.items() if k != "signature"}
    assert record == unsigned(subject.claim)["trace"]
    missed = []
    # the record's members are the claim's trace's: named as in the claim, so the table holds
    for variant in variants({"trace": record}):
        if variant.path in ("trace", ADDED):
            continue  # no record around the record
        changed = copy.deepcopy({"trace": record})
        variant.change(changed)
        expected = variant.caught_by
        if variant.path == "trace.subject" and expected != "format":
            expected = "audit log"
        report = verify_document(signed(changed["trace"], subject.key), subject.options, registry)
        if report.exit_code is not ExitCode.FAILED or expected not in failed(report):
            missed.append((variant.label, expected, sorted(failed(report))))
    assert not missed, "\n".join(map(str, missed))


def _issue_case(subject: Subject, folder: Path) -> Path:
    """The forgery of the report: model, data class, drift flag and SLSA level edited, the
    claim re-signed with a fresh key and the binding (the software evidence's too) fixed."""
    forger = ClaimKey.generate()
    claim = copy.deepcopy(subject.claim)
    claim["trace"]["model"]["model_id"] = "another-model"
    claim["trace"]["data_class"] = "public"
    claim["gateway"]["catalog"]["drift_detected"] = False
    claim["trace"]["build_provenance"]["slsa_level"] = 3
    claim["trace"]["cnf"]["jwk"] = dict(forger.public_jwk)
    fix_binding(claim, subject.software)
    path = folder / "forged.claim.json"
    path.write_text(json.dumps(sign_claim(claim, forger)))
    return path


def test_the_reported_forgery_fails_verify_and_replay_audit_naming_each_check(
    software_subject: Subject, tmp_path: Path
) -> None:
    subject = software_subject
    forged = _issue_case(subject, tmp_path)
    result = run_cmcp("verify", forged, *subject.trust_args, "--json")
    assert result.returncode == 1, result.stdout
    reasons = {c["name"]: c["reason"] for c in result.json()["checks"] if c["status"] == "fail"}
    assert set(reasons) == {"log: session", "log: issuer", "log: data class", "log: drift"}
    assert (
        'trace.model.model_id: the claim states "another-model", the log gives "claude-test"'
        in (reasons["log: session"])
    )
    assert (
        'trace.data_class: the claim states "public", the log gives "confidential"'
        in (reasons["log: data class"])
    )
    assert (
        "gateway.catalog.drift_detected: the claim states false, the log gives true"
        in (reasons["log: drift"])
    )
    issuer = reasons["log: issuer"]
    assert "trace.build_provenance.slsa_level: the claim states 3, the log gives 0" in issuer
    assert f"the log gives key {subject.recorded.key_thumbprint}" in issuer
    assert "gateway.attestation.evidence" in issuer  # the software evidence was rewritten

    human = run_cmcp("verify", forged, *subject.trust_args)
    assert human.returncode == 1 and "NOT VERIFIED: log: " in human.stderr

    replayed = run_cmcp("replay-audit", "--db", subject.recorded.db, "--claim", forged, "--json")
    assert replayed.returncode == 1, replayed.stdout
    (session,) = replayed.json()["sessions"]
    messages = [p["message"] for p in session["problems"]]
    assert {p["kind"] for p in session["problems"]} == {"claim_mismatch"}
    for prefix, member in (
        ("log: session", "trace.model.model_id"),
        ("log: data class", "trace.data_class"),
        ("log: drift", "gateway.catalog.drift_detected"),
        ("log: issuer", "trace.build_provenance.slsa_level"),
        ("log: issuer", "trace.cnf.jwk"),
    ):
        assert any(m.startswith(f"{prefix}: {member}:") for m in messages), (member, messages)


def test_a_first_contact_catalog_passed_off_as_explicit_fails_verify_and_replay_audit(
    software_subject: Subject, tmp_path: Path
) -> None:
    """An insider re-signs the claim with the session's own key, stating that the catalog
    was the operator's own file: only the log knows it was pinned at first contact."""
    subject = software_subject
    genuine = run_cmcp("verify", subject.recorded.claim_path, *subject.trust_args, "--json")
    assert genuine.returncode == 0, genuine.stdout
    assert genuine.json()["catalog_pinning"] == "first-contact"
    human = run_cmcp("verify", subject.recorded.claim_path, *subject.trust_args)
    assert "catalog pinning first-contact: the catalog is whatever the upstreams" in human.stderr
    claim = copy.deepcopy(subject.claim)
    claim.pop("signature")
    claim["gateway"]["catalog"]["pinning"] = "explicit"
    forged = tmp_path / "explicit.claim.json"
    forged.write_text(json.dumps(sign_claim(claim, subject.key)))
    result = run_cmcp("verify", forged, *subject.trust_args, "--json")
    assert result.returncode == 1, result.stdout
    failures = {c["name"]: c["reason"] for c in result.json()["checks"] if c["status"] == "fail"}
    assert set(failures) == {"log: session"}
    assert (
        'gateway.catalog.pinning: the claim states "explicit", the log gives "first-contact"'
        in failures["log: session"]
    )
    replayed = run_cmcp("replay-audit", "--db", subject.recorded.db, "--claim", forged, "--json")
    assert replayed.returncode == 1, replayed.stdout
    (session,) = replayed.json()["sessions"]
    assert [p["message"] for p in session["problems"]] == [
        'log: session: gateway.catalog.pinning: the claim states "explicit", the log gives '
        '"first-contact"'
    ]


def test_an_insiders_change_to_a_tpm_claim_fails_verify_through_the_cli(
    tpm_subject: Subject, tmp_path: Path
) -> None:
    subject = tpm_subject
    genuine = run_cmcp("verify", subject.recorded.claim_path, *subject.trust_args, "--json")
    assert genuine.returncode == 0, genuine.stdout
    assert genuine.json()["hardware_attested"] is True
    for path, value, check in (
        (("trace", "data_class"), "public", "log: data class"),
        (("gateway", "call_summary", "tools_invoked"), [], "log: counters"),
    ):
        claim = copy.deepcopy(subject.claim)
        at(claim, path[:-1])[path[-1]] = value
        tampered = tmp_path / "tampered.claim.json"
        tampered.write_text(json.dumps(sign_claim(claim, subject.key)))
        result = run_cmcp("verify", tampered, *subject.trust_args, "--json")
        assert result.returncode == 1, result.stdout
        statuses = {c["name"]: c["status"] for c in result.json()["checks"]}
        assert statuses[check] == "fail"
        # the evidence is the gateway's own and still vouches for its key: only the log knows
        assert statuses["tpm.signature"] == statuses["tpm.attest.extra_data"] == "pass"


def test_a_trace_record_edited_and_resigned_fails_verify_through_the_cli(
    software_subject: Subject, tmp_path: Path
) -> None:
    subject = software_subject
    record = copy.deepcopy(subject.recorded.record)
    record.pop("signature")
    record["model"]["model_id"] = "another-model"
    path = tmp_path / "record.json"
    path.write_text(json.dumps(signed(record, subject.key)))
    result = run_cmcp(
        "verify", path, "--allow-software", "--audit-log", subject.recorded.db, "--json"
    )
    assert result.returncode == 1
    report = result.json()
    assert report["kind"] == "trace-record"
    assert report["verdict"].startswith("NOT VERIFIED: log: session failed (trace.model.model_id")
