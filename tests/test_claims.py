"""Claims: TRACE v0.2 conformance checked by a third party, signatures, tampering, Unicode."""

from __future__ import annotations

import copy
import json
import warnings
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import agentrust_trace
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cmcp_cli.attestation.api import CheckStatus
from cmcp_cli.attestation.manager import load_providers
from cmcp_cli.claim.keys import ClaimKey, jwk_thumbprint
from cmcp_cli.claim.model import EAT_PROFILE, sign_claim
from cmcp_cli.errors import ExitCode
from cmcp_cli.verify.claim import VerifyOptions, verify_document
from tests.sessions import RecordedSession, record_session

REGISTRY = load_providers(plugins=[])


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> RecordedSession:
    return record_session(tmp_path_factory.mktemp("claims"))


def verify(document: Any, **options: Any) -> Any:
    return verify_document(document, VerifyOptions(allow_software=True, **options), REGISTRY)


def failed(report: Any) -> list[str]:
    return [c.name for c in report.checks if c.status is CheckStatus.FAIL]


def test_the_trace_record_is_trace_v0_2_for_an_independent_implementation(
    recorded: RecordedSession,
) -> None:
    record = recorded.record
    assert record["eat_profile"] == EAT_PROFILE
    agentrust_trace.validate_json(record)
    agentrust_trace.validate_json(recorded.claim["trace"])
    result = agentrust_trace.verify_record(record, record["cnf"]["jwk"], max_age_seconds=None)
    assert result is not None
    assert record["subject"] == f"spiffe://cmcp.local/cmcp/session/{recorded.session_id}"
    assert record["tool_transcript"] == {
        "hash": recorded.claim["gateway"]["audit_chain"]["tip"],
        "call_count": 4,
    }
    assert record["appraisal"]["status"] == "none"
    assert "d" not in record["cnf"]["jwk"]
    assert set(recorded.claim) == {"cmcp_version", "trace", "gateway", "signature"}
    assert set(recorded.claim["gateway"]) == {
        "session_id",
        "gateway_version",
        "sequence_number",
        "previous_claim",
        "audit_chain",
        "call_summary",
        "catalog",
        "attestation",
    }
    assert set(recorded.claim["gateway"]["attestation"]) == {
        "provider",
        "provider_version",
        "evidence_type",
        "generated_at",
        "binding",
        "evidence",
    }


def test_a_genuine_claim_verifies(recorded: RecordedSession) -> None:
    report = verify(recorded.claim, trusted_key=recorded.key_thumbprint)
    assert failed(report) == []
    assert report.exit_code is ExitCode.OK
    assert report.software and not report.hardware_attested
    strict = verify_document(recorded.claim, VerifyOptions(), REGISTRY)
    assert strict.exit_code is ExitCode.NOT_VERIFIABLE


def leaves(value: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[tuple[Any, ...], Any]]:
    if isinstance(value, dict):
        for key, member in value.items():
            yield from leaves(member, (*path, key))
    elif isinstance(value, list) and value:
        for index, member in enumerate(value):
            yield from leaves(member, (*path, index))
    else:
        yield path, value


def altered(value: Any) -> Any:
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if isinstance(value, str):
        return value[:-1] + ("A" if value[-1:] != "A" else "B") if value else "x"
    if isinstance(value, list):
        return ["x"]
    return "changed"


def test_changing_any_single_leaf_fails_verification(recorded: RecordedSession) -> None:
    paths = list(leaves(recorded.claim))
    assert len(paths) > 40  # every leaf of the claim, the signature included
    for path, value in paths:
        tampered = copy.deepcopy(recorded.claim)
        target = tampered
        for step in path[:-1]:
            target = target[step]
        target[path[-1]] = altered(value)
        report = verify(tampered)
        assert report.exit_code is ExitCode.FAILED, (
            f"changing {'.'.join(map(str, path))} went unnoticed"
        )


def test_a_resigned_claim_fails_the_key_pin_and_the_binding(recorded: RecordedSession) -> None:
    forger = ClaimKey.generate()
    forged = copy.deepcopy(recorded.claim)
    forged["trace"]["cnf"]["jwk"] = forger.public_jwk
    summary = forged["gateway"]["call_summary"]
    for counts in (summary, summary["by_kind"]["call_tool"]):
        counts["denied"] = 0
        counts["allowed"] = 3
    forged = sign_claim(forged, forger)
    report = verify(forged, trusted_key=recorded.key_thumbprint)
    assert failed(report) == ["key pin", "binding", "evidence.binding"]
    key_pin = next(c for c in report.checks if c.name == "key pin")
    assert "re-signed" in key_pin.reason


def test_a_resigned_claim_with_another_policy_fails_the_policy_pin(
    recorded: RecordedSession,
) -> None:
    forger = ClaimKey.generate()
    forged = copy.deepcopy(recorded.claim)
    forged["trace"]["cnf"]["jwk"] = forger.public_jwk
    forged["trace"]["policy"]["bundle_hash"] = "sha256:" + "e" * 64
    forged = sign_claim(forged, forger)
    report = verify(forged, policy_hash=recorded.claim["trace"]["policy"]["bundle_hash"])
    assert "policy pin" in failed(report)


def test_freshness_is_judged_at_the_given_time(recorded: RecordedSession) -> None:
    iat = recorded.claim["trace"]["iat"]
    later = datetime.fromtimestamp(iat + 2 * 86_400, UTC)
    assert "freshness" in failed(verify(recorded.claim, at=later))
    assert failed(verify(recorded.claim, at=later, max_age_seconds=3 * 86_400)) == []
    assert "freshness" in failed(verify(recorded.claim, at=datetime.fromtimestamp(iat - 3600, UTC)))


def test_pins_that_match_pass_and_the_others_fail(recorded: RecordedSession) -> None:
    claim = recorded.claim
    good = verify(
        claim,
        policy_hash=claim["trace"]["policy"]["bundle_hash"],
        catalog_hash=claim["gateway"]["catalog"]["hash"],
        expected_measurements=(claim["trace"]["runtime"]["measurement"],),
    )
    assert failed(good) == []
    bad = verify(
        claim, catalog_hash="sha256:" + "0" * 64, expected_measurements=("sha384:" + "1" * 96,)
    )
    assert failed(bad) == ["catalog pin", "measurement"]


UNICODE_CALLS = (
    (
        "get_weather",
        {"city": "東京", "note": "😀 ǅ \u2028", "\ue000": "private", "\U0001f600": "emoji key"},
    ),
)


def test_unicode_round_trips_sign_write_read_verify(tmp_path: Path) -> None:
    recorded = record_session(tmp_path, session_id="セッション-😀", calls=UNICODE_CALLS)
    text = recorded.claim_path.read_text(encoding="utf-8")
    assert "セッション-😀" in text
    reread = json.loads(text)
    assert failed(verify(reread)) == []
    record = json.loads(recorded.record_path.read_text(encoding="utf-8"))
    assert failed(verify(record)) == []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        agentrust_trace.verify_record(record, record["cnf"]["jwk"], max_age_seconds=None)


def test_floats_and_foreign_profiles_are_refused(recorded: RecordedSession) -> None:
    with_float = copy.deepcopy(recorded.claim)
    with_float["gateway"]["sequence_number"] = 1.0
    assert failed(verify(with_float)) == ["format"]
    v01 = copy.deepcopy(recorded.record)
    v01["eat_profile"] = "tag:agentrust.io,2026:trace-v0.1"
    assert failed(verify(v01)) == ["format"]
    assert failed(verify(["not", "a", "claim"])) == ["format"]
    hostile: dict[str, Any]
    for hostile in (
        {"cmcp_version": "1.0"},
        {"gateway": {}},
        {"cmcp_version": "1.0", "trace": [], "gateway": 7},
        {},
    ):
        assert failed(verify(hostile)) == ["format"], hostile


def test_key_thumbprint_is_rfc7638() -> None:
    # RFC 8037 appendix A.3: the thumbprint of its Ed25519 example key
    jwk = {"kty": "OKP", "crv": "Ed25519", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}
    assert jwk_thumbprint(jwk) == "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"


_any_json = st.recursive(
    st.one_of(
        st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=8)
    ),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=10,
)


@settings(max_examples=300, deadline=None)
@given(_any_json)
def test_arbitrary_documents_fail_without_raising(document: Any) -> None:
    report = verify(document)
    assert report.exit_code is ExitCode.FAILED


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.data(), _any_json)
def test_a_claim_with_any_member_replaced_fails_without_raising(
    recorded: RecordedSession, data: st.DataObject, replacement: Any
) -> None:
    tampered = copy.deepcopy(recorded.claim)
    target = tampered
    while True:
        key = data.draw(st.sampled_from(sorted(target)))
        if isinstance(target[key], dict) and target[key] and data.draw(st.booleans()):
            target = target[key]
            continue
        break
    if target[key] == replacement:
        return
    target[key] = replacement
    assert verify(tampered).exit_code is ExitCode.FAILED


def test_a_verifier_that_cannot_load_leaves_the_claim_not_verifiable(
    recorded: RecordedSession,
) -> None:
    registry = load_providers(plugins=[])
    software = registry.providers["software-only"]

    registry.providers["software-only"] = replace(
        software, spec=replace(software.spec, verifier="vendor_sdk.verifier:Verifier")
    )
    report = verify_document(recorded.claim, VerifyOptions(allow_software=True), registry)
    (evidence,) = [c for c in report.checks if c.name == "evidence"]
    assert evidence.status is CheckStatus.SKIP
    assert "verifier cannot load here (ModuleNotFoundError: No module named 'vendor_sdk')" in (
        evidence.reason
    )
    assert report.exit_code is ExitCode.NOT_VERIFIABLE
