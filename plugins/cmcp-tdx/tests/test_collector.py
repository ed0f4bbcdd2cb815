"""The collector's configfs-tsm flow against a fake report directory holding a genuine
quote, its refusals, detection, and the settings it accepts."""

from __future__ import annotations

import base64
import datetime as dt
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from cmcp_cli.attestation.api import CheckStatus, ProviderError, TrustInputs
from cmcp_cli.testing.verdicts import assert_fails, statuses
from cmcp_tdx import verifier as v
from cmcp_tdx.collector import TdxCollector
from cmcp_tdx.plugin import EVIDENCE_TYPE, PLATFORM
from cmcp_tdx.settings import TdxSettings
from cmcp_tdx.testing import FakeTsm

Vector = Callable[[str], bytes]
MakeTsm = Callable[..., FakeTsm]
COS = "gotdx-cos113-quote-v4.dat"
AT = dt.datetime(2026, 11, 21, tzinfo=dt.UTC)


def _settings(tsm: FakeTsm, tmp_path: Path, **more: Any) -> dict[str, Any]:
    return {"configfs_root": str(tsm.root), "device": str(tmp_path / "no-device"), **more}


def test_collect_through_configfs(vector: Vector, make_tsm: MakeTsm, tmp_path: Path) -> None:
    raw = vector(COS)  # REPORTDATA all zero: the binding of 32 zero bytes
    tsm = make_tsm(raw)
    ccel = tmp_path / "CCEL"
    ccel.write_bytes(vector("gotdx-cos113-ccel-data.dat"))
    collector = TdxCollector(tsm.mkdir, tsm.rmdir)
    settings = _settings(tsm, tmp_path, ccel_path=str(ccel))
    assert collector.detect(settings).present
    collector.prepare(_facts(), settings)
    evidence = collector.collect(bytes(32), settings)
    assert (evidence.evidence_type, evidence.platform) == (EVIDENCE_TYPE, PLATFORM)
    quote = base64.b64decode(evidence.evidence["quote"])
    assert quote == raw[:4935]  # the 3065 bytes of padding after the quote are dropped
    assert "ccel" in evidence.evidence
    assert tsm.removed == tsm.created and len(tsm.created) == 2  # the probe and the report
    assert not list(tsm.root.iterdir())
    verdict = v.TdxVerifier().verify(evidence.evidence, TrustInputs(binding=bytes(32), at=AT))
    assert not verdict.failed and verdict.hardware_attested
    assert verdict.measurement == evidence.measurement
    assert statuses(verdict)[v.RTMR_REPLAY] is CheckStatus.PASS


def test_a_quote_for_other_data_is_refused(
    vector: Vector, make_tsm: MakeTsm, tmp_path: Path
) -> None:
    tsm = make_tsm(vector(COS))
    with pytest.raises(ProviderError, match="not the data the collector wrote"):
        TdxCollector(tsm.mkdir, tsm.rmdir).collect(b"\x01" * 32, _settings(tsm, tmp_path))
    assert tsm.removed == tsm.created


def test_a_tdreport_from_the_kernel_is_refused(make_tsm: MakeTsm, tmp_path: Path) -> None:
    tsm = make_tsm(bytes([0x81, 0, 0, 0]) + bytes(1020))
    with pytest.raises(ProviderError, match="TDREPORT"):
        TdxCollector(tsm.mkdir, tsm.rmdir).collect(bytes(32), _settings(tsm, tmp_path))


def test_another_tsm_provider_is_not_tdx(vector: Vector, make_tsm: MakeTsm, tmp_path: Path) -> None:
    tsm = make_tsm(vector(COS), provider="sev_guest")
    collector = TdxCollector(tsm.mkdir, tsm.rmdir)
    detection = collector.detect(_settings(tsm, tmp_path))
    assert not detection.present and "sev_guest" in detection.detail
    with pytest.raises(ProviderError, match="not 'tdx_guest'"):
        collector.collect(bytes(32), _settings(tsm, tmp_path))


def test_only_the_device_is_detected_but_collection_refuses(tmp_path: Path) -> None:
    device = tmp_path / "tdx_guest"
    device.write_bytes(b"")
    settings = {"configfs_root": str(tmp_path / "none"), "device": str(device)}
    collector = TdxCollector()
    detection = collector.detect(settings)
    assert detection.present and "configfs-tsm" in detection.detail
    with pytest.raises(ProviderError, match="bare TDREPORT") as raised:
        collector.collect(bytes(32), settings)
    assert raised.value.hint is not None and "configfs-tsm" in raised.value.hint
    with pytest.raises(ProviderError, match="configfs-tsm is not at"):
        collector.prepare(_facts(), settings)


def test_without_ccel_the_evidence_has_no_log(
    vector: Vector, make_tsm: MakeTsm, tmp_path: Path
) -> None:
    tsm = make_tsm(vector(COS))
    settings = _settings(tsm, tmp_path, ccel_path=str(tmp_path / "missing"))
    evidence = TdxCollector(tsm.mkdir, tsm.rmdir).collect(bytes(32), settings)
    assert set(evidence.evidence) == {"quote"}


@pytest.mark.parametrize(
    ("settings", "fragment"),
    [
        ({"configfs": "/x"}, "unknown setting"),
        ({"configfs_root": "relative"}, "absolute path"),
        ({"include_ccel": "yes"}, "true or false"),
        ([], "mapping"),
    ],
)
def test_bad_settings_are_refused(settings: Any, fragment: str) -> None:
    with pytest.raises(ProviderError, match=fragment):
        TdxSettings.parse(settings)
    assert not TdxCollector().detect(settings).present


def test_bad_binding_length_is_refused(make_tsm: MakeTsm, vector: Vector, tmp_path: Path) -> None:
    tsm = make_tsm(vector(COS))
    with pytest.raises(ProviderError, match="not 32"):
        TdxCollector(tsm.mkdir, tsm.rmdir).collect(bytes(31), _settings(tsm, tmp_path))


def _facts() -> Any:
    from cmcp_cli.testing.provider_contract import FACTS

    return FACTS


def test_the_verifier_fails_a_collected_quote_for_another_binding(
    vector: Vector, make_tsm: MakeTsm, tmp_path: Path
) -> None:
    tsm = make_tsm(vector(COS))
    evidence = TdxCollector(tsm.mkdir, tsm.rmdir).collect(bytes(32), _settings(tsm, tmp_path))
    verdict = v.TdxVerifier().verify(evidence.evidence, TrustInputs(binding=b"\x02" * 32, at=AT))
    assert_fails(verdict, v.REPORT_DATA, "another session")
