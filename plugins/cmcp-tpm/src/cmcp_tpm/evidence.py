"""Decoding `tpm2-quote-v1` evidence from its JSON form: every member present, typed and
canonically encoded (standard padded base64, lowercase hex), nothing unknown.

What decodes is kept even when other members do not, so the verifier can still run the
checks whose inputs are sound and name the rest as unusable.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

from cmcp_cli.attestation.toolkit import canonical_base64
from cmcp_tpm import pcr
from cmcp_tpm import structures as tpm

_MEMBERS = frozenset(
    {"attest", "signature", "ak_certificates", "ek_certificates", "ak_tie", "pcrs", "event_log"}
)
_KEY_MEMBERS = frozenset({"ak_public", "ak_hierarchy", "ak_public_pem"})
_EVENT_MEMBERS = frozenset({"pcr", "bank", "digest", "type", "data"})
_INDEX = re.compile(r"0|[1-9][0-9]?")
_HEX = re.compile(r"(?:[0-9a-f]{2})+")


class ShapeError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class Event:
    pcr: int
    bank: str
    digest: bytes
    type: str
    data: str


@dataclass(slots=True)
class DecodedEvidence:
    """The evidence members that decoded; None where one was missing or malformed."""

    attest: bytes | None = None
    signature: bytes | None = None
    ak_public: bytes | None = None
    ak_hierarchy: str | None = None
    ak_public_pem: bytes | None = None
    ak_certificates: list[bytes] | None = None
    ek_certificates: list[bytes] | None = None
    ak_tie: str | None = None
    pcrs: dict[str, dict[int, bytes]] | None = None
    event_log: list[Event] | None = None
    problems: list[str] = field(default_factory=list)


def _blob(value: Any, member: str, *, pem: bool = False) -> bytes:
    if pem:
        if not isinstance(value, str) or not value:
            raise ShapeError(f"{member} must be a non-empty string")
        return value.encode()
    try:
        return canonical_base64(value, member)
    except ValueError as error:
        raise ShapeError(str(error)) from None


def _digest(value: Any, bank: str, member: str) -> bytes:
    size = pcr.DIGEST_SIZES[bank]
    if not isinstance(value, str) or not _HEX.fullmatch(value) or len(value) != 2 * size:
        raise ShapeError(f"{member} must be {2 * size} lowercase hex digits ({bank})")
    return bytes.fromhex(value)


def _bank(value: Any, member: str) -> str:
    if not isinstance(value, str) or value not in pcr.DIGEST_SIZES:
        raise ShapeError(f"{member} names bank {value!r}, not one of sha1, sha256, sha384")
    return value


def _mapping(value: Any, member: str, keys: frozenset[str] | None = None) -> Mapping[str, Any]:
    if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
        raise ShapeError(f"{member} must be an object")
    if keys is not None and set(value) != keys:
        raise ShapeError(f"{member} must have exactly the members {', '.join(sorted(keys))}")
    return value


def _blob_list(value: Any, member: str) -> list[bytes]:
    if not isinstance(value, list):
        raise ShapeError(f"{member} must be a list of base64 DER certificates")
    return [_blob(item, f"{member}[{n}]") for n, item in enumerate(value)]


def _pcrs(value: Any) -> dict[str, dict[int, bytes]]:
    banks: dict[str, dict[int, bytes]] = {}
    for bank, indices in _mapping(value, "pcrs").items():
        values: dict[int, bytes] = {}
        banks[_bank(bank, "pcrs")] = values
        for index, digest in _mapping(indices, f"pcrs.{bank}").items():
            if not _INDEX.fullmatch(index) or int(index) >= pcr.PCR_COUNT:
                raise ShapeError(f"pcrs.{bank} has key {index!r}, not a PCR index 0..23")
            values[int(index)] = _digest(digest, bank, f"pcrs.{bank}.{index}")
    return banks


def _event_log(value: Any) -> list[Event]:
    if not isinstance(value, list):
        raise ShapeError("event_log must be a list of events")
    events = []
    for n, item in enumerate(value):
        event = _mapping(item, f"event_log[{n}]", _EVENT_MEMBERS)
        index, kind, data = event["pcr"], event["type"], event["data"]
        if type(index) is not int or not 0 <= index < pcr.PCR_COUNT:
            raise ShapeError(f"event_log[{n}].pcr must be a PCR index 0..23")
        if not isinstance(kind, str) or not kind or not isinstance(data, str):
            raise ShapeError(f"event_log[{n}].type and .data must be strings")
        bank = _bank(event["bank"], f"event_log[{n}].bank")
        events.append(
            Event(index, bank, _digest(event["digest"], bank, f"event_log[{n}]"), kind, data)
        )
    return events


def _ak_tie(value: Any) -> str:
    # Only what the verifier judges: whether AK certificates are given (free text would be
    # evidence that nothing checks).
    tie = _mapping(value, "ak_tie", frozenset({"status"}))
    return _choice(tie["status"], "ak_tie.status", ("certified", "untied"))


def _choice(value: Any, member: str, choices: Collection[str]) -> str:
    if not isinstance(value, str) or value not in choices:
        raise ShapeError(f"{member} must be one of {', '.join(choices)}")
    return value


_DECODERS: dict[str, Callable[[Any], Any]] = {
    "attest": lambda v: _blob(v, "attest"),
    "signature": lambda v: _blob(v, "signature"),
    "ak_public": lambda v: _blob(v, "ak_public"),
    "ak_hierarchy": lambda v: _choice(v, "ak_hierarchy", tpm.HIERARCHY_HANDLES),
    "ak_public_pem": lambda v: _blob(v, "ak_public_pem", pem=True),
    "ak_certificates": lambda v: _blob_list(v, "ak_certificates"),
    "ek_certificates": lambda v: _blob_list(v, "ek_certificates"),
    "ak_tie": _ak_tie,
    "pcrs": _pcrs,
    "event_log": _event_log,
}


def decode(evidence: Any) -> DecodedEvidence:
    decoded = DecodedEvidence()
    if not isinstance(evidence, Mapping):
        decoded.problems.append("the evidence is not a JSON object")
        return decoded
    present = {k for k in evidence if isinstance(k, str)}
    if unknown := sorted(map(str, set(evidence) - _MEMBERS - _KEY_MEMBERS)):
        decoded.problems.append(f"unknown members {', '.join(unknown)}")
    if "ak_public_pem" in present and present & {"ak_public", "ak_hierarchy"}:
        decoded.problems.append("give ak_public with ak_hierarchy, or ak_public_pem, not both")
    required = set(_MEMBERS) | (
        {"ak_public_pem"} if "ak_public_pem" in present else {"ak_public", "ak_hierarchy"}
    )
    if missing := sorted(required - present):
        decoded.problems.append(f"missing members {', '.join(missing)}")
    for member in sorted(present & required):
        try:
            setattr(decoded, member, _DECODERS[member](evidence[member]))
        except ShapeError as error:
            decoded.problems.append(str(error))
    return decoded
