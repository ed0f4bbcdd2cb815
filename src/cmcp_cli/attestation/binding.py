"""The binding of the claim-signing key to the platform (DESIGN §6).

binding = SHA-256(JCS({"v": "cmcp-binding-1", "key": <RFC 7638 thumbprint of the key>,
                       "policy": <bundle hash>, "catalog": <catalog hash>,
                       "gateway": <gateway software digest>}))

A session opened with a verifier's challenge binds it as well, under the next version of
the preimage, so evidence over it was produced after the challenge was given:

binding = SHA-256(JCS({"v": "cmcp-binding-2", ...the members above..., "nonce": <challenge>}))

The 32 bytes go into the hardware evidence (SEV-SNP and TDX report_data, followed by 32
zero bytes; TPM qualifyingData; the NVIDIA SPDM nonce). A verifier recomputes them from
the claim (the challenge is its `trace.runtime.nonce`) and compares: equal bytes prove the
key was created inside the attested TEE under this policy and catalog (and after the
challenge). A claim without a nonce is bound by version 1, whose preimage has no `nonce`
member: a session opened without a challenge states exactly what version 1 binds.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

from cmcp_cli.claim.canonical import canonical_bytes

BINDING_VERSION = "cmcp-binding-1"
CHALLENGE_BINDING_VERSION = "cmcp-binding-2"


def compute_binding(
    *,
    key_thumbprint: str,
    bundle_hash: str,
    catalog_hash: str,
    gateway_digest: str,
    nonce: str | None = None,
) -> bytes:
    preimage = {
        "v": BINDING_VERSION if nonce is None else CHALLENGE_BINDING_VERSION,
        "key": key_thumbprint,
        "policy": bundle_hash,
        "catalog": catalog_hash,
        "gateway": gateway_digest,
    }
    if nonce is not None:
        preimage["nonce"] = nonce
    return hashlib.sha256(canonical_bytes(preimage)).digest()


def binding_from_claim(claim: Mapping[str, Any], key_thumbprint: str) -> bytes:
    """The binding a claim implies; `KeyError`/`TypeError` when the claim lacks a member."""
    trace, gateway = claim["trace"], claim["gateway"]
    nonce = trace["runtime"].get("nonce")
    return compute_binding(
        key_thumbprint=key_thumbprint,
        bundle_hash=str(trace["policy"]["bundle_hash"]),
        catalog_hash=str(gateway["catalog"]["hash"]),
        gateway_digest=str(trace["build_provenance"]["digest"]),
        nonce=None if nonce is None else str(nonce),
    )
