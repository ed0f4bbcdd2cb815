"""The `sev-snp-report-v1` evidence JSON, what the collector writes and the verifier reads:

    {"report": base64 of the 1184-byte ATTESTATION_REPORT,
     "signing_key": "vcek" | "vlek",
     "vcek": base64 DER (with "signing_key": "vcek"; may be absent),
     "vlek": base64 DER (with "signing_key": "vlek"; may be absent),
     "cert_chain": [base64 DER, ...] (the host's ASK/ASVK and ARK; may be absent),
     "product": "Milan" | "Genoa" | "Turin" (may be absent)}

Base64 is standard and padded, canonically (one encoding per byte string, since the
evidence is hashed into the claim). Unknown members are refused. What decodes is kept
even when other members do not, so the verifier runs every check whose inputs are sound.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from typing import Any, Final

from cmcp_cli.attestation.toolkit import base64_list, canonical_base64, evidence_object
from cmcp_sev.structures import Product

MEMBERS: Final = frozenset({"report", "signing_key", "vcek", "vlek", "cert_chain", "product"})
SIGNING_KEYS: Final = ("vcek", "vlek")
MAX_CHAIN: Final = 4
MAX_BLOB: Final = 64 << 10


class ShapeError(ValueError):
    pass


@dataclass(slots=True)
class DecodedEvidence:
    report: bytes | None = None
    signing_key: str | None = None
    leaf: bytes | None = None  # the VCEK or VLEK, as `signing_key` says
    cert_chain: list[bytes] = field(default_factory=list)
    product: Product | None = None
    problems: list[str] = field(default_factory=list)


def blob(value: Any, member: str) -> bytes:
    try:
        return canonical_base64(value, member, limit=MAX_BLOB)
    except ValueError as error:
        raise ShapeError(str(error)) from None


def encode(data: bytes) -> str:
    return base64.b64encode(data).decode()


def decode(evidence: Any) -> DecodedEvidence:
    d = DecodedEvidence()
    evidence = evidence_object(evidence, MEMBERS, d.problems)
    if evidence is None:
        return d
    try:
        d.report = blob(evidence.get("report"), "report")
    except ShapeError as error:
        d.problems.append(str(error))
    signing_key = evidence.get("signing_key")
    if signing_key in SIGNING_KEYS:
        d.signing_key = signing_key
    else:
        d.problems.append(f"signing_key must be 'vcek' or 'vlek', not {signing_key!r}")
    for name in SIGNING_KEYS:
        if name not in evidence:
            continue
        if name != d.signing_key:
            d.problems.append(f"{name} is given but signing_key is {signing_key!r}")
            continue
        try:
            d.leaf = blob(evidence[name], name)
        except ShapeError as error:
            d.problems.append(str(error))
    if "cert_chain" in evidence:
        try:
            d.cert_chain = base64_list(
                evidence["cert_chain"], "cert_chain", limit=MAX_BLOB, most=MAX_CHAIN
            )
        except ValueError as error:
            d.problems.append(str(error))
    if "product" in evidence:
        product = evidence["product"]
        known = {p.value: p for p in Product}
        if isinstance(product, str) and product in known:
            d.product = known[product]
        else:
            d.problems.append(f"product must be one of {', '.join(known)}, not {product!r}")
    return d
