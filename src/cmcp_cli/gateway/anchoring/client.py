"""Anchoring one TRACE record in a transparency service, over either protocol.

`scrapi` (RFC 9943 SCRAPI): `POST <url>/entries` with the record's SCITT Signed Statement
(`application/cose`) answers `201` with the RFC 9942 COSE receipt; or, as SCRAPI
draft-ietf-scitt-scrapi-09 registers, `303 See Other` with `Location: <url>/entries/<id>`,
whose `GET` answers `302 Found` while the registration runs and `200` with the receipt once
done; or, as earlier drafts did, `202` with `Location: <url>/operations/<id>` polled until
it names the entry, whose receipt `GET <url>/entries/<id>` returns. A receipt comes as
`application/cose` or `application/scitt-receipt+cose` (RFC 9943's media type).
`registry-anchor-v1`: `POST <url>/records` with the signed record answers `201` with the
registry entry, the inclusion proof and the COSE receipt.
Either way the receipt must verify under the pinned log key for this record's leaf
(`claim.receipt.receipt_document`), and a registry's entry and proof must be the ones
that receipt proves: a registry vouches for its root only by the key. The URL the service
names for the entry (a `303`'s or `201`'s `Location`, `<url>/entries/<entryID>`) is kept
as the document's `entry`: a service that assigns its own ids keeps the entry there, not
at the record's transparency URI.

The client follows no redirect by itself: a `303`'s `Location` is read, resolved against
the request's URL and polled only when it names one entry under `<url>/entries/`; a
`302`'s is never followed (the checked URL is polled again). It takes no proxy or netrc
from the environment, verifies TLS against `ca_file` (or the system roots), reads at most
1 MiB of any answer, and polls a running registration with bounded backoff (at least any
`Retry-After` asks) within `timeout_seconds` in all.
"""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urljoin, urlsplit

import cbor2
import httpx
import orjson

from cmcp_cli.claim.anchor import ENTRY_ID
from cmcp_cli.claim.keys import b64url_decode
from cmcp_cli.claim.receipt import ReceiptError, receipt_document, receipt_time
from cmcp_cli.config_trace import AnchorConfig
from cmcp_cli.evidence.anchor_queue import PendingAnchor

ANSWER_LIMIT = 1 << 20  # bytes of any answer read; more is refused
COSE = "application/cose"
SCITT_RECEIPT = "application/scitt-receipt+cose"  # RFC 9943's receipt media type
RECEIPT_TYPES = (COSE, SCITT_RECEIPT)
_ACCEPT = f"{SCITT_RECEIPT}, {COSE}"
_PENDING = (202, 302)  # a registration still running, when its entry is polled
_SEGMENT = ENTRY_ID  # an operation or entry id: one path segment, never `.` or `..`
_POLL_FIRST, _POLL_MOST = 0.1, 1.0  # seconds between polls of a running operation
_CWT_CLAIMS, _IAT = 15, 6


class AnchorFailure(Exception):  # noqa: N818 - a failed attempt, retried
    """The service could not be reached, or answered with anything but a receipt."""


class ReceiptRejected(Exception):  # noqa: N818 - a refused answer, retried
    """The service answered with a receipt that does not prove this record anchored."""


@dataclass(frozen=True)
class AnchorTarget:
    url: str
    protocol: str
    log_key_pem: bytes
    timeout: float
    producer: str  # `cmcp-gateway/<version>`, the receipt document's producer


def http_client(anchor: AnchorConfig) -> httpx.AsyncClient:
    """The one client anchoring uses (`ssl.SSLError`/`OSError` on an unusable ca_file)."""
    context = ssl.create_default_context(
        cafile=None if anchor.ca_file is None else str(anchor.ca_file)
    )
    return httpx.AsyncClient(
        verify=context,
        trust_env=False,
        follow_redirects=False,
        timeout=httpx.Timeout(float(anchor.timeout_seconds)),
        headers={"Accept-Encoding": "identity", "User-Agent": "cmcp-gateway"},
    )


async def anchor_record(
    client: httpx.AsyncClient, target: AnchorTarget, entry: PendingAnchor
) -> dict[str, Any]:
    """Submit `entry`'s record and return its receipt document: `AnchorFailure` when the
    service gives no receipt, `ReceiptRejected` when the one it gives proves nothing."""
    stated = entry.record.get("transparency")
    if not isinstance(stated, str) or not stated.startswith(f"{target.url}/entries/"):
        raise AnchorFailure(
            f"the record names {stated!r}, not an entry of {target.url} (trace.anchor.url "
            "changed since it was signed): anchor it there, or set trace.anchor.url back"
        )
    if target.protocol == "scrapi":
        return await _scrapi(client, target, entry)
    return await _registry(client, target, entry)


async def _scrapi(
    client: httpx.AsyncClient, target: AnchorTarget, entry: PendingAnchor
) -> dict[str, Any]:
    if entry.statement is None:
        raise AnchorFailure(
            "the record was queued without a SCRAPI statement (no claim key signed one), "
            "so only trace.anchor.protocol registry-anchor-v1 can anchor it"
        )
    asked = "POST /entries"
    posted = f"{target.url}/entries"
    status, headers, body = await _request(
        client, target, "POST", posted, content=entry.statement, content_type=COSE, accept=_ACCEPT
    )
    named: str | None = None  # the service's URL of the entry, when it names one
    if status == 303:
        named = _entry_location(target, posted, headers.get("location"), status)
        asked = f"GET {named}"
        status, headers, body = await _poll_entry(client, target, named)
    elif status == 202:
        entry_id = await _operation(client, target, headers.get("location"))
        named = f"{target.url}/entries/{entry_id}"
        asked = f"GET /entries/{entry_id}"
        status, headers, body = await _request(client, target, "GET", named, accept=_ACCEPT)
    elif status == 201 and headers.get("location") is not None:
        named = _entry_location(target, posted, headers.get("location"), status)
    if status not in (200, 201):
        raise AnchorFailure(_unexpected(asked, status, body))
    media_type = headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type not in RECEIPT_TYPES:
        raise AnchorFailure(
            f"the receipt came as {headers.get('content-type')!r}, not {COSE} or {SCITT_RECEIPT}"
        )
    return _document(target, entry, body, batch_id=None, named=named)


def _entry_location(
    target: AnchorTarget, posted: str, location: str | None, status: int, kind: str = "entries"
) -> str:
    """A `303`'s or `201`'s `Location` (relative ones resolved against the request's URL)
    when it names one entry of this service: `<url>/<kind>/<id>`, the id one path segment."""
    prefix = f"{target.url}/{kind}/"
    resolved = urljoin(posted, location) if location else None
    if location and {".", ".."} & set(urlsplit(location).path.split("/")):
        raise AnchorFailure(f"{status} with Location {location!r}: a . or .. segment")
    if resolved is None or not resolved.startswith(prefix):
        raise AnchorFailure(f"{status} with Location {location!r}, not under {prefix}")
    if not _SEGMENT.fullmatch(resolved.removeprefix(prefix)):
        raise AnchorFailure(f"{status} with Location {location!r}, not one entry under {prefix}")
    return resolved


async def _poll_entry(
    client: httpx.AsyncClient, target: AnchorTarget, location: str
) -> tuple[int, httpx.Headers, bytes]:
    """`GET` the registration's entry until it answers anything but pending (`302`, or
    `202`), all within the timeout; the answer that ended it."""
    clock = asyncio.get_running_loop().time
    pause = _POLL_FIRST
    deadline = clock() + target.timeout
    status = 302
    while True:
        left = deadline - clock()
        if left <= 0:
            break
        status, headers, body = await _request(
            client, target, "GET", location, accept=_ACCEPT, within=left
        )
        if status not in _PENDING:
            return status, headers, body
        wait = max(pause, _retry_after(headers.get("retry-after")))
        if clock() + wait > deadline:
            break
        await asyncio.sleep(wait)
        pause = min(pause * 2, _POLL_MOST)
    raise AnchorFailure(
        f"the registration at {location} was still pending ({status}) after {target.timeout:g} s "
        "(trace.anchor.timeout_seconds): it is retried later"
    )


def _retry_after(value: str | None) -> float:
    """A `Retry-After` in seconds (RFC 9110 delay-seconds, capped at a day); 0 when absent
    or a date."""
    text = (value or "").strip()
    if not (text.isascii() and text.isdigit()):
        return 0.0
    return 86400.0 if len(text) > 5 else float(min(int(text), 86400))


async def _operation(client: httpx.AsyncClient, target: AnchorTarget, location: str | None) -> str:
    """Poll the registration's operation (bounded by the timeout) to its entry id."""
    prefix = f"{target.url}/operations/"
    if location is None or not location.startswith(prefix):
        raise AnchorFailure(f"202 with Location {location!r}, not under {prefix}")
    if not _SEGMENT.fullmatch(location.removeprefix(prefix)):
        raise AnchorFailure(f"202 with a malformed operation id in {location!r}")
    pause = _POLL_FIRST
    deadline = asyncio.get_running_loop().time() + target.timeout
    while True:
        status, _, body = await _request(client, target, "GET", location)
        answer = _json(body) if status == 200 else None
        if answer is None:
            raise AnchorFailure(_unexpected(f"GET {location}", status, body))
        state = answer.get("status")
        if state == "succeeded":
            entry_id = answer.get("entryID")
            if not isinstance(entry_id, str) or not _SEGMENT.fullmatch(entry_id):
                raise AnchorFailure(f"the operation succeeded with entryID {entry_id!r}")
            return entry_id
        if state == "failed":
            error = orjson.dumps(answer.get("error")).decode()[:300]
            raise AnchorFailure(f"the service failed the registration: {error}")
        if state != "running":
            raise AnchorFailure(f"the operation's status is {state!r}")
        if asyncio.get_running_loop().time() + pause > deadline:
            raise AnchorFailure(
                f"the registration was still running after {target.timeout:g} s "
                "(trace.anchor.timeout_seconds)"
            )
        await asyncio.sleep(pause)
        pause = min(pause * 2, _POLL_MOST)


async def _registry(
    client: httpx.AsyncClient, target: AnchorTarget, entry: PendingAnchor
) -> dict[str, Any]:
    posted = f"{target.url}/records"
    status, headers, body = await _request(
        client,
        target,
        "POST",
        posted,
        content=orjson.dumps(entry.record),
        content_type="application/json",
    )
    if status not in (200, 201):
        raise AnchorFailure(_unexpected("POST /records", status, body))
    location = headers.get("location")
    named = None
    if location is not None:  # the registry's own URL of the record
        named = _entry_location(target, posted, location, status, "records")
    answer = _json(body)
    if answer is None:
        raise AnchorFailure("the registry's answer is not a JSON object")
    registry_entry, proof, receipt = answer.get("entry"), answer.get("proof"), answer.get("receipt")
    if not isinstance(registry_entry, dict) or not isinstance(proof, dict):
        raise AnchorFailure("the registry's answer has no entry and proof objects")
    if not isinstance(receipt, str):
        raise AnchorFailure("the registry's answer carries no COSE receipt (receipt)")
    try:
        cose = b64url_decode(receipt)
    except ValueError as exc:
        raise ReceiptRejected(f"receipt is not base64url: {exc}") from None
    batch_id = registry_entry.get("batch_id")
    document = _document(
        target, entry, cose, batch_id=batch_id if isinstance(batch_id, str) else None, named=named
    )
    stated = {
        "merkle_root": registry_entry.get("merkle_root"),
        "leaf_count": registry_entry.get("leaf_count"),
        "leaf_index": proof.get("leaf_index"),
        "audit_path": proof.get("audit_path"),
    }
    differing = sorted(name for name, value in stated.items() if document[name] != value)
    if differing:
        raise ReceiptRejected(
            f"the registry's entry and proof disagree with its COSE receipt on "
            f"{', '.join(differing)}"
        )
    return document


def _document(
    target: AnchorTarget,
    entry: PendingAnchor,
    cose: bytes,
    *,
    batch_id: str | None,
    named: str | None,
) -> dict[str, Any]:
    try:
        return receipt_document(
            protocol=target.protocol,
            record=entry.record,
            cose_receipt=cose,
            log_key_pem=target.log_key_pem,
            ts=_issued_at(cose),
            producer=target.producer,
            batch_id=batch_id,
            entry=named,
        )
    except ReceiptError as exc:
        raise ReceiptRejected(
            f"the receipt does not verify under trace.anchor.log_key: {exc}"
        ) from None
    except (ValueError, TypeError, LookupError, cbor2.CBORDecodeError) as exc:
        raise ReceiptRejected(f"the receipt is malformed: {exc}") from None


def _issued_at(cose: bytes) -> str:
    """The receipt's `iat` (RFC 3339 UTC), or now when it states none."""
    moment = datetime.now(UTC)
    try:
        protected = cbor2.loads(cbor2.loads(cose).value[0])
        iat = protected.get(_CWT_CLAIMS, {}).get(_IAT)
        if type(iat) is int and 0 <= iat < 2**53:
            return receipt_time(iat)
    except (ValueError, TypeError, LookupError, AttributeError, OverflowError, OSError):
        pass  # receipt_document names what is wrong with it
    except cbor2.CBORDecodeError:
        pass
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


async def _request(
    client: httpx.AsyncClient,
    target: AnchorTarget,
    method: str,
    url: str,
    *,
    content: bytes | None = None,
    content_type: str | None = None,
    accept: str | None = None,
    within: float | None = None,
) -> tuple[int, httpx.Headers, bytes]:
    """One request, its answer read whole but capped, all within the timeout (or the
    `within` seconds left of it)."""
    headers = {"Content-Type": content_type} if content_type is not None else {}
    if accept is not None:
        headers["Accept"] = accept
    limit = target.timeout if within is None else min(within, target.timeout)
    try:
        async with asyncio.timeout(limit):
            async with client.stream(method, url, content=content, headers=headers) as answer:
                body = bytearray()
                async for chunk in answer.aiter_raw():
                    body += chunk
                    if len(body) > ANSWER_LIMIT:
                        raise AnchorFailure(f"{method} {url}: the answer is over 1 MiB")
                return answer.status_code, answer.headers, bytes(body)
    except TimeoutError:
        raise AnchorFailure(
            f"{method} {url}: no answer within {target.timeout:g} s (trace.anchor.timeout_seconds)"
        ) from None
    except httpx.HTTPError as exc:
        raise AnchorFailure(f"{method} {url}: {type(exc).__name__}: {exc}") from None
    except (httpx.InvalidURL, OSError, OverflowError, ExceptionGroup) as exc:
        # what httpx and anyio raise for a URL they cannot connect to (a port past 65535,
        # a host no resolver takes), a group of them when several addresses were tried
        raise AnchorFailure(
            f"{method} {url}: {_cause(exc)} (check trace.anchor.url {target.url})"
        ) from None


def _cause(exc: BaseException) -> str:
    """`Type: message` of `exc`, or of each exception an exception group holds."""
    if isinstance(exc, BaseExceptionGroup):
        return "; ".join(_cause(inner) for inner in exc.exceptions)
    return f"{type(exc).__name__}: {exc}"


def _json(body: bytes) -> dict[str, Any] | None:
    try:
        answer = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    return answer if isinstance(answer, dict) else None


def _unexpected(request: str, status: int, body: bytes) -> str:
    said = body[:200].decode("utf-8", "replace")
    said = "".join(c if c.isprintable() else "?" for c in said)
    return f"{request} answered {status}: {said}" if said else f"{request} answered {status}"
