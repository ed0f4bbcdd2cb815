"""The shared provider contract, on a token signed by a test issuer whose JWKS, issuer,
audience and URL the auditor pins. Detection needs a configured URL, which the contract's
default settings lack, so its collector tests skip here; test_collector.py collects from
the token service double instead."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from cmcp_cli.attestation.api import ProviderSpec, TrustInputs
from cmcp_cli.testing.provider_contract import PinnedEvidence, ProviderContract
from cmcp_opaque import plugin
from cmcp_opaque.testing import AUDIENCE, TokenIssuer

BINDING = bytes(range(32))
URL = "https://opaque.example/attest/token"


class TestOpaqueProviderContract(ProviderContract):
    @pytest.fixture
    def provider_spec(self) -> ProviderSpec:
        return plugin.SPEC

    @pytest.fixture
    def provider_settings(self) -> Mapping[str, Any]:
        return {}

    @pytest.fixture
    def pinned_evidence(self, issuer: TokenIssuer, jwks_path: Path) -> PinnedEvidence:
        now = int(datetime.now(UTC).timestamp())
        policy = {
            "keys": str(jwks_path),
            "issuer": issuer.issuer,
            "audience": AUDIENCE,
            "urls": [URL],
            "measurements": {"platform": ["sha256:" + "5e" * 32]},
        }
        trust = TrustInputs(
            binding=BINDING, at=datetime.fromtimestamp(now + 60, UTC), platform_policy=policy
        )
        evidence = {"token": issuer.token(BINDING, now=now), "url": URL}
        return PinnedEvidence(evidence, trust)


def test_never_detected_without_a_url() -> None:
    detection = plugin.SPEC.load_collector().detect({})
    assert not detection.present
    assert "url is not set" in detection.detail and "never detected" in detection.detail


def test_a_configured_url_is_reported_without_asking_it() -> None:
    # nothing listens at port 9 of 127.0.0.1: detection must not connect to find out
    detection = plugin.SPEC.load_collector().detect({"url": "https://127.0.0.1:9/token"})
    assert detection.present and "https://127.0.0.1:9/token" in detection.detail


def test_not_in_auto() -> None:
    from cmcp_cli.gateway.preflight.attestation import candidates

    assert plugin.NAME not in candidates("auto")
