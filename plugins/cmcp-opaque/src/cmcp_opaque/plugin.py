"""The provider declaration that `cmcp` finds through the entry point `cmcp = opaque`.

Nothing here imports the collector or the verifier: each is loaded only when used. The
provider is never in `attestation.provider: auto`; it is chosen by name, or by
`OPAQUE_ATTESTATION_URL`.
"""

from __future__ import annotations

from cmcp_cli.attestation.api import ProviderSpec
from cmcp_cli.attestation.hookspecs import provide

NAME = "opaque"
# An OPAQUE token is a third party's appraisal, not hardware evidence this verifier
# re-checks: the claim's TRACE runtime.platform stays software-only.
PLATFORM = "software-only"
EVIDENCE_TYPE = "opaque-token-v1"
# The keys of the auditor's `[opaque]` platform policy (cmcp_opaque.policy reads them).
PLATFORM_POLICY_KEYS = (
    "keys", "issuer", "audience", "algorithms", "claim_names", "nonce_encoding",
    "status_values", "measurements", "urls",
)  # fmt: skip


SPEC = ProviderSpec(
    name=NAME,
    platform=PLATFORM,
    evidence_types=(EVIDENCE_TYPE,),
    collector="cmcp_opaque.collector:OpaqueCollector",
    verifier="cmcp_opaque.verifier:OpaqueVerifier",
    description="an OPAQUE attestation token (JWS), recorded as its issuer's appraisal; "
    "explicit opt-in, never hardware-attested",
    platform_policy_keys=PLATFORM_POLICY_KEYS,
)

cmcp_attestation_providers = provide(SPEC)
