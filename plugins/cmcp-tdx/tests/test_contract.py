"""The shared provider contract: declaration, lazy loading, detection as an answer, and
verification failing closed on garbage. The collector tests of the contract skip here
(no TDX guest); test_collector.py runs the configfs flow against a fake."""

from __future__ import annotations

from pathlib import Path

import pytest

from cmcp_cli.attestation.api import ProviderSpec
from cmcp_cli.testing.provider_contract import ProviderContract
from cmcp_tdx import plugin


class TestTdxProviderContract(ProviderContract):
    @pytest.fixture
    def provider_spec(self) -> ProviderSpec:
        return plugin.SPEC


def test_detection_without_a_td_says_where_it_looked(tmp_path: Path) -> None:
    settings = {"configfs_root": str(tmp_path / "tsm"), "device": str(tmp_path / "tdx_guest")}
    detection = plugin.SPEC.load_collector().detect(settings)
    assert not detection.present
    assert str(tmp_path / "tsm") in detection.detail and "tdx_guest" in detection.detail


def test_the_entry_point_names_the_plugin() -> None:
    from importlib.metadata import entry_points

    found = [ep for ep in entry_points(group="cmcp") if ep.name == "tdx"]
    assert [ep.value for ep in found] == ["cmcp_tdx.plugin"]
