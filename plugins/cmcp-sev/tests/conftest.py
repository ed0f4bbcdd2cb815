"""Fixtures shared by the cmcp-sev tests: the genuine vectors from ../shared (skipping with
the reason when they are absent) and a synthetic AMD-shaped PKI per product."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from cmcp_cli.testing.vectors import shared_vectors
from cmcp_sev.structures import Product
from cmcp_sev.synthetic import AmdPki

REPOSITORY = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="session")
def vectors() -> Path:
    """The genuine SEV-SNP vectors (MANIFEST.md there states what each must do)."""
    return shared_vectors(REPOSITORY, "sev-snp")


@pytest.fixture(scope="session")
def milan_pki() -> AmdPki:
    return AmdPki.create(Product.MILAN)


@pytest.fixture(scope="session")
def turin_pki() -> AmdPki:
    return AmdPki.create(Product.TURIN)


@pytest.fixture(scope="session")
def vlek_pki() -> AmdPki:
    return AmdPki.create(Product.GENOA, vlek=True)


@pytest.fixture(scope="session")
def chip_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP384R1())
