"""The IMDS client against the IMDS double, a real HTTP process on loopback: what each
endpoint answers when it works, and for each way it can fail, a `ProviderError` that names
the URL and what was wrong, within the time given."""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from cmcp_azure import hcl, imds
from cmcp_azure.testing.imds import DEFAULT_TCBM, STALL_SECONDS, RunningImds
from cmcp_azure.testing.synthetic import SnpAuthority, tdx_hcl_report
from cmcp_cli.attestation.api import ProviderError, TrustInputs
from cmcp_tdx import quote as tdx
from cmcp_tdx.synthetic import AT
from cmcp_tdx.verifier import TdxVerifier

TIMEOUT = 1.0


@pytest.fixture(scope="module")
def authority() -> SnpAuthority:
    return SnpAuthority.create()


@pytest.fixture(scope="module")
def running(
    authority: SnpAuthority, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningImds]:
    folder = tmp_path_factory.mktemp("imds")
    files = authority.write(folder)
    service = RunningImds.start(folder, vcek=files.vcek, cert_chain=files.chain)
    try:
        yield service
    finally:
        service.stop()


@pytest.fixture
def double(running: RunningImds) -> Iterator[RunningImds]:
    """The module's double, answering normally again after each test."""
    try:
        yield running
    finally:
        running.set_mode("succeed")


@pytest.fixture(scope="module")
def td_report() -> bytes:
    return hcl.parse(tdx_hcl_report(b'{"runtime": "data"}')).hardware_report


def _failure(call: object, *fragments: str) -> ProviderError:
    assert callable(call)
    with pytest.raises(ProviderError) as caught:
        call()
    for fragment in fragments:
        assert fragment in caught.value.message, caught.value.message
    assert caught.value.hint
    return caught.value


def test_the_certificates_are_thim_s(double: RunningImds, authority: SnpAuthority) -> None:
    found = imds.fetch_snp_certificates(double.url, timeout=TIMEOUT)
    assert found.vcek == authority.vcek_der
    assert found.chain == authority.chain_der
    assert found.tcbm == DEFAULT_TCBM
    last = double.requests()[-1]
    assert (last["method"], last["path"], last["metadata"]) == ("GET", imds.THIM_PATH, "true")


@pytest.mark.parametrize("mode", ["succeed", "padded"])
def test_the_td_quote_is_of_the_report_sent(
    double: RunningImds, td_report: bytes, mode: str
) -> None:
    double.set_mode(mode)
    quote = imds.fetch_td_quote(double.url + "/", td_report, timeout=TIMEOUT)
    last = double.requests()[-1]
    assert (last["method"], last["path"], last["metadata"]) == ("POST", imds.TD_QUOTE_PATH, "true")
    sent = base64.urlsafe_b64encode(td_report).decode().rstrip("=")
    assert last["body"] == {"report": sent}
    parsed = tdx.parse_quote(quote)
    if mode == "padded":  # its base64url needed padding, and unsigned zeros follow it
        assert len(quote) % 3 and parsed.trailing >= 70 and not any(quote[-parsed.trailing :])
    report_data = parsed.body.report_data
    trust = TrustInputs(
        binding=report_data[:32], at=AT, trust_roots=(double.intel_root.read_bytes(),)
    )
    verdict = TdxVerifier().verify({"quote": base64.b64encode(quote).decode()}, trust)
    assert verdict.hardware_attested and not verdict.failed, verdict.checks


SNP_FAILURES = [
    ("not-found", ("answered HTTP 404", "Not found")),
    ("error", ("answered HTTP 500",)),
    ("redirect", ("answered HTTP 307, a redirect", "refused")),
    ("oversize", ("announced", f"more than the {imds.MAX_ANSWER} accepted")),
    ("oversize-unannounced", (f"sent more than the {imds.MAX_ANSWER} bytes",)),
    ("malformed-json", ("not JSON",)),
    ("missing", ("without a 'vcekCert' string",)),
    ("malformed-pem", ("vcekCert", "not PEM certificate data")),
    ("short-chain", ("certificateChain", "holds 1 certificate(s), not 2")),
    ("bad-tcbm", ("tcbm", "is not hex")),
]


@pytest.mark.parametrize(("mode", "fragments"), SNP_FAILURES, ids=[m for m, _ in SNP_FAILURES])
def test_each_unusable_certification_answer_is_refused(
    double: RunningImds, mode: str, fragments: tuple[str, ...]
) -> None:
    double.set_mode(mode)
    url = double.url + imds.THIM_PATH
    error = _failure(
        lambda: imds.fetch_snp_certificates(double.url, timeout=TIMEOUT), url, *fragments
    )
    if mode == "not-found":
        assert "cert_chain" in (error.hint or "")


TDX_FAILURES = [
    ("not-found", ("answered HTTP 404",)),
    ("error", ("answered HTTP 500",)),
    ("redirect", ("answered HTTP 307, a redirect",)),
    ("oversize", ("announced",)),
    ("malformed-json", ("not JSON",)),
    ("missing", ("without a 'quote' string",)),
    ("malformed-pem", ("the quote", "is unusable", "base64url")),
    ("other-report", ("is not of the TD report sent",)),
]


@pytest.mark.parametrize(("mode", "fragments"), TDX_FAILURES, ids=[m for m, _ in TDX_FAILURES])
def test_each_unusable_quote_answer_is_refused(
    double: RunningImds, td_report: bytes, mode: str, fragments: tuple[str, ...]
) -> None:
    double.set_mode(mode)
    url = double.url + imds.TD_QUOTE_PATH
    _failure(lambda: imds.fetch_td_quote(double.url, td_report, timeout=TIMEOUT), url, *fragments)


@pytest.mark.parametrize(("mode", "fragment"), [("stall", "did not answer"), ("drip", "finish")])
def test_a_slow_answer_is_cut_off(double: RunningImds, mode: str, fragment: str) -> None:
    double.set_mode(mode)
    started = time.monotonic()
    _failure(lambda: imds.fetch_snp_certificates(double.url, timeout=TIMEOUT), fragment)
    assert time.monotonic() - started < TIMEOUT + 1.5 < STALL_SECONDS


def test_a_proxy_named_by_the_environment_is_not_used(
    double: RunningImds, authority: SnpAuthority, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.setenv(name, "http://127.0.0.1:9")  # the discard port: nothing answers
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    assert imds.fetch_snp_certificates(double.url, timeout=TIMEOUT).vcek == authority.vcek_der


def test_a_service_that_is_not_there_is_named(tmp_path: Path) -> None:
    with pytest.raises(ProviderError) as caught:
        imds.fetch_snp_certificates("http://127.0.0.1:9", timeout=TIMEOUT)
    assert "http://127.0.0.1:9/metadata/THIM/amd/certification could not be reached" in (
        caught.value.message
    )
    assert "imds_url" in (caught.value.hint or "")


@pytest.mark.parametrize("url", ["ftp://127.0.0.1", "169.254.169.254", "http://x/?a=1", ""])
def test_a_base_url_that_is_not_one_is_refused(url: str) -> None:
    _failure(lambda: imds.fetch_snp_certificates(url, timeout=TIMEOUT), repr(url))


def test_a_td_report_that_is_not_one_is_refused_before_asking(
    double: RunningImds, td_report: bytes
) -> None:
    before = len(double.requests())
    _failure(lambda: imds.fetch_td_quote(double.url, td_report[:-1], timeout=TIMEOUT), "1024")
    sgx = bytes([0]) + td_report[1:]
    _failure(lambda: imds.fetch_td_quote(double.url, sgx, timeout=TIMEOUT), "REPORTTYPE")
    assert len(double.requests()) == before


@pytest.mark.parametrize(
    ("text", "expected"),
    [("AP8", b"\x00\xff"), ("AP8=", b"\x00\xff"), ("-_-_", b"\xfb\xff\xbf"), ("AA", b"\x00")],
)
def test_base64url_is_taken_with_or_without_padding(text: str, expected: bytes) -> None:
    assert imds.base64url_decode(text) == expected


@pytest.mark.parametrize("text", ["", "=", "A", "AP9", "+/+/", "AP8===", "AP 8", "AP8=\n"])
def test_anything_else_is_not_base64url(text: str) -> None:
    with pytest.raises(ValueError, match=r"base64url|padding"):
        imds.base64url_decode(text)


def test_the_double_refuses_what_the_real_service_refuses(
    double: RunningImds, td_report: bytes
) -> None:
    with httpx.Client(trust_env=False, timeout=TIMEOUT) as client:
        bare = client.get(double.url + imds.THIM_PATH)
        assert bare.status_code == 400 and "metadata header" in bare.text
        headers = {"Metadata": "true"}
        standard = base64.b64encode(td_report[:-2] + b"\xff\xff").decode()  # '/' and '+'
        bad = client.post(
            double.url + imds.TD_QUOTE_PATH, headers=headers, json={"report": standard}
        )
        assert bad.status_code == 400 and "not a base64url TDREPORT" in bad.text
