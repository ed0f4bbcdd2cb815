"""The Intel SGX Root CA shipped in the package is the pinned one, byte for byte the copy
in the shared vectors."""

from __future__ import annotations

from collections.abc import Callable
from importlib import resources

from cmcp_tdx import pki


def test_vendored_root_is_the_shared_copy_and_pinned(vector: Callable[[str], bytes]) -> None:
    shipped = resources.files("cmcp_tdx").joinpath("data", pki.ROOT_RESOURCE).read_bytes()
    assert shipped == vector("intel-sgx-root-ca.pem")
    root = pki.vendored_root()
    assert pki.fingerprint(root) == pki.INTEL_ROOT_SHA256
    assert pki.common_name(root) == "Intel SGX Root CA"
    assert root.not_valid_after_utc.year == 2049


def test_trust_roots_replace_the_vendored_root(vector: Callable[[str], bytes]) -> None:
    roots, source = pki.pinned_roots((vector("intel-sgx-root-ca.pem"),))
    assert source == "the roots given with --trust-root" and len(roots) == 1
    roots, source = pki.pinned_roots(())
    assert source == "the vendored Intel SGX Root CA"
