"""Software-signed TPM quotes for tests: evidence exactly as the collector builds it, but
signed by `cryptography` keys standing in for the AK, with a small PKI of AK and EK CAs
under one root. Every verifier check can then be exercised one failure at a time, with no
TPM and no libtss2.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from cmcp_cli.attestation.api import TrustInputs
from cmcp_tpm import pcr
from cmcp_tpm import structures as tpm

AT = datetime(2026, 7, 27, 12, tzinfo=UTC)
BINDING = hashlib.sha256(b"session binding").digest()
BUNDLE_HASH = "sha256:" + hashlib.sha256(b"policy bundle").hexdigest()
QUOTED = (0, 1, 2, 3, 4, 5, 6, 7, 23)
PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def x509_name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def certificate(
    subject: str,
    public_key: ec.EllipticCurvePublicKey | rsa.RSAPublicKey,
    issuer: tuple[str, PrivateKey] | None,
    signing_key: PrivateKey,
    *,
    ca: bool,
    not_after: datetime = datetime(2027, 1, 1, tzinfo=UTC),
) -> x509.Certificate:
    issuer_name = x509_name(issuer[0] if issuer else subject)
    return (
        x509.CertificateBuilder()
        .subject_name(x509_name(subject))
        .issuer_name(issuer_name)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(datetime(2026, 1, 1, tzinfo=UTC))
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .sign(signing_key, hashes.SHA256())
    )


@dataclass(frozen=True)
class Pki:
    """A root pinned by the auditor, an AK-issuing CA and an EK-issuing CA under it, and
    an RSA EK with its certificate."""

    root: x509.Certificate
    ak_ca_key: ec.EllipticCurvePrivateKey
    ak_ca: x509.Certificate
    ek_certificates: tuple[x509.Certificate, x509.Certificate]

    @property
    def root_pem(self) -> bytes:
        return self.root.public_bytes(Encoding.PEM)

    def ak_certificate(
        self, key: ec.EllipticCurvePublicKey | rsa.RSAPublicKey, **kwargs: Any
    ) -> x509.Certificate:
        return certificate("AK", key, ("AK CA", self.ak_ca_key), self.ak_ca_key, ca=False, **kwargs)


def sign_quote(key: PrivateKey, scheme: int, hash_alg: int, data: bytes) -> bytes:
    algorithm = {
        tpm.ALG_SHA1: hashes.SHA1(),  # noqa: S303 - to show that the verifier refuses it
        tpm.ALG_SHA256: hashes.SHA256(),
        tpm.ALG_SHA384: hashes.SHA384(),
    }[hash_alg]
    if isinstance(key, ec.EllipticCurvePrivateKey):
        der = key.sign(data, ec.ECDSA(algorithm))
        return tpm.build_signature(scheme, hash_alg, der, ecc_size=(key.curve.key_size + 7) // 8)
    if scheme == tpm.ALG_RSAPSS:
        pss = padding.PSS(padding.MGF1(algorithm), padding.PSS.DIGEST_LENGTH)
        return tpm.build_signature(scheme, hash_alg, key.sign(data, pss, algorithm))
    return tpm.build_signature(scheme, hash_alg, key.sign(data, padding.PKCS1v15(), algorithm))


def make_evidence(
    ak: PrivateKey,
    pki: Pki,
    *,
    binding: bytes = BINDING,
    attributes: int = tpm.AK_ATTRIBUTES,
    ak_scheme: int | None = None,
    signature_scheme: int | None = None,
    hash_alg: int = tpm.ALG_SHA256,
    signer_hierarchy: str = "endorsement",
    magic: int = tpm.TPM_GENERATED_VALUE,
    attest_type: int = tpm.TPM_ST_ATTEST_QUOTE,
    certified: bool = True,
) -> dict[str, Any]:
    """Evidence as the collector builds it: the gateway reset PCR 23 and extended it with
    the bundle hash, then quoted sha256:0-7,23 with the AK for the binding."""
    default_scheme = tpm.ALG_ECDSA if isinstance(ak, ec.EllipticCurvePrivateKey) else tpm.ALG_RSASSA
    public = tpm.build_public(
        ak.public_key(), attributes=attributes,
        scheme=default_scheme if ak_scheme is None else ak_scheme,
    )  # fmt: skip
    name = tpm.object_name(tpm.ALG_SHA256, public)
    signer = tpm.qualified_name(tpm.ALG_SHA256, tpm.HIERARCHY_HANDLES[signer_hierarchy], name)
    bundle = bytes.fromhex(BUNDLE_HASH.removeprefix("sha256:"))
    values = {i: hashlib.sha256(b"firmware %d" % i).digest() for i in QUOTED[:-1]}
    values[23] = pcr.replay("sha256", [bundle])
    digest = pcr.composite("sha256", [values[i] for i in QUOTED])
    attest = tpm.build_attest(
        signer, binding, (("sha256", QUOTED),), digest, magic=magic, attest_type=attest_type
    )
    own_scheme = default_scheme if ak_scheme in (None, tpm.ALG_NULL) else ak_scheme
    scheme = own_scheme if signature_scheme is None else signature_scheme
    chain = [pki.ak_certificate(ak.public_key()), pki.ak_ca] if certified else []
    return {
        "attest": b64(attest),
        "signature": b64(sign_quote(ak, scheme, hash_alg, attest)),
        "ak_public": b64(public),
        "ak_hierarchy": "endorsement",
        "ak_certificates": [b64(c.public_bytes(Encoding.DER)) for c in chain],
        "ek_certificates": [b64(c.public_bytes(Encoding.DER)) for c in pki.ek_certificates],
        "ak_tie": {"status": "certified" if certified else "untied"},
        "pcrs": {"sha256": {str(i): v.hex() for i, v in values.items()}},
        "event_log": [
            {
                "pcr": 23,
                "bank": "sha256",
                "digest": bundle.hex(),
                "type": "cmcp-policy-bundle",
                "data": BUNDLE_HASH,
            },
        ],
    }


def trust(pki: Pki | None, **changes: Any) -> TrustInputs:
    roots = (pki.root_pem,) if pki else ()
    fields: dict[str, Any] = {"binding": BINDING, "at": AT, "trust_roots": roots,
                              "policy_hash": BUNDLE_HASH} | changes  # fmt: skip
    return TrustInputs(**fields)


def make_pki() -> Pki:
    """A fresh PKI: an ECDSA P-384 root, an AK CA and an EK CA under it, an RSA EK."""
    root_key = ec.generate_private_key(ec.SECP384R1())
    root = certificate("Test Root", root_key.public_key(), None, root_key, ca=True)
    ak_ca_key = ec.generate_private_key(ec.SECP256R1())
    ak_ca = certificate("AK CA", ak_ca_key.public_key(), ("Test Root", root_key), root_key, ca=True)
    ek_ca_key = ec.generate_private_key(ec.SECP256R1())
    ek_ca = certificate("EK CA", ek_ca_key.public_key(), ("Test Root", root_key), root_key, ca=True)
    ek_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ek = certificate("EK", ek_key.public_key(), ("EK CA", ek_ca_key), ek_ca_key, ca=False)
    return Pki(root, ak_ca_key, ak_ca, (ek, ek_ca))
