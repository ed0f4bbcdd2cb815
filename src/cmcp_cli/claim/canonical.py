"""RFC 8785 (JCS) canonical bytes and the digest strings used in every contract.

Everything cMCP hashes or signs goes through `canonical_bytes`, so there is one
canonicalisation in the code base and it is the published one (the `rfc8785` package).
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

import rfc8785

SHA256_PREFIX = "sha256:"
_SHA256_TAGGED = re.compile(r"sha256:[0-9a-f]{64}")


class CanonicalizationError(ValueError):
    """The value has no RFC 8785 form (NaN, an integer beyond IEEE 754, a lone surrogate...)."""


def canonical_bytes(value: Any) -> bytes:
    """The RFC 8785 serialisation of a JSON-compatible value."""
    try:
        return rfc8785.dumps(value)
    except rfc8785.CanonicalizationError as exc:
        raise CanonicalizationError(str(exc)) from exc


def sha256_tagged(data: bytes) -> str:
    """`sha256:<lowercase hex>` of raw bytes."""
    return SHA256_PREFIX + hashlib.sha256(data).hexdigest()


def canonical_sha256(value: Any) -> str:
    """`sha256:<hex>` of the JCS bytes of a JSON value."""
    return sha256_tagged(canonical_bytes(value))


def is_sha256_tagged(text: str) -> bool:
    """Whether `text` is exactly `sha256:` followed by 64 lowercase hex digits."""
    return _SHA256_TAGGED.fullmatch(text) is not None
