"""The log behind the transparency service double (`cmcp_cli.testing.transparency`): one
RFC 9162 tree whose leaf entries are `anchor_leaf_bytes(record)`, the registration policy
both protocols share, and the receipts (RFC 9942, made by `scitt_cose.build_receipt`) and
registry-anchor-v1 entries and proofs it issues, including the wrong ones a test asks for.

Registration policy, for either protocol:

- the record is a JSON object within registry-anchor-v1 §1's profile (no floats, integers
  within ±(2^53 - 1)), carrying an embedded signature that verifies under its own
  `cnf.jwk` (registry-anchor-v1 §1 anchors the signed record);
- its `transparency` is `<base>/entries/<anchor_id(record)>`: the URI it states resolves
  here, to this record's receipt;
- the same record twice is the same entry; another record with the same anchor id (the
  same body with another signature) is a conflict, whether or not that signature holds.

SCRAPI adds: the Signed Statement is a COSE_Sign1 whose payload is exactly the record's
canonical bytes, signed (EdDSA) by the record's `cnf.jwk` with that key's RFC 7638
thumbprint as `kid`, content type `application/json`, `sub` the record's `subject` and
`iss` `spiffe://<the subject's trust domain>/cmcp/gateway`.

Every registered entry is appended to `entries.jsonl` in the state folder before it is
acknowledged, so a double restarted on the same folder (and port) keeps its log.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import cbor2
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from scitt_cose import build_receipt, merkle, parse_signed_statement

from cmcp_cli.claim.anchor import AnchorProfileError, anchor_id, anchor_leaf_bytes
from cmcp_cli.claim.keys import JWKError, b64url_encode, jwk_thumbprint, public_key_from_jwk
from cmcp_cli.claim.receipt import receipt_time
from cmcp_cli.claim.signing import check_signature

ENTRIES: Final = "entries.jsonl"
STATEMENT_CONTENT_TYPE: Final = "application/json"
# A leaf that is no record's: what `other-leaf` and `disagree` put beside the real ones.
DECOY_LEAF: Final = b'{"decoy":"a leaf of no submitted record"}'
_COSE_SIGN1_TAG: Final = 18


class RegistrationError(Exception):
    """A registration the service refuses: HTTP `status`, the reason as the message."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass(frozen=True)
class Issued:
    """What the service answers for one anchored record at one moment: the COSE receipt
    and the registry-anchor-v1 `{"entry", "proof", "receipt"}` document."""

    cose: bytes
    registry: dict[str, Any]


def _public_pem(jwk: Mapping[str, Any]) -> bytes:
    key: Ed25519PublicKey = public_key_from_jwk(jwk)
    return key.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)


def _trust_domain(subject: object) -> str | None:
    if not isinstance(subject, str) or not subject.startswith("spiffe://"):
        return None
    domain = subject.removeprefix("spiffe://").split("/", 1)[0]
    return domain or None


class TransparencyLog:
    """The append-only log, safe to use from the server's tasks and threads."""

    def __init__(
        self,
        folder: Path,
        base_url: str,
        *,
        log_key_pem: bytes,
        log_kid: bytes,
        wrong_key_pem: bytes,
        producer: str,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.producer = producer
        self._log_key, self._kid, self._wrong_key = log_key_pem, log_kid, wrong_key_pem
        self._path = folder / ENTRIES
        self._lock = threading.Lock()
        self._leaves: list[str] = []  # hex leaf entries, in log order
        self._index: dict[str, int] = {}  # anchor id -> leaf index
        self._subjects: list[str] = []
        if self._path.exists():
            for line in self._path.read_text().splitlines():
                stored = json.loads(line)
                self._append(stored["anchor_id"], stored["leaf"], stored["subject"])

    def _append(self, identifier: str, leaf: str, subject: str) -> None:
        self._index[identifier] = len(self._leaves)
        self._leaves.append(leaf)
        self._subjects.append(subject)

    # -- registration ------------------------------------------------------------------

    def register_record(self, record: object) -> str:
        """Register a signed record (registry-anchor-v1): its anchor id, or
        `RegistrationError`."""
        if not isinstance(record, Mapping):
            raise RegistrationError(400, "the body is not a JSON object (a signed TRACE record)")
        return self._register(record, anchor_leaf_bytes_or_refuse(record))

    def register_statement(self, statement: bytes) -> str:
        """Register a SCITT Signed Statement over a record's canonical bytes (SCRAPI)."""
        payload = _statement_payload(statement)
        try:
            record = json.loads(payload)
        except ValueError:
            raise RegistrationError(400, "the statement's payload is not JSON") from None
        if not isinstance(record, Mapping):
            raise RegistrationError(400, "the statement's payload is not a JSON object")
        leaf = anchor_leaf_bytes_or_refuse(record)
        if leaf != payload:
            raise RegistrationError(
                400,
                "the statement's payload is not the record's registry-anchor-v1 canonical "
                "bytes (sorted keys, no whitespace, ASCII escapes)",
            )
        _check_statement(statement, record)
        return self._register(record, leaf)

    def _register(self, record: Mapping[str, Any], leaf: bytes) -> str:
        if not isinstance(record.get("subject"), str):
            raise RegistrationError(400, "the record has no subject")
        identifier = anchor_id(record)
        expected = f"{self.base_url}/entries/{identifier}"
        if record.get("transparency") != expected:
            raise RegistrationError(
                400,
                f"the record's transparency is {record.get('transparency')!r}: a record "
                f"registered here states {expected!r}",
            )
        if self._registered(identifier, leaf):
            return identifier
        problem = check_signature(record, _jwk(record))
        if problem is not None:
            raise RegistrationError(400, f"the record's embedded signature: {problem}")
        with self._lock:
            if identifier not in self._index:
                stored = {"anchor_id": identifier, "leaf": leaf.hex(), "subject": record["subject"]}
                with self._path.open("a") as log:
                    log.write(json.dumps(stored) + "\n")
                self._append(identifier, leaf.hex(), record["subject"])
        self._registered(identifier, leaf)  # a conflict registered meanwhile is one still
        return identifier

    def _registered(self, identifier: str, leaf: bytes) -> bool:
        """Whether the record of `leaf` is registered; `RegistrationError` (409) when
        another record holds its anchor id."""
        with self._lock:
            index = self._index.get(identifier)
            if index is None:
                return False
            if self._leaves[index] != leaf.hex():
                raise RegistrationError(
                    409,
                    f"anchor id {identifier} is registered for another record (the same "
                    "body with another signature)",
                )
            return True

    # -- what it issues -----------------------------------------------------------------

    def known(self, identifier: str) -> bool:
        with self._lock:
            return identifier in self._index

    @property
    def size(self) -> int:
        with self._lock:
            return len(self._leaves)

    def issue(self, identifier: str, mode: str) -> Issued:
        """The receipt and registry document of a registered record over the tree as it is
        now, made wrong as `mode` says (wrong-key, tamper, other-leaf, disagree)."""
        with self._lock:
            leaves = list(self._leaves)
            index = self._index[identifier]
            subject = self._subjects[index]
        signer = LogSigner(
            self._wrong_key if mode == "wrong-key" else self._log_key,
            self._kid,
            self.base_url,
            self.producer,
        )
        return issue_over(leaves, index, signer, subject=subject, mode=mode)


@dataclass(frozen=True)
class LogSigner:
    """Who signs the log's receipts, and the names its answers carry."""

    private_key_pem: bytes
    kid: bytes
    issuer: str  # the base URL: each receipt's `iss`
    producer: str  # each registry entry's `producer`


def issue_over(
    leaves: list[str], index: int, signer: LogSigner, *, subject: str, mode: str = "up"
) -> Issued:
    """The receipt and registry-anchor-v1 document of leaf `index` of the RFC 9162 tree over
    the leaf entries `leaves` (hex), both made with scitt-cose's Merkle functions: what the
    double answers for a record, and what the suite's anchor vectors hold it to."""
    issued_at = int(time.time())
    signed_leaves, signed_index = leaves, index
    if mode == "other-leaf":  # a genuine receipt, but for a leaf that is no record's
        signed_leaves = [*leaves, DECOY_LEAF.hex()]
        signed_index = len(leaves)
    cose = build_receipt(
        leaf_entry_hex=signed_leaves[signed_index],
        leaf_index=signed_index,
        tree_entries_hex=signed_leaves,
        alg="EdDSA",
        log_private_key_pem=signer.private_key_pem,
        iss=signer.issuer,
        sub=subject,
        kid=signer.kid,
        iat=issued_at,
    )
    if mode == "tamper":
        cose = _flip_signature_byte(cose)
    stated_leaves, stated_index = signed_leaves, signed_index
    if mode == "disagree":  # an entry and proof that hold on their own, in a tree the log
        stated_leaves = [*leaves, DECOY_LEAF.hex()]  # did not sign
    path = merkle.inclusion_proof(stated_leaves, stated_index)
    registry = {
        "entry": {
            "ts": receipt_time(issued_at),
            "merkle_root": f"sha256:{merkle.merkle_root(stated_leaves)}",
            "leaf_count": len(stated_leaves),
            "producer": signer.producer,
            "batch_id": f"tree-{len(stated_leaves)}",
        },
        "proof": {"leaf_index": stated_index, "audit_path": [f"sha256:{n}" for n in path]},
        "receipt": b64url_encode(cose),
    }
    return Issued(cose, registry)


def anchor_leaf_bytes_or_refuse(record: Mapping[str, Any]) -> bytes:
    try:
        return anchor_leaf_bytes(record)
    except AnchorProfileError as exc:
        raise RegistrationError(
            400, f"the record is outside registry-anchor-v1's profile: {exc}"
        ) from None


def _jwk(record: Mapping[str, Any]) -> Mapping[str, Any]:
    cnf = record.get("cnf")
    jwk = cnf.get("jwk") if isinstance(cnf, Mapping) else None
    if not isinstance(jwk, Mapping):
        raise RegistrationError(400, "the record names no key (cnf.jwk)")
    return jwk


def _statement_payload(statement: bytes) -> bytes:
    """The payload of a COSE_Sign1, before its signature is checked (the key to check it
    with is the record's, inside the payload)."""
    try:
        outer = cbor2.loads(statement)
    except (cbor2.CBORDecodeError, ValueError, TypeError, LookupError):
        raise RegistrationError(
            400, "the body is not CBOR (a COSE_Sign1 Signed Statement)"
        ) from None
    value = getattr(outer, "value", None)
    if getattr(outer, "tag", None) != _COSE_SIGN1_TAG or not isinstance(value, list | tuple):
        raise RegistrationError(400, "the body is not a tagged COSE_Sign1")
    if len(value) != 4 or not isinstance(value[2], bytes):
        raise RegistrationError(400, "the Signed Statement carries no attached payload")
    return value[2]


def _check_statement(statement: bytes, record: Mapping[str, Any]) -> None:
    jwk = _jwk(record)
    try:
        key_pem, thumbprint = _public_pem(jwk), jwk_thumbprint(jwk)
    except (JWKError, KeyError) as exc:
        raise RegistrationError(
            400, f"the record's cnf.jwk is not an Ed25519 public key: {exc}"
        ) from None
    parsed = parse_signed_statement(statement, public_key_pem=key_pem)
    if parsed["signature_verified"] is not True:
        raise RegistrationError(
            400, "the Signed Statement does not verify under the record's cnf.jwk"
        )
    protected = cbor2.loads(cbor2.loads(statement).value[0])
    problems = []
    if parsed["alg"] != "EdDSA":
        problems.append(f"alg is {parsed['alg']!r}, not EdDSA")
    if protected.get(4) != thumbprint.encode("ascii"):
        problems.append("kid is not the RFC 7638 thumbprint of the record's cnf.jwk")
    if parsed["content_type"] != STATEMENT_CONTENT_TYPE:
        problems.append(f"content type is {parsed['content_type']!r}, not application/json")
    if parsed["subject"] != record.get("subject"):
        problems.append(f"sub is {parsed['subject']!r}, not the record's subject")
    domain = _trust_domain(record.get("subject"))
    issuer = f"spiffe://{domain}/cmcp/gateway"
    if domain is None or parsed["issuer"] != issuer:
        problems.append(f"iss is {parsed['issuer']!r}, not {issuer!r}")
    if problems:
        raise RegistrationError(400, "the Signed Statement's header: " + "; ".join(problems))


def _flip_signature_byte(cose: bytes) -> bytes:
    """`cose` with one bit of its signature flipped (the structure stays valid)."""
    outer = cbor2.loads(cose)
    protected, unprotected, payload, signature = outer.value
    flipped = bytes([signature[0] ^ 0x01]) + signature[1:]
    return bytes(cbor2.dumps(cbor2.CBORTag(outer.tag, [protected, unprotected, payload, flipped])))
