"""The collector's two flows, each ending in a genuine quote that the verifier accepts:
configfs-tsm against a fake report directory, and /dev/tdx_guest (an injected
TDX_CMD_GET_REPORT0) with a QGS stand-in on a real Unix socket. Also their refusals, how
`interface` picks the flow, detection, and the settings accepted."""

from __future__ import annotations

import base64
import datetime as dt
import re
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from cmcp_cli.attestation.api import CheckStatus, ProviderError, TrustInputs
from cmcp_cli.testing.verdicts import assert_fails, statuses
from cmcp_tdx import verifier as v
from cmcp_tdx.collector import TdxCollector
from cmcp_tdx.plugin import EVIDENCE_TYPE, PLATFORM
from cmcp_tdx.settings import TdxSettings, UnixAddress, VsockAddress
from cmcp_tdx.testing import FakeQgs, FakeTdxGuest, FakeTsm, qgs_response, socket_dir

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
        ({"interface": "ioctl"}, r"tdx\.interface: 'ioctl' is not an interface"),
        ({"interface": None}, r"tdx\.interface"),
        ({"qgs": "tcp:10.0.0.1:4050"}, r"tdx\.qgs: 'tcp:10\.0\.0\.1:4050' is not a QGS address"),
        ({"qgs": "vsock:2"}, r"tdx\.qgs: 'vsock:2'"),
        ({"qgs": "vsock:2:x"}, r"tdx\.qgs"),
        ({"qgs": "vsock:-1:4050"}, r"tdx\.qgs"),
        ({"qgs": "vsock:2:0"}, r"tdx\.qgs"),
        ({"qgs": "vsock:2:4294967295"}, r"tdx\.qgs"),
        ({"qgs": "vsock:2:4050:1"}, r"tdx\.qgs"),
        ({"qgs": "vsock: 2:4050"}, r"tdx\.qgs"),
        ({"qgs": "unix:relative.sock"}, r"tdx\.qgs"),
        ({"qgs": "unix:/" + "q" * 107}, r"tdx\.qgs: the socket path .* longer than the 107"),
        ({"qgs": 4050}, r"tdx\.qgs: 4050"),
        ({"qgs_timeout": 0}, r"tdx\.qgs_timeout must be a number of seconds above 0"),
        ({"qgs_timeout": -1}, r"tdx\.qgs_timeout"),
        ({"qgs_timeout": 601}, r"at most 600"),
        ({"qgs_timeout": float("inf")}, r"tdx\.qgs_timeout"),
        ({"qgs_timeout": float("nan")}, r"tdx\.qgs_timeout"),
        ({"qgs_timeout": True}, r"tdx\.qgs_timeout"),
        ({"qgs_timeout": "30"}, r"tdx\.qgs_timeout"),
    ],
)
def test_bad_settings_are_refused(settings: Any, fragment: str) -> None:
    with pytest.raises(ProviderError, match=fragment):
        TdxSettings.parse(settings)
    assert not TdxCollector().detect(settings).present


def test_settings_defaults_and_accepted_values() -> None:
    defaults = TdxSettings.parse({})
    assert (defaults.interface, str(defaults.qgs), defaults.qgs_timeout) == (
        "auto",
        "vsock:2:4050",
        30.0,
    )
    parsed = TdxSettings.parse(
        {"interface": "device", "qgs": "unix:/run/qgs/qgs.socket", "qgs_timeout": 2}
    )
    assert parsed.interface == "device"
    assert parsed.qgs == UnixAddress(Path("/run/qgs/qgs.socket"))
    assert parsed.qgs_timeout == 2.0
    assert TdxSettings.parse({"qgs": "vsock:3:4051"}).qgs == VsockAddress(3, 4051)
    assert TdxSettings.parse({"interface": "configfs", "qgs_timeout": 0.5}).qgs_timeout == 0.5


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


# The /dev/tdx_guest flow: a regular file stands in for the device (the ioctl is injected),
# and the QGS is a real server on a Unix socket.


@pytest.fixture
def qgs_path() -> Iterator[Path]:
    with socket_dir() as directory:
        yield directory / "qgs.sock"


@pytest.fixture
def device(tmp_path: Path) -> Path:
    path = tmp_path / "tdx_guest"
    path.write_bytes(b"")
    return path


def _device_settings(device: Path, qgs_path: Path, tmp_path: Path, **more: Any) -> dict[str, Any]:
    return {
        "configfs_root": str(tmp_path / "no-configfs"),
        "device": str(device),
        "qgs": f"unix:{qgs_path}",
        "qgs_timeout": 5,
        "ccel_path": str(tmp_path / "no-ccel"),
        **more,
    }


def _failures(
    collector: TdxCollector, settings: dict[str, Any], fragment: str
) -> list[ProviderError]:
    """How prepare and collect each refuse `settings`, both matching `fragment`."""
    failures = []
    with pytest.raises(ProviderError, match=re.escape(fragment)) as raised:
        collector.prepare(_facts(), settings)
    failures.append(raised.value)
    with pytest.raises(ProviderError, match=re.escape(fragment)) as raised:
        collector.collect(bytes(32), settings)
    failures.append(raised.value)
    return failures


def _tdreports(server: FakeQgs) -> list[bytes]:
    """The TDREPORTs the QGS was sent (after the frame, header and the two sizes)."""
    return [request[4 + 24 :] for request in server.requests]


def test_collect_through_the_device_and_the_qgs(
    vector: Vector, device: Path, qgs_path: Path, tmp_path: Path
) -> None:
    raw = vector(COS)
    kernel = FakeTdxGuest(device)
    collector = TdxCollector(ioctl=kernel)
    settings = _device_settings(device, qgs_path, tmp_path)
    with FakeQgs.returning(qgs_path, raw) as server:
        detection = collector.detect(settings)
        collector.prepare(_facts(), settings)  # one quote, for zero REPORTDATA
        evidence = collector.collect(bytes(32), settings)
    assert detection.present and str(device) in detection.detail
    assert f"QGS at unix:{qgs_path}" in detection.detail
    assert server.problems == [] and kernel.calls == len(server.requests) == 2
    assert all(report[0] == 0x81 and report[128:192] == bytes(64) for report in _tdreports(server))
    assert (evidence.evidence_type, evidence.platform) == (EVIDENCE_TYPE, PLATFORM)
    assert base64.b64decode(evidence.evidence["quote"]) == raw[:4935]
    verdict = v.TdxVerifier().verify(evidence.evidence, TrustInputs(binding=bytes(32), at=AT))
    assert not verdict.failed and verdict.hardware_attested
    assert verdict.measurement == evidence.measurement


def test_the_qgs_is_sent_the_tdreport_for_the_binding(
    vector: Vector, device: Path, qgs_path: Path, tmp_path: Path
) -> None:
    binding = b"\x07" * 32
    settings = _device_settings(device, qgs_path, tmp_path)
    with (
        FakeQgs.returning(qgs_path, vector(COS)) as server,
        pytest.raises(ProviderError, match="not the data the collector wrote"),
    ):
        TdxCollector(ioctl=FakeTdxGuest(device)).collect(binding, settings)
    assert [report[128:192] for report in _tdreports(server)] == [binding + bytes(32)]


def test_a_tdreport_not_carrying_our_data_is_refused(
    vector: Vector, device: Path, qgs_path: Path, tmp_path: Path
) -> None:
    kernel = FakeTdxGuest(device, report_data=b"\x01" * 64)
    settings = _device_settings(device, qgs_path, tmp_path)
    with (
        FakeQgs.returning(qgs_path, vector(COS)) as server,
        pytest.raises(ProviderError, match="does not carry the REPORTDATA"),
    ):
        TdxCollector(ioctl=kernel).collect(bytes(32), settings)
    assert server.requests == []  # never sent on


def test_a_bare_tdreport_from_the_qgs_is_refused(
    device: Path, qgs_path: Path, tmp_path: Path
) -> None:
    tdreport = bytes([0x81, 0, 0, 0]) + bytes(1020)
    settings = _device_settings(device, qgs_path, tmp_path)
    with (
        FakeQgs.returning(qgs_path, tdreport),
        pytest.raises(ProviderError, match="TDREPORT") as raised,
    ):
        TdxCollector(ioctl=FakeTdxGuest(device)).collect(bytes(32), settings)
    assert f"QGS at unix:{qgs_path}" in raised.value.message


def test_prepare_refuses_when_the_qgs_is_not_listening(
    device: Path, qgs_path: Path, tmp_path: Path
) -> None:
    collector = TdxCollector(ioctl=FakeTdxGuest(device))
    settings = _device_settings(device, qgs_path, tmp_path)
    assert collector.detect(settings).present  # detection does not ask the QGS
    for failure in _failures(collector, settings, f"QGS at unix:{qgs_path} is not reachable"):
        assert failure.hint is not None and "start the QGS" in failure.hint


def test_prepare_refuses_on_a_qgs_error(device: Path, qgs_path: Path, tmp_path: Path) -> None:
    settings = _device_settings(device, qgs_path, tmp_path)
    with (
        FakeQgs(qgs_path, lambda _request: qgs_response(b"", error_code=0x12002)),
        pytest.raises(ProviderError, match=r"error 0x12002 \(QGS_MSG_ERROR_OUT_OF_MEMORY\)"),
    ):
        TdxCollector(ioctl=FakeTdxGuest(device)).prepare(_facts(), settings)


def test_a_silent_qgs_times_out(device: Path, qgs_path: Path, tmp_path: Path) -> None:
    settings = _device_settings(device, qgs_path, tmp_path, qgs_timeout=0.3)
    with (
        FakeQgs(qgs_path, lambda _request: None),
        pytest.raises(ProviderError, match=r"did not answer within 0\.3 s"),
    ):
        TdxCollector(ioctl=FakeTdxGuest(device)).collect(bytes(32), settings)


def test_prepare_names_a_device_it_cannot_open(qgs_path: Path, tmp_path: Path) -> None:
    settings = _device_settings(tmp_path, qgs_path, tmp_path)  # a directory is no device
    with pytest.raises(ProviderError, match=re.escape(f"cannot open {tmp_path}")):
        TdxCollector(ioctl=FakeTdxGuest(tmp_path)).prepare(_facts(), settings)


def test_interface_configfs_without_configfs_is_refused(
    device: Path, qgs_path: Path, tmp_path: Path
) -> None:
    kernel = FakeTdxGuest(device)
    collector = TdxCollector(ioctl=kernel)
    settings = _device_settings(device, qgs_path, tmp_path, interface="configfs")
    detection = collector.detect(settings)
    assert not detection.present and "configfs-tsm is not at" in detection.detail
    for failure in _failures(collector, settings, "configfs-tsm is not at"):
        assert 'interface is "configfs"' in failure.message
        assert failure.hint is not None and "interface" in failure.hint
    assert kernel.calls == 0


def test_interface_device_leaves_configfs_alone(
    vector: Vector, make_tsm: MakeTsm, device: Path, qgs_path: Path, tmp_path: Path
) -> None:
    tsm = make_tsm(vector(COS))
    collector = TdxCollector(tsm.mkdir, tsm.rmdir, FakeTdxGuest(device))
    settings = _device_settings(
        device, qgs_path, tmp_path, interface="device", configfs_root=str(tsm.root)
    )
    with FakeQgs.returning(qgs_path, vector(COS)) as server:
        assert "QGS" in collector.detect(settings).detail
        collector.collect(bytes(32), settings)
    assert len(server.requests) == 1 and tsm.created == []


def test_auto_prefers_configfs_served_by_tdx_guest(
    vector: Vector, make_tsm: MakeTsm, device: Path, qgs_path: Path, tmp_path: Path
) -> None:
    tsm = make_tsm(vector(COS))
    kernel = FakeTdxGuest(device)
    collector = TdxCollector(tsm.mkdir, tsm.rmdir, kernel)
    settings = _device_settings(device, qgs_path, tmp_path, configfs_root=str(tsm.root))
    assert "served by tdx_guest" in collector.detect(settings).detail
    collector.prepare(_facts(), settings)  # nothing listens at the QGS address: not needed
    collector.collect(bytes(32), settings)
    assert kernel.calls == 0 and tsm.removed == tsm.created
    # detect's probe and prepare's route probe, then one entry per session and no more probes
    probes = len(tsm.created)
    collector.collect(bytes(32), settings)
    collector.collect(bytes(32), settings)
    assert len(tsm.created) == probes + 2


def test_auto_falls_back_to_the_device_when_configfs_is_not_tdx(
    vector: Vector, make_tsm: MakeTsm, device: Path, qgs_path: Path, tmp_path: Path
) -> None:
    tsm = make_tsm(b"", provider="sev_guest")
    collector = TdxCollector(tsm.mkdir, tsm.rmdir, FakeTdxGuest(device))
    settings = _device_settings(device, qgs_path, tmp_path, configfs_root=str(tsm.root))
    with FakeQgs.returning(qgs_path, vector(COS)) as server:
        detection = collector.detect(settings)
        evidence = collector.collect(bytes(32), settings)
    assert detection.present and "sev_guest" in detection.detail and "QGS" in detection.detail
    assert len(server.requests) == 1 and evidence.evidence["quote"]


def test_without_configfs_or_device_nothing_is_detected_or_collected(
    qgs_path: Path, tmp_path: Path
) -> None:
    missing = tmp_path / "no-device"
    collector = TdxCollector(ioctl=FakeTdxGuest(tmp_path))
    for interface, fragment in (("auto", "neither"), ("device", "does not exist")):
        settings = _device_settings(missing, qgs_path, tmp_path, interface=interface)
        detection = collector.detect(settings)
        assert not detection.present and str(missing) in detection.detail
        _failures(collector, settings, fragment)


def test_collection_through_the_device_is_serialised(
    vector: Vector, device: Path, qgs_path: Path, tmp_path: Path
) -> None:
    kernel, guard = FakeTdxGuest(device), threading.Lock()
    active, most = [0], [0]

    def ioctl(fd: int, request: int, buffer: bytearray) -> None:
        with guard:
            active[0] += 1
            most[0] = max(most[0], active[0])
        time.sleep(0.01)  # widen the window another collection would overlap in
        kernel(fd, request, buffer)

    def answer(_request: bytes) -> bytes:
        with guard:
            active[0] -= 1
        return qgs_response(vector(COS))

    collector = TdxCollector(ioctl=ioctl)
    settings = _device_settings(device, qgs_path, tmp_path)
    results: list[str] = []
    with FakeQgs(qgs_path, answer) as server:
        threads = [
            threading.Thread(
                target=lambda: results.append(
                    collector.collect(bytes(32), settings).evidence["quote"]
                )
            )
            for _ in range(4)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(10)
    assert len(results) == 4 and len(set(results)) == 1
    assert most[0] == 1 and len(server.requests) == 4 and server.problems == []
