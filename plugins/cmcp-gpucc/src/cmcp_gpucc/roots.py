"""NVIDIA's roots of trust for GPU confidential computing, vendored and pinned by fingerprint.

Two roots, each with one role: the NVIDIA Device Identity CA, which every GPU's device
certificate chain ends at, and the NVIDIA CoRIM signing Root CA, which every RIM signer's
chain ends at. The SHA-256 of each DER is pinned here; a vendored file that does not match
is refused, so editing the package data cannot add a root.

An auditor who names roots replaces both: the self-signed certificates of those PEM files
are then the only anchors, for the device chain and the RIM chains alike, and reasons name
such a root by where it was given. `cmcp verify` takes them from the `[gpu-cc] trust_roots`
of its platform policy (its `--trust-root` roots are the CPU platform's); `cmcp measure
gpu-cc` and a direct caller of the verifier (TrustInputs.trust_roots) from `--trust-root`.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from importlib.resources import files
from typing import Final

from cryptography import x509

from cmcp_cli.attestation.toolkit import (
    certificate_fingerprint,
    common_name,
    pem_certificates,
    self_signed,
    trust_root_certificates,
)

DEVICE_ROOT_FILE: Final = "nvidia-device-identity-ca.pem"
RIM_ROOT_FILE: Final = "nvidia-corim-signing-root-ca.pem"
# SHA-256 of the DER of each vendored root (attestation-vectors MANIFEST.md lists the same).
PINNED: Final = {
    DEVICE_ROOT_FILE: "102bf659d5419614c9d8e6aecebc80454eb26b1df6a769ac720b9a690b167b48",
    RIM_ROOT_FILE: "12977b5115acb0381179279fffeb5a8c4d264971ebb32298023a465fa41df5d1",
}


fingerprint = certificate_fingerprint  # what each root is pinned by


class RootError(Exception):
    """The vendored roots or the auditor's trust roots are unusable."""


@dataclass(frozen=True, slots=True)
class Anchor:
    cert: x509.Certificate
    fingerprint: str
    given_with: str | None  # where the auditor gave it ("--trust-root"); None: vendored

    def describe(self) -> str:
        whose = (
            "the vendored NVIDIA root"
            if self.given_with is None
            else f"the root given with {self.given_with},"
        )
        return f"{whose} {common_name(self.cert)} (sha256 {self.fingerprint})"


@dataclass(frozen=True, slots=True)
class TrustSet:
    device: tuple[Anchor, ...]  # where a GPU's device chain may end
    rim: tuple[Anchor, ...]  # where a RIM signer's chain may end
    source: str  # how the anchors were chosen, for reasons

    def describe(self, anchors: tuple[Anchor, ...]) -> str:
        listed = ", ".join(f"{common_name(a.cert)} ({a.fingerprint[:16]}…)" for a in anchors)
        return f"{self.source}: {listed}"


def _vendored_anchor(name: str) -> Anchor:
    certs = pem_certificates(files("cmcp_gpucc").joinpath("roots", name).read_bytes())
    if len(certs) != 1 or fingerprint(certs[0]) != PINNED[name]:
        raise RootError(
            f"the vendored {name} is not NVIDIA's root with the pinned fingerprint "
            f"{PINNED[name]}: the cmcp-gpucc installation is damaged"
        )
    return Anchor(certs[0], PINNED[name], given_with=None)


@functools.cache
def vendored() -> TrustSet:
    return TrustSet(
        device=(_vendored_anchor(DEVICE_ROOT_FILE),),
        rim=(_vendored_anchor(RIM_ROOT_FILE),),
        source="the vendored NVIDIA roots",
    )


def trust_set(trust_roots: Sequence[bytes], given_with: str = "--trust-root") -> TrustSet:
    """The roots to judge by: the vendored ones, or exactly the auditor's when given (with
    `given_with`, which reasons name)."""
    if not trust_roots:
        return vendored()
    try:
        certs = trust_root_certificates(trust_roots)
    except ValueError as error:
        raise RootError(str(error)) from None
    anchors = [Anchor(cert, fingerprint(cert), given_with) for cert in certs if self_signed(cert)]
    if not anchors:
        raise RootError(
            f"the {given_with} files hold no self-signed certificate: give NVIDIA's Device "
            "Identity CA and CoRIM signing Root CA (or the test roots that signed the evidence)"
        )
    given = tuple(anchors)
    return TrustSet(device=given, rim=given, source=f"the roots given with {given_with}")
