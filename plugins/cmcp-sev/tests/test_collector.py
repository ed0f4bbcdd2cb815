"""The collector's configfs-tsm flow, run against a plain directory that a small fake
populates as configfs would (the genuine Milan report as outblob, a GHCB certificate table
as auxblob), its detection, its settings, and the /dev/sev-guest ioctl struct packing."""

from __future__ import annotations

import shutil
import struct
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.serialization import Encoding

from cmcp_cli.attestation.api import GatewayFacts, ProviderError, TrustInputs
from cmcp_sev import guest_ioctl, roots
from cmcp_sev import structures as snp
from cmcp_sev.collector import ConfigfsError, ConfigfsTsm, SevCollector
from cmcp_sev.settings import SevSettings
from cmcp_sev.synthetic import AT
from cmcp_sev.verifier import SevVerifier

BINDING = bytes.fromhex("0102030405") + bytes(27)  # what the genuine report carries


class FakeConfigfs:
    """mkdir populates the entry's attributes as the kernel would; rmdir removes them."""

    def __init__(self, outblob: bytes, auxblob: bytes | None, provider: str = "sev_guest") -> None:
        self.outblob, self.auxblob, self.provider = outblob, auxblob, provider
        self.created: list[Path] = []
        self.generation = 1

    def create(self, path: Path) -> None:
        path.mkdir()
        self.created.append(path)
        (path / "provider").write_text(self.provider + "\n")
        (path / "generation").write_text(f"{self.generation}\n")
        (path / "outblob").write_bytes(self.outblob)
        if self.auxblob is not None:
            (path / "auxblob").write_bytes(self.auxblob)

    def remove(self, path: Path) -> None:
        shutil.rmtree(path)


@pytest.fixture
def genuine(vectors: Path) -> dict[str, bytes]:
    names = {"report": "gosev-milan-report.bin", "vcek": "gosev-milan-vcek.der"}
    data = {key: (vectors / name).read_bytes() for key, name in names.items()}
    ask, ark = roots.load_pem((vectors / "amd-ask-ark-milan.pem").read_bytes())
    data["ask"], data["ark"] = ask.public_bytes(Encoding.DER), ark.public_bytes(Encoding.DER)
    return data


def _settings(root: Path, **more: Any) -> dict[str, Any]:
    return {"configfs_root": str(root), "device": str(root / "no-sev-guest"), **more}


def test_configfs_flow_collects_verifiable_evidence(
    tmp_path: Path, genuine: dict[str, bytes]
) -> None:
    table = snp.build_cert_table(
        {snp.GUID_VCEK: genuine["vcek"], snp.GUID_ASK: genuine["ask"], snp.GUID_ARK: genuine["ark"]}
    )
    fake = FakeConfigfs(genuine["report"], table)
    collector = SevCollector(entries=fake)
    settings = _settings(tmp_path, privlevel=0)
    detection = collector.detect(settings)
    assert detection.present and "sev_guest" in detection.detail
    evidence = collector.collect(BINDING, settings)
    assert evidence.platform == "amd-sev-snp" and evidence.evidence_type == "sev-snp-report-v1"
    assert evidence.measurement.startswith("sha384:b07af962")
    entry = fake.created[-1]
    assert not entry.exists(), "the entry is removed after use"
    # What the collector wrote: the binding and 32 zero bytes, and the requested VMPL.
    assert set(evidence.evidence) == {"report", "signing_key", "vcek", "cert_chain"}
    verdict = SevVerifier().verify(
        evidence.evidence, TrustInputs(binding=BINDING, at=AT, allow_debug=True)
    )
    assert verdict.hardware_attested, verdict.checks


def test_the_request_written_is_the_binding_and_zeros(
    tmp_path: Path, genuine: dict[str, bytes]
) -> None:
    written: dict[str, bytes] = {}

    class Recording(FakeConfigfs):
        def remove(self, path: Path) -> None:
            written.update({p.name: p.read_bytes() for p in path.iterdir()})
            super().remove(path)

    SevCollector(entries=Recording(genuine["report"], None)).collect(
        BINDING, _settings(tmp_path, privlevel=2)
    )
    assert written["inblob"] == BINDING + bytes(32)
    assert written["privlevel"] == b"2"


def test_without_a_certificate_table_the_vcek_file_is_used(
    tmp_path: Path, genuine: dict[str, bytes]
) -> None:
    vcek = tmp_path / "vcek.der"
    vcek.write_bytes(genuine["vcek"])
    root = tmp_path / "tsm"
    root.mkdir()
    collector = SevCollector(entries=FakeConfigfs(genuine["report"], None))
    bare = collector.collect(BINDING, _settings(root))
    assert "vcek" not in bare.evidence
    with_file = collector.collect(BINDING, _settings(root, vcek_file=str(vcek)))
    verdict = SevVerifier().verify(
        with_file.evidence, TrustInputs(binding=BINDING, at=AT, allow_debug=True)
    )
    assert verdict.hardware_attested, verdict.checks


def test_a_report_for_another_request_is_refused(tmp_path: Path, genuine: dict[str, bytes]) -> None:
    collector = SevCollector(entries=FakeConfigfs(genuine["report"], None))
    with pytest.raises(ProviderError, match="requested REPORT_DATA"):
        collector.collect(bytes(32), _settings(tmp_path))


def test_a_racing_writer_is_retried_then_reported(
    tmp_path: Path, genuine: dict[str, bytes]
) -> None:
    tsm = ConfigfsTsm(tmp_path, FakeConfigfs(genuine["report"], None))
    reads = {"n": 0}
    original = tsm._generation

    def moving(entry: Path) -> int:
        # Another writer bumps the generation between every two reads.
        reads["n"] += 1
        return original(entry) + reads["n"]

    tsm._generation = moving  # type: ignore[method-assign]
    with pytest.raises(ConfigfsError, match="changed the report request 3 times"):
        tsm.report(BINDING + bytes(32), None)
    assert list(tmp_path.iterdir()) == [], "every raced entry is removed"


def test_detection_is_honest(tmp_path: Path, genuine: dict[str, bytes]) -> None:
    collector = SevCollector(entries=FakeConfigfs(genuine["report"], None, provider="tdx_guest"))
    detection = collector.detect(_settings(tmp_path))
    assert not detection.present and "'tdx_guest'" in detection.detail
    missing = SevCollector().detect(_settings(tmp_path / "absent"))
    assert not missing.present and "no configfs-tsm" in missing.detail
    device = tmp_path / "sev-guest"
    device.write_bytes(b"")
    by_device = SevCollector().detect(
        {"interface": "ioctl", "device": str(device), "configfs_root": str(tmp_path)}
    )
    assert by_device.present and str(device) in by_device.detail
    with pytest.raises(ProviderError, match="not an SEV-SNP guest"):
        SevCollector().prepare(_facts(), _settings(tmp_path / "absent"))


def _facts() -> GatewayFacts:
    return GatewayFacts("sha256:" + "0" * 64, "sha256:" + "1" * 64, "sha256:" + "2" * 64)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ("yes", "must be a mapping"),
        ({"devise": "/dev/sev-guest"}, "unknown setting.s. devise"),
        ({"interface": "tsm"}, "is not an interface"),
        ({"device": "dev/sev-guest"}, "absolute path"),
        ({"privlevel": 4}, "is not a VMPL"),
        ({"privlevel": True}, "is not a VMPL"),
    ],
)
def test_settings_are_refused_with_the_setting_named(settings: Any, message: str) -> None:
    with pytest.raises(ProviderError, match=message):
        SevSettings.parse(settings)
    assert not SevCollector().detect(settings).present


def test_settings_defaults_and_values() -> None:
    assert SevSettings.parse(None) == SevSettings()
    parsed = SevSettings.parse({"interface": "ioctl", "privlevel": 1, "vcek_file": "/etc/vcek.der"})
    assert (parsed.interface, parsed.privlevel, str(parsed.vcek_file)) == (
        "ioctl",
        1,
        "/etc/vcek.der",
    )


def test_ioctl_struct_packing_matches_linux_sev_guest_h() -> None:
    assert guest_ioctl.SNP_GET_REPORT == 0xC0205300
    assert guest_ioctl.SNP_GET_EXT_REPORT == 0xC0205302
    req = guest_ioctl.pack_report_req(bytes(range(64)), 2)
    assert len(req) == 96 and req[:64] == bytes(range(64))
    assert struct.unpack_from("<I", req, 64) == (2,) and req[68:] == bytes(28)
    ext = guest_ioctl.pack_ext_report_req(bytes(64), 0, 0x1122334455667788, 0x4000)
    assert len(ext) == 112
    assert struct.unpack_from("<QI", ext, 96) == (0x1122334455667788, 0x4000)
    guest = guest_ioctl.pack_guest_request(0xAAAA, 0xBBBB)
    assert len(guest) == 32 and guest[0] == 1
    assert struct.unpack_from("<QQQ", guest, 8) == (0xAAAA, 0xBBBB, 0)
    response = struct.pack("<II24x", 0, snp.REPORT_SIZE) + bytes(range(256)) * 4 + bytes(2944)
    assert guest_ioctl.unpack_response(response[:4000]) == response[32 : 32 + snp.REPORT_SIZE]
    with pytest.raises(guest_ioctl.GuestIoctlError, match="status 0x16"):
        guest_ioctl.unpack_response(struct.pack("<II24x", 0x16, 0) + bytes(3968))
    with pytest.raises(guest_ioctl.GuestIoctlError, match="cannot open"):
        guest_ioctl.get_report(Path("/nonexistent/sev-guest"), bytes(64), 0)
