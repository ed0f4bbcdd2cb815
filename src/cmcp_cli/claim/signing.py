"""Signing a JSON document over its RFC 8785 form, the signature in a `signature` member.

The signature is unpadded base64url Ed25519 over JCS(document without `signature`), the
embedded form of TRACE §3.2.2 and the GatewayClaim's envelope signature alike.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from cmcp_cli.claim.canonical import canonical_bytes
from cmcp_cli.claim.keys import (
    ClaimKey,
    JWKError,
    b64url_decode,
    b64url_encode,
    public_key_from_jwk,
    signature_valid,
)

SIGNATURE = "signature"


def signed(document: Mapping[str, Any], key: ClaimKey) -> dict[str, Any]:
    body = {k: v for k, v in document.items() if k != SIGNATURE}
    return {**body, SIGNATURE: b64url_encode(key.sign(canonical_bytes(body)))}


def check_signature(document: Mapping[str, Any], jwk: Mapping[str, Any]) -> str | None:
    """None when `document[signature]` verifies with `jwk`; otherwise the reason it does not."""
    text = document.get(SIGNATURE)
    if not isinstance(text, str):
        return "the document has no signature"
    try:
        public_key = public_key_from_jwk(jwk)
        signature = b64url_decode(text)
    except JWKError as exc:
        return str(exc)
    body = {k: v for k, v in document.items() if k != SIGNATURE}
    if len(signature) != 64 or not signature_valid(public_key, signature, canonical_bytes(body)):
        return "the Ed25519 signature does not verify over the RFC 8785 form"
    return None
