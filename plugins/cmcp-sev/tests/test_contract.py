"""The shared provider contract: declaration, lazy loading, detection as an answer, the
verifier failing closed on garbage, and every single-leaf change of genuine evidence (the
gosev Milan report and VCEK, with AMD's Milan ASK and ARK as a host's certificate table
gives them) failing. Collecting needs an SEV-SNP guest: those contract tests skip here with
the reason (the configfs flow runs against a fake in test_collector.py)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.serialization import Encoding

from cmcp_cli.attestation.api import ProviderSpec, TrustInputs
from cmcp_cli.testing.provider_contract import PinnedEvidence, ProviderContract
from cmcp_sev import plugin, roots
from cmcp_sev.evidence import encode
from cmcp_sev.structures import Product

AT = datetime(2025, 6, 1, tzinfo=UTC)  # inside the Milan VCEK's validity
BINDING = bytes.fromhex("0102030405") + bytes(27)  # what the report's REPORT_DATA carries


class TestSevProviderContract(ProviderContract):
    @pytest.fixture
    def provider_spec(self) -> ProviderSpec:
        return plugin.SPEC

    @pytest.fixture
    def provider_settings(self) -> Mapping[str, Any]:
        return {}  # the real configfs-tsm and /dev/sev-guest of this machine

    @pytest.fixture
    def pinned_evidence(self, vectors: Path) -> PinnedEvidence:
        host_chain = roots.load_pem(roots.vendored_bytes(Product.MILAN))  # ASK, then ARK
        evidence = {
            "report": encode((vectors / "gosev-milan-report.bin").read_bytes()),
            "signing_key": "vcek",
            "vcek": encode((vectors / "gosev-milan-vcek.der").read_bytes()),
            "cert_chain": [encode(c.public_bytes(Encoding.DER)) for c in host_chain],
        }
        # The report's guest policy allows debugging: the auditor accepts that explicitly.
        trust = TrustInputs(binding=BINDING, at=AT, allow_debug=True)
        # A host's certificate table may hold the ASK, the ARK, both or neither; each given
        # must be on the verified path, and the roots decide, so fewer changes nothing.
        return PinnedEvidence(evidence, trust, frozenset({("cert_chain",)}))


def test_detection_without_a_guest_says_where_it_looked(tmp_path: Path) -> None:
    detection = plugin.SPEC.load_collector().detect(
        {"configfs_root": str(tmp_path / "tsm"), "device": str(tmp_path / "sev-guest")}
    )
    assert not detection.present
    assert str(tmp_path / "tsm") in detection.detail
    assert str(tmp_path / "sev-guest") in detection.detail
