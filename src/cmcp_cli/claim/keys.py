"""The claim-signing key: Ed25519, generated in memory, published as an OKP JWK."""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Mapping
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)
from scitt_cose import build_signed_statement

_B64URL = re.compile(r"[A-Za-z0-9_-]*")
_PRIVATE_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "k"})


class JWKError(ValueError):
    """A JWK or signature that cannot be used."""


def b64url_encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    """Strict unpadded base64url: any other character or a padding mistake is an error."""
    if not isinstance(text, str) or _B64URL.fullmatch(text) is None or len(text) % 4 == 1:
        raise JWKError("not unpadded base64url")
    decoded = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    if b64url_encode(decoded) != text:  # non-canonical trailing bits
        raise JWKError("not canonical base64url")
    return decoded


class ClaimKey:
    """A private Ed25519 key that exists only in this process's memory."""

    def __init__(self, private_key: Ed25519PrivateKey) -> None:
        self._private = private_key
        raw = private_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        self.public_jwk: dict[str, str] = {"kty": "OKP", "crv": "Ed25519", "x": b64url_encode(raw)}
        self.thumbprint = jwk_thumbprint(self.public_jwk)

    @classmethod
    def generate(cls) -> ClaimKey:
        return cls(Ed25519PrivateKey.generate())

    def sign(self, data: bytes) -> bytes:
        return self._private.sign(data)

    def signed_statement(
        self, payload: bytes, *, issuer: str, subject: str, content_type: str
    ) -> bytes:
        """A SCITT Signed Statement (RFC 9943: COSE_Sign1, EdDSA) over `payload`, its kid
        the key's RFC 7638 thumbprint. The library takes the key as PEM: that copy exists
        only in this call's memory, as the key itself does."""
        pem = self._private.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
        statement: bytes = build_signed_statement(
            payload,
            alg="EdDSA",
            private_key_pem=pem,
            issuer=issuer,
            subject=subject,
            content_type=content_type,
            kid=self.thumbprint.encode("ascii"),
        )
        return statement

    def __repr__(self) -> str:  # never the private key
        return f"ClaimKey(thumbprint={self.thumbprint!r})"


def public_key_from_jwk(jwk: Mapping[str, Any]) -> Ed25519PublicKey:
    """The Ed25519 public key of an OKP JWK; refuses other key types and private members."""
    if not isinstance(jwk, Mapping):
        raise JWKError("cnf.jwk is not an object")
    leaked = sorted(_PRIVATE_MEMBERS & set(jwk))
    if leaked:
        raise JWKError(f"the JWK carries private members ({', '.join(leaked)})")
    if jwk.get("kty") != "OKP" or jwk.get("crv") != "Ed25519":
        raise JWKError(f"key is {jwk.get('kty')}/{jwk.get('crv')}, not OKP/Ed25519")
    raw = b64url_decode(str(jwk.get("x", "")))
    if len(raw) != 32:
        raise JWKError("an Ed25519 public key is 32 bytes")
    return Ed25519PublicKey.from_public_bytes(raw)


def jwk_thumbprint(jwk: Mapping[str, Any]) -> str:
    """RFC 7638 thumbprint (SHA-256, base64url) of an OKP JWK: its crv, kty and x only."""
    required = f'{{"crv":"{jwk["crv"]}","kty":"{jwk["kty"]}","x":"{jwk["x"]}"}}'
    return b64url_encode(hashlib.sha256(required.encode("utf-8")).digest())


def signature_valid(public_key: Ed25519PublicKey, signature: bytes, data: bytes) -> bool:
    try:
        public_key.verify(signature, data)
    except InvalidSignature:
        return False
    return True
