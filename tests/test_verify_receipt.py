"""`cmcp verify --receipt FILE [--log-key PEM]` through the real console script, with
receipts the transparency double issued over real TLS: what passes, what is only
skipped, and every way a receipt can be for something else."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from scitt_cose import build_receipt, merkle

from cmcp_cli.claim.model import sign_claim
from cmcp_cli.claim.receipt import ReceiptError, receipt_document
from cmcp_cli.testing.transparency import RunningTransparency
from tests.support import CliResult, run_cmcp
from tests.transparency_support import Anchored, anchor, client, leaf

COSE = {"content-type": "application/cose"}
RECEIPT_CHECKS = ("receipt.shape", "receipt.record", "receipt.inclusion", "receipt.log_signature")


@pytest.fixture(scope="module")
def anchored(double: RunningTransparency, tmp_path_factory: pytest.TempPathFactory) -> Anchored:
    return anchor(double, tmp_path_factory.mktemp("anchored"), "sess-a")


def verify(*arguments: str | Path) -> tuple[CliResult, dict[str, str], dict[str, Any]]:
    result = run_cmcp("verify", *arguments, "--allow-software", "--json")
    assert result.stdout, result.stderr
    report = result.json()
    return result, {c["name"]: c["status"] for c in report["checks"]}, report


def reason(report: dict[str, Any], name: str) -> str:
    return next(str(c["reason"]) for c in report["checks"] if c["name"] == name)


def test_an_anchored_claim_and_its_record_verify_with_the_receipt_and_the_log_key(
    anchored: Anchored,
) -> None:
    for document in (anchored.claim_path, anchored.record_path):
        result, statuses, report = verify(
            document, "--receipt", anchored.receipt_path, "--log-key", anchored.log_key
        )
        assert result.returncode == 0, report
        assert all(statuses[name] == "pass" for name in RECEIPT_CHECKS), statuses
        assert "receipt" not in statuses
        assert "not signed by the log" in reason(report, "receipt.log_signature")


def test_without_the_log_key_the_anchor_is_not_proven(anchored: Anchored) -> None:
    result, statuses, report = verify(anchored.claim_path, "--receipt", anchored.receipt_path)
    assert result.returncode == 3, report
    assert statuses["receipt.log_signature"] == "skip"
    assert all(statuses[n] == "pass" for n in RECEIPT_CHECKS[:3])
    assert "--log-key" in report["verdict"]
    assert not [n for n, s in statuses.items() if s == "fail"]


def test_a_claim_stating_transparency_without_a_receipt_gets_a_skipped_check(
    anchored: Anchored,
) -> None:
    result, statuses, report = verify(anchored.claim_path)
    assert result.returncode == 0, report
    assert statuses["receipt"] == "skip"
    assert anchored.claim.record["transparency"] in reason(report, "receipt")
    unanchored = anchored.claim.session.claim_path  # the session's own claim, not anchored
    result, statuses, report = verify(unanchored)
    assert result.returncode == 0 and statuses["receipt"] == "skip"
    assert "states no transparency" in reason(report, "receipt")
    # and a receipt given for it fails: the record names no log entry
    result, statuses, _ = verify(
        unanchored, "--receipt", anchored.receipt_path, "--log-key", anchored.log_key
    )
    assert result.returncode == 1 and statuses["receipt.record"] == "fail"


def test_what_cannot_be_used_is_a_usage_error(anchored: Anchored, tmp_path: Path) -> None:
    def usage(*arguments: str | Path) -> str:
        result = run_cmcp("verify", *arguments)
        assert result.returncode == 2, (arguments, result.stderr)
        return result.stderr

    assert "--receipt" in usage(anchored.claim_path, "--log-key", anchored.log_key)
    assert "one claim" in usage(
        anchored.claim_path, anchored.claim_path, "--receipt", anchored.receipt_path
    )
    assert "cannot read receipt" in usage(anchored.claim_path, "--receipt", tmp_path / "none.json")
    rsa_key = tmp_path / "rsa.pem"
    rsa_key.write_bytes(
        rsa.generate_private_key(65537, 2048)
        .public_key()
        .public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    )
    p521 = tmp_path / "p521.pem"
    p521.write_bytes(
        ec.generate_private_key(ec.SECP521R1())
        .public_key()
        .public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    )
    for wrong in (rsa_key, p521, anchored.receipt_path):
        stderr = usage(anchored.claim_path, "--receipt", anchored.receipt_path, "--log-key", wrong)
        assert "--log-key" in stderr
    garbage = tmp_path / "garbage.json"
    garbage.write_text("{not json")
    result, statuses, _ = verify(anchored.claim_path, "--receipt", garbage)
    assert result.returncode == 1 and statuses["receipt.shape"] == "fail"


def test_a_receipt_for_another_claim_fails(
    double: RunningTransparency, anchored: Anchored, tmp_path: Path
) -> None:
    other = anchor(double, tmp_path, "sess-b")
    for claim, receipt in (
        (anchored.claim_path, other.receipt_path),
        (other.claim_path, anchored.receipt_path),
    ):
        result, statuses, _ = verify(claim, "--receipt", receipt, "--log-key", anchored.log_key)
        assert result.returncode == 1
        assert statuses["receipt.record"] == "fail"
        assert statuses["receipt.inclusion"] == "fail"
        assert statuses["receipt.log_signature"] == "fail"
    # the other receipt with this record's names still proves another leaf
    borrowed = dict(
        other.receipt,
        transparency=anchored.receipt["transparency"],
        anchor_id=anchored.receipt["anchor_id"],
    )
    path = tmp_path / "borrowed.json"
    path.write_text(json.dumps(borrowed))
    result, statuses, _ = verify(
        anchored.claim_path, "--receipt", path, "--log-key", anchored.log_key
    )
    assert result.returncode == 1
    assert statuses["receipt.record"] == "pass"
    assert statuses["receipt.inclusion"] == "fail" and statuses["receipt.log_signature"] == "fail"


def _flip(text: str) -> str:
    """One character in the middle changed: other bytes."""
    middle = len(text) // 2
    return text[:middle] + ("A" if text[middle] != "A" else "B") + text[middle + 1 :]


def _respell(text: str) -> str:
    """The same bytes spelled with other trailing bits, or (when a length leaves none)
    with padding: lenient base64url decoders read both as the same bytes."""
    if len(text) % 4 == 0:
        return text + "="
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    spare = 4 if len(text) % 4 == 2 else 2  # the unused low bits of the last character
    value = alphabet.index(text[-1])
    return text[:-1] + alphabet[value ^ (1 << (spare - 1))]


def _hash_flip(text: str) -> str:
    return text[:-1] + ("0" if text[-1] != "0" else "1")


# Each member of the document changed, and the check that catches it. `ts` is bound to
# the time the log signed; the proof's members to the record's leaf and the signed root.
TAMPERED: list[tuple[str, Any, str]] = [
    ("v", "cmcp-receipt-2", "receipt.shape"),
    ("protocol", "rekor", "receipt.shape"),
    ("transparency", "https://127.0.0.1:1/entries/" + "0" * 64, "receipt.record"),
    ("anchor_id", "0" * 64, "receipt.record"),
    ("entry", 7, "receipt.shape"),
    ("entry", "https://elsewhere.example/entries/x", "receipt.record"),
    ("entry", lambda e: e.replace("/entries/", "/operations/"), "receipt.record"),
    ("entry", lambda e: e + "/..", "receipt.record"),
    ("entry", lambda e: e.rsplit("/", 1)[0] + "/..", "receipt.record"),
    ("ts", "2001-01-01T00:00:00Z", "receipt.log_signature"),
    ("ts", "yesterday", "receipt.shape"),
    ("merkle_root", _hash_flip, "receipt.inclusion"),
    ("leaf_count", lambda n: n + 1, "receipt.inclusion"),
    ("leaf_index", lambda n: n - 1, "receipt.inclusion"),
    ("audit_path", lambda p: [_hash_flip(p[0]), *p[1:]], "receipt.inclusion"),
    ("audit_path", lambda p: p[:-1], "receipt.inclusion"),
    ("audit_path", lambda p: [*p, "sha256:" + "0" * 64], "receipt.inclusion"),
    ("producer", 7, "receipt.shape"),
    ("batch_id", None, "receipt.shape"),
    ("cose_receipt", _flip, "receipt.log_signature"),
    ("cose_receipt", _respell, "receipt.log_signature"),
    ("cose_receipt", lambda t: t + "==", "receipt.log_signature"),
    ("cose_receipt", "not base64url!", "receipt.log_signature"),
    (
        "cose_receipt",
        base64.urlsafe_b64encode(b"\xa0").decode().rstrip("="),
        "receipt.log_signature",
    ),
]


@pytest.mark.parametrize(("member", "change", "caught_by"), TAMPERED)
def test_every_member_of_the_receipt_tampered_fails(
    anchored: Anchored, tmp_path: Path, member: str, change: Any, caught_by: str
) -> None:
    receipt = dict(anchored.receipt)
    receipt[member] = change(receipt[member]) if callable(change) else change
    assert receipt != anchored.receipt
    path = tmp_path / "tampered.json"
    path.write_text(json.dumps(receipt))
    result, statuses, report = verify(
        anchored.claim_path, "--receipt", path, "--log-key", anchored.log_key
    )
    assert result.returncode == 1, report
    assert statuses[caught_by] == "fail", statuses
    assert report["verdict"].startswith("NOT VERIFIED")


def test_a_missing_member_fails_the_shape(anchored: Anchored, tmp_path: Path) -> None:
    for member in anchored.receipt:
        receipt = {k: v for k, v in anchored.receipt.items() if k != member}
        path = tmp_path / f"without-{member}.json"
        path.write_text(json.dumps(receipt))
        result, statuses, _ = verify(
            anchored.claim_path, "--receipt", path, "--log-key", anchored.log_key
        )
        assert result.returncode == 1 and statuses["receipt.shape"] == "fail", member


def test_the_descriptive_members_are_named_as_not_signed(
    anchored: Anchored, tmp_path: Path
) -> None:
    """`protocol`, `producer`, `batch_id` and `entry` describe how the gateway obtained the
    receipt; the log signs none of them, and the check says so rather than vouch for them."""
    service = anchored.receipt["transparency"].rsplit("/entries/", 1)[0]
    receipt = dict(
        anchored.receipt,
        protocol="registry-anchor-v1",
        producer="someone/9",
        batch_id="b",
        entry=f"{service}/entries/2.34",
    )
    path = tmp_path / "described.json"
    path.write_text(json.dumps(receipt))
    result, _, report = verify(
        anchored.claim_path, "--receipt", path, "--log-key", anchored.log_key
    )
    assert result.returncode == 0
    text = reason(report, "receipt.log_signature")
    assert (
        f"producer someone/9, batch b, protocol registry-anchor-v1 and entry {service}"
        "/entries/2.34 are the gateway's description, not signed by the log"
    ) in text
    assert f"kept by the service at {service}/entries/2.34" in reason(report, "receipt.record")


def test_a_member_outside_the_documented_set_fails_the_shape(
    anchored: Anchored, tmp_path: Path
) -> None:
    """One receipt, one document: a member the format does not define is refused, not
    carried along unchecked."""
    for extra in ({"note": "trust me"}, {"iat": 1}, {"entry_url": anchored.receipt["entry"]}):
        path = tmp_path / "extra.json"
        path.write_text(json.dumps({**anchored.receipt, **extra}))
        result, statuses, report = verify(
            anchored.claim_path, "--receipt", path, "--log-key", anchored.log_key
        )
        assert result.returncode == 1 and statuses["receipt.shape"] == "fail", report
        assert f"{next(iter(extra))}: not members of a cmcp-receipt-1" in reason(
            report, "receipt.shape"
        )


def _signed_by_the_log(
    anchored: Anchored, double: RunningTransparency, **claims: Any
) -> dict[str, Any]:
    """The anchored receipt document with a COSE receipt the log's own key signs over a
    one-leaf tree of the record, its CWT claims as `claims` say (None: absent)."""
    record = anchored.claim.record
    entry = leaf(record)
    cose = build_receipt(
        leaf_entry_hex=entry,
        leaf_index=0,
        tree_entries_hex=[entry],
        alg="EdDSA",
        log_private_key_pem=(double.folder / "log-signing-key.pem").read_bytes(),
        **claims,
    )
    return dict(
        anchored.receipt,
        merkle_root=f"sha256:{merkle.merkle_root([entry])}",
        leaf_count=1,
        leaf_index=0,
        audit_path=[],
        cose_receipt=base64.urlsafe_b64encode(cose).decode().rstrip("="),
        ts="2020-01-01T00:00:00Z",
    )


def test_a_receipt_about_another_subject_fails(
    double: RunningTransparency, anchored: Anchored, tmp_path: Path
) -> None:
    """The log signed an inclusion of these exact bytes, but says the entry is about
    another subject: the receipt does not stand for this record, at the gateway (refused
    when it is received) or at the auditor."""
    record = anchored.claim.record
    other = "spiffe://elsewhere.example/cmcp/gateway"
    receipt = _signed_by_the_log(anchored, double, sub=other, iss=double.url, iat=1_800_000_000)
    receipt["ts"] = "2027-01-15T08:00:00Z"
    path = tmp_path / "other-subject.json"
    path.write_text(json.dumps(receipt))
    result, statuses, report = verify(
        anchored.claim_path, "--receipt", path, "--log-key", anchored.log_key
    )
    assert result.returncode == 1, report
    assert statuses["receipt.inclusion"] == "pass"
    assert statuses["receipt.log_signature"] == "fail"
    assert f"sub {other!r}, not this record's subject" in reason(report, "receipt.log_signature")
    with pytest.raises(ReceiptError, match="not this record's subject"):
        receipt_document(
            protocol="scrapi", record=record, cose_receipt=base64.urlsafe_b64decode(
                receipt["cose_receipt"] + "=" * (-len(receipt["cose_receipt"]) % 4)
            ), log_key_pem=anchored.log_key.read_bytes(), ts=receipt["ts"], producer="p",
        )  # fmt: skip
    # the same receipt about this record's subject passes, naming the log's iss
    receipt = _signed_by_the_log(
        anchored, double, sub=record["subject"], iss=double.url, iat=1_800_000_000
    )
    receipt["ts"] = "2027-01-15T08:00:00Z"
    path.write_text(json.dumps(receipt))
    result, statuses, report = verify(
        anchored.claim_path, "--receipt", path, "--log-key", anchored.log_key
    )
    assert result.returncode == 0, report
    assert f"as {double.url!r}, at 2027-01-15T08:00:00Z (its iat)" in reason(
        report, "receipt.log_signature"
    )


def test_the_log_issuer_is_named_when_the_check_passes(anchored: Anchored) -> None:
    result, _, report = verify(
        anchored.claim_path, "--receipt", anchored.receipt_path, "--log-key", anchored.log_key
    )
    assert result.returncode == 0, report
    issuer = anchored.receipt["transparency"].rsplit("/entries/", 1)[0]  # the double's URL
    assert f"signs root {anchored.receipt['merkle_root'][7:23]}… of " in reason(
        report, "receipt.log_signature"
    )
    assert f"leaves, as {issuer!r}, at {anchored.receipt['ts']} (its iat)" in reason(
        report, "receipt.log_signature"
    )


def test_without_an_iat_the_time_is_named_as_the_gateways(
    double: RunningTransparency, anchored: Anchored, tmp_path: Path
) -> None:
    """A receipt stating no iat leaves `ts` unsigned: any ts passes, and the check says
    whose time it is (the gateway's receipt of it), and that no issuer is named."""
    receipt = _signed_by_the_log(anchored, double)
    path = tmp_path / "no-iat.json"
    path.write_text(json.dumps(receipt))
    result, statuses, report = verify(
        anchored.claim_path, "--receipt", path, "--log-key", anchored.log_key
    )
    assert result.returncode == 0 and statuses["receipt.log_signature"] == "pass", report
    text = reason(report, "receipt.log_signature")
    assert "naming no issuer (no iss)" in text, text
    assert (
        "at no time it states (no iat): ts 2020-01-01T00:00:00Z is when the gateway received "
        "the receipt, not signed by the log"
    ) in text, text


def test_a_wrong_log_key_fails(anchored: Anchored, tmp_path: Path) -> None:
    keys: dict[str, Ed25519PublicKey | ec.EllipticCurvePublicKey] = {
        "ed25519": Ed25519PrivateKey.generate().public_key(),
        "p256": ec.generate_private_key(ec.SECP256R1()).public_key(),
        "p384": ec.generate_private_key(ec.SECP384R1()).public_key(),
    }
    for name, key in keys.items():
        path = tmp_path / f"{name}.pem"
        path.write_bytes(key.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo))
        result, statuses, report = verify(
            anchored.claim_path, "--receipt", anchored.receipt_path, "--log-key", path
        )
        assert result.returncode == 1, (name, report)
        assert statuses["receipt.log_signature"] == "fail"
        assert statuses["receipt.inclusion"] == "pass"  # the proof holds; the root is not the log's


def test_a_record_changed_after_anchoring_fails(anchored: Anchored, tmp_path: Path) -> None:
    claim = json.loads(json.dumps(anchored.claim.claim))
    claim["trace"]["data_class"] = "public"  # its transparency URI kept as anchored
    resigned = sign_claim(claim, anchored.claim.key)
    for name, document in (("claim", resigned), ("record", resigned["trace"])):
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(document))
        result, statuses, _ = verify(
            path, "--receipt", anchored.receipt_path, "--log-key", anchored.log_key
        )
        assert result.returncode == 1, name
        assert statuses["signature"] == "pass"  # the key holder re-signed it
        assert statuses["receipt.record"] == "fail"
        assert statuses["receipt.inclusion"] == "fail"
        assert statuses["receipt.log_signature"] == "fail"


@pytest.mark.parametrize("mode", ["wrong-key", "tamper", "other-leaf", "disagree"])
def test_a_document_carrying_what_a_bad_log_answers_fails(
    double: RunningTransparency, anchored: Anchored, tmp_path: Path, mode: str
) -> None:
    record = anchored.claim.record
    double.set_mode(mode)
    try:
        with client(double.ca_file) as http:
            answer = http.post(
                f"{double.url}/records",
                content=json.dumps(record),
                headers={"content-type": "application/json"},
            )
    finally:
        double.set_mode("up")
    body = answer.json()
    receipt = dict(anchored.receipt, cose_receipt=body["receipt"])
    if mode == "disagree":  # an entry and proof that hold, beside a genuine receipt
        receipt.update(
            merkle_root=body["entry"]["merkle_root"],
            leaf_count=body["entry"]["leaf_count"],
            leaf_index=body["proof"]["leaf_index"],
            audit_path=body["proof"]["audit_path"],
        )
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(receipt))
    result, statuses, report = verify(
        anchored.claim_path, "--receipt", path, "--log-key", anchored.log_key
    )
    assert result.returncode == 1, report
    assert statuses["receipt.log_signature"] == "fail"
    if mode == "disagree":
        assert statuses["receipt.inclusion"] == "pass"
        assert "not what the receipt's entry states" in reason(report, "receipt.log_signature")
