"""The binding of the claim-signing key to the platform (DESIGN §6).

binding = SHA-256(JCS({"v": "cmcp-binding-1", "key": <RFC 7638 thumbprint of the key>,
                       "policy": <bundle hash>, "catalog": <catalog hash>,
                       "gateway": <gateway software digest>}))

The 32 bytes go into the hardware evidence (SEV-SNP and TDX report_data, followed by 32
zero bytes; TPM qualifyingData; the NVIDIA SPDM nonce). A verifier recomputes them from
the claim and compares: equal bytes prove the key was created inside the attested TEE
under this policy and catalog.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

from cmcp_cli.claim.canonical import canonical_bytes

BINDING_VERSION = "cmcp-binding-1"


def compute_binding(
    *, key_thumbprint: str, bundle_hash: str, catalog_hash: str, gateway_digest: str
) -> bytes:
    preimage = {
        "v": BINDING_VERSION,
        "key": key_thumbprint,
        "policy": bundle_hash,
        "catalog": catalog_hash,
        "gateway": gateway_digest,
    }
    return hashlib.sha256(canonical_bytes(preimage)).digest()


def binding_from_claim(claim: Mapping[str, Any], key_thumbprint: str) -> bytes:
    """The binding a claim implies; `KeyError`/`TypeError` when the claim lacks a member."""
    trace, gateway = claim["trace"], claim["gateway"]
    return compute_binding(
        key_thumbprint=key_thumbprint,
        bundle_hash=str(trace["policy"]["bundle_hash"]),
        catalog_hash=str(gateway["catalog"]["hash"]),
        gateway_digest=str(trace["build_provenance"]["digest"]),
    )
