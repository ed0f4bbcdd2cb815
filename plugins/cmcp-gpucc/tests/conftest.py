"""Fixtures shared by the cmcp-gpucc tests: the genuine NVIDIA vectors from ../shared
(skipping with the reason when they are absent), turned into `nvidia-gpu-cc-v1` evidence as
the collector writes it, a synthetic device PKI and RIM PKI for the positive cases, and the
NVML double (tests/nvml_double/pynvml.py) as `pynvml` under a collector."""

from __future__ import annotations

import base64
import importlib.util
import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType

import pytest
from cryptography import x509

from cmcp_cli.testing.vectors import shared_vectors
from cmcp_gpucc.collector import GpuCollector
from cmcp_gpucc.rim_signing import RimPki
from cmcp_gpucc.synthetic import DevicePki

REPOSITORY = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="session")
def vectors() -> Path:
    """The genuine NVIDIA GPU CC vectors (MANIFEST.md one level up states what each must do)."""
    return shared_vectors(REPOSITORY, "nvidia-gpucc")


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


DOUBLE = Path(__file__).resolve().parent / "nvml_double" / "pynvml.py"


@pytest.fixture
def nvml(monkeypatch: pytest.MonkeyPatch, vectors: Path, tmp_path: Path) -> Iterator[ModuleType]:
    """The double as `pynvml`, serving one Hopper GPU (driver 535.86.09) until a test sets
    NVML_DOUBLE_*; afterwards every nvmlInit must have been matched by nvmlShutdown."""
    spec = importlib.util.spec_from_file_location("pynvml", DOUBLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "pynvml", module)
    spec.loader.exec_module(module)
    monkeypatch.setenv("NVML_DOUBLE_VECTORS", str(vectors))
    monkeypatch.setenv("NVML_DOUBLE_NONCE_LOG", str(tmp_path / "nonces.log"))
    for name in ("NVML_DOUBLE_STATE", "NVML_DOUBLE_GPUS"):
        monkeypatch.delenv(name, raising=False)
    yield module
    assert module._initialized == 0, "the collector left NVML initialized"


@pytest.fixture
def collector(nvml: ModuleType) -> Iterator[GpuCollector]:
    made = GpuCollector()
    yield made
    made.close()
