"""The anchoring client against a hostile service: a real HTTPS server on 127.0.0.1 (the
double's test certificate) answering what no honest transparency service would. Each
answer is a failed attempt, named, never a receipt; nothing is followed elsewhere. And
the client through SCRAPI draft-09's flow (303, 302 while pending, 200) against the
double, end to end."""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import ssl
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from cmcp_cli.claim.anchor import anchor_id, transparency_uri
from cmcp_cli.claim.keys import ClaimKey
from cmcp_cli.claim.model import sign_claim
from cmcp_cli.claim.receipt import check_receipt
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
from cmcp_cli.testing.transparency import DRAFT09_PENDING_POLLS, RunningTransparency
from tests.sessions import record_session

# what the hostile server answers, by the test's name for it
ANSWERS: dict[str, tuple[int, dict[str, str], bytes]] = {}
OPERATIONS: dict[str, bytes] = {}
# what it answers to each GET of an entry, in turn (the last one again and again), and
# when each was asked for
ENTRY_ANSWERS: list[tuple[int, dict[str, str], bytes]] = []
ENTRY_GETS: list[float] = []


class Hostile(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length", "0")))
        self._answer(ANSWERS["post"])

    def do_GET(self) -> None:
        if self.path.startswith("/entries/"):
            ENTRY_GETS.append(time.monotonic())
            self._answer(ENTRY_ANSWERS[min(len(ENTRY_GETS), len(ENTRY_ANSWERS)) - 1])
            return
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


def failure_of(anchor: AnchorConfig, target: AnchorTarget, entry: PendingAnchor) -> str:
    """The message of the one attempt at `entry`, which must fail."""

    async def run() -> str:
        client = http_client(anchor)
        try:
            with pytest.raises(AnchorFailure) as failed:
                await anchor_record(client, target, entry)
        finally:
            await client.aclose()
        return str(failed.value)

    return asyncio.run(run())


def attempt(
    folder: Path,
    url: str,
    double: RunningTransparency,
    *,
    protocol: str = "scrapi",
    ca: bool = True,
    timeout: int = 5,
) -> str:
    """One attempt at `url`: the failure's message (it must fail)."""
    anchor = AnchorConfig(
        url=url,
        protocol=protocol,  # type: ignore[arg-type]
        log_key=double.folder / "log-key.pem",
        ca_file=double.folder / "ca.pem" if ca else None,
        timeout_seconds=timeout,
    )
    target = AnchorTarget(
        url, protocol, (double.folder / "log-key.pem").read_bytes(), timeout, "cmcp-gateway/t"
    )
    entry = entry_for(folder, url)

    return failure_of(anchor, target, entry)


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
    assert "not application/cose or application/scitt-receipt+cose" in attempt(
        tmp_path, hostile, double
    )


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


# -- SCRAPI draft-09: 303 See Other, then 302 Found while pending, then 200 ----------------


@pytest.mark.parametrize("mode", ["draft09", "draft09-relative"])
def test_a_draft09_registration_is_polled_to_its_receipt(
    tmp_path: Path, double: RunningTransparency, mode: str
) -> None:
    """Against the double: POST answers 303 to the entry (absolute, or relative as
    scitt-ccf-ledger answers), polled through its 302s to the 200 whose receipt, as
    `application/scitt-receipt+cose`, is this record's under the pinned log key."""
    double.set_mode(mode)
    try:
        entry = entry_for(tmp_path, double.url)
        before = len(double.requests())
        anchor = AnchorConfig(
            url=double.url, log_key=double.log_key, ca_file=double.ca_file, timeout_seconds=10
        )
        log_key = double.log_key.read_bytes()
        target = AnchorTarget(double.url, "scrapi", log_key, 10.0, "cmcp-gateway/t")

        async def run() -> dict[str, object]:
            client = http_client(anchor)
            try:
                return await anchor_record(client, target, entry)
            finally:
                await client.aclose()

        document = asyncio.run(run())
    finally:
        double.set_mode("up")
    assert document["anchor_id"] == anchor_id(entry.record)
    assert [(f.name, f.ok) for f in check_receipt(entry.record, document, log_key)] == [
        ("receipt.shape", True),
        ("receipt.record", True),
        ("receipt.inclusion", True),
        ("receipt.log_signature", True),
    ]
    asked = [(r["method"], r["path"], r["status"]) for r in double.requests()[before:]]
    path = f"/entries/{anchor_id(entry.record)}"
    assert asked == [
        ("POST", "/entries", 303),
        *[("GET", path, 302)] * DRAFT09_PENDING_POLLS,
        ("GET", path, 200),
    ], asked


def _draft09(post_location: str | None, *entry_answers: tuple[int, dict[str, str], bytes]) -> None:
    ANSWERS["post"] = (303, {} if post_location is None else {"location": post_location}, b"")
    ENTRY_ANSWERS[:] = list(entry_answers) or [(500, {}, b"")]
    ENTRY_GETS.clear()


@pytest.mark.parametrize(
    ("location", "problem"),
    [
        (None, "303 with Location None"),
        ("https://elsewhere.example/entries/x", "not under"),
        ("//elsewhere.example/entries/x", "not under"),
        ("{host}:1/entries/x", "not under"),
        ("{url}/operations/x", "not under"),
        ("/records/x", "not under"),
        ("{url}/entries/../records/x", "a . or .. segment"),
        ("/entries/../entries/x", "a . or .. segment"),
        ("{url}/entries/..", "a . or .. segment"),
        ("{url}/entries/%2e%2e", "not one entry"),
        ("{url}/entries/a/b", "not one entry"),
        ("{url}/entries/", "not one entry"),
        ("{url}/entries/x?next=https://elsewhere.example", "not one entry"),
        ("{url}/entries/x#y", "not one entry"),
    ],
)
def test_a_303_anywhere_but_one_entry_of_this_service_is_not_followed(
    tmp_path: Path, hostile: str, double: RunningTransparency, location: str | None, problem: str
) -> None:
    host = hostile.rsplit(":", 1)[0]
    _draft09(None if location is None else location.format(url=hostile, host=host))
    assert problem in attempt(tmp_path, hostile, double)
    assert ENTRY_GETS == []  # nothing was asked of any entry


def test_a_302_that_never_ends_fails_within_the_timeout(
    tmp_path: Path, hostile: str, double: RunningTransparency
) -> None:
    _draft09("/entries/e1", (302, {"location": f"{hostile}/entries/e1"}, b""))
    started = time.monotonic()
    failure = attempt(tmp_path, hostile, double, timeout=2)
    took = time.monotonic() - started
    assert "still pending (302) after 2 s (trace.anchor.timeout_seconds)" in failure, failure
    assert took < 3.5, took  # the timeout, and one attempt's setup
    assert 3 <= len(ENTRY_GETS) <= 12, ENTRY_GETS  # polled with backoff, not hammered
    gaps = [b - a for a, b in itertools.pairwise(ENTRY_GETS)]
    assert all(gap >= 0.09 for gap in gaps), gaps


def test_a_retry_after_is_honoured_and_one_past_the_timeout_ends_the_attempt(
    tmp_path: Path, hostile: str, double: RunningTransparency
) -> None:
    _draft09(f"{hostile}/entries/e1", (302, {"retry-after": "1"}, b""), (404, {}, b"gone"))
    assert "answered 404: gone" in attempt(tmp_path / "a", hostile, double, timeout=5)
    assert len(ENTRY_GETS) == 2 and ENTRY_GETS[1] - ENTRY_GETS[0] >= 0.95, ENTRY_GETS
    _draft09(f"{hostile}/entries/e1", (302, {"retry-after": "60"}, b""))
    started = time.monotonic()
    assert "still pending (302)" in attempt(tmp_path / "b", hostile, double, timeout=5)
    assert time.monotonic() - started < 2 and len(ENTRY_GETS) == 1


@pytest.mark.parametrize(
    ("answer", "problem"),
    [
        ((200, {"content-type": "application/json"}, b"{}"), "came as 'application/json'"),
        ((200, {}, b"\xd2\x84"), "came as None"),
        ((307, {"location": "https://elsewhere.example/r"}, b""), "answered 307"),
        ((404, {}, b"no such entry"), "answered 404: no such entry"),
    ],
)
def test_an_entry_answering_anything_but_a_receipt_is_a_failed_attempt(
    tmp_path: Path,
    hostile: str,
    double: RunningTransparency,
    answer: tuple[int, dict[str, str], bytes],
    problem: str,
) -> None:
    _draft09("/entries/e1", (302, {}, b""), answer)
    failure = attempt(tmp_path, hostile, double)
    assert problem in failure, failure
    assert len(ENTRY_GETS) == 2  # the 302, then the answer: never followed elsewhere


@pytest.mark.parametrize(
    ("retry_after", "problem"),
    [
        ("Wed, 21 Oct 2015 07:28:00 GMT", "answered 404: gone"),  # a date: the backoff's pause
        ("\u00b2", "answered 404: gone"),  # a digit to str.isdigit, not to HTTP
        ("-1", "answered 404: gone"),
        ("9" * 5000, "still pending (302)"),  # past any timeout, and past int()'s limit
    ],
)
def test_a_malformed_retry_after_is_a_named_outcome_never_an_exception(
    tmp_path: Path, hostile: str, double: RunningTransparency, retry_after: str, problem: str
) -> None:
    _draft09("/entries/e1", (302, {"retry-after": retry_after}, b""), (404, {}, b"gone"))
    assert problem in attempt(tmp_path, hostile, double, timeout=3)


# -- where the service keeps the entry: the receipt document's `entry` ---------------------


def _anchored(
    folder: Path, double: RunningTransparency, protocol: str
) -> tuple[dict[str, Any], dict[str, Any]]:
    """One record anchored at the double by the client, and its receipt document."""
    entry = entry_for(folder, double.url)
    anchor = AnchorConfig(url=double.url, log_key=double.log_key, ca_file=double.ca_file)
    log_key = double.log_key.read_bytes()
    target = AnchorTarget(double.url, protocol, log_key, 10.0, "cmcp-gateway/t")

    async def run() -> dict[str, Any]:
        client = http_client(anchor)
        try:
            return await anchor_record(client, target, entry)
        finally:
            await client.aclose()

    document = asyncio.run(run())
    assert [(f.name, f.ok) for f in check_receipt(entry.record, document, log_key)] == [
        ("receipt.shape", True),
        ("receipt.record", True),
        ("receipt.inclusion", True),
        ("receipt.log_signature", True),
    ]
    assert document["transparency"] == entry.record["transparency"]
    return dict(entry.record), document


@pytest.mark.parametrize(
    ("mode", "protocol", "kept_at"),
    [
        ("own-ids", "scrapi", r"/entries/2\.[0-9]+"),  # 303 to an id of the service's own
        ("up", "scrapi", "/entries/{anchor_id}"),  # 201 with Location: the anchor id
        ("async", "scrapi", "/entries/{anchor_id}"),  # 202, then the operation's entryID
        ("up", "registry-anchor-v1", "/records/{anchor_id}"),  # 201 with Location
    ],
)
def test_the_receipt_document_names_the_entry_the_service_keeps(
    tmp_path: Path, double: RunningTransparency, mode: str, protocol: str, kept_at: str
) -> None:
    double.set_mode(mode)
    try:
        record, document = _anchored(tmp_path, double, protocol)
    finally:
        double.set_mode("up")
    path = kept_at.format(anchor_id=document["anchor_id"])
    assert re.fullmatch(re.escape(double.url) + path, document["entry"]), document
    (named,) = [f for f in check_receipt(record, document, None) if f.name == "receipt.record"]
    if mode == "own-ids":  # kept elsewhere than the transparency URI, and said so
        assert document["entry"] != document["transparency"]
        assert f"kept by the service at {document['entry']}" in named.reason, named


@pytest.mark.parametrize(
    ("protocol", "location", "problem"),
    [
        ("scrapi", "https://elsewhere.example/entries/x", "201 with Location"),
        ("scrapi", "/operations/x", "not under"),
        ("scrapi", "/entries/a/b", "not one entry"),
        ("registry-anchor-v1", "/entries/x", "not under"),
        ("registry-anchor-v1", "https://elsewhere.example/records/x", "not under"),
    ],
)
def test_a_201_naming_an_entry_elsewhere_is_a_failed_attempt(
    tmp_path: Path,
    hostile: str,
    double: RunningTransparency,
    *,
    protocol: str,
    location: str,
    problem: str,
) -> None:
    kind = "application/cose" if protocol == "scrapi" else "application/json"
    ANSWERS["post"] = (201, {"content-type": kind, "location": location}, b"{}")
    failure = attempt(tmp_path, hostile, double, protocol=protocol)
    assert "201 with Location" in failure and problem in failure, failure


@pytest.mark.parametrize(
    "url",
    [
        "https://127.0.0.1:99999",  # anyio: ExceptionGroup(OverflowError)
        "https://[zz]",  # httpx.InvalidURL
        "https://h:" + "9" * 30,  # OverflowError
    ],
)
def test_a_url_no_client_can_connect_to_is_a_named_failure_never_an_exception(
    tmp_path: Path, double: RunningTransparency, url: str
) -> None:
    """trace.anchor.url refuses such URLs (tests/test_anchor_queue.py); a target made
    otherwise still fails the attempt with a reason, never an exception per retry."""
    entry = entry_for(tmp_path, url)
    anchor = AnchorConfig(url=double.url, log_key=double.log_key)
    target = AnchorTarget(url, "scrapi", b"", 2.0, "cmcp-gateway/t")

    failure = failure_of(anchor, target, entry)
    assert failure.startswith(f"POST {url}/entries: "), failure
    assert f"(check trace.anchor.url {url})" in failure, failure
