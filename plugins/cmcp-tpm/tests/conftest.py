"""Fixtures shared by the cmcp-tpm tests: a real swtpm, a test CA for AK certificates, and
software AK keys with a test PKI for the verifier's synthetic quotes.

The software TPM is manufactured by swtpm_setup with its own local CA in a temporary
directory; tests that need swtpm skip (with the reason) on a machine without it.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from cmcp_tpm.synthetic import Pki, make_pki
from cmcp_tpm.testing import SoftwareTpm, TestCa


def _require_swtpm() -> None:
    missing = [tool for tool in ("swtpm", "swtpm_setup", "swtpm_localca") if not shutil.which(tool)]
    if missing:
        reason = f"{', '.join(missing)} not installed (Debian: apt-get install swtpm swtpm-tools)"
        if os.environ.get("CI"):  # CI installs them (scripts/dev.sh): a skip there hides a gap
            pytest.fail(reason)
        pytest.skip(reason)


@pytest.fixture(scope="module")
def software_tpm() -> Iterator[SoftwareTpm]:
    """One manufactured swtpm per test module; tests use their own AK handles in it."""
    _require_swtpm()
    with SoftwareTpm() as tpm:
        yield tpm


@pytest.fixture
def fresh_software_tpm() -> Iterator[SoftwareTpm]:
    """A swtpm of the test's own, for tests that write NV or depend on an empty TPM."""
    _require_swtpm()
    with SoftwareTpm() as tpm:
        yield tpm


@pytest.fixture(scope="session")
def test_ca() -> TestCa:
    return TestCa.create()


@pytest.fixture(scope="module")
def pki() -> Pki:
    return make_pki()


@pytest.fixture(scope="module")
def ecc_ak() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture(scope="module")
def rsa_ak() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)
