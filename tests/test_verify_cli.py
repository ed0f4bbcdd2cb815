"""`cmcp verify` through the real console script: exit codes, JSON on stdout, errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cmcp_cli.audit.matching import LOG_CHECKS
from cmcp_cli.claim.keys import ClaimKey
from cmcp_cli.claim.model import sign_claim
from tests.sessions import RecordedSession, record_session
from tests.support import run_cmcp


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> RecordedSession:
    return record_session(tmp_path_factory.mktemp("verify"))


def test_software_claim_exits_3_unless_allowed(recorded: RecordedSession) -> None:
    strict = run_cmcp("verify", recorded.claim_path)
    assert strict.returncode == 3
    assert "VALID, NOT HARDWARE-ATTESTED" in strict.stderr
    assert strict.stdout == ""
    allowed = run_cmcp("verify", recorded.claim_path, "--allow-software")
    assert allowed.returncode == 0, allowed.stderr


def test_everything_pinned_and_the_audit_log_reproduced(recorded: RecordedSession) -> None:
    claim = recorded.claim
    result = run_cmcp(
        "verify",
        recorded.claim_path,
        "--allow-software",
        "--json",
        "--trusted-key",
        recorded.key_thumbprint,
        "--policy-hash",
        claim["trace"]["policy"]["bundle_hash"],
        "--catalog-hash",
        claim["gateway"]["catalog"]["hash"],
        "--expected-measurement",
        claim["trace"]["runtime"]["measurement"],
        "--audit-log",
        recorded.db,
    )
    assert result.returncode == 0, result.stderr
    report = result.json()
    statuses = {c["name"]: c["status"] for c in report["checks"]}
    for name in (
        "format",
        "signature",
        "key pin",
        "freshness",
        "policy pin",
        "catalog pin",
        "consistency",
        "binding",
        "evidence.binding",
        "measurement",
        "audit log",
        *LOG_CHECKS,
    ):
        assert statuses[name] == "pass", (name, report)
    assert statuses["evidence.hardware"] == "skip"
    assert report["software_mode"] is True and report["hardware_attested"] is False


def test_a_tampered_claim_exits_1_naming_the_check(
    recorded: RecordedSession, tmp_path: Path
) -> None:
    claim = json.loads(recorded.claim_path.read_text())
    claim["gateway"]["call_summary"]["denied"] = 0
    path = tmp_path / "tampered.json"
    path.write_text(json.dumps(claim))
    result = run_cmcp("verify", path, "--allow-software", "--json")
    assert result.returncode == 1
    report = result.json()
    assert report["verdict"].startswith("NOT VERIFIED: signature failed")
    human = run_cmcp("verify", path)
    assert human.returncode == 1
    assert "NOT VERIFIED" in human.stderr


def test_a_wrong_key_pin_exits_1(recorded: RecordedSession, tmp_path: Path) -> None:
    jwk = tmp_path / "gateway.jwk"
    jwk.write_text(
        json.dumps(
            {"kty": "OKP", "crv": "Ed25519", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}
        )
    )
    result = run_cmcp("verify", recorded.claim_path, "--allow-software", "--trusted-key", jwk)
    assert result.returncode == 1
    assert "the claim was re-signed" in result.stderr


def test_audit_log_of_another_session_fails(recorded: RecordedSession, tmp_path: Path) -> None:
    other = record_session(tmp_path, session_id="other")
    result = run_cmcp("verify", recorded.claim_path, "--allow-software", "--audit-log", other.db)
    assert result.returncode == 1
    assert "holds no entries of session sess-1" in result.stderr


def test_standalone_trace_record(recorded: RecordedSession) -> None:
    assert run_cmcp("verify", recorded.record_path).returncode == 3
    result = run_cmcp(
        "verify", recorded.record_path, "--allow-software", "--audit-log", recorded.db, "--json"
    )
    assert result.returncode == 0, result.stdout
    assert result.json()["kind"] == "trace-record"
    statuses = {c["name"]: c["status"] for c in result.json()["checks"]}
    # a record has no catalog: every log check but the drift flag's
    assert {name: statuses.get(name) for name in LOG_CHECKS} == {
        **dict.fromkeys(LOG_CHECKS, "pass"),
        "log: drift": None,
    }


def test_freshness_options(recorded: RecordedSession) -> None:
    iat = recorded.claim["trace"]["iat"]
    stale = run_cmcp("verify", recorded.claim_path, "--allow-software", "--at", str(iat + 90_000))
    assert stale.returncode == 1
    assert "use --at or --max-age" in stale.stderr
    assert (
        run_cmcp(
            "verify",
            recorded.claim_path,
            "--allow-software",
            "--at",
            str(iat + 90_000),
            "--max-age",
            "100000",
        ).returncode
        == 0
    )
    assert (
        run_cmcp(
            "verify", recorded.claim_path, "--allow-software", "--at", "2026-11-21T10:00:00"
        ).returncode
        == 2
    )


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "cannot read claim"),
        ("{not json", "is not JSON"),
        ('{"a": 1, "a": 2}', "duplicate key"),
    ],
)
def test_unreadable_input_exits_2(tmp_path: Path, content: str | None, message: str) -> None:
    path = tmp_path / "claim.json"
    if content is not None:
        path.write_text(content)
    result = run_cmcp("verify", path)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_malformed_claim_exits_1(tmp_path: Path) -> None:
    path = tmp_path / "claim.json"
    path.write_text('{"cmcp_version": "1.0", "trace": {}, "gateway": {}}')
    result = run_cmcp("verify", path, "--json")
    assert result.returncode == 1
    assert result.json()["checks"][0]["name"] == "format"


def test_missing_plugin_exits_3(recorded: RecordedSession, tmp_path: Path) -> None:
    from cmcp_cli.attestation.binding import binding_from_claim

    key = ClaimKey.generate()
    claim = json.loads(recorded.claim_path.read_text())
    claim["trace"]["cnf"]["jwk"] = key.public_jwk
    claim["gateway"]["attestation"]["binding"] = binding_from_claim(claim, key.thumbprint).hex()
    # hardware evidence of a type no installed plugin provides
    claim["gateway"]["attestation"]["evidence_type"] = "example-tee-report-v1"
    claim["trace"]["runtime"]["platform"] = "amd-sev-snp"
    path = tmp_path / "hardware.json"
    path.write_text(json.dumps(sign_claim(claim, key)))
    result = run_cmcp("verify", path, "--json")
    assert result.returncode == 3, result.stdout
    evidence = next(c for c in result.json()["checks"] if c["name"] == "evidence")
    assert (
        "no installed plugin verifies evidence type 'example-tee-report-v1'" in evidence["reason"]
    )


def test_the_auditor_pins_the_key_the_log_records(
    recorded: RecordedSession, tmp_path: Path
) -> None:
    """replay-audit prints the session's claim-signing key from its log; pinned with
    --trusted-key it accepts the gateway's claim and refuses one re-signed by another key."""
    replayed = run_cmcp("replay-audit", "--db", recorded.db, "--json")
    assert replayed.returncode == 0, replayed.stderr
    (session,) = replayed.json()["sessions"]
    thumbprint = session["claim_key_thumbprint"]
    assert thumbprint == recorded.key_thumbprint
    pinned = run_cmcp(
        "verify", recorded.claim_path, "--allow-software", "--trusted-key", thumbprint
    )
    assert pinned.returncode == 0, pinned.stderr
    forger = ClaimKey.generate()
    forged = json.loads(recorded.claim_path.read_text())
    forged["trace"]["cnf"]["jwk"] = forger.public_jwk
    path = tmp_path / "forged.json"
    path.write_text(json.dumps(sign_claim(forged, forger)))
    result = run_cmcp("verify", path, "--allow-software", "--trusted-key", thumbprint, "--json")
    assert result.returncode == 1
    statuses = {c["name"]: c["status"] for c in result.json()["checks"]}
    assert statuses["key pin"] == "fail"
