"""Azure's instance metadata service (IMDS), as a confidential VM's guest asks it for what
the hardware report needs to be verified elsewhere:

    GET  {base}/metadata/THIM/amd/certification   (header Metadata: true)
         -> {"vcekCert": PEM, "certificateChain": PEM (ASK, ARK), "tcbm": hex, ...}
    POST {base}/acc/tdquote   {"report": base64url(TDREPORT)}   (header Metadata: true)
         -> {"quote": base64url(DCAP quote)}

The first is THIM's cache of AMD's KDS, for the VCEK of this VM's chip at the TCB the host
runs; the second is the host's Quoting Enclave, which turns the paravisor's TDREPORT into a
quote signed to Intel's root. base64url is accepted with or without padding, as both are
in use. IMDS answers the VM itself on a link-local address: no request follows a redirect
or goes through a proxy named by the environment, every request has bounded time (each
connect and read, and the whole answer) and every answer a bounded size. Nothing an answer
says is trusted: the collector checks the VCEK against the report it signed, and the
verifier judges everything again; what is refused here is only what cannot be used, each
time with a `ProviderError` naming the URL, what was wrong and what to do.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any, Final

import httpx
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from cmcp_azure import settings, tdreport
from cmcp_azure.settings import DEFAULT_IMDS_URL
from cmcp_cli.attestation.api import ProviderError
from cmcp_cli.claim.keys import b64url_decode, b64url_encode
from cmcp_tdx.quote import QuoteFormatError, parse_quote

THIM_PATH: Final = "/metadata/THIM/amd/certification"
TD_QUOTE_PATH: Final = "/acc/tdquote"
# A VCEK and its chain are a few kilobytes, a TD quote about 5 KB (base64url: a third more).
MAX_ANSWER: Final = 128 * 1024
# THIM's tcbm names the TCB the VCEK is for (AMD's TCB_VERSION is 8 bytes); it is only
# reported, never relied on (the VCEK's own extensions state its TCB), so its length is
# bounded rather than fixed.
MAX_TCBM_DIGITS: Final = 64
_HEADERS: Final = {"Metadata": "true", "Accept": "application/json"}
_REACH_HINT: Final = (
    f"check imds_url (Azure's is {DEFAULT_IMDS_URL}) and that this VM reaches it; "
    "no proxy is used for it"
)
_SNP_HINT: Final = (
    "THIM serves certificates only to an Azure SEV-SNP confidential VM (DCasv5/ECasv5); "
    "check that this is one and that imds_url is Azure's, or give the VCEK and its chain as "
    "files (settings vcek and cert_chain)"
)
_TDX_HINT: Final = (
    "the host makes TD quotes only for an Azure TDX confidential VM (DCesv5/ECesv5): check "
    "that this is one and that imds_url is Azure's"
)


@dataclass(frozen=True, slots=True)
class SnpCertificates:
    vcek: bytes  # DER
    chain: tuple[bytes, ...]  # DER, in the order THIM serves them (AMD's: ASK, then ARK)
    tcbm: str  # the TCB the VCEK was issued for, as THIM states it (hex)


def _url(base: str, path: str) -> str:
    """`path` under the service's base URL, which is refused as the imds_url setting is
    (callers of this module may pass one that no settings validated)."""
    return settings.base_url("imds_url", base) + path


def _exchange(request: httpx.Request, *, timeout: float, hint: str) -> bytes:
    """The body of a 200 answer to `request`, read whole within `timeout` seconds and up to
    `MAX_ANSWER` bytes."""
    url = str(request.url)
    deadline = time.monotonic() + timeout
    # trust_env=False: no proxy, netrc or CA bundle from the environment sees the request
    client = httpx.Client(timeout=httpx.Timeout(timeout), follow_redirects=False, trust_env=False)
    with client:
        try:
            response = client.send(request, stream=True)
        except httpx.TimeoutException:
            raise ProviderError(
                f"{url} did not answer within {timeout} s", hint=_REACH_HINT
            ) from None
        except httpx.HTTPError as error:
            raise ProviderError(
                f"{url} could not be reached ({type(error).__name__}: {error})", hint=_REACH_HINT
            ) from None
        try:
            return _body(response, url, deadline, timeout, hint)
        except httpx.TimeoutException:
            raise ProviderError(
                f"{url} did not finish its answer within {timeout} s", hint=_REACH_HINT
            ) from None
        except httpx.HTTPError as error:
            raise ProviderError(
                f"reading the answer of {url} failed ({type(error).__name__}: {error})",
                hint=_REACH_HINT,
            ) from None
        finally:
            response.close()


def _body(response: httpx.Response, url: str, deadline: float, timeout: float, hint: str) -> bytes:
    status = response.status_code
    if status in range(300, 400):
        target = response.headers.get("location", "no Location")
        raise ProviderError(
            f"{url} answered HTTP {status}, a redirect (to {target}), which is refused: IMDS "
            "answers the VM itself",
            hint=_REACH_HINT,
        )
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_ANSWER:
        raise ProviderError(
            f"{url} announced {declared} bytes, more than the {MAX_ANSWER} accepted",
            hint=_REACH_HINT,
        )
    body = bytearray()
    for chunk in response.iter_bytes():
        body += chunk
        if len(body) > MAX_ANSWER:
            raise ProviderError(
                f"{url} sent more than the {MAX_ANSWER} bytes accepted", hint=_REACH_HINT
            )
        if time.monotonic() > deadline:
            raise ProviderError(
                f"{url} did not finish its answer within {timeout} s", hint=_REACH_HINT
            )
    if status != httpx.codes.OK:
        shown = bytes(body[:200]).decode("utf-8", "replace")
        raise ProviderError(f"{url} answered HTTP {status}: {shown!r}", hint=hint)
    return bytes(body)


def _document(body: bytes, url: str, members: tuple[str, ...], hint: str) -> dict[str, Any]:
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):
        raise ProviderError(f"{url} answered something that is not JSON", hint=hint) from None
    if not isinstance(document, dict):
        raise ProviderError(f"{url} answered JSON that is not an object", hint=hint)
    for member in members:
        if not isinstance(document.get(member), str) or not document[member]:
            raise ProviderError(f"{url} answered JSON without a {member!r} string", hint=hint)
    return document


def _certificates(pem: str, count: int, what: str, url: str) -> list[bytes]:
    try:
        found = x509.load_pem_x509_certificates(pem.encode())
    except ValueError as error:
        raise ProviderError(
            f"the {what} {url} answered is not PEM certificate data ({error})", hint=_SNP_HINT
        ) from None
    if len(found) != count:
        raise ProviderError(
            f"the {what} {url} answered holds {len(found)} certificate(s), not {count}",
            hint=_SNP_HINT,
        )
    return [cert.public_bytes(Encoding.DER) for cert in found]


def fetch_snp_certificates(base_url: str, *, timeout: float) -> SnpCertificates:
    """The VCEK of this VM's chip and its ASK/ARK chain, from THIM through IMDS."""
    url = _url(base_url, THIM_PATH)
    body = _exchange(httpx.Request("GET", url, headers=_HEADERS), timeout=timeout, hint=_SNP_HINT)
    document = _document(body, url, ("vcekCert", "certificateChain", "tcbm"), _SNP_HINT)
    (vcek,) = _certificates(document["vcekCert"], 1, "vcekCert", url)
    chain = _certificates(document["certificateChain"], 2, "certificateChain", url)
    tcbm = document["tcbm"]
    if len(tcbm) > MAX_TCBM_DIGITS or not all(c in "0123456789abcdefABCDEF" for c in tcbm):
        raise ProviderError(
            f"the tcbm {url} answered, {tcbm[:40]!r}, is not hex (at most {MAX_TCBM_DIGITS} "
            "digits)",
            hint=_SNP_HINT,
        )
    return SnpCertificates(vcek=vcek, chain=tuple(chain), tcbm=tcbm)


def base64url_decode(text: str) -> bytes:
    """base64url with or without padding; `ValueError` for anything else (standard base64's
    `+` and `/`, whitespace, bad padding, non-canonical trailing bits)."""
    unpadded = text.rstrip("=")
    if len(text) - len(unpadded) > 2 or not unpadded:
        raise ValueError("bad padding")
    return b64url_decode(unpadded)


def fetch_td_quote(base_url: str, td_report: bytes, *, timeout: float) -> bytes:
    """The DCAP quote the host makes of `td_report` (the paravisor's 1024-byte TDREPORT),
    refused unless it is a quote whose TD body is that TDREPORT's."""
    try:
        wanted = tdreport.body_of(td_report)
    except tdreport.TdReportFormatError as error:
        raise ProviderError(
            f"the TD report to be quoted is unusable: {error}",
            hint="the HCL report in the vTPM did not hold a TDREPORT",
        ) from None
    url = _url(base_url, TD_QUOTE_PATH)
    request = httpx.Request(
        "POST", url, headers=_HEADERS, json={"report": b64url_encode(td_report)}
    )
    body = _exchange(request, timeout=timeout, hint=_TDX_HINT)
    document = _document(body, url, ("quote",), _TDX_HINT)
    try:
        quote = base64url_decode(document["quote"])
        parsed = parse_quote(quote)
    except (ValueError, QuoteFormatError) as error:
        raise ProviderError(
            f"the quote {url} answered is unusable: {error}", hint=_TDX_HINT
        ) from None
    if parsed.body != wanted:
        raise ProviderError(
            f"the quote {url} answered is not of the TD report sent: its TD body differs",
            hint=_TDX_HINT,
        )
    return quote
