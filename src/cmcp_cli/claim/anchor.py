"""What an anchored TRACE record commits to in a transparency log.

The anchored unit is the signed TRACE record (the claim's `trace`, signature included),
as TRACE Registry Anchor Format v1 §1 requires. Its leaf in the log's RFC 9162 tree is
`SHA-256(0x00 || anchor_leaf_bytes(record))`: sorted-key, ASCII-escaped JSON, which is
not the RFC 8785 form the signature is taken over (registry-anchor-v1 §0). The same bytes
are the leaf entry of an RFC 9942 COSE receipt, so one tree answers both protocols.

The record's `transparency` URI is inside the signed, anchored bytes, so it is fixed
before the record is signed: `<anchor url>/entries/<anchor id>`, where the anchor id is the
SHA-256 of the RFC 8785 form of the record without `signature` and `transparency`. The id
is known before submission, names exactly one record body, and anyone holding the record
recomputes it. The URI resolves only at a service that names its entries by that id (the
transparency double, or a registry serving `/entries/<anchor id>`); a service that assigns
its own entry ids (a SCRAPI service answering `303`/`201` with a `Location`, or `202` with
an `entryID`, such as scitt-ccf-ledger's `2.34`) keeps the entry at the URL it names,
which the receipt document states as `entry` (claim/receipt.py, docs/anchoring.md).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from typing import Any

from cmcp_cli.claim.canonical import canonical_bytes

SAFE_INTEGER = 2**53 - 1
ENTRIES_PATH = "/entries/"
# a service's id of one entry: one URL path segment, never `.` or `..`
ENTRY_ID = re.compile(r"(?!\.\.?\Z)[A-Za-z0-9._~-]{1,200}")


class AnchorProfileError(ValueError):
    """The record holds a value registry-anchor-v1 §1 excludes from anchored claims."""


def anchor_leaf_bytes(record: Mapping[str, Any]) -> bytes:
    """The leaf entry of `record`: registry-anchor-v1 §1 canonical claim bytes."""
    problem = _outside_profile(record)
    if problem is not None:
        raise AnchorProfileError(problem)
    text = json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return text.encode("ascii")


def anchor_id(record: Mapping[str, Any]) -> str:
    """The record's id in the log: hex SHA-256 of JCS(record less signature, transparency)."""
    body = {k: v for k, v in record.items() if k not in ("signature", "transparency")}
    return hashlib.sha256(canonical_bytes(body)).hexdigest()


def transparency_uri(anchor_url: str, record: Mapping[str, Any]) -> str:
    """The `transparency` member a record anchored at `anchor_url` carries."""
    return f"{anchor_url.rstrip('/')}{ENTRIES_PATH}{anchor_id(record)}"


def _outside_profile(value: object) -> str | None:
    stack: list[tuple[object, str]] = [(value, "$")]
    while stack:
        item, where = stack.pop()
        if item is None or isinstance(item, bool | str):
            continue
        if isinstance(item, int):
            if not -SAFE_INTEGER <= item <= SAFE_INTEGER:
                return f"the integer at {where} is outside ±(2^53 - 1)"
        elif isinstance(item, Mapping):
            stack.extend((v, f"{where}.{k}") for k, v in item.items())
        elif isinstance(item, list | tuple):
            stack.extend((v, f"{where}[{i}]") for i, v in enumerate(item))
        else:
            return f"the value at {where} is a {type(item).__name__}, not JSON without floats"
    return None
