"""The gpu-cc collector against the NVML test double (tests/nvml_double/pynvml.py), which
serves the genuine Hopper and Blackwell reports and device chains of ../shared: detection
says why a GPU cannot attest, the evidence is exactly the contract's and the verifier's
parser takes it, stapled RIMs are matched by version, and every refusal names its cause.

The double is loaded in-process as `pynvml` here; tests/test_gpu_gateway.py runs it as the
real module of a `cmcp start` subprocess.
"""

from __future__ import annotations

import base64
import sys
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from cmcp_cli.attestation.api import DeviceCollector, GatewayFacts, ProviderError, TrustInputs
from cmcp_gpucc import plugin
from cmcp_gpucc.collector import GpuCollector
from cmcp_gpucc.evidence import decode
from cmcp_gpucc.nvml_access import INSTALL_HINT
from cmcp_gpucc.rim_signing import RimPki, rim_document
from cmcp_gpucc.verifier import GpuVerifier

FACTS = GatewayFacts("sha256:" + "b0" * 32, "sha256:" + "ca" * 32, "sha256:" + "9a" * 32)
BINDING = bytes.fromhex("5a" * 32)
AT = datetime(2026, 12, 1, tzinfo=UTC)
DRIVER_RIM = "nvat-rim-NV_GPU_DRIVER_GH100_535.86.09_measurement_mismatch.xml"
VBIOS_RIM = "nvat-rim-NV_GPU_VBIOS_1010_0200_882_96005E0001_measurement_mismatch.xml"
CONTRACT = {"report", "certificates", "nvml", "rims", "ocsp"}


def nonces(tmp_path: Path) -> list[str]:
    log = tmp_path / "nonces.log"
    return log.read_text().split() if log.exists() else []


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_the_spec_loads_this_collector_as_a_device_collector(nvml: ModuleType) -> None:
    loaded = plugin.SPEC.load_device_collector()
    try:
        assert isinstance(loaded, GpuCollector)
        assert DeviceCollector in type(loaded).__mro__
    finally:
        loaded.close()


def test_without_nvidia_ml_py_no_collector_is_made_and_the_hint_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import pynvml raises ImportError
    with pytest.raises(ProviderError) as refused:
        GpuCollector()
    assert "NVML's Python binding" in refused.value.message
    assert refused.value.hint == INSTALL_HINT
    assert "pip install cmcp-gpucc[collector]" in INSTALL_HINT


@pytest.mark.parametrize(
    ("state", "reason"),
    [
        ("no-library", "no NVML library: libnvidia-ml.so.1"),
        ("no-driver", "the NVIDIA kernel driver is not loaded"),
        ("no-gpu", "NVML sees no GPU"),
        ("unsupported", "confidential computing is unsupported here"),
        ("not-capable", "not capable of confidential computing"),
        ("cc-off", "confidential computing is off"),
        ("not-ready", "do not accept work yet (CC ready state off)"),
    ],
)
def test_detection_says_exactly_why_no_gpu_can_attest(
    collector: GpuCollector, monkeypatch: pytest.MonkeyPatch, state: str, reason: str
) -> None:
    monkeypatch.setenv("NVML_DOUBLE_STATE", state)
    detection = collector.detect({})
    assert not detection.present
    assert reason in detection.detail
    with pytest.raises(ProviderError) as refused:
        collector.prepare(FACTS, {})
    assert reason in refused.value.message
    assert refused.value.hint is not None and "docs/gpu-cc.md" in refused.value.hint


def test_detection_names_the_gpus_their_cc_mode_and_the_driver(
    collector: GpuCollector, monkeypatch: pytest.MonkeyPatch
) -> None:
    detection = collector.detect({})
    assert detection.present
    assert detection.detail == "GPU 0 (NVIDIA H100 80GB HBM3): CC mode on, driver 535.86.09"
    monkeypatch.setenv("NVML_DOUBLE_STATE", "devtools")
    assert "CC mode devtools" in collector.detect({}).detail


def test_detection_refuses_unusable_settings_and_devices_nvml_does_not_list(
    collector: GpuCollector,
) -> None:
    detection = collector.detect({"devices": [0, 3]})
    assert not detection.present
    assert detection.detail == (
        "attestation.providers.gpu-cc.devices names GPU 3, but NVML lists 1 GPU(s)"
    )
    detection = collector.detect({"device": [0]})
    assert not detection.present and "unknown setting(s) device" in detection.detail


def test_evidence_is_the_contract_shape_with_the_gpus_genuine_report_and_chain(
    collector: GpuCollector, vectors: Path, tmp_path: Path
) -> None:
    collector.prepare(FACTS, {})
    (item,) = collector.collect(BINDING, {})
    assert item.device == "GPU 0 (NVIDIA H100 80GB HBM3, GPU-0d7e1a3c-5b39-4d2e-9c41-53a3e1f0c535)"
    assert item.evidence_type == plugin.EVIDENCE_TYPE == "nvidia-gpu-cc-v1"
    evidence = item.evidence
    assert set(evidence) == {"report", "certificates", "nvml"}  # nothing stapled
    report = bytes.fromhex((vectors / "nvat-hopper-535.86.09-attestation-report.hex").read_text())
    assert evidence["report"] == b64(report)
    chain = x509.load_pem_x509_certificates(
        (vectors / "nvat-hopper-535.86.09-cert-chain.pem").read_bytes()
    )
    assert evidence["certificates"] == [b64(c.public_bytes(Encoding.DER)) for c in chain]
    assert evidence["nvml"] == {
        "driver_version": "535.86.09",
        "vbios_version": "96.00.5E.00.01",
        "cc_mode": "on",
    }
    decoded = decode(evidence)  # what the verifier reads, without a problem
    assert decoded.problems == [] and decoded.report == report
    # the binding went to the GPU as the SPDM requester nonce (the double replays its
    # recorded report anyway; the verifier's gpu.nonce catches that)
    assert nonces(tmp_path) == [BINDING.hex()]


def test_the_verifier_takes_what_the_collector_writes_and_judges_the_binding(
    collector: GpuCollector, vectors: Path
) -> None:
    """The double replays NVIDIA's report: over its recorded nonce every check of the GPU's
    own evidence passes; over any other binding exactly the nonce fails."""
    recorded = bytes.fromhex((vectors / "nvat-hopper-535.86.09-attestation-report.hex").read_text())
    signed_checks = ("format", "signature", "chain", "nonce", "architecture", "versions")
    collector.prepare(FACTS, {})
    for binding, nonce in ((recorded[4:36], "pass"), (BINDING, "fail")):
        (item,) = collector.collect(binding, {})
        verdict = GpuVerifier().verify(item.evidence, TrustInputs(binding=binding, at=AT))
        statuses = {check.name: check.status.value for check in verdict.checks}
        expected = {f"gpu.{name}": "pass" for name in signed_checks} | {"gpu.nonce": nonce}
        assert {name: statuses[name] for name in expected} == expected
        assert not verdict.hardware_attested  # nothing stapled: no RIM, no revocation


def test_every_listed_gpu_gives_one_item_over_the_same_binding(
    collector: GpuCollector, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("NVML_DOUBLE_GPUS", "hopper-535,blackwell,hopper-570")
    collector.prepare(FACTS, {"devices": [2, 1]})
    items = collector.collect(BINDING, {"devices": [2, 1]})
    assert [i.device.split(",")[0] for i in items] == [
        "GPU 2 (NVIDIA H100 80GB HBM3",
        "GPU 1 (NVIDIA B200",
    ]
    assert [i.evidence["nvml"]["vbios_version"] for i in items] == [
        "96.00.5E.00.04",
        "97.00.88.00.0F",
    ]
    assert nonces(tmp_path) == [BINDING.hex()] * 2
    monkeypatch.setenv("NVML_DOUBLE_STATE", "devtools")
    collector.close()
    collector.prepare(FACTS, {})
    assert [i.evidence["nvml"]["cc_mode"] for i in collector.collect(BINDING, {})] == [
        "devtools"
    ] * 3


def test_collect_refuses_a_wrong_binding_changed_settings_and_use_before_prepare(
    collector: GpuCollector,
) -> None:
    with pytest.raises(RuntimeError, match="without prepare"):
        collector.collect(BINDING, {})
    collector.prepare(FACTS, {})
    with pytest.raises(ProviderError, match="the binding is 31 bytes, not 32"):
        collector.collect(BINDING[:31], {})
    with pytest.raises(ProviderError, match="changed after the gateway prepared"):
        collector.collect(BINDING, {"devices": [0]})
    collector.prepare(FACTS, {})  # the same settings again (another bundle): nothing changes
    assert len(collector.collect(BINDING, {})) == 1


def test_a_gpu_that_stops_attesting_or_changes_refuses_the_session(
    collector: GpuCollector, monkeypatch: pytest.MonkeyPatch
) -> None:
    collector.prepare(FACTS, {})
    monkeypatch.setenv("NVML_DOUBLE_STATE", "cc-off")
    with pytest.raises(ProviderError) as refused:
        collector.collect(BINDING, {})
    assert refused.value.message.startswith("GPU 0 (NVIDIA H100 80GB HBM3) could not be attested")
    assert "nvmlDeviceGetConfComputeGpuAttestationReport: Not Supported" in refused.value.message
    monkeypatch.setenv("NVML_DOUBLE_STATE", "truncated-report")
    with pytest.raises(ProviderError, match="returned an unusable attestation report"):
        collector.collect(BINDING, {})
    monkeypatch.setenv("NVML_DOUBLE_STATE", "ok")
    monkeypatch.setenv("NVML_DOUBLE_GPUS", "hopper-570")  # another driver and VBIOS now
    with pytest.raises(ProviderError, match="changed since the gateway started"):
        collector.collect(BINDING, {})


def rims(vectors: Path, *names: str) -> dict[str, Any]:
    return {"rims": [str(vectors / name) for name in names]}


def test_rims_are_matched_to_the_gpu_by_version_and_stapled_as_given(
    collector: GpuCollector, vectors: Path
) -> None:
    settings = rims(vectors, VBIOS_RIM, DRIVER_RIM)
    collector.prepare(FACTS, settings)
    (item,) = collector.collect(BINDING, settings)
    assert set(item.evidence) == {"report", "certificates", "nvml", "rims"} < CONTRACT
    assert item.evidence["rims"] == {
        "driver": b64((vectors / DRIVER_RIM).read_bytes()),
        "vbios": b64((vectors / VBIOS_RIM).read_bytes()),
    }
    decoded = decode(item.evidence)
    assert decoded.problems == [] and set(decoded.rims) == {"driver", "vbios"}


@pytest.mark.parametrize(
    ("names", "problem"),
    [
        ((DRIVER_RIM,), "has no VBIOS RIM for GPU 0 (NVIDIA H100 80GB HBM3), whose VBIOS "
         "version is 96.00.5E.00.01"),
        ((VBIOS_RIM,), "has no driver RIM for GPU 0 (NVIDIA H100 80GB HBM3), whose driver "
         "version is 535.86.09"),
        ((DRIVER_RIM, VBIOS_RIM, "nvat-rim-NV_GPU_DRIVER_GH100_550.144.03.xml"),
         "describe no attested GPU: "),
        ((DRIVER_RIM, VBIOS_RIM, "nvat-rim-NV_SWITCH_BIOS_5612_0002_890_9610550001.xml"),
         "SWITCH RIM 96.10.55.00.01, not a GPU driver or VBIOS RIM"),
        ((DRIVER_RIM, "nvat-hopper-535.86.09-cert-chain.pem"), "is not a usable RIM"),
        ((DRIVER_RIM, "no-such-rim.xml"), "cannot be read"),
    ],
)  # fmt: skip
def test_rim_mistakes_refuse_the_start_naming_the_file_and_the_gpu(
    collector: GpuCollector, vectors: Path, names: tuple[str, ...], problem: str
) -> None:
    with pytest.raises(ProviderError) as refused:
        collector.prepare(FACTS, rims(vectors, *names))
    assert problem in refused.value.message
    assert refused.value.message.startswith("attestation.providers.gpu-cc.rims")


def test_rims_of_one_version_for_two_chips_are_told_apart_by_the_chain(
    collector: GpuCollector, vectors: Path, tmp_path: Path
) -> None:
    pki = RimPki.create()
    blackwell = tmp_path / "gb100-driver.xml"
    blackwell.write_bytes(
        pki.sign(rim_document({7: [bytes(48)]}, version="535.86.09", product="GB100"))
    )
    settings = rims(vectors, DRIVER_RIM, VBIOS_RIM)
    settings["rims"].append(str(blackwell))
    with pytest.raises(ProviderError, match=r"describe no attested GPU: .*gb100-driver\.xml"):
        collector.prepare(FACTS, settings)  # the GH100 one was chosen, the GB100 one unused
    twin = tmp_path / "twin.xml"
    twin.write_bytes((vectors / DRIVER_RIM).read_bytes())
    settings = rims(vectors, DRIVER_RIM, VBIOS_RIM)
    settings["rims"].append(str(twin))
    with pytest.raises(ProviderError, match=r"several driver RIMs have version 535\.86\.09"):
        collector.prepare(FACTS, settings)


def test_ocsp_responses_are_stapled_to_every_gpu_and_garbage_is_refused(
    collector: GpuCollector, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    pki = RimPki.create()
    files = []
    for number, response in enumerate(pki.responses()):
        path = tmp_path / f"status-{number}.der"
        path.write_bytes(response)
        files.append(str(path))
    monkeypatch.setenv("NVML_DOUBLE_GPUS", "hopper-535,hopper-570")
    collector.prepare(FACTS, {"ocsp": files})
    items = collector.collect(BINDING, {"ocsp": files})
    expected = [b64(Path(f).read_bytes()) for f in files]
    assert [item.evidence["ocsp"] for item in items] == [expected, expected]
    assert all("rims" not in item.evidence for item in items)
    collector.close()
    garbage = tmp_path / "garbage.der"
    garbage.write_bytes(b"\x30\x03\x0a\x01\x01")  # OCSPResponse, status malformedRequest
    with pytest.raises(ProviderError, match=r"is an OCSP error \(MALFORMED_REQUEST\)"):
        collector.prepare(FACTS, {"ocsp": [str(garbage)]})
    garbage.write_bytes(b"not DER")
    with pytest.raises(ProviderError, match="is not a DER OCSP response"):
        collector.prepare(FACTS, {"ocsp": [str(garbage)]})


def test_what_nvml_cannot_have_returned_is_refused_not_truncated_or_guessed(
    collector: GpuCollector, nvml: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    collector.prepare(FACTS, {})
    genuine_report = nvml.nvmlDeviceGetConfComputeGpuAttestationReport
    genuine_chain = nvml.nvmlDeviceGetConfComputeGpuCertificate

    def oversized(device: Any, nonce: bytes) -> Any:
        made = genuine_report(device, nonce)
        made.attestationReportSize = nvml.NVML_CC_GPU_ATTESTATION_REPORT_SIZE + 1
        return made

    monkeypatch.setattr(nvml, "nvmlDeviceGetConfComputeGpuAttestationReport", oversized)
    with pytest.raises(ProviderError, match=r"a report of 8193 bytes \(room for 8192\)"):
        collector.collect(BINDING, {})
    monkeypatch.setattr(nvml, "nvmlDeviceGetConfComputeGpuAttestationReport", genuine_report)

    def chain_of(data: bytes) -> Any:
        def made(device: Any) -> Any:
            certificate = genuine_chain(device)
            certificate.attestationCertChainSize = len(data)
            certificate.attestationCertChain[: len(data)] = list(data)
            return certificate

        return made

    for data, problem in (
        (b"", "an attestation certificate chain of 0 bytes"),
        (b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n", "not PEM certificates"),
        (b"\x30\x82\x01\x00", "not PEM certificates"),  # DER where NVML gives PEM
    ):
        monkeypatch.setattr(nvml, "nvmlDeviceGetConfComputeGpuCertificate", chain_of(data))
        with pytest.raises(ProviderError) as refused:
            collector.collect(BINDING, {})
        assert problem in refused.value.message
