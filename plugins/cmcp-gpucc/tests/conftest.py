"""Fixtures shared by the cmcp-gpucc tests: the genuine NVIDIA vectors from ../shared
(skipping with the reason when they are absent)."""

from __future__ import annotations

from pathlib import Path

import pytest

VECTORS = Path(__file__).resolve().parents[4] / "shared" / "attestation-vectors" / "nvidia-gpucc"


@pytest.fixture(scope="session")
def vectors() -> Path:
    """The genuine NVIDIA GPU CC vectors (MANIFEST.md one level up states what each must do)."""
    if not VECTORS.is_dir():
        pytest.skip(f"the shared attestation vectors are not at {VECTORS}")
    return VECTORS
