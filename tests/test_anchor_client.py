"""The anchoring client against a hostile service: a real HTTPS server on 127.0.0.1 (the
double's test certificate) answering what no honest transparency service would. Each
answer is a failed attempt, named, never a receipt; nothing is followed elsewhere."""

from __future__ import annotations

import asyncio
import json
import ssl
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from cmcp_cli.claim.anchor import transparency_uri
from cmcp_cli.claim.keys import ClaimKey
from cmcp_cli.claim.model import sign_claim
from cmcp_cli.config_trace import AnchorConfig
from cmcp_cli.evidence.anchor_queue import PendingAnchor, queue_record
from cmcp_cli.gateway.anchoring.client import (
    ANSWER_LIMIT,
    AnchorFailure,
    AnchorTarget,
    anchor_record,
    http_client,
)
from cmcp_cli.testing.service import quiet
from cmcp_cli.testing.transparency import RunningTransparency
from tests.sessions import record_session

# what the hostile server answers, by the test's name for it
ANSWERS: dict[str, tuple[int, dict[str, str], bytes]] = {}
OPERATIONS: dict[str, bytes] = {}


class Hostile(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length", "0")))
        self._answer(ANSWERS["post"])

    def do_GET(self) -> None:
        self._answer((200, {"content-type": "application/json"}, OPERATIONS["get"]))

    def _answer(self, answer: tuple[int, dict[str, str], bytes]) -> None:
        status, headers, body = answer
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    log_message = quiet


@pytest.fixture(scope="module")
def double(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningTransparency]:
    with RunningTransparency.start(tmp_path_factory.mktemp("ts")) as running:
        yield running


@pytest.fixture(scope="module")
def hostile(double: RunningTransparency) -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Hostile)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(double.folder / "server.pem", double.folder / "server-key.pem")
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"https://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def entry_for(folder: Path, url: str) -> PendingAnchor:
    key = ClaimKey.generate()
    claim = json.loads(json.dumps(record_session(folder, key=key).claim))
    claim["trace"].pop("signature")
    claim["trace"]["transparency"] = transparency_uri(url, claim["trace"])
    record = sign_claim(claim, key)["trace"]
    queued = queue_record(folder, "s", record, key)
    assert queued is not None
    return queued


def attempt(
    folder: Path,
    url: str,
    double: RunningTransparency,
    *,
    protocol: str = "scrapi",
    ca: bool = True,
) -> str:
    """One attempt at `url`: the failure's message (it must fail)."""
    anchor = AnchorConfig(
        url=url,
        protocol=protocol,  # type: ignore[arg-type]
        log_key=double.folder / "log-key.pem",
        ca_file=double.folder / "ca.pem" if ca else None,
        timeout_seconds=5,
    )
    target = AnchorTarget(
        url, protocol, (double.folder / "log-key.pem").read_bytes(), 5.0, "cmcp-gateway/t"
    )
    entry = entry_for(folder, url)

    async def run() -> str:
        client = http_client(anchor)
        try:
            with pytest.raises(AnchorFailure) as failed:
                await anchor_record(client, target, entry)
        finally:
            await client.aclose()
        return str(failed.value)

    return asyncio.run(run())


COSE = {"content-type": "application/cose"}


def test_a_redirect_is_not_followed_and_no_proxy_is_taken_from_the_environment(
    tmp_path: Path, hostile: str, double: RunningTransparency, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.setenv("ALL_PROXY", "http://127.0.0.1:9")
    before = len(double.service.requests())
    ANSWERS["post"] = (307, {"location": f"{double.url}/entries"}, b"")
    assert "POST /entries answered 307" in attempt(tmp_path, hostile, double)
    assert len(double.service.requests()) == before  # the double was never asked


def test_an_answer_over_one_mebibyte_is_refused(
    tmp_path: Path, hostile: str, double: RunningTransparency
) -> None:
    ANSWERS["post"] = (201, COSE, b"\xa0" * (ANSWER_LIMIT + 1))
    assert "the answer is over 1 MiB" in attempt(tmp_path, hostile, double)


def test_a_receipt_of_another_media_type_is_refused(
    tmp_path: Path, hostile: str, double: RunningTransparency
) -> None:
    ANSWERS["post"] = (201, {"content-type": "application/json"}, b"{}")
    assert "not application/cose" in attempt(tmp_path, hostile, double)


@pytest.mark.parametrize(
    ("location", "operation", "problem"),
    [
        ("https://elsewhere.example/operations/1", b"{}", "not under"),
        ("{url}/operations/../../x", b"{}", "malformed operation id"),
        ("{url}/operations/op1", b'{"status": "succeeded", "entryID": "../x"}', "entryID"),
        ("{url}/operations/op1", b'{"status": "succeeded", "entryID": ".."}', "entryID"),
        ("{url}/operations/..", b"{}", "malformed operation id"),
        ("{url}/operations/op1", b'{"status": "failed", "error": {"t": 1}}', "failed the reg"),
        ("{url}/operations/op1", b'{"status": "lost"}', "status is 'lost'"),
        ("{url}/operations/op1", b"[]", "answered 200"),
    ],
)
def test_an_operation_that_leads_nowhere_is_a_failed_attempt(
    tmp_path: Path,
    hostile: str,
    double: RunningTransparency,
    *,
    location: str,
    operation: bytes,
    problem: str,
) -> None:
    ANSWERS["post"] = (202, {"location": location.format(url=hostile)}, b"")
    OPERATIONS["get"] = operation
    assert problem in attempt(tmp_path, hostile, double)


def test_a_registry_answer_that_is_not_the_shape_is_a_failed_attempt(
    tmp_path: Path, hostile: str, double: RunningTransparency
) -> None:
    for index, (body, problem) in enumerate(
        (
            (b"not json", "not a JSON object"),
            (b'{"entry": {}}', "no entry and proof"),
            (b'{"entry": {}, "proof": {}}', "carries no COSE receipt"),
        )
    ):
        ANSWERS["post"] = (201, {"content-type": "application/json"}, body)
        folder = tmp_path / str(index)
        folder.mkdir()
        found = attempt(folder, hostile, double, protocol="registry-anchor-v1")
        assert problem in found, (body, found)


def test_tls_is_verified_against_the_system_roots_without_ca_file(
    tmp_path: Path, hostile: str, double: RunningTransparency
) -> None:
    ANSWERS["post"] = (201, COSE, b"")
    assert "CERTIFICATE_VERIFY_FAILED" in attempt(tmp_path, hostile, double, ca=False)


def test_a_record_naming_another_service_is_not_submitted(
    tmp_path: Path, hostile: str, double: RunningTransparency
) -> None:
    entry = entry_for(tmp_path, double.url)  # states the double, submitted to `hostile`
    anchor = AnchorConfig(url=hostile, log_key=double.folder / "log-key.pem")
    target = AnchorTarget(hostile, "scrapi", b"", 5.0, "cmcp-gateway/t")

    async def run() -> None:
        client = http_client(anchor)
        try:
            with pytest.raises(AnchorFailure, match=r"trace\.anchor\.url changed"):
                await anchor_record(client, target, entry)
        finally:
            await client.aclose()

    asyncio.run(run())
