"""The anchoring queue's files, its backoff, and validate-config's checks of `trace.anchor`
(no network: the served behaviour is tests/test_anchoring.py's)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import cbor2
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from scitt_cose import parse_signed_statement

from cmcp_cli.attestation import software
from cmcp_cli.audit.matching import match_claim
from cmcp_cli.audit.replay import replay_log
from cmcp_cli.claim.anchor import anchor_leaf_bytes, transparency_uri
from cmcp_cli.claim.keys import ClaimKey, public_key_from_jwk
from cmcp_cli.claim.model import sign_claim
from cmcp_cli.config_trace import AnchorConfig
from cmcp_cli.errors import Severity
from cmcp_cli.evidence.anchor_queue import (
    PendingAnchor,
    find_receipt,
    note_attempt,
    pending_names,
    pending_path,
    read_pending,
    receipt_path,
    store_receipt,
)
from cmcp_cli.evidence.attesting import Attestor
from cmcp_cli.evidence.claim_files import claim_path, write_claim
from cmcp_cli.evidence.session import ClosedSession
from cmcp_cli.gateway.anchoring.worker import backoff
from cmcp_cli.gateway.preflight.report import check_config
from tests.sessions import record_session

URL = "https://log.example:8443"


def anchored(folder: Path, session_id: str = "s-1") -> tuple[ClosedSession, ClaimKey]:
    """A recorded session's claim whose record states `transparency` at URL, signed."""
    key = ClaimKey.generate()
    session = record_session(folder, session_id=session_id, key=key)
    claim = json.loads(json.dumps(session.claim))
    claim["trace"].pop("signature")
    claim["trace"]["transparency"] = transparency_uri(URL, claim["trace"])
    signed = sign_claim(claim, key)
    return ClosedSession(signed, key), key


def test_a_record_stating_transparency_is_queued_before_its_claim_with_a_statement(
    tmp_path: Path,
) -> None:
    closed, key = anchored(tmp_path)
    claims = tmp_path / "claims"
    claims.mkdir()
    handed: list[PendingAnchor] = []
    write_claim(claims, "s-1", closed, queued=handed.append)
    (entry,) = handed
    assert entry.name == "s-1" and pending_names(claims) == ["s-1"]
    read = read_pending(claims, "s-1")
    assert isinstance(read, PendingAnchor)
    assert (
        read.record
        == closed.trace_record
        == json.loads(claim_path(claims, "s-1").read_text())["trace"]
    )
    assert read.statement == entry.statement and read.statement is not None
    # the statement: contract C's, verifying under the record's own cnf.jwk
    public = public_key_from_jwk(closed.trace_record["cnf"]["jwk"])
    pem = public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    parsed = parse_signed_statement(read.statement, public_key_pem=pem)
    assert parsed["signature_verified"] is True, parsed
    assert parsed["payload"] == anchor_leaf_bytes(closed.trace_record)
    assert parsed["issuer"] == "spiffe://cmcp.local/cmcp/gateway"
    assert parsed["subject"] == closed.trace_record["subject"]
    assert parsed["content_type"] == "application/json"
    assert parsed["alg"] == "EdDSA"
    protected = cbor2.loads(cbor2.loads(read.statement).value[0])
    assert protected[4] == key.thumbprint.encode("ascii")  # kid
    other = ed25519.Ed25519PrivateKey.generate()
    assert (
        parse_signed_statement(read.statement, public_key_pem=_pem_public(other))[
            "signature_verified"
        ]
        is False
    )
    # numbered claims are queued under their own name
    write_claim(claims, "s-1", closed, numbered=True)
    sequence = closed.claim["gateway"]["sequence_number"]
    assert sorted(pending_names(claims)) == sorted(["s-1", f"s-1.{sequence}"])


def test_a_record_without_transparency_is_not_queued(tmp_path: Path) -> None:
    key = ClaimKey.generate()
    session = record_session(tmp_path, session_id="plain", key=key)
    claims = tmp_path / "claims"
    claims.mkdir()
    handed: list[PendingAnchor] = []
    closed = ClosedSession(session.claim, key)
    write_claim(claims, "plain", closed, queued=handed.append)
    assert handed == [] and pending_names(claims) == []
    assert "anchoring" not in str(find_receipt(claims, claim_path(claims, "plain")))
    assert "states no transparency URI" in str(find_receipt(claims, claim_path(claims, "plain")))


def test_pending_receipt_and_their_lookup(tmp_path: Path) -> None:
    closed, _ = anchored(tmp_path)
    claims = tmp_path / "claims"
    claims.mkdir()
    write_claim(claims, "s-1", closed)
    found = find_receipt(claims, claim_path(claims, "s-1"))
    assert isinstance(found, PendingAnchor) and found.attempts == 0
    note_attempt(claims, found, "POST /entries answered 503")
    again = read_pending(claims, "s-1")
    assert isinstance(again, PendingAnchor)
    assert (again.attempts, again.last_error) == (1, "POST /entries answered 503")
    # a receipt naming another record is not this claim's
    receipt_path(claims, "s-1").write_text(json.dumps({"anchor_id": "0" * 64}) + "\n")
    assert isinstance(find_receipt(claims, claim_path(claims, "s-1")), PendingAnchor)
    document = {"anchor_id": found.record["transparency"].rsplit("/", 1)[1], "v": "x"}
    store_receipt(claims, "s-1", document)
    assert not pending_path(claims, "s-1").exists()
    assert (
        find_receipt(claims, claim_path(claims, "s-1"))
        == json.dumps(document, separators=(",", ":")).encode() + b"\n"
    )
    assert not list(claims.glob("*.tmp"))


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"{", "cannot be read as a pending anchor"),
        (b"[]", "is not a cmcp-anchor-pending-1 document"),
        (b'{"v": "cmcp-anchor-pending-1", "record": 1}', "a member of the wrong type"),
        (
            b'{"v": "cmcp-anchor-pending-1", "record": {}, "statement": "!!", '
            b'"queued_at": "t", "attempts": 0, "last_error": null}',
            "not base64url",
        ),
    ],
)
def test_a_damaged_pending_file_is_named_not_dropped(
    tmp_path: Path, content: bytes, problem: str
) -> None:
    pending_path(tmp_path, "s-9").write_bytes(content)
    read = read_pending(tmp_path, "s-9")
    assert isinstance(read, str) and problem in read
    assert pending_names(tmp_path) == ["s-9"]
    assert read_pending(tmp_path, "gone") is None


def test_backoff_is_jittered_between_the_initial_delay_and_the_capped_ceiling() -> None:
    anchor = AnchorConfig(
        url=URL,
        log_key=Path("k.pem"),
        retry_initial_seconds=2,
        retry_max_seconds=20,
    )
    for attempts, ceiling in ((1, 2), (2, 4), (3, 8), (4, 16), (5, 20), (60, 20)):
        delays = [backoff(anchor, attempts) for _ in range(200)]
        assert all(2 <= d <= ceiling for d in delays), (attempts, min(delays), max(delays))
    assert len({round(backoff(anchor, 4), 6) for _ in range(50)}) > 1  # jittered


def _pem_public(key: object) -> bytes:
    return key.public_key().public_bytes(  # type: ignore[attr-defined, no-any-return]
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def test_validate_config_checks_the_log_key_and_ca_file(quickstart: Path) -> None:
    config = quickstart / "cmcp-config.yaml"
    config.write_text(
        config.read_text()
        + f"trace:\n  anchor:\n    url: {URL}\n    log_key: log.pem\n    ca_file: ca.pem\n"
    )
    env = {"CMCP_DEV_MODE": "1"}

    def errors() -> list[str]:
        report = check_config(config, environ=env)
        return [p.message for p in report.problems if p.severity is Severity.ERROR]

    found = errors()
    assert any(m.startswith("trace.anchor.log_key: cannot read") for m in found), found
    assert any(m.startswith("trace.anchor.ca_file: cannot read") for m in found), found
    for private in (
        ed25519.Ed25519PrivateKey.generate(),
        ec.generate_private_key(ec.SECP256R1()),
        ec.generate_private_key(ec.SECP384R1()),
    ):
        (quickstart / "log.pem").write_bytes(_pem_public(private))
        assert not [m for m in errors() if "log_key" in m]
    refused = {
        b"not a key": "is not a PEM public key",
        _pem_public(rsa.generate_private_key(public_exponent=65537, key_size=2048)): (
            "a log key is Ed25519, P-256 or P-384"
        ),
        _pem_public(
            ec.generate_private_key(ec.SECP521R1())
        ): "a secp521r1 key; a log key is Ed25519",
    }
    for content, problem in refused.items():
        (quickstart / "log.pem").write_bytes(content)
        assert any("log_key" in m and problem in m for m in errors()), errors()
    (quickstart / "ca.pem").write_text("not a certificate")
    assert any(m.startswith("trace.anchor.ca_file:") and "no usable PEM" in m for m in errors())


def test_an_anchored_claim_matches_its_log_and_an_edited_transparency_does_not(
    tmp_path: Path,
) -> None:
    """The log keeps the issuer's anchor_url and the key's thumbprint: the claim's
    `transparency` is recomputed over the record with the claim's own key, so it matches;
    a claim stating another URI (signed again by the same key) does not."""
    attestor = replace(Attestor.load(software.SPEC, "0.1.0"), anchor_url=URL)
    key = ClaimKey.generate()
    session = record_session(tmp_path, session_id="anchored", attestor=attestor, key=key)
    claim = session.claim
    assert claim["trace"]["transparency"] == transparency_uri(URL, claim["trace"])
    replay = replay_log(session.db)["anchored"]
    for document in (claim, session.record):
        match = match_claim(replay, document)
        assert not [c.mismatches for c in match.checks if c.mismatches], match
    edited = json.loads(json.dumps(claim))
    edited["trace"].pop("signature")
    edited["trace"]["transparency"] = f"{URL}/entries/{'0' * 64}"
    edited = sign_claim(edited, key)
    for document in (edited, edited["trace"]):
        found = [m.message for c in match_claim(replay, document).checks for m in c.mismatches]
        assert any(m.startswith("trace.transparency") for m in found), found
        assert any("0" * 64 in m for m in found), found


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("https://127.0.0.1:99999", "port 99999 is not 1-65535"),
        ("https://log.example:65536/log", "port 65536 is not 1-65535"),
        ("https://log.example:0", "not https://host[:port][/path]"),
        ("https://log.example:08443", "not https://host[:port][/path]"),
        ("https://-/", "'-' is not a DNS name"),
        ("https://a..b", "'a..b' is not a DNS name"),
        ("https://a-.example", "'a-.example' is not a DNS name"),
        ("https://log.123", "'log.123' is not a DNS name"),
        ("https://l%6fg.example", "'l%6fg.example' is not a DNS name"),
        ("https://999.1.1.1", "999.1.1.1 is not an IPv4 address"),
        ("https://1.2.3", "1.2.3 is not an IPv4 address"),
        ("https://[zz]", "not https://host[:port][/path]"),
        ("https://[fe80::1%25eth0]", "not https://host[:port][/path]"),
        ("https://[1::2::3]", "[1::2::3] is not an IPv6 address"),
        ("https://log.example/%zz", "percent-escaped segment"),
        ("https://log.example/a%2Fb", "percent-escaped segment"),
        ("https://log.example/log/../x", "`..`"),
        ("https://log.example//log", "an empty"),
        ("https://user@log.example", "not https://host[:port][/path]"),
        ("https://log.example?x=1", "not https://host[:port][/path]"),
        ("http://log.example", "not https://host[:port][/path]"),
    ],
)
def test_trace_anchor_url_is_refused_unless_every_client_reads_it_alike(
    url: str, problem: str
) -> None:
    with pytest.raises(ValueError, match="is not an https base URL") as refused:
        AnchorConfig(url=url, log_key=Path("k.pem"))
    assert problem in str(refused.value), str(refused.value)


@pytest.mark.parametrize(
    ("url", "kept"),
    [
        ("https://log.example:8443/", "https://log.example:8443"),
        ("https://127.0.0.1:65535/scitt/v1", "https://127.0.0.1:65535/scitt/v1"),
        ("https://[::1]:1", "https://[::1]:1"),
        ("https://xn--bcher-kva.example/a:b~c", "https://xn--bcher-kva.example/a:b~c"),
    ],
)
def test_a_well_formed_trace_anchor_url_is_kept(url: str, kept: str) -> None:
    assert AnchorConfig(url=url, log_key=Path("k.pem")).url == kept


def test_validate_config_names_a_url_no_client_can_connect_to(quickstart: Path) -> None:
    config = quickstart / "cmcp-config.yaml"
    config.write_text(
        config.read_text()
        + "trace:\n  anchor:\n    url: https://127.0.0.1:99999\n    log_key: log.pem\n"
    )
    report = check_config(config, environ={"CMCP_DEV_MODE": "1"})
    found = [p.message for p in report.problems if p.severity is Severity.ERROR]
    assert any(m.startswith("trace.anchor.url") and "port 99999" in m for m in found), found
