"""Fetching RIMs and OCSP responses once, at gateway start, with httpx.

`rim_url` is a RIM service speaking NVIDIA's protocol (`GET <rim_url>/<RIM id>` answers JSON
whose `rim` member is the base64 of the SWID XML), such as
`https://rim.attestation.nvidia.com/v1/rim/`. The RIM ids are NVIDIA's:

    driver, Hopper      NV_GPU_DRIVER_GH100_<driver version>
    driver, Blackwell   NV_GPU_CC_DRIVER_<chip>_<driver version>   (chip: opaque field 35,
                                                                     else GB100)
    VBIOS               NV_GPU_VBIOS_<project>_<project SKU>_<chip SKU>_<VBIOS, no dots>
                        (opaque fields 17, 18 and 15 of the GPU's signed report)

`ocsp_url` is an OCSP responder (RFC 6960 over HTTP POST), such as
`https://ocsp.ndis.nvidia.com/`. It is asked about every certificate of each GPU's device
chain below the root except the leaf, which the GPU firmware makes and NVIDIA's responder
does not know, and about every certificate of each stapled RIM's signer chain below the
root. Nothing here judges an answer beyond its form: the verifier checks each response's
signature, responder and validity at the claim's time.

Only https URLs are accepted (`settings`), redirects are not followed, every request has
bounded connect and read timeouts, and every answer is read up to a size limit.
"""

from __future__ import annotations

import base64
import binascii
import itertools
import json
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Final

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509 import ocsp

from cmcp_cli.attestation.api import ProviderError
from cmcp_gpucc import opaque, roots, spdm
from cmcp_gpucc.certificates import ChainError, chip_of
from cmcp_gpucc.evidence import MAX_OCSP, MAX_OCSP_RESPONSE, MAX_RIM
from cmcp_gpucc.rim import RimError, verify_rim
from cmcp_gpucc.settings import SECTION

TIMEOUT: Final = httpx.Timeout(15.0, connect=5.0)
CHIP_SKU: Final = 15
PROJECT: Final = 17
PROJECT_SKU: Final = 18
CHIP_INFO: Final = 35
# The RIM service wraps the XML in base64 inside JSON.
_MAX_RIM_ANSWER: Final = MAX_RIM * 4 // 3 + 4096


def make_client() -> httpx.Client:
    return httpx.Client(timeout=TIMEOUT, follow_redirects=False)


def _read(
    client: httpx.Client, request: httpx.Request, limit: int, what: str
) -> bytes:  # fmt: skip
    """The body of a 200 answer to `request`, read up to `limit` bytes."""
    try:
        response = client.send(request, stream=True)
    except httpx.HTTPError as error:
        raise ProviderError(
            f"{what}: {request.url} could not be reached ({type(error).__name__}: {error})",
            hint="check the network and the URL, or staple the file instead (docs/gpu-cc.md)",
        ) from None
    try:
        if response.status_code != httpx.codes.OK:
            raise ProviderError(
                f"{what}: {request.url} answered HTTP {response.status_code}",
                hint="check the URL, or staple the file instead (docs/gpu-cc.md)",
            )
        body = bytearray()
        for chunk in response.iter_bytes():
            body += chunk
            if len(body) > limit:
                raise ProviderError(f"{what}: {request.url} sent more than {limit} bytes")
        return bytes(body)
    except httpx.HTTPError as error:
        raise ProviderError(
            f"{what}: reading the answer of {request.url} failed ({type(error).__name__}: {error})",
            hint="check the network and the URL, or staple the file instead (docs/gpu-cc.md)",
        ) from None
    finally:
        response.close()


def _ascii(fields: Mapping[int, bytes], kind: int, what: str) -> str:
    value = fields.get(kind, b"").rstrip(b"\0").strip()
    if not value or not value.isascii() or not value.isalnum():
        raise ProviderError(
            f"the GPU's report states no usable {what} (opaque field {kind}), so its VBIOS RIM "
            "cannot be named",
            hint=f"staple the VBIOS RIM in {SECTION}.rims instead",
        )
    return value.decode("ascii").upper()


def rim_ids(report: bytes, chain: Sequence[x509.Certificate]) -> dict[str, str]:
    """NVIDIA's RIM ids of the driver and VBIOS the report states (see the docstring)."""
    try:
        data = opaque.parse(spdm.parse(report).opaque)
        chip = chip_of(chain)
    except (spdm.SpdmError, opaque.OpaqueError, ChainError, IndexError) as error:
        raise ProviderError(
            f"the GPU's report or chain does not say which RIMs describe it: {error}",
            hint=f"staple the RIMs in {SECTION}.rims instead",
        ) from None
    if chip.architecture == "Hopper":
        driver = f"NV_GPU_DRIVER_{chip.name}_{data.driver_version}"
    else:
        named = data.fields.get(CHIP_INFO, b"").rstrip(b"\0")
        board = named.decode("ascii").upper() if named.isascii() and named.isalnum() else "GB100"
        driver = f"NV_GPU_CC_DRIVER_{board}_{data.driver_version}"
    project = _ascii(data.fields, PROJECT, "project")
    sku = _ascii(data.fields, PROJECT_SKU, "project SKU")
    chip_sku = _ascii(data.fields, CHIP_SKU, "chip SKU")
    vbios = data.vbios_version.replace(".", "").upper()
    return {"driver": driver, "vbios": f"NV_GPU_VBIOS_{project}_{sku}_{chip_sku}_{vbios}"}


def fetch_rim(client: httpx.Client, base_url: str, rim_id: str) -> bytes:
    """The SWID XML of `rim_id` from a RIM service."""
    what = f"{SECTION}.rim_url, RIM {rim_id}"
    url = base_url.rstrip("/") + "/" + rim_id
    answer = _read(client, client.build_request("GET", url), _MAX_RIM_ANSWER, what)
    try:
        document = json.loads(answer)
        xml = base64.b64decode(document["rim"], validate=True)
    except (ValueError, TypeError, KeyError, binascii.Error):
        raise ProviderError(
            f"{what}: the answer is not JSON with the base64 RIM in its `rim` member",
            hint="set rim_url to a service speaking NVIDIA's RIM protocol",
        ) from None
    if not xml or len(xml) > MAX_RIM:
        raise ProviderError(f"{what}: the RIM is empty or larger than {MAX_RIM} bytes")
    return xml


def fetch_ocsp(
    client: httpx.Client, url: str, cert: x509.Certificate, issuer: x509.Certificate
) -> bytes:
    """The responder's DER answer about `cert`, which must be a status of that certificate."""
    request = ocsp.OCSPRequestBuilder().add_certificate(cert, issuer, hashes.SHA384()).build()
    subject = cert.subject.rfc4514_string()
    what = f"{SECTION}.ocsp_url, status of {subject}"
    asked = client.build_request(
        "POST",
        url,
        content=request.public_bytes(Encoding.DER),
        headers={"content-type": "application/ocsp-request"},
    )
    der = _read(client, asked, MAX_OCSP_RESPONSE, what)
    try:
        response = ocsp.load_der_ocsp_response(der)
    except ValueError as error:
        raise ProviderError(f"{what}: the answer is not a DER OCSP response ({error})") from None
    if response.response_status is not ocsp.OCSPResponseStatus.SUCCESSFUL:
        raise ProviderError(
            f"{what}: the responder refused ({response.response_status.name})",
            hint="check ocsp_url names NVIDIA's responder",
        )
    if not any(single.serial_number == cert.serial_number for single in response.responses):
        raise ProviderError(f"{what}: the answer is about another certificate")
    return der


def revocation_subjects(
    device_chain: Sequence[x509.Certificate], rims: Mapping[str, bytes]
) -> list[tuple[x509.Certificate, x509.Certificate]]:
    """(certificate, issuer) pairs whose status NVIDIA's responder gives: the device chain
    without its leaf and root, and each RIM signer chain without its root."""
    pairs = list(itertools.pairwise(device_chain[1:]))
    anchors = [anchor.cert for anchor in roots.vendored().rim]
    for kind, xml in sorted(rims.items()):
        try:
            signers = verify_rim(xml, anchors, datetime.now(UTC)).signer_chain
        except RimError as error:
            raise ProviderError(
                f"{SECTION}.ocsp_url: the {kind} RIM's signers cannot be asked about, because "
                f"the RIM does not verify now: {error}",
                hint="staple a current RIM, or leave ocsp_url out",
            ) from None
        pairs.extend(itertools.pairwise(signers))
    return pairs


def fetch_statuses(
    client: httpx.Client,
    url: str,
    device_chain: Sequence[x509.Certificate],
    rims: Mapping[str, bytes],
    cache: dict[bytes, bytes],
) -> tuple[bytes, ...]:
    """The responder's answers for one GPU (see `revocation_subjects`), asked once per
    certificate across GPUs (`cache`, by the certificate's DER)."""
    answers: list[bytes] = []
    for cert, issuer in revocation_subjects(device_chain, rims):
        key = cert.public_bytes(Encoding.DER)
        if key not in cache:
            cache[key] = fetch_ocsp(client, url, cert, issuer)
        if cache[key] not in answers:
            answers.append(cache[key])
    if len(answers) > MAX_OCSP:
        raise ProviderError(f"{SECTION}.ocsp_url: more than {MAX_OCSP} responses for one GPU")
    return tuple(answers)
