"""A verifier's challenge: the nonce an auditor or agent hands the gateway for a session.

It arrives as the `Cmcp-Challenge` request header, or as `_meta["com.agentrust-io.cmcp/
challenge"]` of the request that opens the session (docs/gateway.md, "Challenges"); it
enters the session's binding (`attestation.binding`, version 2) and is echoed in the
claim's `trace.runtime.nonce`, which `cmcp verify --expected-nonce` compares.

The form is TRACE's: base64url without padding. Its length is bounded both ways: at least
16 bytes, so a guessed or reused value is not mistaken for freshness, and at most 64.
"""

from __future__ import annotations

import re

CHALLENGE_HEADER = "cmcp-challenge"  # HTTP header names are case-insensitive
CHALLENGE_META_KEY = "com.agentrust-io.cmcp/challenge"
MIN_CHALLENGE_BYTES = 16
MAX_CHALLENGE_BYTES = 64
_BASE64URL = re.compile(r"[A-Za-z0-9_-]+")


def challenge_problem(value: object) -> str | None:
    """Why `value` is not a challenge, or None when it is one."""
    if not isinstance(value, str):
        return f"a challenge is a string, not {type(value).__name__}"
    if not _BASE64URL.fullmatch(value):
        return "a challenge is base64url without padding (A-Z a-z 0-9 - _)"
    if len(value) % 4 == 1:
        return "a challenge's length is not that of any base64url encoding"
    size = len(value) * 3 // 4
    if not MIN_CHALLENGE_BYTES <= size <= MAX_CHALLENGE_BYTES:
        return (
            f"a challenge encodes {size} bytes; it must encode {MIN_CHALLENGE_BYTES} to "
            f"{MAX_CHALLENGE_BYTES} random bytes (e.g. `openssl rand 32 | basenc --base64url "
            "| tr -d =`)"
        )
    return None
