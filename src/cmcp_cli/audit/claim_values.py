"""How a claim's members are compared with what a log determines, and shown in a report:
JSON equality, evidence by digest, and the devices a record keeps by digest."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from cmcp_cli.claim.canonical import CanonicalizationError, canonical_sha256
from cmcp_cli.claim.model import DEVICE_MEMBERS

SHOWN_CHARS = 120
ABSENT = object()  # a member the claim, or the log, does not have


def same(expected: object, stated: object) -> bool:
    """JSON equality: 1, 1.0 and true are three values."""
    if isinstance(expected, Mapping) and isinstance(stated, Mapping):
        return expected.keys() == stated.keys() and all(
            same(expected[k], stated[k]) for k in expected
        )
    if isinstance(expected, list | tuple) and isinstance(stated, list | tuple):
        return len(expected) == len(stated) and all(map(same, expected, stated))
    return type(expected) is type(stated) and expected == stated


def digest(evidence: object) -> str:
    if not isinstance(evidence, Mapping):
        return f"{show(evidence)}, not an object"
    try:
        return canonical_sha256(dict(evidence))
    except CanonicalizationError:
        return "without a canonical form"


def show(value: object) -> str:
    if value is ABSENT:
        return "nothing"
    try:
        text = orjson.dumps(value).decode()
    except TypeError:
        text = repr(value)
    return text if len(text) <= SHOWN_CHARS else text[: SHOWN_CHARS - 1] + "…"


def devices_mismatch(recorded: list[Mapping[str, Any]], stated: object, where: str) -> str | None:
    """Why the claim's `gateway.attestation.devices` is not the devices the log records
    (each member as recorded, the evidence by its digest), or None."""
    path = "gateway.attestation.devices"
    if not recorded:
        if stated is ABSENT:
            return None
        return f"{path}: the claim states {show(stated)}, the log records no device"
    if not isinstance(stated, list) or len(stated) != len(recorded):
        count = len(stated) if isinstance(stated, list) else show(stated)
        return (
            f"{path}: the claim states {count} device(s), the log gives {len(recorded)} ({where})"
        )
    for index, (record, item) in enumerate(zip(recorded, stated, strict=True)):
        at = f"{path}[{index}]"
        if not isinstance(item, Mapping) or set(item) != set(DEVICE_MEMBERS):
            return (
                f"{at}: the claim states {show(item)}, not an item of {', '.join(DEVICE_MEMBERS)}"
            )
        for name in DEVICE_MEMBERS:
            if name == "evidence":
                stated_digest = digest(item[name])
                if stated_digest != record["evidence_digest"]:
                    return (
                        f"{at}.evidence: the claim states evidence {stated_digest}, the log gives "
                        f"evidence {record['evidence_digest']} ({where}[{index}].evidence_digest)"
                    )
            elif not same(record[name], item[name]):
                return (
                    f"{at}.{name}: the claim states {show(item[name])}, the log gives "
                    f"{show(record[name])} ({where}[{index}].{name})"
                )
    return None
