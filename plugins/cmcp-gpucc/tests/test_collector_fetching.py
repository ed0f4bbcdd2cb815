"""Fetching RIMs and OCSP responses at start (`rim_url`, `ocsp_url`): NVIDIA's RIM ids from
the genuine reports, what a service must answer, and every way an answer is refused.

The services are httpx transports in-process (this is the fetching logic, not the network);
the GPUs are the NVML double serving the genuine vectors."""

from __future__ import annotations

import base64
import itertools
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.x509 import ocsp

from cmcp_cli.attestation.api import GatewayFacts, ProviderError
from cmcp_gpucc import staples
from cmcp_gpucc.collector import GpuCollector
from cmcp_gpucc.fetching import fetch_ocsp, fetch_rim, rim_ids
from cmcp_gpucc.rim_signing import Issued, RimPki, ocsp_response

RIM_URL = "https://rims.example/v1/rim/"
OCSP_URL = "https://ocsp.example/"
DRIVER_RIM = "nvat-rim-NV_GPU_DRIVER_GH100_535.86.09_measurement_mismatch.xml"
VBIOS_RIM = "nvat-rim-NV_GPU_VBIOS_1010_0200_882_96005E0001_measurement_mismatch.xml"
HOPPER_IDS = {
    "driver": "NV_GPU_DRIVER_GH100_535.86.09",
    "vbios": "NV_GPU_VBIOS_1010_0200_882_96005E0001",
}
Handler = Callable[[httpx.Request], httpx.Response]


def client(handler: Handler) -> httpx.Client:
    return httpx.Client(transport=httpx.MockTransport(handler), follow_redirects=False)


def report_and_chain(vectors: Path, name: str) -> tuple[bytes, list[x509.Certificate]]:
    report = bytes.fromhex((vectors / f"{name}-attestation-report.hex").read_text())
    chain = x509.load_pem_x509_certificates((vectors / f"{name}-cert-chain.pem").read_bytes())
    return report, chain


def rim_answer(xml: bytes) -> httpx.Response:
    return httpx.Response(200, json={"id": "x", "rim": base64.b64encode(xml).decode()})


def test_rim_ids_are_nvidias_names_of_what_the_signed_report_states(vectors: Path) -> None:
    assert rim_ids(*report_and_chain(vectors, "nvat-hopper-535.86.09")) == HOPPER_IDS
    assert rim_ids(*report_and_chain(vectors, "nvat-blackwell")) == {
        "driver": "NV_GPU_CC_DRIVER_GB100_575.32",
        "vbios": "NV_GPU_VBIOS_G525_0220_886_970088000F",
    }
    report, chain = report_and_chain(vectors, "nvat-hopper-535.86.09")
    with pytest.raises(ProviderError, match="does not say which RIMs describe it"):
        rim_ids(report[:-1], chain)


def test_a_rim_is_the_base64_xml_of_the_services_json_answer(vectors: Path) -> None:
    xml = (vectors / DRIVER_RIM).read_bytes()
    asked: list[str] = []

    def service(request: httpx.Request) -> httpx.Response:
        asked.append(str(request.url))
        return rim_answer(xml)

    assert fetch_rim(client(service), RIM_URL, "NV_GPU_DRIVER_GH100_535.86.09") == xml
    assert fetch_rim(client(service), RIM_URL.rstrip("/"), "NV_GPU_VBIOS_1") == xml
    assert asked == [RIM_URL + "NV_GPU_DRIVER_GH100_535.86.09", RIM_URL + "NV_GPU_VBIOS_1"]


@pytest.mark.parametrize(
    ("answer", "problem"),
    [
        (httpx.Response(404), "answered HTTP 404"),
        (httpx.Response(302, headers={"location": "https://elsewhere.example/"}),
         "answered HTTP 302"),  # a redirect is not followed
        (httpx.Response(200, content=b"<SoftwareIdentity/>"), "is not JSON with the base64 RIM"),
        (httpx.Response(200, json={"rim": "not base64!"}), "is not JSON with the base64 RIM"),
        (httpx.Response(200, json={"rim": ""}), "is empty or larger than"),
        (httpx.Response(200, content=b"x" * (400 << 10)), "sent more than"),
    ],
)  # fmt: skip
def test_an_unusable_rim_answer_is_refused(answer: httpx.Response, problem: str) -> None:
    with pytest.raises(ProviderError) as refused:
        fetch_rim(client(lambda _: answer), RIM_URL, "NV_GPU_DRIVER_GH100_535.86.09")
    assert problem in refused.value.message
    assert refused.value.message.startswith("attestation.providers.gpu-cc.rim_url")


def test_an_unreachable_service_is_named_with_the_reason() -> None:
    def down(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    with pytest.raises(ProviderError, match=r"could not be reached \(ConnectError"):
        fetch_rim(client(down), RIM_URL, "NV_GPU_DRIVER_GH100_535.86.09")


@pytest.fixture
def responder() -> Issued:
    return RimPki.create().root  # signs the answers; the collector does not judge them


def ocsp_service(chain: list[x509.Certificate], signer: Issued, asked: list[int]) -> Handler:
    """Answers a status request about a certificate of `chain` (found by serial)."""
    by_serial = {cert.serial_number: (cert, issuer) for cert, issuer in itertools.pairwise(chain)}

    def answer(request: httpx.Request) -> httpx.Response:
        assert request.method == "POST"
        assert request.headers["content-type"] == "application/ocsp-request"
        serial = ocsp.load_der_ocsp_request(request.content).serial_number
        asked.append(serial)
        cert, issuer = by_serial[serial]
        return httpx.Response(200, content=ocsp_response(cert, issuer, signer))

    return answer


def test_an_ocsp_answer_must_be_a_successful_status_of_that_certificate(
    vectors: Path, responder: Issued
) -> None:
    _, chain = report_and_chain(vectors, "nvat-hopper-535.86.09")
    asked: list[int] = []
    service = client(ocsp_service(chain, responder, asked))
    der = fetch_ocsp(service, OCSP_URL, chain[1], chain[2])
    assert ocsp.load_der_ocsp_response(der).serial_number == chain[1].serial_number
    assert asked == [chain[1].serial_number]
    other = ocsp_response(chain[2], chain[3], responder)
    with pytest.raises(ProviderError, match="the answer is about another certificate"):
        fetch_ocsp(client(lambda _: httpx.Response(200, content=other)), OCSP_URL, *chain[1:3])
    refusal = b"\x30\x03\x0a\x01\x03"  # tryLater
    with pytest.raises(ProviderError, match=r"the responder refused \(TRY_LATER\)"):
        fetch_ocsp(client(lambda _: httpx.Response(200, content=refusal)), OCSP_URL, *chain[1:3])
    with pytest.raises(ProviderError, match="not a DER OCSP response"):
        fetch_ocsp(client(lambda _: httpx.Response(200, content=b"{}")), OCSP_URL, *chain[1:3])


FACTS = GatewayFacts("sha256:" + "b0" * 32, "sha256:" + "ca" * 32, "sha256:" + "9a" * 32)
BINDING = bytes(32)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def serve(monkeypatch: pytest.MonkeyPatch, handler: Handler) -> None:
    monkeypatch.setattr(staples, "make_client", lambda: client(handler))


def test_rims_the_files_lack_are_fetched_once_by_nvidias_ids(
    collector: GpuCollector, monkeypatch: pytest.MonkeyPatch, vectors: Path
) -> None:
    served = {
        HOPPER_IDS["driver"]: (vectors / DRIVER_RIM).read_bytes(),
        HOPPER_IDS["vbios"]: (vectors / VBIOS_RIM).read_bytes(),
    }
    asked: list[str] = []

    def service(request: httpx.Request) -> httpx.Response:
        asked.append(str(request.url))
        return rim_answer(served[str(request.url).removeprefix(RIM_URL)])

    serve(monkeypatch, service)
    settings = {"rim_url": RIM_URL}
    collector.prepare(FACTS, settings)
    (item,) = collector.collect(BINDING, settings)
    assert item.evidence["rims"] == {kind: b64(xml) for kind, xml in
                                     zip(("driver", "vbios"), served.values(), strict=True)}  # fmt: skip
    assert asked == [RIM_URL + HOPPER_IDS["driver"], RIM_URL + HOPPER_IDS["vbios"]]
    for _ in range(3):
        collector.collect(BINDING, settings)
    assert len(asked) == 2  # once, at start
    collector.close()
    asked.clear()
    with_file = {"rim_url": RIM_URL, "rims": [str(vectors / DRIVER_RIM)]}
    collector.prepare(FACTS, with_file)
    assert asked == [RIM_URL + HOPPER_IDS["vbios"]]  # the file gives the driver RIM


def test_a_service_answering_another_rim_refuses_the_start(
    collector: GpuCollector, monkeypatch: pytest.MonkeyPatch, vectors: Path
) -> None:
    genuine = (vectors / "nvat-rim-NV_GPU_DRIVER_GH100_550.144.03.xml").read_bytes()
    serve(monkeypatch, lambda _: rim_answer(genuine))
    with pytest.raises(ProviderError) as refused:
        collector.prepare(FACTS, {"rim_url": RIM_URL})
    assert "is GH100 GPU RIM 550.144.03, not the driver RIM of GPU 0" in refused.value.message


def test_device_certificate_statuses_are_fetched_for_all_but_the_leaf_and_root(
    collector: GpuCollector, monkeypatch: pytest.MonkeyPatch, vectors: Path, responder: Issued
) -> None:
    _, chain = report_and_chain(vectors, "nvat-hopper-535.86.09")
    asked: list[int] = []
    serve(monkeypatch, ocsp_service(chain, responder, asked))
    settings = {"ocsp_url": OCSP_URL}
    collector.prepare(FACTS, settings)
    (item,) = collector.collect(BINDING, settings)
    # the GSP FMC leaf is made by the GPU firmware (NVIDIA's responder does not know it) and
    # the root is pinned: the BROM certificate, the provisioner ICA and the identity CA
    assert asked == [cert.serial_number for cert in chain[1:4]]
    stapled = [ocsp.load_der_ocsp_response(base64.b64decode(r)) for r in item.evidence["ocsp"]]
    assert [r.serial_number for r in stapled] == asked
    assert "rims" not in item.evidence


def test_statuses_of_a_rim_signer_need_the_rim_to_verify_now(
    collector: GpuCollector, monkeypatch: pytest.MonkeyPatch, vectors: Path, responder: Issued
) -> None:
    _, chain = report_and_chain(vectors, "nvat-hopper-535.86.09")
    serve(monkeypatch, ocsp_service(chain, responder, []))
    settings = {"ocsp_url": OCSP_URL, "rims": [str(vectors / n) for n in (DRIVER_RIM, VBIOS_RIM)]}
    with pytest.raises(ProviderError) as refused:
        collector.prepare(FACTS, settings)
    assert "the driver RIM's signers cannot be asked about" in refused.value.message
    assert "reference digest does not match" in refused.value.message
