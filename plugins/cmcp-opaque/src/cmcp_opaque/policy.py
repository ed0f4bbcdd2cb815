"""The auditor's `[opaque]` platform policy: the keys that may sign a token, and what the token
must state. Nothing here comes from the evidence.

    [opaque]
    keys = ["/etc/cmcp/opaque-jwks.json"]      # JWKS or JWK JSON, or PEM public keys/certs
    issuer = "https://attest.opaque.example"   # the token's exact iss
    audience = "cmcp"                          # optional: must be in the token's aud
    algorithms = ["ES256"]                     # optional: narrows the default allow-list
    claim_names = { nonce = "nonce", status = "status", measurements = "measurements" }
    nonce_encoding = "base64url"               # or "base64", "hex"
    status_values = { ok = "affirming" }       # optional: token value -> EAR status
    measurements = { platform = ["sha256:..."] }  # optional: each name, its accepted values
    urls = ["https://attest.opaque.example/v1/token"]  # optional: the URLs the gateway may ask

A PEM key has no `kid`: its kid is its RFC 7638 thumbprint. A JWK without `kid` likewise.
A relative path in `keys` is taken from the folder of the platform-policy file, wherever
`cmcp verify` runs. An unusable value is a `ProviderError` naming the key: the auditor's
input, not the evidence.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    PublicFormat,
    load_pem_public_key,
)
from joserfc.errors import JoseError
from joserfc.jwk import JWKRegistry, Key

from cmcp_cli.attestation.api import ProviderError
from cmcp_cli.attestation.toolkit import read_policy_file
from cmcp_opaque.token import ClaimNames, nonce_encoding, status_values

TABLE: Final = "[opaque]"
# Asymmetric signatures only: `none` signs nothing and an HS* MAC is verified with a shared
# secret, which a public key pinned as one would let anyone forge.
ALGORITHMS: Final = (
    "ES256", "ES384", "ES512", "PS256", "PS384", "PS512", "RS256", "RS384", "RS512", "EdDSA",
)  # fmt: skip
_PRIVATE_MEMBERS: Final = ("d", "p", "q", "dp", "dq", "qi", "oth", "k")
_PEM_BLOCK = re.compile(rb"-----BEGIN ([A-Z ]+)-----.+?-----END \1-----", re.DOTALL)
MAX_KEY_FILE: Final = 1 << 20


@dataclass(frozen=True, slots=True)
class PinnedKey:
    kid: str
    key: Key
    source: str  # where it was pinned, for reasons: "keys.json (kid k1)"
    alg: str | None = None  # a JWK's own alg: the token's must then be this one


@dataclass(frozen=True, slots=True)
class Requirements:
    keys: tuple[PinnedKey, ...] = ()
    issuer: str | None = None
    audience: str | None = None
    algorithms: tuple[str, ...] = ALGORITHMS
    claim_names: ClaimNames = field(default_factory=ClaimNames)
    nonce_encoding: str = "base64url"
    status_values: Mapping[str, str] = field(default_factory=lambda: status_values(None, ""))
    measurements: Mapping[str, tuple[str, ...]] | None = None
    urls: tuple[str, ...] = ()

    @classmethod
    def parse(cls, policy: Mapping[str, Any], folder: Path | None = None) -> Requirements:
        """The validated table; a relative key file is read from `folder` (the
        platform-policy file's)."""
        keys = _keys(policy["keys"], folder) if "keys" in policy else ()
        return cls(
            keys=keys,
            issuer=_text(policy, "issuer"),
            audience=_text(policy, "audience"),
            algorithms=_algorithms(policy.get("algorithms")),
            claim_names=ClaimNames.parse(policy.get("claim_names"), f"{TABLE} claim_names"),
            nonce_encoding=nonce_encoding(policy.get("nonce_encoding"), f"{TABLE} nonce_encoding"),
            status_values=status_values(policy.get("status_values"), f"{TABLE} status_values"),
            measurements=_measurements(policy.get("measurements")),
            urls=_urls(policy.get("urls")),
        )


def _text(policy: Mapping[str, Any], key: str) -> str | None:
    value = policy.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise ProviderError(f"{TABLE} {key} must be a non-empty string")
    return value


def _strings(value: Any, key: str) -> tuple[str, ...]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items or not all(isinstance(i, str) and i for i in items):
        raise ProviderError(f"{TABLE} {key} must be a string or a non-empty list of strings")
    return tuple(items)


def _algorithms(value: Any) -> tuple[str, ...]:
    if value is None:
        return ALGORITHMS
    chosen = _strings(value, "algorithms")
    refused = [alg for alg in chosen if alg not in ALGORITHMS]
    if refused:
        raise ProviderError(
            f"{TABLE} algorithms names {', '.join(refused)}, which is not accepted",
            hint=f"choose among {', '.join(ALGORITHMS)} (never none or an HS* MAC)",
        )
    return chosen


def _urls(value: Any) -> tuple[str, ...]:
    return () if value is None else _strings(value, "urls")


def _measurements(value: Any) -> Mapping[str, tuple[str, ...]] | None:
    if value is None:
        return None
    if not isinstance(value, Mapping) or not value:
        raise ProviderError(
            f"{TABLE} measurements must be a table of measurement names to accepted values",
            hint='for example { platform = ["sha256:..."] }',
        )
    return {
        str(name): _strings(accepted, f"measurements.{name}") for name, accepted in value.items()
    }


def _keys(value: Any, folder: Path | None) -> tuple[PinnedKey, ...]:
    keys: list[PinnedKey] = []
    for path in _strings(value, "keys"):
        keys.extend(_key_file(*read_policy_file(path, folder, f"{TABLE} keys", limit=MAX_KEY_FILE)))
    return tuple(keys)


def _key_file(path: Path, data: bytes) -> list[PinnedKey]:
    if data.lstrip().startswith(b"{"):
        return _jwks(path, data)
    blocks = _PEM_BLOCK.findall(data)
    if not blocks:
        raise ProviderError(
            f"{TABLE} keys: {path} is neither JWKS/JWK JSON nor PEM",
            hint='a JWKS ({"keys": [...]}), one JWK, or PEM PUBLIC KEY/CERTIFICATE blocks',
        )
    return [_pem_key(path, match.group(0)) for match in _PEM_BLOCK.finditer(data)]


def _pem_key(path: Path, block: bytes) -> PinnedKey:
    certificate = block.startswith(b"-----BEGIN CERTIFICATE-----")
    if not certificate and not block.startswith(b"-----BEGIN PUBLIC KEY-----"):
        raise ProviderError(
            f"{TABLE} keys: {path} holds a PEM block that is neither a PUBLIC KEY nor a "
            "CERTIFICATE",
            hint="pin public keys only",
        )
    public: PublicKeyTypes
    try:
        if certificate:
            public = x509.load_pem_x509_certificate(block).public_key()
        else:
            public = load_pem_public_key(block)
    except ValueError as error:
        raise ProviderError(f"{TABLE} keys: {path} holds an unusable PEM block: {error}") from None
    if isinstance(public, ec.EllipticCurvePublicKey):
        kty = "EC"
    elif isinstance(public, rsa.RSAPublicKey):
        kty = "RSA"
    elif isinstance(public, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
        kty = "OKP"
    else:
        raise ProviderError(f"{TABLE} keys: {path} holds a {type(public).__name__}, not a JWS key")
    pem = public.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    try:
        key = JWKRegistry.import_key(pem, kty)
    except (JoseError, ValueError) as error:
        raise ProviderError(f"{TABLE} keys: {path}: {error}") from None
    kid = key.thumbprint()
    return PinnedKey(kid, key, f"{path.name} (PEM, kid {kid})")


def _jwks(path: Path, data: bytes) -> list[PinnedKey]:
    try:
        document = json.loads(data)
    except ValueError:
        raise ProviderError(f"{TABLE} keys: {path} is not JSON") from None
    entries = (
        document.get("keys") if isinstance(document, dict) and "keys" in document else [document]
    )
    if not isinstance(entries, list) or not entries:
        raise ProviderError(f"{TABLE} keys: {path} holds no keys")
    return [_jwk(path, entry, index) for index, entry in enumerate(entries)]


def _jwk(path: Path, entry: Any, index: int) -> PinnedKey:
    where = f"{TABLE} keys: {path} key {index}"
    if not isinstance(entry, dict):
        raise ProviderError(f"{where} is not a JWK object")
    private = [member for member in _PRIVATE_MEMBERS if member in entry]
    if private or entry.get("kty") == "oct":
        raise ProviderError(
            f"{where} is a private or symmetric key ({', '.join(private) or 'kty oct'})",
            hint="pin the token service's public keys only",
        )
    if entry.get("use", "sig") != "sig":
        raise ProviderError(f"{where} is for use {entry['use']!r}, not sig")
    alg = entry.get("alg")
    if alg is not None and alg not in ALGORITHMS:
        raise ProviderError(f"{where} is for alg {alg!r}, which is not accepted")
    try:
        key = JWKRegistry.import_key(dict(entry))
    except (JoseError, ValueError, TypeError) as error:
        raise ProviderError(f"{where} is not a usable JWK: {error}") from None
    kid = entry.get("kid")
    if kid is not None and (not isinstance(kid, str) or not kid):
        raise ProviderError(f"{where} has a kid that is not a non-empty string")
    kid = kid or key.thumbprint()
    return PinnedKey(kid, key, f"{path.name} (kid {kid})", alg)
