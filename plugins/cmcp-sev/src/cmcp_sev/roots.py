"""AMD's SEV-SNP roots of trust, vendored with the plugin and pinned by fingerprint.

For each product the package ships AMD's published `cert_chain` (KDS
`https://kdsintf.amd.com/vcek/v1/<product>/cert_chain`): the ASK (the intermediate that
signs VCEKs) followed by the self-signed ARK. The SHA-256 of each certificate's DER is
pinned here; a vendored file whose certificates do not match these fingerprints is
refused, so editing the package data cannot add a root.

An auditor who passes `--trust-root` (TrustInputs.trust_roots) replaces the vendored ARKs
with the self-signed certificates of those PEM files: only what the auditor names is
then trusted, and reasons name such a root as the one given with --trust-root even when it
is byte for byte AMD's vendored ARK. Non-self-signed certificates in those files (an ASK,
an ASVK) are used as intermediates, never as roots.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from importlib.resources import files
from typing import Final

from cryptography import x509
from cryptography.utils import CryptographyDeprecationWarning

from cmcp_cli.attestation.toolkit import (
    certificate_fingerprint,
    common_name,
    pem_certificates,
    self_signed,
    trust_root_certificates,
)
from cmcp_sev.structures import Product

# SHA-256 of the DER of each vendored certificate.
PINNED_ARKS: Final = {
    Product.MILAN: "69d063b45344d26a2e94e1f4210de49ef555308287d4c174445c95639a540bcd",
    Product.GENOA: "4c6598d19c18719c5dfd4a7d335f674e5bfe1d8f800cea2cf270c10d103db2f1",
    Product.TURIN: "1f084161a44bb6d93778a904877d4819cafa5d05ef4193b2ded9dd9c73dd3f6a",
}
PINNED_ASKS: Final = {
    Product.MILAN: "67d303bd3905fd38db8b20e0793699870e7fa612eaad5dec358293fd8c0bac1b",
    Product.GENOA: "5464738c1546aed5f2cecf1dc98c5c960a92e8913238a61711bc90ec6e828521",
    Product.TURIN: "5b77ef5fe7a7a004fd9032668fba9d0fda22f88c4442069a479636a6ae3b3185",
}
VENDORED_FILES: Final = {product: f"{product.value.lower()}.pem" for product in Product}


fingerprint = certificate_fingerprint  # what each certificate is pinned by
load_pem = pem_certificates


class RootError(Exception):
    """The vendored roots or the auditor's trust roots are unusable."""


def load_der(blob: bytes) -> x509.Certificate:
    """A DER certificate. AMD issues VCEKs with serial number 0, which cryptography warns
    about; the serial plays no part in these checks, so that warning is silenced here."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CryptographyDeprecationWarning)
        return x509.load_der_x509_certificate(blob)


def vendored_bytes(product: Product) -> bytes:
    return files("cmcp_sev").joinpath("roots", VENDORED_FILES[product]).read_bytes()


@dataclass(frozen=True, slots=True)
class Anchor:
    cert: x509.Certificate
    fingerprint: str
    product: Product | None  # the product of an AMD ARK (pinned fingerprint); else None
    vendored: bool  # shipped with the plugin; False for every root given with --trust-root

    def describe(self) -> str:
        whose = "the vendored AMD root" if self.vendored else "the root given with --trust-root,"
        return f"{whose} {common_name(self.cert)} (sha256 {self.fingerprint})"


@dataclass(frozen=True, slots=True)
class TrustSet:
    anchors: tuple[Anchor, ...]
    intermediates: tuple[x509.Certificate, ...]  # ASKs (and ASVKs) that may issue a leaf
    source: str  # how the anchors were chosen, for reasons

    def describe(self) -> str:
        return ", ".join(f"{common_name(a.cert)} ({a.fingerprint[:16]}…)" for a in self.anchors)


@functools.cache
def vendored() -> TrustSet:
    """The vendored ASK and ARK of each product, each checked against its pinned fingerprint."""
    anchors: list[Anchor] = []
    asks: list[x509.Certificate] = []
    for product in Product:
        certs = load_pem(vendored_bytes(product))
        prints = [fingerprint(cert) for cert in certs]
        if prints != [PINNED_ASKS[product], PINNED_ARKS[product]]:
            raise RootError(
                f"the vendored {VENDORED_FILES[product]} is not AMD's {product.value} ASK and "
                "ARK with the pinned fingerprints: the cmcp-sev installation is damaged"
            )
        asks.append(certs[0])
        anchors.append(Anchor(certs[1], prints[1], product, vendored=True))
    return TrustSet(tuple(anchors), tuple(asks), "the vendored AMD roots")


def trust_set(trust_roots: Sequence[bytes]) -> TrustSet:
    """The roots to judge by: the vendored ones, or exactly the auditor's when given."""
    if not trust_roots:
        return vendored()
    anchors: list[Anchor] = []
    intermediates: list[x509.Certificate] = list(vendored().intermediates)
    pinned = {fp: product for product, fp in PINNED_ARKS.items()}
    try:
        certs = trust_root_certificates(trust_roots)
    except ValueError as error:
        raise RootError(str(error)) from None
    for cert in certs:
        if self_signed(cert):
            fp = fingerprint(cert)
            anchors.append(Anchor(cert, fp, pinned.get(fp), vendored=False))
        else:
            intermediates.append(cert)
    if not anchors:
        raise RootError(
            "the --trust-root files hold no self-signed certificate: give AMD's ARK "
            "(for example the product's cert_chain from AMD KDS, ASK then ARK)"
        )
    return TrustSet(tuple(anchors), tuple(intermediates), "the roots given with --trust-root")
