"""The collector against the token service double, a real HTTPS process on 127.0.0.1 with
its own test CA: a good token becomes evidence with its issuer's appraisal, and every way
the service can fail is a `ProviderError` with the reason (the session is not opened)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from cmcp_cli.attestation.api import Appraisal, CheckStatus, ProviderError, TrustInputs
from cmcp_cli.testing.verdicts import assert_fails, statuses
from cmcp_opaque import verifier as v
from cmcp_opaque.collector import OpaqueCollector
from cmcp_opaque.fetch import MAX_REDIRECTS
from cmcp_opaque.testing import AUDIENCE, MEASUREMENTS
from cmcp_opaque.token import measurement_digest
from cmcp_opaque.token_service import RunningService
from cmcp_opaque.verifier import OpaqueVerifier

BINDING = bytes(range(32))


@pytest.fixture
def mode(service: RunningService) -> Iterator[RunningService]:
    """The service, set back to succeed after each test."""
    yield service
    service.set_mode("succeed")


def settings(service: RunningService, **changes: Any) -> dict[str, Any]:
    base = {"url": service.url(), "ca_file": str(service.ca_file), "timeout": 1}
    return {**base, **changes}


def refusal(service: RunningService, mode: str, **changes: Any) -> str:
    service.set_mode(mode)
    with pytest.raises(ProviderError) as refused:
        OpaqueCollector().collect(BINDING, settings(service, **changes))
    assert refused.value.hint and "docs/opaque.md" in refused.value.hint
    return refused.value.message


def pins(service: RunningService) -> dict[str, Any]:
    return {
        "keys": str(service.jwks_file),
        "issuer": service.issuer,
        "audience": AUDIENCE,
        "urls": [service.url()],
    }


@pytest.mark.parametrize("answer", ["succeed", "json", "redirect-same-host"])
def test_a_good_token_is_evidence_with_its_issuers_appraisal(
    mode: RunningService, answer: str
) -> None:
    mode.set_mode(answer)
    before = len(mode.requests())
    evidence = OpaqueCollector().collect(BINDING, settings(mode))
    assert evidence.evidence_type == "opaque-token-v1"
    assert evidence.platform == "software-only"
    assert evidence.appraisal == Appraisal("affirming", mode.issuer)
    assert evidence.measurement == measurement_digest(MEASUREMENTS)
    assert set(evidence.evidence) == {"token", "url"} and evidence.evidence["url"] == mode.url()
    sent = mode.requests()[before:]
    assert sent[0]["body"] == {"nonce": "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8"}
    if answer == "redirect-same-host":
        assert [r["path"] for r in sent] == ["/token", "/moved"]
    trust = TrustInputs(binding=BINDING, at=datetime.now(UTC), platform_policy=pins(mode))
    verdict = OpaqueVerifier().verify(evidence.evidence, trust)
    assert not verdict.failed and not verdict.hardware_attested, verdict.checks
    assert verdict.appraisal == evidence.appraisal


def test_request_fields_and_nonce_encoding_are_sent(mode: RunningService) -> None:
    before = len(mode.requests())
    # The double decodes the nonce as base64url and states it so again: the very text sent,
    # which the collector reads back as hex.
    evidence = OpaqueCollector().collect(
        BINDING, settings(mode, nonce_encoding="hex", request_fields={"purpose": "cmcp"})
    )
    assert evidence.appraisal == Appraisal("affirming", mode.issuer)
    (sent,) = mode.requests()[before:]
    assert sent["body"] == {"purpose": "cmcp", "nonce": BINDING.hex()}


def test_a_refused_connection(mode: RunningService) -> None:
    assert "cannot connect" in refusal(mode, "refuse")


def test_a_timeout(mode: RunningService) -> None:
    assert "timed out" in refusal(mode, "timeout")


def test_a_slow_drip_answer_is_bounded(mode: RunningService) -> None:
    assert "did not finish its answer within 1.0 s" in refusal(mode, "drip")


def test_a_server_error(mode: RunningService) -> None:
    assert "answered HTTP 500" in refusal(mode, "error")


def test_a_malformed_answer(mode: RunningService) -> None:
    assert "1 dot-separated part" in refusal(mode, "malformed")


def test_an_unknown_shape(mode: RunningService) -> None:
    assert "no 'nonce' claim" in refusal(mode, "unknown-shape")


def test_a_token_for_another_nonce(mode: RunningService) -> None:
    assert "not the binding the gateway asked for" in refusal(mode, "other-nonce")


def test_a_redirect_to_another_host_is_not_followed(mode: RunningService) -> None:
    before = len(mode.requests())
    message = refusal(mode, "redirect-other-host")
    assert "another host" in message and "localhost" in message
    # the other host is this very service: following would have fetched a good token
    assert [r["host"] for r in mode.requests()[before:]] == [f"127.0.0.1:{mode.port}"]


def test_redirects_are_bounded(mode: RunningService) -> None:
    before = len(mode.requests())
    assert f"more than {MAX_REDIRECTS} times" in refusal(mode, "redirect-loop")
    assert len(mode.requests()) - before == MAX_REDIRECTS + 1


def test_the_test_ca_is_trusted_only_when_configured(mode: RunningService) -> None:
    with pytest.raises(ProviderError, match="CERTIFICATE_VERIFY_FAILED"):
        OpaqueCollector().collect(BINDING, {"url": mode.url(), "timeout": 1})


def test_a_token_signed_by_another_key_is_collected_and_fails_verification(
    mode: RunningService,
) -> None:
    # The collector holds no keys: the signature is the auditor's to judge.
    mode.set_mode("wrong-key")
    evidence = OpaqueCollector().collect(BINDING, settings(mode))
    trust = TrustInputs(binding=BINDING, at=datetime.now(UTC), platform_policy=pins(mode))
    verdict = OpaqueVerifier().verify(evidence.evidence, trust)
    assert_fails(verdict, v.SIGNATURE, "does not verify")
    assert statuses(verdict)[v.NONCE] is CheckStatus.SKIP and verdict.appraisal is None


@pytest.mark.parametrize(
    ("changes", "fragment"),
    [
        ({"url": "http://127.0.0.1:1/token"}, "is not https"),
        ({"url": "https://user:pw@127.0.0.1/token"}, "credentials"),
        ({"timeout": 0}, "timeout"),
        ({"timeout": True}, "timeout"),
        ({"nonce_encoding": "base32"}, "nonce encoding"),
        ({"request_fields": {"nonce": "x"}}, "carries the nonce"),
        ({"claim_names": {"nonce": "n", "status": "n"}}, "two purposes"),
        ({"status_values": {"ok": "great"}}, "not an EAR status"),
        ({"retries": 3}, "unknown setting"),
    ],
)
def test_unusable_settings_are_refused(
    service: RunningService, tmp_path: Path, changes: dict[str, Any], fragment: str
) -> None:
    with pytest.raises(ProviderError, match=fragment):
        OpaqueCollector().prepare(None, settings(service, **changes))  # type: ignore[arg-type]
    assert not OpaqueCollector().detect(settings(service, **changes)).present


def test_a_missing_ca_file_is_refused(service: RunningService, tmp_path: Path) -> None:
    with pytest.raises(ProviderError, match="is not a file"):
        OpaqueCollector().prepare(None, settings(service, ca_file=str(tmp_path / "none.pem")))  # type: ignore[arg-type]
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate")
    with pytest.raises(ProviderError, match="unusable"):
        OpaqueCollector().prepare(None, settings(service, ca_file=str(garbage)))  # type: ignore[arg-type]
