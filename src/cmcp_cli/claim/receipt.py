"""The receipt of an anchored TRACE record, and its offline check against the log's key.

A receipt document (`<claim>.receipt.json` beside the claim, `GET /trace/{id}?receipt`) is
one JSON object that three independent verifiers read as it is:

- TRACE registry-anchor-v1: it *is* a registry entry (§4: `ts`, `merkle_root`,
  `leaf_count`, `producer`, `batch_id`) and an inclusion proof (§5: `leaf_index`,
  `audit_path`), so `trace-verify --entry R --proof R` and the conformance suite's
  `trace-tests --receipt R` (TR-ANC-002) replay it;
- RFC 9942: `cose_receipt` is the log's COSE_Sign1 receipt over the same tree root, with
  the RFC 9162 inclusion proof for the same leaf, checked under the log's pinned key;
- and `cmcp verify --receipt R --log-key PEM` checks both, and that they agree.

Members, exactly these: `v` (`cmcp-receipt-1`), `protocol` (`scrapi` or
`registry-anchor-v1`: how the gateway obtained it), `transparency` (the record's URI),
`anchor_id`, `entry` (the service's own URL of the record's entry: where the service said
it keeps it, which is the transparency URI only at a service that names entries by the
anchor id), the five entry members, the two proof members, and `cose_receipt` (unpadded
base64url). The log signs the root, the proof and, when the COSE receipt states them, its
`iat` (then `ts`), `iss` and `sub`; `protocol`, `entry`, `producer`, `batch_id`, and `ts`
when there is no `iat`, are the gateway's description, which no log signature covers.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import cbor2
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from scitt_cose import merkle
from scitt_cose import verify_receipt as verify_cose_receipt

from cmcp_cli.claim.anchor import (
    ENTRIES_PATH,
    ENTRY_ID,
    AnchorProfileError,
    anchor_id,
    anchor_leaf_bytes,
)
from cmcp_cli.claim.keys import JWKError, b64url_decode, b64url_encode

RECEIPT_VERSION = "cmcp-receipt-1"
PROTOCOLS = ("scrapi", "registry-anchor-v1")
_HASH = re.compile(r"sha256:[0-9a-f]{64}")
_COSE_SIGN1_TAG = 18
_VDP, _INCLUSION = 396, -1
_CWT_CLAIMS = 15
_LOG_CURVES = ("secp256r1", "secp384r1")
_STRINGS = ("v", "protocol", "transparency", "anchor_id", "entry", "ts", "producer", "batch_id")
_PROOF = ("merkle_root", "leaf_count", "leaf_index", "audit_path", "cose_receipt")
MEMBERS = frozenset((*_STRINGS, *_PROOF))  # one receipt, one document: nothing else
_ENTRY_KINDS = ("entries", "records")  # SCRAPI's entry, or a registry's record
_CWT_ISS, _CWT_SUB = 1, 2


class ReceiptError(ValueError):
    """A receipt that cannot stand for the record: the reason is the message."""


@dataclass(frozen=True)
class ReceiptFinding:
    """One check of a receipt: `ok` True (passed), False (failed) or None (skipped)."""

    name: str
    ok: bool | None
    reason: str


@dataclass(frozen=True)
class _Proof:
    leaf_index: int
    leaf_count: int
    audit_path: tuple[str, ...]  # hex, leaf to root
    root: str  # hex
    iat: int | None  # the log's signed issue time, when it states one
    issuer: str | None  # the log's signed `iss`, when it states one


def receipt_time(iat: int) -> str:
    """A receipt's `iat` as the document's `ts` (registry-anchor-v1 §4: ISO-8601 UTC, Z)."""
    return datetime.fromtimestamp(iat, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _instant(ts: object) -> int | None:
    """Unix seconds of an ISO-8601 UTC time with the `Z` suffix; None for anything else."""
    if not isinstance(ts, str) or not ts.endswith("Z"):
        return None
    try:
        moment = datetime.fromisoformat(ts.removesuffix("Z") + "+00:00")
    except ValueError:
        return None
    return int(moment.timestamp()) if moment.timestamp() == int(moment.timestamp()) else None


def _unb64url(text: str) -> bytes:
    """The bytes of canonical unpadded base64url: another spelling of the same bytes (set
    trailing bits, padding) is refused, so one receipt has one document."""
    try:
        return b64url_decode(text)
    except JWKError as exc:
        raise ReceiptError(f"cose_receipt is {exc}") from None


def _verified_proof(record: Mapping[str, Any], cose: bytes, log_key_pem: bytes) -> _Proof:
    """The inclusion proof of the COSE receipt whose signature the pinned key verifies
    over the root rebuilt from `record`'s leaf; `ReceiptError` otherwise."""
    leaf = anchor_leaf_bytes(record).hex()
    result = verify_cose_receipt(cose, leaf_entry_hex=leaf, log_public_key_pem=log_key_pem)
    if not result.ok or result.root is None:
        raise ReceiptError("; ".join(str(e) for e in result.errors) or "it does not verify")
    message = cbor2.loads(cose).value
    claims = cbor2.loads(message[0]).get(_CWT_CLAIMS, {})
    if isinstance(claims, Mapping) and _CWT_SUB in claims:
        subject = claims[_CWT_SUB]
        if subject != record.get("subject"):
            raise ReceiptError(
                f"the log's receipt is about sub {subject!r}, not this record's subject "
                f"{record.get('subject')!r}"
            )
    for blob in message[1][_VDP][_INCLUSION]:
        size, index, path = cbor2.loads(blob)
        if (size, index) == (result.tree_size, result.leaf_index):
            path_hex = tuple(bytes(p).hex() for p in path)
            return _Proof(index, size, path_hex, result.root, result.iat, result.issuer)
    raise ReceiptError("the verified inclusion proof is not in the receipt")  # pragma: no cover


def receipt_document(
    *,
    protocol: str,
    record: Mapping[str, Any],
    cose_receipt: bytes,
    log_key_pem: bytes,
    ts: str,
    producer: str,
    batch_id: str | None = None,
    entry: str | None = None,
) -> dict[str, Any]:
    """The receipt document of `record` from the log's COSE receipt, which must verify
    under `log_key_pem` for the record's leaf (`ReceiptError` names why not). `entry` is
    the URL the service named for the record's entry; None when it named none, and the
    record's transparency URI stands for it."""
    try:
        proof = _verified_proof(record, cose_receipt, log_key_pem)
    except AnchorProfileError as exc:
        raise ReceiptError(f"the record cannot be anchored: {exc}") from None
    return {
        "v": RECEIPT_VERSION,
        "protocol": protocol,
        "transparency": record.get("transparency"),
        "anchor_id": anchor_id(record),
        "entry": record.get("transparency") if entry is None else entry,
        "ts": ts,
        "merkle_root": f"sha256:{proof.root}",
        "leaf_count": proof.leaf_count,
        "producer": producer,
        "batch_id": batch_id or f"tree-{proof.leaf_count}",
        "leaf_index": proof.leaf_index,
        "audit_path": [f"sha256:{node}" for node in proof.audit_path],
        "cose_receipt": b64url_encode(cose_receipt),
    }


def receipt_shape_problems(receipt: object) -> list[str]:
    if not isinstance(receipt, Mapping):
        return ["the receipt is not a JSON object"]
    problems = [f"{n} is not a string" for n in _STRINGS if not isinstance(receipt.get(n), str)]
    extra = sorted(str(name) for name in receipt if name not in MEMBERS)
    if extra:
        problems.append(f"{', '.join(extra)}: not members of a {RECEIPT_VERSION} document")
    if receipt.get("v") != RECEIPT_VERSION:
        problems.append(f"v is {receipt.get('v')!r}, not {RECEIPT_VERSION!r}")
    if receipt.get("protocol") not in PROTOCOLS:
        problems.append(f"protocol is {receipt.get('protocol')!r}, not one of {PROTOCOLS}")
    for name in ("leaf_count", "leaf_index"):
        value = receipt.get(name)
        if type(value) is not int or value < 0:
            problems.append(f"{name} is not a non-negative integer")
    if isinstance(receipt.get("ts"), str) and _instant(receipt["ts"]) is None:
        problems.append("ts is not an ISO-8601 UTC time in whole seconds with the Z suffix")
    root, path = receipt.get("merkle_root"), receipt.get("audit_path")
    if not isinstance(root, str) or not _HASH.fullmatch(root):
        problems.append("merkle_root is not sha256:<64 hex>")
    if not isinstance(path, list) or not all(
        isinstance(p, str) and _HASH.fullmatch(p) for p in path
    ):
        problems.append("audit_path is not a list of sha256:<64 hex>")
    if not isinstance(receipt.get("cose_receipt"), str):
        problems.append("cose_receipt is not a string")
    return problems


def inclusion_holds(
    leaf_entry_hex: str, leaf_index: object, leaf_count: object, audit_path: object, root: object
) -> bool:
    """Whether the RFC 9162 proof (registry-anchor-v1 §5: `sha256:<hex>` nodes, leaf to
    root) rebuilds `root` (`sha256:<hex>`) from the leaf entry at `leaf_index` of
    `leaf_count`. Malformed input proves nothing: False, never an exception."""
    if type(leaf_index) is not int or type(leaf_count) is not int:
        return False
    if not isinstance(audit_path, list) or not isinstance(root, str):
        return False
    if not _HASH.fullmatch(root) or not all(
        isinstance(p, str) and _HASH.fullmatch(p) for p in audit_path
    ):
        return False
    path = [p.removeprefix("sha256:") for p in audit_path]
    return bool(
        merkle.verify_inclusion(
            leaf_entry_hex, leaf_index, leaf_count, path, root.removeprefix("sha256:")
        )
    )


def check_receipt(
    record: Mapping[str, Any], receipt: object, log_key_pem: bytes | None
) -> list[ReceiptFinding]:
    """Whether `receipt` proves `record` (a signed TRACE record) is in the log whose key
    is `log_key_pem`. Without a key, the log's signature is skipped: inclusion is then
    proven only in a tree of the receipt's own making."""
    problems = receipt_shape_problems(receipt)
    if problems:
        return [ReceiptFinding("receipt.shape", False, "; ".join(problems))]
    assert isinstance(receipt, Mapping)  # noqa: S101 - receipt_shape_problems saw to it
    findings = [ReceiptFinding("receipt.shape", True, f"a {RECEIPT_VERSION} receipt")]
    findings.append(_names_record(record, receipt))
    try:
        leaf = anchor_leaf_bytes(record).hex()
    except AnchorProfileError as exc:
        findings.append(ReceiptFinding("receipt.inclusion", False, f"not anchorable: {exc}"))
        return findings
    root = receipt["merkle_root"].removeprefix("sha256:")
    index, count = receipt["leaf_index"], receipt["leaf_count"]
    if inclusion_holds(leaf, index, count, receipt["audit_path"], receipt["merkle_root"]):
        findings.append(
            ReceiptFinding(
                "receipt.inclusion", True, f"leaf {index} of {count} under root {root[:16]}…"
            )
        )
    else:
        findings.append(
            ReceiptFinding(
                "receipt.inclusion",
                False,
                f"the proof does not rebuild merkle_root from this record (leaf {index} of "
                f"{count}): the receipt is of another record, or either was changed",
            )
        )
    findings.append(_log_signature(record, receipt, log_key_pem))
    return findings


def _names_record(record: Mapping[str, Any], receipt: Mapping[str, Any]) -> ReceiptFinding:
    stated = record.get("transparency")
    if "signature" not in record:
        return ReceiptFinding(
            "receipt.record", False, "the record carries no embedded signature to anchor"
        )
    if stated != receipt["transparency"]:
        return ReceiptFinding(
            "receipt.record",
            False,
            f"the record's transparency is {stated!r}, the receipt's {receipt['transparency']!r}",
        )
    expected = anchor_id(record)
    if receipt["anchor_id"] != expected or not str(stated).endswith(f"/entries/{expected}"):
        return ReceiptFinding(
            "receipt.record",
            False,
            f"the receipt is for anchor id {receipt['anchor_id']}, this record's is {expected}",
        )
    service = str(stated).removesuffix(f"{ENTRIES_PATH}{expected}")
    kind, _, identifier = str(receipt["entry"]).removeprefix(f"{service}/").partition("/")
    if (
        not receipt["entry"].startswith(f"{service}/")
        or kind not in _ENTRY_KINDS
        or not ENTRY_ID.fullmatch(identifier)
    ):
        return ReceiptFinding(
            "receipt.record",
            False,
            f"the receipt's entry {receipt['entry']!r} is not one entry of the service the "
            f"record names ({service}/entries/<id> or {service}/records/<id>)",
        )
    where = "" if receipt["entry"] == stated else f", kept by the service at {receipt['entry']}"
    return ReceiptFinding("receipt.record", True, f"names this record ({stated}{where})")


def _log_signature(
    record: Mapping[str, Any], receipt: Mapping[str, Any], log_key_pem: bytes | None
) -> ReceiptFinding:
    name = "receipt.log_signature"
    index, count = receipt["leaf_index"], receipt["leaf_count"]
    root = receipt["merkle_root"].removeprefix("sha256:")
    if log_key_pem is None:
        return ReceiptFinding(
            name,
            None,
            "no log key given (--log-key): nothing proves the root is the log's, so the "
            "record is not proven anchored",
        )
    try:
        proof = _verified_proof(record, _unb64url(receipt["cose_receipt"]), log_key_pem)
    except (ReceiptError, AnchorProfileError) as exc:
        return ReceiptFinding(name, False, f"the COSE receipt does not verify: {exc}")
    except (ValueError, TypeError, LookupError, cbor2.CBORDecodeError) as exc:
        return ReceiptFinding(name, False, f"the COSE receipt is malformed: {exc}")
    if (proof.leaf_index, proof.leaf_count, proof.root) != (index, count, root):
        return ReceiptFinding(
            name,
            False,
            "the COSE receipt is signed by the log key but proves leaf "
            f"{proof.leaf_index} of {proof.leaf_count} under root {proof.root[:16]}…, not what "
            "the receipt's entry states",
        )
    if proof.iat is not None and _instant(receipt["ts"]) != proof.iat:
        return ReceiptFinding(
            name,
            False,
            f"ts is {receipt['ts']}, the log signed its receipt at {receipt_time(proof.iat)}",
        )
    issuer = "naming no issuer (no iss)" if proof.issuer is None else f"as {proof.issuer!r}"
    if proof.iat is not None:
        when = f"at {receipt['ts']} (its iat)"
    else:
        when = (
            f"at no time it states (no iat): ts {receipt['ts']} is when the gateway received "
            "the receipt, not signed by the log"
        )
    return ReceiptFinding(
        name,
        True,
        f"the log key signs root {root[:16]}… of {count} leaves, {issuer}, {when}; producer "
        f"{receipt['producer']}, batch {receipt['batch_id']}, protocol {receipt['protocol']} "
        f"and entry {receipt['entry']} are the gateway's description, not signed by the log",
    )


def log_key_problem(pem: bytes) -> str | None:
    """None when `pem` is a public key a receipt can be signed with (Ed25519, P-256 or
    P-384, the COSE algorithms scitt-cose verifies: EdDSA, ES256, ES384); else why not."""
    try:
        key = serialization.load_pem_public_key(pem)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        return f"not a PEM public key ({exc})"
    if isinstance(key, Ed25519PublicKey):
        return None
    if isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name in _LOG_CURVES:
        return None
    kind = key.curve.name if isinstance(key, ec.EllipticCurvePublicKey) else type(key).__name__
    return f"a {kind} key; a log key is Ed25519, P-256 or P-384"
