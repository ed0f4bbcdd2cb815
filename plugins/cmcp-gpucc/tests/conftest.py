"""Fixtures shared by the cmcp-gpucc tests: the genuine NVIDIA vectors from ../shared
(skipping with the reason when they are absent), turned into `nvidia-gpu-cc-v1` evidence as
the collector writes it, and a synthetic device PKI and RIM PKI for the positive cases."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography import x509

from cmcp_gpucc.rim_signing import RimPki
from cmcp_gpucc.synthetic import DevicePki

VECTORS = Path(__file__).resolve().parents[4] / "shared" / "attestation-vectors" / "nvidia-gpucc"


@pytest.fixture(scope="session")
def vectors() -> Path:
    """The genuine NVIDIA GPU CC vectors (MANIFEST.md one level up states what each must do)."""
    if not VECTORS.is_dir():
        pytest.skip(f"the shared attestation vectors are not at {VECTORS}")
    return VECTORS


Genuine = tuple[bytes, tuple[x509.Certificate, ...]]  # a report and its device chain


# Each genuine report, and the chain NVAT (or nvlgv) pairs it with.
PAIRS = {
    "nvlgv-hopper": ("hopper-attestation-report.hex", "hopper-device-cert-chain.pem"),
    "blackwell": ("nvat-blackwell-attestation-report.hex", "nvat-blackwell-cert-chain.pem"),
    "hopper-535": (
        "nvat-hopper-535.86.09-attestation-report.hex",
        "nvat-hopper-535.86.09-cert-chain.pem",
    ),
    "hopper-570": (
        "nvat-hopper-570.124.03-attestation-report.hex",
        "nvat-hopper-570.124.03-cert-chain.pem",
    ),
    "invalid-signature": (
        "nvat-hopper-invalid-signature-report.hex",
        "nvat-hopper-570.124.03-cert-chain.pem",
    ),
}


def _load(vectors: Path, name: str) -> Genuine:
    if name == "hopper-590":
        (entry,) = json.loads((vectors / "nvat-hopper-590.12-evidence.json").read_text())
        chain = x509.load_pem_x509_certificates(base64.b64decode(entry["certificate"]))
        return base64.b64decode(entry["evidence"]), tuple(chain)
    report, chain_file = PAIRS[name]
    raw = bytes.fromhex((vectors / report).read_text())
    return raw, tuple(x509.load_pem_x509_certificates((vectors / chain_file).read_bytes()))


@pytest.fixture(scope="session")
def genuine(vectors: Path) -> Callable[[str], Genuine]:
    """A genuine report and its chain by name: a key of PAIRS, or "hopper-590" (NVAT's JSON)."""
    return lambda name: _load(vectors, name)


@pytest.fixture(scope="session")
def device_pki() -> DevicePki:
    return DevicePki.create()


@pytest.fixture(scope="session")
def rim_pki() -> RimPki:
    return RimPki.create()
