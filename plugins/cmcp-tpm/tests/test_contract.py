"""The shared provider contract, run against a real software TPM: declaration, lazy
loading, detection as an answer, verification failing closed on garbage and on a wrong
binding, and the collector's own evidence verifying."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest

from cmcp_cli.attestation.api import ProviderSpec
from cmcp_cli.testing.provider_contract import ProviderContract
from cmcp_tpm import plugin
from cmcp_tpm.testing import SoftwareTpm

CONTRACT_AK_HANDLE = 0x81010020


class TestTpmProviderContract(ProviderContract):
    @pytest.fixture
    def provider_spec(self) -> ProviderSpec:
        return plugin.SPEC

    @pytest.fixture
    def provider_settings(self, software_tpm: SoftwareTpm) -> Mapping[str, Any]:
        return {"tcti": software_tpm.tcti, "ak_handle": CONTRACT_AK_HANDLE}


def test_detection_without_a_tpm_says_where_it_looked() -> None:
    collector = plugin.SPEC.load_collector()
    detection = collector.detect({"tcti": "device:/dev/no-such-tpm"})
    assert not detection.present
    assert "/dev/no-such-tpm" in detection.detail
