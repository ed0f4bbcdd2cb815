"""Test material for the opaque provider, never used by the gateway: a token issuer with its
own signing key (tokens of the assumed shape over any payload), and a test CA with a server
certificate for 127.0.0.1, for a token service double speaking real HTTPS.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
)
from cryptography.x509.oid import NameOID
from joserfc import jws
from joserfc.jwk import ECKey

from cmcp_cli.attestation.toolkit import key_usage
from cmcp_opaque.token import encode_nonce

ISSUER = "https://opaque-test.invalid/attest"
AUDIENCE = "cmcp-test"
MEASUREMENTS = {"platform": "sha256:" + "5e" * 32, "runtime": "sha384:" + "7a" * 48}


@dataclass(frozen=True)
class TokenIssuer:
    """A signing key and its kid, minting tokens of the assumed shape."""

    key: ECKey
    kid: str = "opaque-test-1"
    issuer: str = ISSUER

    @classmethod
    def create(cls, kid: str = "opaque-test-1") -> TokenIssuer:
        return cls(ECKey.generate_key("P-256", private=True), kid)

    def jwks(self) -> dict[str, Any]:
        public = self.key.as_dict(private=False)
        return {"keys": [{**public, "kid": self.kid, "use": "sig"}]}

    def payload(self, binding: bytes, *, now: int | None = None, **changes: Any) -> dict[str, Any]:
        """The claims of a good token for `binding`; `changes` replace them (None removes)."""
        issued = int(time.time()) if now is None else now
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "aud": AUDIENCE,
            "iat": issued,
            "nbf": issued,
            "exp": issued + 3600,
            "nonce": encode_nonce(binding, "base64url"),
            "status": "affirming",
            "measurements": dict(MEASUREMENTS),
        }
        claims.update(changes)
        return {key: value for key, value in claims.items() if value is not None}

    def sign(
        self,
        payload: Mapping[str, Any],
        *,
        alg: str = "ES256",
        header: Mapping[str, Any] | None = None,
    ) -> str:
        protected = {"alg": alg, "kid": self.kid, "typ": "JWT", **(header or {})}
        return jws.serialize_compact(
            protected, json.dumps(dict(payload)).encode(), self.key, algorithms=[alg]
        )

    def token(self, binding: bytes, **changes: Any) -> str:
        return self.sign(self.payload(binding, **changes))


@dataclass(frozen=True)
class TestCa:
    """A CA of its own and a server certificate for 127.0.0.1 and localhost."""

    __test__ = False  # not a pytest test class

    ca_pem: bytes
    cert_pem: bytes
    key_pem: bytes

    @classmethod
    def create(cls) -> TestCa:
        now = datetime.now(UTC)
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "cmcp-opaque test CA")])
        ca = (
            x509.CertificateBuilder()
            .subject_name(ca_name)
            .issuer_name(ca_name)
            .public_key(ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(hours=1))
            .not_valid_after(now + timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                key_usage(digital_signature=True, key_cert_sign=True, crl_sign=True),
                critical=True,
            )
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
            )
            .sign(ca_key, hashes.SHA256())
        )
        server_key = ec.generate_private_key(ec.SECP256R1())
        server = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
            .issuer_name(ca_name)
            .public_key(server_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(hours=1))
            .not_valid_after(now + timedelta(days=1))
            .add_extension(
                x509.SubjectAlternativeName(
                    [x509.IPAddress(IPv4Address("127.0.0.1")), x509.DNSName("localhost")]
                ),
                critical=False,
            )
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                critical=False,
            )
            .sign(ca_key, hashes.SHA256())
        )
        return cls(
            ca.public_bytes(Encoding.PEM),
            server.public_bytes(Encoding.PEM),
            server_key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()),
        )

    def write(self, folder: Path) -> tuple[Path, Path, Path]:
        """The CA, the server certificate and its key as PEM files in `folder`."""
        paths = (folder / "ca.pem", folder / "server.pem", folder / "server-key.pem")
        for path, data in zip(paths, (self.ca_pem, self.cert_pem, self.key_pem), strict=True):
            path.write_bytes(data)
        return paths
