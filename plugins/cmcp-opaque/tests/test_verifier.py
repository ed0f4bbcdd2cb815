"""Every check of the opaque verifier on tokens the test signs, and the attacker's variants:
each fails the check that names it, nothing the token states is trusted before its
signature verifies, and the verdict is never hardware-attested."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from joserfc import jws
from joserfc.jwk import RSAKey

from cmcp_cli.attestation.api import (
    Appraisal,
    CheckStatus,
    EvidenceVerdict,
    ProviderError,
    TrustInputs,
)
from cmcp_cli.testing.verdicts import assert_fails, reason, statuses
from cmcp_opaque import verifier as v
from cmcp_opaque.testing import AUDIENCE, MEASUREMENTS, TokenIssuer
from cmcp_opaque.token import measurement_digest
from cmcp_opaque.verifier import OpaqueVerifier

BINDING = bytes(range(32))
OTHER_BINDING = bytes(range(1, 33))
URL = "https://opaque.example/attest/token"
NOW = 1_767_225_600  # 2026-01-01: the tokens' time, far from the wall clock's
AT = datetime.fromtimestamp(NOW + 600, UTC)
SIGNED_ONLY = (v.ISSUER, v.AUDIENCE, v.TIME, v.NONCE, v.STATUS, v.MEASUREMENTS)


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def policy(signer: TokenIssuer, jwks_path: Path, **changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"keys": str(jwks_path), "issuer": signer.issuer, "audience": AUDIENCE}
    base.update(changes)
    return {key: value for key, value in base.items() if value is not None}


def judge(
    token: Any,
    pins: Mapping[str, Any],
    *,
    binding: bytes = BINDING,
    at: datetime = AT,
    url: Any = URL,
) -> EvidenceVerdict:
    trust = TrustInputs(binding=binding, at=at, platform_policy=pins)
    return OpaqueVerifier().verify({"token": token, "url": url}, trust)


def good(issuer: TokenIssuer, **changes: Any) -> str:
    return issuer.sign(issuer.payload(BINDING, now=NOW, **changes))


def assert_untrusted(verdict: EvidenceVerdict) -> None:
    """Nothing the token states was judged: each such check skips naming the signature."""
    for name in SIGNED_ONLY:
        assert statuses(verdict)[name] is CheckStatus.SKIP, (name, verdict.checks)
        assert v.SIGNATURE in reason(verdict, name) or v.FORMAT in reason(verdict, name)
    assert verdict.appraisal is None


def test_a_good_token_passes_every_check_but_is_never_hardware(
    issuer: TokenIssuer, jwks_path: Path
) -> None:
    pins = policy(issuer, jwks_path, measurements={"platform": [MEASUREMENTS["platform"]]})
    verdict = judge(good(issuer), pins)
    passed = {name for name, status in statuses(verdict).items() if status is CheckStatus.PASS}
    assert passed == {
        v.FORMAT, v.URL, v.ALGORITHM, v.KEY, v.SIGNATURE, v.ISSUER, v.AUDIENCE, v.TIME,
        v.NONCE, v.STATUS, v.MEASUREMENTS,
    }  # fmt: skip
    assert statuses(verdict)[v.HARDWARE] is CheckStatus.SKIP
    assert not verdict.failed and verdict.hardware_attested is False
    assert verdict.appraisal == Appraisal("affirming", issuer.issuer)
    assert verdict.measurement == measurement_digest(MEASUREMENTS)


def test_alg_none_is_refused(issuer: TokenIssuer, jwks_path: Path) -> None:
    header = b64url(json.dumps({"alg": "none", "kid": issuer.kid}).encode())
    payload = b64url(json.dumps(issuer.payload(BINDING, now=NOW)).encode())
    # the RFC 7515 form of an unsecured JWS has an empty signature: not of the shape
    assert_fails(judge(f"{header}.{payload}.", policy(issuer, jwks_path)), v.FORMAT, "signature")
    verdict = judge(f"{header}.{payload}.{b64url(b'x' * 64)}", policy(issuer, jwks_path))
    assert_fails(verdict, v.ALGORITHM, "'none'")
    assert statuses(verdict)[v.SIGNATURE] is CheckStatus.SKIP
    assert_untrusted(verdict)


def test_hs256_with_the_public_key_as_the_secret_is_refused(
    issuer: TokenIssuer, jwks_path: Path
) -> None:
    # The classic confusion: a MAC keyed with the public key anyone has.
    public_pem = issuer.key.get_op_key("verify").public_bytes(
        Encoding.PEM, PublicFormat.SubjectPublicKeyInfo
    )
    header = b64url(json.dumps({"alg": "HS256", "kid": issuer.kid}).encode())
    payload = b64url(json.dumps(issuer.payload(BINDING, now=NOW)).encode())
    mac = hmac.new(public_pem, f"{header}.{payload}".encode(), hashlib.sha256).digest()
    verdict = judge(f"{header}.{payload}.{b64url(mac)}", policy(issuer, jwks_path))
    assert_fails(verdict, v.ALGORITHM, "'HS256'")
    assert_untrusted(verdict)


@pytest.mark.parametrize("algorithms", [["HS256"], ["none"], ["ES256", "HS512"]])
def test_an_auditor_cannot_allow_none_or_a_mac(
    issuer: TokenIssuer, jwks_path: Path, algorithms: list[str]
) -> None:
    with pytest.raises(ProviderError, match="algorithms names"):
        judge(good(issuer), policy(issuer, jwks_path, algorithms=algorithms))


def test_a_narrowed_allow_list_refuses_other_algorithms(
    issuer: TokenIssuer, jwks_path: Path
) -> None:
    assert_fails(
        judge(good(issuer), policy(issuer, jwks_path, algorithms=["ES384"])), v.ALGORITHM, "ES256"
    )


def test_a_symmetric_or_private_key_cannot_be_pinned(issuer: TokenIssuer, tmp_path: Path) -> None:
    secret = tmp_path / "oct.json"
    secret.write_text(json.dumps({"kty": "oct", "k": b64url(b"s" * 32), "kid": issuer.kid}))
    with pytest.raises(ProviderError, match="private or symmetric"):
        judge(good(issuer), policy(issuer, secret))
    private = tmp_path / "private.json"
    private.write_text(json.dumps({**issuer.key.as_dict(private=True), "kid": issuer.kid}))
    with pytest.raises(ProviderError, match="private or symmetric"):
        judge(good(issuer), policy(issuer, private))


def test_a_kid_of_no_pinned_key_fails(issuer: TokenIssuer, jwks_path: Path) -> None:
    token = issuer.sign(issuer.payload(BINDING, now=NOW), header={"kid": "someone-else"})
    verdict = judge(token, policy(issuer, jwks_path))
    assert_fails(verdict, v.KEY, "'someone-else'", issuer.kid)
    assert_untrusted(verdict)


def test_no_pinned_key_fails(issuer: TokenIssuer, jwks_path: Path) -> None:
    verdict = judge(good(issuer), policy(issuer, jwks_path, keys=None))
    assert_fails(verdict, v.KEY, "No OPAQUE signing key is pinned")
    assert_untrusted(verdict)


def test_two_pinned_keys_under_one_kid_fail(issuer: TokenIssuer, tmp_path: Path) -> None:
    twin = TokenIssuer.create(issuer.kid)
    both = tmp_path / "both.json"
    both.write_text(json.dumps({"keys": issuer.jwks()["keys"] + twin.jwks()["keys"]}))
    verdict = judge(good(issuer), policy(issuer, both))
    assert_fails(verdict, v.KEY, "names 2 pinned keys", "exactly one")
    assert_untrusted(verdict)


def test_a_token_signed_by_another_key_under_the_pinned_kid_fails(
    issuer: TokenIssuer, jwks_path: Path
) -> None:
    impostor = TokenIssuer.create(issuer.kid)
    verdict = judge(good(impostor), policy(issuer, jwks_path))
    assert_fails(verdict, v.SIGNATURE, "does not verify")
    assert_untrusted(verdict)


def test_a_key_of_another_type_under_the_kid_fails(issuer: TokenIssuer, tmp_path: Path) -> None:
    rsa = RSAKey.generate_key(2048, private=True)
    jwks = tmp_path / "rsa.json"
    jwks.write_text(json.dumps({"keys": [{**rsa.as_dict(private=False), "kid": issuer.kid}]}))
    assert_fails(judge(good(issuer), policy(issuer, jwks)), v.SIGNATURE, "does not verify")


def test_a_pinned_jwk_alg_binds_the_token_alg(issuer: TokenIssuer, tmp_path: Path) -> None:
    jwks = tmp_path / "alg.json"
    jwks.write_text(json.dumps({"keys": [{**issuer.jwks()["keys"][0], "alg": "ES384"}]}))
    assert_fails(judge(good(issuer), policy(issuer, jwks)), v.KEY, "ES384", "ES256")


def test_a_pem_key_is_selected_by_its_thumbprint(issuer: TokenIssuer, tmp_path: Path) -> None:
    pem = tmp_path / "key.pem"
    public = issuer.key.get_op_key("verify")
    pem.write_bytes(public.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo))
    thumbprint = issuer.key.thumbprint()
    token = issuer.sign(issuer.payload(BINDING, now=NOW), header={"kid": thumbprint})
    verdict = judge(token, policy(issuer, pem))
    assert statuses(verdict)[v.SIGNATURE] is CheckStatus.PASS, verdict.checks
    assert_fails(judge(good(issuer), policy(issuer, pem)), v.KEY, thumbprint)


def test_the_payload_changed_after_signing_fails(issuer: TokenIssuer, jwks_path: Path) -> None:
    header, _, signature = good(issuer).split(".")
    forged = issuer.payload(BINDING, now=NOW, status="affirming", iss=issuer.issuer)
    forged["measurements"] = {"platform": "sha256:" + "00" * 32}
    token = f"{header}.{b64url(json.dumps(forged).encode())}.{signature}"
    verdict = judge(token, policy(issuer, jwks_path))
    assert_fails(verdict, v.SIGNATURE, "altered")
    assert_untrusted(verdict)


def test_the_header_changed_after_signing_fails(issuer: TokenIssuer, jwks_path: Path) -> None:
    _, payload, signature = good(issuer).split(".")
    header = b64url(json.dumps({"alg": "ES256", "kid": issuer.kid, "typ": "other"}).encode())
    verdict = judge(f"{header}.{payload}.{signature}", policy(issuer, jwks_path))
    assert_fails(verdict, v.SIGNATURE, "altered")
    assert_untrusted(verdict)


def test_another_issuer_fails(issuer: TokenIssuer, jwks_path: Path) -> None:
    token = good(issuer, iss="https://attacker.example/")
    assert_fails(judge(token, policy(issuer, jwks_path)), v.ISSUER, "https://attacker.example/")
    assert_fails(judge(good(issuer), policy(issuer, jwks_path, issuer=None)), v.ISSUER, "No issuer")


def test_the_audience(issuer: TokenIssuer, jwks_path: Path) -> None:
    assert_fails(judge(good(issuer, aud="another"), policy(issuer, jwks_path)), v.AUDIENCE)
    assert_fails(judge(good(issuer, aud=None), policy(issuer, jwks_path)), v.AUDIENCE, "absent")
    listed = judge(good(issuer, aud=["x", AUDIENCE]), policy(issuer, jwks_path))
    assert statuses(listed)[v.AUDIENCE] is CheckStatus.PASS
    unpinned = judge(good(issuer), policy(issuer, jwks_path, audience=None))
    assert statuses(unpinned)[v.AUDIENCE] is CheckStatus.SKIP
    assert AUDIENCE in reason(unpinned, v.AUDIENCE)


def test_the_time_window_is_the_claims_time_not_the_wall_clock(
    issuer: TokenIssuer, jwks_path: Path
) -> None:
    pins = policy(issuer, jwks_path)
    token = good(issuer)  # expired long ago by the wall clock, valid at AT
    assert statuses(judge(token, pins))[v.TIME] is CheckStatus.PASS
    expired = datetime.fromtimestamp(NOW + 3600, UTC)
    assert_fails(judge(token, pins, at=expired), v.TIME, "expired")
    assert_fails(judge(token, pins, at=datetime.fromtimestamp(NOW - 1, UTC)), v.TIME, "after")
    later = good(issuer, nbf=NOW + 1200)
    assert_fails(judge(later, pins), v.TIME, "not valid before")


def test_the_nonce(issuer: TokenIssuer, jwks_path: Path) -> None:
    pins = policy(issuer, jwks_path)
    assert_fails(judge(good(issuer), pins, binding=OTHER_BINDING), v.NONCE, "another session")
    assert_fails(judge(good(issuer, nonce=None), pins), v.NONCE, "no 'nonce' claim")
    padded = base64.urlsafe_b64encode(BINDING).decode()  # with "=": not the canonical form
    assert_fails(judge(good(issuer, nonce=padded), pins), v.NONCE, "base64url")
    hexed = good(issuer, nonce=BINDING.hex())
    assert_fails(judge(hexed, pins), v.NONCE)
    assert statuses(judge(hexed, pins | {"nonce_encoding": "hex"}))[v.NONCE] is CheckStatus.PASS


def test_claim_names_are_configurable(issuer: TokenIssuer, jwks_path: Path) -> None:
    payload = issuer.payload(BINDING, now=NOW, nonce=None, status=None, measurements=None)
    payload |= {"eat_nonce": b64url(BINDING), "verdict": "ok", "ms": {"a": "1"}}
    names = {"nonce": "eat_nonce", "status": "verdict", "measurements": "ms"}
    pins = policy(issuer, jwks_path, claim_names=names, status_values={"ok": "warning"})
    pins["measurements"] = {"a": ["1"]}
    verdict = judge(issuer.sign(payload), pins)
    assert not verdict.failed, verdict.checks
    assert verdict.appraisal == Appraisal("warning", issuer.issuer)
    assert verdict.measurement == measurement_digest({"a": "1"})


def test_the_status(issuer: TokenIssuer, jwks_path: Path) -> None:
    pins = policy(issuer, jwks_path)
    unknown = judge(good(issuer, status="fine"), pins)
    assert_fails(unknown, v.STATUS, "'fine'", "no EAR status")
    assert unknown.appraisal is None
    silent = judge(good(issuer, status=None), pins)
    assert not silent.failed and silent.appraisal == Appraisal("none", issuer.issuer)


def test_the_measurements(issuer: TokenIssuer, jwks_path: Path) -> None:
    pins = policy(issuer, jwks_path, measurements={"platform": ["sha256:" + "00" * 32]})
    assert_fails(judge(good(issuer), pins), v.MEASUREMENTS, "platform is sha256:5e")
    absent = policy(issuer, jwks_path, measurements={"firmware": ["1"]})
    assert_fails(judge(good(issuer), absent), v.MEASUREMENTS, "firmware is (absent)")
    assert_fails(judge(good(issuer, measurements={"platform": 7}), pins), v.MEASUREMENTS)


@pytest.mark.parametrize(
    ("token", "fragment"),
    [
        ("a.b", "2 dot-separated"),
        ("not a jws", "1 dot-separated"),
        ("eyJhbGciOiJFUzI1NiJ9.e30.", "signature"),
        ("eyJ=.e30.c2ln", "header"),
    ],
)
def test_unknown_shapes_fail_format(
    issuer: TokenIssuer, jwks_path: Path, token: str, fragment: str
) -> None:
    verdict = judge(token, policy(issuer, jwks_path))
    assert_fails(verdict, v.FORMAT, fragment)
    assert all(
        check.status is CheckStatus.SKIP
        for check in verdict.checks
        if check.name not in (v.FORMAT, v.URL)
    )


def test_non_canonical_base64url_is_refused(issuer: TokenIssuer, jwks_path: Path) -> None:
    header, payload, signature = good(issuer).split(".")
    raw = base64.urlsafe_b64decode(signature + "==")
    assert len(raw) % 3, "an ES256 signature leaves unused bits in its last character"
    last = signature[-1]
    # Setting an unused low bit keeps the decoded bytes and changes the text.
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    twin = alphabet[alphabet.index(last) ^ 1]
    assert base64.urlsafe_b64decode(signature[:-1] + twin + "==") == raw
    verdict = judge(f"{header}.{payload}.{signature[:-1]}{twin}", policy(issuer, jwks_path))
    assert_fails(verdict, v.FORMAT, "canonical")


def test_refused_header_members(issuer: TokenIssuer, jwks_path: Path) -> None:
    token = issuer.sign(issuer.payload(BINDING, now=NOW), header={"crit": ["kid"]})
    assert_fails(judge(token, policy(issuer, jwks_path)), v.FORMAT, "crit")
    header = b64url(json.dumps({"alg": "ES256"}).encode())
    _, payload, signature = good(issuer).split(".")
    assert_fails(
        judge(f"{header}.{payload}.{signature}", policy(issuer, jwks_path)), v.FORMAT, "kid"
    )


def test_a_jws_json_serialization_is_refused(issuer: TokenIssuer, jwks_path: Path) -> None:
    flattened = jws.serialize_json(
        {"protected": {"alg": "ES256", "kid": issuer.kid}},
        json.dumps(issuer.payload(BINDING, now=NOW)).encode(),
        issuer.key,
    )
    pins = policy(issuer, jwks_path)
    assert_fails(judge(flattened, pins), v.FORMAT, "JWS JSON serialization is not accepted")
    assert_fails(judge(json.dumps(flattened), pins), v.FORMAT, "dot-separated")


def test_the_url(issuer: TokenIssuer, jwks_path: Path) -> None:
    pins = policy(issuer, jwks_path)
    assert_fails(judge(good(issuer), pins, url="http://opaque.example/t"), v.URL, "not https")
    assert_fails(judge(good(issuer), pins | {"urls": ["https://elsewhere/"]}), v.URL, "pinned")


def test_the_evidence_members(issuer: TokenIssuer, jwks_path: Path) -> None:
    trust = TrustInputs(binding=BINDING, at=AT, platform_policy=policy(issuer, jwks_path))
    for evidence in ({"token": good(issuer)}, {"token": good(issuer), "url": URL, "x": 1}):
        assert_fails(OpaqueVerifier().verify(evidence, trust), v.FORMAT, "exactly {token, url}")


def test_a_relative_key_file_is_read_beside_the_platform_policy(
    issuer: TokenIssuer,
    jwks_path: Path,
    tmp_path_factory: pytest.TempPathFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cwd = tmp_path_factory.mktemp("cwd")
    # the working directory holds another service's key under the same kid
    (cwd / jwks_path.name).write_text(json.dumps(TokenIssuer.create().jwks()))
    monkeypatch.chdir(cwd)
    pins = policy(issuer, jwks_path, keys=[jwks_path.name])
    trust = TrustInputs(
        binding=BINDING, at=AT, platform_policy=pins, platform_policy_dir=jwks_path.parent
    )
    verdict = OpaqueVerifier().verify({"token": good(issuer), "url": URL}, trust)
    assert statuses(verdict)[v.SIGNATURE] is CheckStatus.PASS, verdict.checks
    elsewhere = TrustInputs(binding=BINDING, at=AT, platform_policy=pins, platform_policy_dir=cwd)
    wrong = OpaqueVerifier().verify({"token": good(issuer), "url": URL}, elsewhere)
    assert statuses(wrong)[v.SIGNATURE] is CheckStatus.FAIL, wrong.checks
