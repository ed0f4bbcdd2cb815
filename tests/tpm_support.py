"""A software TPM (swtpm) enrolled as a privacy CA would enroll a real one, for gateway
tests: the AK created and persisted as a first gateway start does, certified by a test CA
after credential activation against the EK, so its quotes verify as hardware-attested
under the two roots an auditor would pin (the AK's CA and the EK's maker)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cmcp_cli.attestation.api import GatewayFacts
from cmcp_tpm.collector import TpmCollector
from cmcp_tpm.testing import SoftwareTpm, TestCa, enroll_attestation_key

AK_HANDLE = 0x81010002


@dataclass(frozen=True)
class EnrolledTpm:
    tpm: SoftwareTpm
    settings: dict[str, Any]  # the tpm provider's settings (`attestation.providers.tpm`)
    roots: tuple[Path, ...]  # the AK privacy CA's root and the EK's local CA

    def trust_args(self) -> list[str | Path]:
        return [arg for root in self.roots for arg in ("--trust-root", root)]


@contextmanager
def enrolled_tpm(folder: Path) -> Iterator[EnrolledTpm]:
    """A fresh swtpm with an enrolled AK until the block ends; its roots written to `folder`."""
    with SoftwareTpm() as tpm:
        settings = {"tcti": tpm.tcti, "ak_handle": AK_HANDLE}
        collector = TpmCollector()  # creates and persists the AK, as a first gateway start does
        bundle_hash = "sha256:" + "00" * 32
        collector.prepare(GatewayFacts(bundle_hash, bundle_hash, bundle_hash), settings)
        collector.close()
        ca = TestCa.create()
        enroll_attestation_key(tpm.tcti, AK_HANDLE, ca)
        ak_root, ek_roots = folder / "ak-ca.pem", folder / "ek-ca.pem"
        ak_root.write_bytes(ca.root_pem)
        ek_roots.write_bytes(tpm.ek_ca_pem)
        yield EnrolledTpm(tpm, settings, (ak_root, ek_roots))
