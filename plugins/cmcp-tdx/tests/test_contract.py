"""The shared provider contract: declaration, lazy loading, detection as an answer,
verification failing closed on garbage, and every single-leaf change of a genuine quote
(GCE COS-113, as the collector hands a quote over: cut at its declared end) failing. The
collector tests of the contract skip here (no TDX guest); test_collector.py runs the
configfs flow against a fake.

The CCEL log is left out of the tampered evidence: only its events' digests are covered by
the quote (through the RTMR replay); its events' data and the header's register number are
not, so some changes to it cannot be noticed (test_verifier_vectors.py shows the ones the
parser does refuse)."""

from __future__ import annotations

import base64
import datetime as dt
from collections.abc import Callable
from pathlib import Path

import pytest

from cmcp_cli.attestation.api import ProviderSpec, TrustInputs
from cmcp_cli.testing.provider_contract import PinnedEvidence, ProviderContract
from cmcp_tdx import plugin
from cmcp_tdx.quote import parse_quote


class TestTdxProviderContract(ProviderContract):
    @pytest.fixture
    def provider_spec(self) -> ProviderSpec:
        return plugin.SPEC

    @pytest.fixture
    def pinned_evidence(self, vector: Callable[[str], bytes]) -> PinnedEvidence:
        raw = vector("gotdx-cos113-quote-v4.dat")
        quote = raw[: len(raw) - parse_quote(raw).trailing]
        # its REPORTDATA is all zero: the binding of 32 zero bytes
        trust = TrustInputs(binding=bytes(32), at=dt.datetime(2026, 11, 21, tzinfo=dt.UTC))
        return PinnedEvidence({"quote": base64.b64encode(quote).decode()}, trust)


def test_detection_without_a_td_says_where_it_looked(tmp_path: Path) -> None:
    settings = {"configfs_root": str(tmp_path / "tsm"), "device": str(tmp_path / "tdx_guest")}
    detection = plugin.SPEC.load_collector().detect(settings)
    assert not detection.present
    assert str(tmp_path / "tsm") in detection.detail and "tdx_guest" in detection.detail


def test_the_entry_point_names_the_plugin() -> None:
    from importlib.metadata import entry_points

    found = [ep for ep in entry_points(group="cmcp") if ep.name == "tdx"]
    assert [ep.value for ep in found] == ["cmcp_tdx.plugin"]
