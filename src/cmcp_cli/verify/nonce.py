"""The `nonce` check: the claim answers the auditor's own challenge.

An auditor who handed the gateway a challenge when the session opened (docs/gateway.md,
"Challenges") gives it again as `cmcp verify --expected-nonce`. The claim's
`trace.runtime.nonce` must be exactly it; the binding check then shows the hardware
evidence was made over it (binding version 2), so after the challenge was given. Without
the flag the check is skipped, naming the nonce the claim states, if any: a nonce the
auditor did not choose proves nothing to them about when the evidence was made.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from typing import Any

from cmcp_cli.attestation.api import Check

NAME = "nonce"


def nonce_check(runtime: Mapping[str, Any], expected: str | None, *, evidence: bool) -> Check:
    """Judge the well-formed record's `runtime` member against the expected nonce;
    `evidence`: whether the document carries evidence whose binding includes it (a
    GatewayClaim does, a standalone TRACE record does not)."""
    stated = runtime.get("nonce")
    if expected is None:
        said = (
            f"the claim states runtime.nonce {stated}"
            if isinstance(stated, str)
            else "the claim states no runtime.nonce (its session was opened without a challenge)"
        )
        return Check.skipped(NAME, f"no --expected-nonce; {said}")
    if not isinstance(stated, str):
        return Check.failed(
            NAME,
            "the claim states no runtime.nonce: its session was opened without a challenge, so "
            "nothing shows its evidence was made after yours was given",
        )
    # Compared as bytes in constant time; surrogatepass so that any str encodes.
    if hmac.compare_digest(
        stated.encode("utf-8", "surrogatepass"), expected.encode("utf-8", "surrogatepass")
    ):
        bound = (
            "the binding check judges the evidence over it"
            if evidence
            else "a standalone TRACE record carries no evidence over it: verify its claim for that"
        )
        return Check.passed(NAME, f"runtime.nonce is the expected challenge {expected}; {bound}")
    return Check.failed(
        NAME,
        f"runtime.nonce is {stated}, not the expected {expected}: the session was opened with "
        "another challenge",
    )
