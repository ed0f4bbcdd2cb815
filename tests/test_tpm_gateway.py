"""The TPM backend end to end: `cmcp start` with the tpm provider against a real software
TPM (swtpm), an agent's calls through the gateway, the claim, `cmcp measure tpm` and
`cmcp verify --trust-root ...` through the real CLI; then every way to forge or tamper
with that evidence, each failing the check that names it.

The AK is enrolled as a privacy CA would (`tests.tpm_support`), so the claim verifies as
fully hardware-attested.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from cmcp_cli.attestation.api import GatewayFacts
from cmcp_cli.attestation.binding import compute_binding
from cmcp_cli.attestation.measurement import installation_digest
from cmcp_cli.claim.keys import ClaimKey
from cmcp_cli.claim.model import sign_claim
from cmcp_cli.evidence.attesting import Attestor
from cmcp_cli.policy.bundle import read_bundle
from cmcp_cli.policy.engine import compile_bundle
from cmcp_tpm import plugin
from tests.gateway_support import Served, session_claim, statuses, verify
from tests.sessions import record_session
from tests.support import QUICKSTART, run_cmcp
from tests.tpm_support import EnrolledTpm, enrolled_tpm

TPM_CHECKS = (
    "tpm.evidence.shape",
    "tpm.attest.magic",
    "tpm.attest.type",
    "tpm.attest.extra_data",
    "tpm.ak.public",
    "tpm.ak.attributes",
    "tpm.attest.signer",
    "tpm.signature",
    "tpm.pcr.digest",
    "tpm.eventlog.replay",
    "tpm.eventlog.policy",
    "tpm.ak.certificate",
    "tpm.ek.certificate",
)


@pytest.fixture(scope="module")
def enrolled(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EnrolledTpm]:
    with enrolled_tpm(tmp_path_factory.mktemp("tpm")) as tpm:
        yield tpm


def test_a_gateway_on_a_tpm_is_verified_as_hardware_attested(
    tmp_path: Path, upstream: Served, enrolled: EnrolledTpm
) -> None:
    attestation = {"provider": "tpm", "providers": {"tpm": enrolled.settings}}
    config, claim_path = session_claim(tmp_path, upstream, attestation)
    claim = json.loads(claim_path.read_text())
    assert claim["trace"]["runtime"]["platform"] == "tpm2"
    assert claim["gateway"]["attestation"]["evidence_type"] == "tpm2-quote-v1"
    assert claim["gateway"]["attestation"]["evidence"]["ak_tie"]["status"] == "certified"

    measured = run_cmcp("measure", "tpm", "--config", config)
    assert measured.returncode == 0, measured.stderr
    measurement = measured.stdout.strip()
    assert measurement == claim["trace"]["runtime"]["measurement"]

    code, report = verify(
        claim_path,
        *enrolled.trust_args(),
        "--expected-measurement",
        measurement,
        "--audit-log",
        tmp_path / "audit.db",
    )
    assert code == 0, report
    assert report["hardware_attested"] is True
    assert {name: statuses(report)[name] for name in TPM_CHECKS} == dict.fromkeys(
        TPM_CHECKS, "pass"
    )
    assert statuses(report)["audit log"] == "pass"

    # without the pinned roots nothing ties the AK to a TPM vendor or privacy CA: exit 3
    code, report = verify(claim_path, "--expected-measurement", measurement)
    assert code == 3 and report["hardware_attested"] is False
    assert statuses(report)["tpm.ak.certificate"] == "skip"

    code, report = verify(
        claim_path, *enrolled.trust_args(), "--expected-measurement", "sha256:" + "ab" * 32
    )
    assert code == 1 and statuses(report)["measurement"] == "fail"

    # a forger re-signs the claim with a key of their own and fixes up the binding: the
    # quote still names the gateway's key, so the TPM evidence gives it away
    forger = ClaimKey.generate()
    forged = json.loads(claim_path.read_text())
    forged["trace"]["cnf"]["jwk"] = forger.public_jwk
    forged["gateway"]["attestation"]["binding"] = compute_binding(
        key_thumbprint=forger.thumbprint,
        bundle_hash=forged["trace"]["policy"]["bundle_hash"],
        catalog_hash=forged["gateway"]["catalog"]["hash"],
        gateway_digest=forged["trace"]["build_provenance"]["digest"],
    ).hex()
    forged_path = tmp_path / "forged.claim.json"
    forged_path.write_text(json.dumps(sign_claim(forged, forger)))
    code, report = verify(forged_path, *enrolled.trust_args())
    assert code == 1
    assert statuses(report)["binding"] == "pass"
    assert statuses(report)["tpm.attest.extra_data"] == "fail"


@dataclass(frozen=True)
class KnownKeySession:
    claim: dict[str, Any]
    key: ClaimKey


@pytest.fixture(scope="module")
def two_sessions(
    tmp_path_factory: pytest.TempPathFactory, enrolled: EnrolledTpm
) -> dict[str, KnownKeySession]:
    """Two sessions recorded by the library on the enrolled TPM, with keys the test holds,
    so that tampered claims can be re-signed and the evidence checks themselves judged."""
    bundle = compile_bundle(read_bundle(QUICKSTART / "policies"))
    attestor = Attestor.load(plugin.SPEC, "test", enrolled.settings)
    facts = GatewayFacts(bundle.hash, "sha256:" + "00" * 32, installation_digest())
    attestor.collector.prepare(facts, enrolled.settings)
    sessions = {}
    try:
        for name in ("a", "b"):
            key = ClaimKey.generate()
            folder = tmp_path_factory.mktemp(f"session-{name}")
            # now, not the helper's default of minutes ago: the swtpm's certificates are new
            recorded = record_session(
                folder, session_id=name, attestor=attestor, key=key, start=datetime.now(UTC)
            )
            sessions[name] = KnownKeySession(recorded.claim, key)
    finally:
        attestor.collector.close()
    return sessions


def _flip_base64(text: str, at: int = -1) -> str:
    data = bytearray(base64.b64decode(text))
    data[at] ^= 0x01
    return base64.b64encode(bytes(data)).decode()


def _flip_hex(text: str) -> str:
    return text[:-1] + ("0" if text[-1] != "0" else "1")


def _tamper_pcr(evidence: dict[str, Any]) -> None:
    evidence["pcrs"]["sha256"]["0"] = _flip_hex(evidence["pcrs"]["sha256"]["0"])


def _tamper_event(evidence: dict[str, Any]) -> None:
    evidence["event_log"][0]["digest"] = _flip_hex(evidence["event_log"][0]["digest"])


def _tamper(field: str, at: int = -1) -> Callable[[dict[str, Any]], None]:
    def change(evidence: dict[str, Any]) -> None:
        if isinstance(evidence[field], list):
            evidence[field][0] = _flip_base64(evidence[field][0], at)
        else:
            evidence[field] = _flip_base64(evidence[field], at)

    return change


TAMPERINGS: dict[str, tuple[Callable[[dict[str, Any]], None], str]] = {
    "attest": (_tamper("attest", 20), "tpm.signature"),
    "signature": (_tamper("signature"), "tpm.signature"),
    # the last byte is the ECC point's: off the curve, the key is not a key
    "ak_public": (_tamper("ak_public"), "tpm.ak.public"),
    # byte 5 holds the restricted and sign bits of objectAttributes: restricted cleared
    "ak_public.attributes": (_tamper("ak_public", 5), "tpm.ak.attributes"),
    "ak_certificates": (_tamper("ak_certificates"), "tpm.ak.certificate"),
    "ek_certificates": (_tamper("ek_certificates"), "tpm.ek.certificate"),
    "pcrs": (_tamper_pcr, "tpm.pcr.digest"),
    "event_log": (_tamper_event, "tpm.eventlog.replay"),
}


def _resign(session: KnownKeySession, evidence: dict[str, Any], folder: Path) -> Path:
    claim = json.loads(json.dumps(session.claim))
    claim["gateway"]["attestation"]["evidence"] = evidence
    path = folder / "tampered.claim.json"
    path.write_text(json.dumps(sign_claim(claim, session.key)))
    return path


def test_the_untampered_library_sessions_verify(
    tmp_path: Path, two_sessions: dict[str, KnownKeySession], enrolled: EnrolledTpm
) -> None:
    session = two_sessions["a"]
    evidence = session.claim["gateway"]["attestation"]["evidence"]
    code, report = verify(_resign(session, evidence, tmp_path), *enrolled.trust_args())
    assert code == 0, report


@pytest.mark.parametrize("field", sorted(TAMPERINGS))
def test_a_flipped_byte_in_each_evidence_field_fails_its_check(
    tmp_path: Path, two_sessions: dict[str, KnownKeySession], enrolled: EnrolledTpm, field: str
) -> None:
    session = two_sessions["a"]
    evidence = json.loads(json.dumps(session.claim["gateway"]["attestation"]["evidence"]))
    change, check = TAMPERINGS[field]
    change(evidence)
    code, report = verify(_resign(session, evidence, tmp_path), *enrolled.trust_args())
    assert code == 1, report
    assert statuses(report)["signature"] == "pass"  # re-signed: only the evidence is wrong
    assert statuses(report)[check] == "fail", statuses(report)
    assert report["hardware_attested"] is False


def test_a_quote_replayed_from_another_session_is_refused(
    tmp_path: Path, two_sessions: dict[str, KnownKeySession], enrolled: EnrolledTpm
) -> None:
    other = two_sessions["b"].claim["gateway"]["attestation"]["evidence"]
    code, report = verify(_resign(two_sessions["a"], other, tmp_path), *enrolled.trust_args())
    assert code == 1
    assert statuses(report)["binding"] == "pass"
    assert statuses(report)["tpm.attest.extra_data"] == "fail"
    assert statuses(report)["tpm.signature"] == "pass"  # a genuine quote, of another session


def _rename_issuer(der_b64: str) -> str:
    """The certificate with the last character of its issuer name changed (the issuer comes
    before the subject in the signed part, so its first occurrence is the issuer field)."""
    der = base64.b64decode(der_b64)
    issuer = x509.load_der_x509_certificate(der).issuer.public_bytes()
    at = der.index(issuer) + len(issuer) - 1
    changed = bytearray(der)
    changed[at] = ord("X") if changed[at] != ord("X") else ord("Y")  # stays printable
    return base64.b64encode(bytes(changed)).decode()


def test_an_ek_certificate_with_another_issuer_fails_when_its_root_is_given(
    tmp_path: Path, two_sessions: dict[str, KnownKeySession], enrolled: EnrolledTpm
) -> None:
    session = two_sessions["a"]
    evidence = json.loads(json.dumps(session.claim["gateway"]["attestation"]["evidence"]))
    evidence["ek_certificates"] = [_rename_issuer(c) for c in evidence["ek_certificates"]]
    code, report = verify(_resign(session, evidence, tmp_path), *enrolled.trust_args())
    assert code == 1, report
    ek = next(check for check in report["checks"] if check["name"] == "tpm.ek.certificate")
    assert ek["status"] == "fail", ek
    assert "no root given with --trust-root" in ek["reason"]
    assert report["hardware_attested"] is False


def test_without_the_ek_root_the_claim_is_not_hardware_attested(
    tmp_path: Path, two_sessions: dict[str, KnownKeySession], enrolled: EnrolledTpm
) -> None:
    """The AK's root alone: the EK's maker is not among the roots given, so that fails."""
    session = two_sessions["a"]
    evidence = session.claim["gateway"]["attestation"]["evidence"]
    ak_root = enrolled.roots[0]
    code, report = verify(_resign(session, evidence, tmp_path), "--trust-root", ak_root)
    assert code == 1, report
    assert statuses(report)["tpm.ak.certificate"] == "pass"
    assert statuses(report)["tpm.ek.certificate"] == "fail"
    assert report["hardware_attested"] is False


def test_the_roots_given_are_named_as_the_auditors(
    tmp_path: Path, two_sessions: dict[str, KnownKeySession], enrolled: EnrolledTpm
) -> None:
    session = two_sessions["a"]
    evidence = session.claim["gateway"]["attestation"]["evidence"]
    code, report = verify(_resign(session, evidence, tmp_path), *enrolled.trust_args())
    assert code == 0, report
    reasons = {check["name"]: check["reason"] for check in report["checks"]}
    for name in ("tpm.ak.certificate", "tpm.ek.certificate"):
        assert "given with --trust-root" in reasons[name], reasons[name]
        assert "vendored" not in reasons[name]
