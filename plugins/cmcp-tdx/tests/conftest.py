"""Fixtures shared by the cmcp-tdx tests: the genuine vectors of ../shared, and a fake
configfs-tsm report directory that behaves as the kernel's does for one TDX guest."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from cmcp_tdx.testing import FakeTsm

VECTORS = Path(__file__).resolve().parents[4] / "shared" / "attestation-vectors" / "tdx"


def read_vector(name: str) -> bytes:
    path = VECTORS / name
    if not path.is_file():
        pytest.skip(f"the shared attestation vectors are not at {VECTORS}")
    return path.read_bytes()


@pytest.fixture
def vector() -> Callable[[str], bytes]:
    """Reads a file of ../shared/attestation-vectors/tdx (skips when they are absent)."""
    return read_vector


@pytest.fixture
def make_tsm(tmp_path: Path) -> Callable[..., FakeTsm]:
    def make(outblob: bytes, provider: str = "tdx_guest") -> FakeTsm:
        root = tmp_path / "tsm" / "report"
        root.mkdir(parents=True, exist_ok=True)
        return FakeTsm(root, outblob, provider)

    return make
