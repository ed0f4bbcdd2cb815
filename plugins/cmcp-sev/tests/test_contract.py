"""The shared provider contract: declaration, lazy loading, detection as an answer, and the
verifier failing closed on garbage. Collecting needs an SEV-SNP guest: those contract
tests skip here with the reason (the configfs flow runs against a fake in
test_collector.py)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from cmcp_cli.attestation.api import ProviderSpec
from cmcp_cli.testing.provider_contract import ProviderContract
from cmcp_sev import plugin


class TestSevProviderContract(ProviderContract):
    @pytest.fixture
    def provider_spec(self) -> ProviderSpec:
        return plugin.SPEC

    @pytest.fixture
    def provider_settings(self) -> Mapping[str, Any]:
        return {}  # the real configfs-tsm and /dev/sev-guest of this machine


def test_detection_without_a_guest_says_where_it_looked(tmp_path: Path) -> None:
    detection = plugin.SPEC.load_collector().detect(
        {"configfs_root": str(tmp_path / "tsm"), "device": str(tmp_path / "sev-guest")}
    )
    assert not detection.present
    assert str(tmp_path / "tsm") in detection.detail
    assert str(tmp_path / "sev-guest") in detection.detail
