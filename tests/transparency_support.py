"""Anchored claims for the transparency tests: a recorded session's claim whose record
states `transparency` at a double's URL, signed again by the session's own key, and the
two submissions of contract C (a SCITT Signed Statement, the signed record), made here
with scitt-cose and httpx directly rather than by the gateway's client."""

from __future__ import annotations

import json
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat
from scitt_cose import build_signed_statement, verify_receipt

from cmcp_cli import __version__
from cmcp_cli.claim.anchor import anchor_leaf_bytes, transparency_uri
from cmcp_cli.claim.keys import ClaimKey, jwk_thumbprint
from cmcp_cli.claim.model import sign_claim
from cmcp_cli.claim.receipt import receipt_document, receipt_time
from cmcp_cli.testing.transparency import RunningTransparency
from tests.sessions import RecordedSession, record_session

TIMEOUT = 10.0
PRODUCER = f"cmcp-gateway/{__version__}"


@dataclass(frozen=True)
class AnchoredClaim:
    claim: dict[str, Any]
    key: ClaimKey
    private_pem: bytes  # the claim key's, to sign a SCITT Signed Statement with
    session: RecordedSession

    @property
    def record(self) -> dict[str, Any]:
        return dict(self.claim["trace"])


def anchored_claim(folder: Path, url: str, *, session_id: str = "sess-1") -> AnchoredClaim:
    """A recorded session's claim whose record states `transparency` at `url`, signed."""
    private = Ed25519PrivateKey.generate()
    key = ClaimKey(private)
    session = record_session(folder, session_id=session_id, key=key)
    claim = json.loads(json.dumps(session.claim))
    claim["trace"].pop("signature")
    claim["trace"]["transparency"] = transparency_uri(url, claim["trace"])
    pem = private.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
    return AnchoredClaim(sign_claim(claim, key), key, pem, session)


def sibling_record(anchored: AnchoredClaim, url: str, data_class: str) -> dict[str, Any]:
    """Another record of the same key anchored at `url`: its `data_class` changed."""
    claim = json.loads(json.dumps(anchored.claim))
    record = claim["trace"]
    del record["signature"], record["transparency"]
    record["data_class"] = data_class
    record["transparency"] = transparency_uri(url, record)
    return dict(sign_claim(claim, anchored.key)["trace"])


def statement(
    record: Mapping[str, Any],
    private_pem: bytes,
    *,
    kid: str,
    payload: bytes | None = None,
    issuer: str | None = None,
    content_type: str = "application/json",
) -> bytes:
    """The SCITT Signed Statement of contract C for `record`, each part replaceable."""
    domain = str(record["subject"]).removeprefix("spiffe://").split("/", 1)[0]
    return bytes(
        build_signed_statement(
            anchor_leaf_bytes(record) if payload is None else payload,
            alg="EdDSA",
            private_key_pem=private_pem,
            issuer=issuer or f"spiffe://{domain}/cmcp/gateway",
            subject=str(record["subject"]),
            content_type=content_type,
            kid=kid.encode("ascii"),
        )
    )


def client(ca_file: Path | None, *, timeout: float | httpx.Timeout = TIMEOUT) -> httpx.Client:
    """An HTTPS client trusting only `ca_file` (None: the system roots), taking nothing
    from the environment and following no redirect."""
    verify = ssl.create_default_context(cafile=str(ca_file)) if ca_file else True
    return httpx.Client(verify=verify, trust_env=False, follow_redirects=False, timeout=timeout)


def leaf(record: Mapping[str, Any]) -> str:
    """The record's leaf entry in the log, hex."""
    return anchor_leaf_bytes(record).hex()


def submit(double: RunningTransparency, anchored: AnchoredClaim, record: dict[str, Any]) -> bytes:
    """Register `record` by SCRAPI; the COSE receipt of the 201."""
    body = statement(record, anchored.private_pem, kid=jwk_thumbprint(record["cnf"]["jwk"]))
    with client(double.ca_file) as http:
        answer = http.post(
            f"{double.url}/entries", content=body, headers={"content-type": "application/cose"}
        )
    assert answer.status_code == 201, answer.text
    return answer.content


def document_for(
    double: RunningTransparency, record: dict[str, Any], cose: bytes
) -> dict[str, Any]:
    """The receipt document as the gateway builds it (contract C)."""
    key = double.log_key.read_bytes()
    iat = verify_receipt(cose, leaf_entry_hex=leaf(record), log_public_key_pem=key).iat
    return receipt_document(
        protocol="scrapi", record=record, cose_receipt=cose, log_key_pem=key,
        ts=receipt_time(iat), producer=PRODUCER,
    )  # fmt: skip


@dataclass(frozen=True)
class Anchored:
    """A claim anchored at the double, its files, and its receipt document."""

    claim: AnchoredClaim
    claim_path: Path
    record_path: Path
    receipt: dict[str, Any]
    receipt_path: Path
    log_key: Path
    cose: bytes


def anchor(double: RunningTransparency, folder: Path, session_id: str) -> Anchored:
    """A recorded session's claim anchored at `double` between other records, its receipt
    fetched once the log holds four more (so its proof has a path of two nodes), written as
    `<session>.anchored-{claim,trace,receipt}.json`."""
    folder.mkdir(parents=True, exist_ok=True)
    claim = anchored_claim(folder, double.url, session_id=session_id)
    record = claim.record
    submit(double, claim, sibling_record(claim, double.url, f"{session_id}-before"))
    submit(double, claim, record)
    for tag in ("after", "later"):
        submit(double, claim, sibling_record(claim, double.url, f"{session_id}-{tag}"))
    with client(double.ca_file) as http:
        cose = http.get(record["transparency"]).content
    receipt = document_for(double, record, cose)
    assert len(receipt["audit_path"]) >= 2
    paths = [folder / f"{session_id}.anchored-{n}.json" for n in ("claim", "trace", "receipt")]
    for path, document in zip(paths, (claim.claim, record, receipt), strict=True):
        path.write_text(json.dumps(document))
    return Anchored(claim, paths[0], paths[1], receipt, paths[2], double.log_key, cose)
