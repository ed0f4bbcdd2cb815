"""A software TPM (swtpm) as a gateway's TPM, its attestation key enrolled as a privacy CA
would enroll it (credential activation against the EK, then an AK certificate in NV), so
that claims over it verify as fully hardware-attested with its two roots."""

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
    settings: dict[str, Any]
    roots: tuple[Path, ...]  # the AK privacy CA's root and the EK's local CA

    def trust_args(self) -> list[str | Path]:
        return [arg for root in self.roots for arg in ("--trust-root", root)]


@contextmanager
def enrolled_tpm(folder: Path) -> Iterator[EnrolledTpm]:
    """A running swtpm with an enrolled AK, its roots written into `folder`."""
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


@dataclass(frozen=True)
class AppraisalRig(EnrolledTpm):
    other_root: Path  # a CA that certified nothing of this TPM


@contextmanager
def appraisal_rig(folder: Path) -> Iterator[AppraisalRig]:
    """An enrolled swtpm, and the root of a CA that certified nothing of it."""
    with enrolled_tpm(folder) as enrolled:
        other = folder / "other.pem"
        other.write_bytes(TestCa.create("another CA").root_pem)
        yield AppraisalRig(enrolled.tpm, enrolled.settings, enrolled.roots, other)
