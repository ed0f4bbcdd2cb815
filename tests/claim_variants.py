"""The changes of the tamper suite (test_claim_tamper.py): every leaf of a claim, each
changed in a way that keeps its type, the check that catches each, and re-signing."""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from cmcp_cli.claim.keys import ClaimKey
from cmcp_cli.claim.model import sign_claim
from cmcp_cli.claim.signing import signed
from tests.support import claim_binding

ADDED = "added_member"  # the name of a member a change adds to an object
Path_ = tuple[str | int, ...]

# Which check rejects an insider's change of each leaf (the longest matching prefix
# wins). A leaf of a claim that no entry names fails the suite: a new claim member
# needs a line here, and so a check that catches it.
CAUGHT_BY: dict[str, str] = {
    ADDED: "log: session",  # a member beside cmcp_version, trace and gateway
    "cmcp_version": "format",
    "trace": "log: session",  # members the gateway never writes
    "trace.eat_profile": "format",
    "trace.iat": "log: issuance",
    "trace.subject": "log: session",
    "trace.model": "log: session",
    "trace.runtime": "log: issuer",
    "trace.policy": "log: session",
    "trace.data_class": "log: data class",
    "trace.tool_transcript.hash": "log: chain",
    "trace.tool_transcript.call_count": "log: counters",
    "trace.build_provenance": "log: issuer",
    "trace.appraisal": "log: issuer",
    "trace.cnf": "log: issuer",
    "trace.cnf.jwk.kty": "format",
    "trace.cnf.jwk.crv": "format",
    "trace.cnf.jwk.x": "signature",  # the claim then fails to verify with the key it names
    "trace.signature": "signature",  # the record's own signature
    "gateway": "log: session",
    "gateway.session_id": "audit log",  # the log holds no such session
    "gateway.gateway_version": "log: issuer",
    "gateway.sequence_number": "log: issuance",
    "gateway.previous_claim": "log: issuance",
    "gateway.audit_chain": "log: chain",
    "gateway.call_summary": "log: counters",
    "gateway.catalog": "log: session",
    "gateway.catalog.pinning": "log: session",
    "gateway.catalog.drift_detected": "log: drift",
    "gateway.attestation": "log: issuer",
    "gateway.attestation.binding": "binding",
    # each device item, its evidence by digest: the log's record of the devices
    "gateway.attestation.devices": "log: issuer",
    # the newest evidence's pin, the validity and the stale entries: the log's
    "gateway.attestation.measurement_pin": "log: issuer",
    "gateway.attestation.validity_seconds": "log: issuer",
    "gateway.attestation.stale_warnings": "log: issuer",
}
# Leaves with a fixed set of values: any other text is malformed, so a flipped character
# fails `format`; each other valid value is tried as well, and caught by `CAUGHT_BY`.
ENUMERATED: dict[str, tuple[str, ...]] = {
    "cmcp_version": (),
    "trace.eat_profile": (),
    "trace.policy.enforcement_mode": ("enforce", "advisory", "silent"),
    "trace.appraisal.status": ("affirming", "warning", "contraindicated", "none"),
    "gateway.catalog.pinning": ("explicit", "first-contact"),
}


def addition_caught_by(path: str) -> str:
    """`by_kind` names only message kinds, each with exactly its counts, and a device item
    has exactly its members: anything added there fails `format`."""
    if path.startswith("gateway.call_summary.by_kind."):
        return "format"
    if re.fullmatch(rf"gateway\.attestation\.devices\.\d+\.{ADDED}", path):
        return "format"
    return caught_by(path)


def removal_caught_by(path: str) -> str:
    """Removing a member the claim's shape requires fails `format`; only the provider's
    evidence members (the platform's and each device's), the devices list as a whole,
    `by_kind` and its kinds may be absent from a well-formed claim, and the members only
    the gateway's own appraisal states, which its form requires (`appraisal`)."""
    if path in ("trace.appraisal.policy_ref", "trace.appraisal.timestamp"):
        return "appraisal"
    by_kind = "gateway.call_summary.by_kind"
    devices = "gateway.attestation.devices"
    device_evidence = re.fullmatch(rf"{re.escape(devices)}\.\d+\.evidence\..+", path)
    optional = (
        path.startswith("gateway.attestation.evidence.")
        or path == devices
        or device_evidence is not None
        or by_kind in (path, path.rpartition(".")[0])
    )
    return caught_by(path) if optional else "format"


@dataclass(frozen=True)
class Variant:
    label: str
    path: str  # the changed member, dotted
    change: Callable[[dict[str, Any]], None]
    caught_by: str


def caught_by(path: str) -> str:
    best = ""
    for prefix in CAUGHT_BY:
        if (path == prefix or path.startswith(prefix + ".")) and len(prefix) > len(best):
            best = prefix
    assert best, f"no check is named for claim member {path}: add it to CAUGHT_BY"
    return CAUGHT_BY[best]


# Hex digits move on among hex digits, other letters among their own kind.
_ALPHABETS = ("0123456789abcdef", "ghijklmnopqrstuvwxyz", "ABCDEFGHIJKLMNOPQRSTUVWXYZ")


def flipped(value: Any) -> Any:
    """The same type, another value: a flag toggled, a number plus one, the last letter or
    digit of a text moved on by one (so hex stays hex and base64 stays base64), a null
    (the first claim's `previous_claim`) a well-formed digest."""
    if value is None:
        return "sha256:" + "0" * 64
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if isinstance(value, str):
        for index in range(len(value) - 1, -1, -1):
            char = value[index]
            for alphabet in _ALPHABETS:
                if char in alphabet:
                    moved = alphabet[(alphabet.index(char) + 1) % len(alphabet)]
                    return value[:index] + moved + value[index + 1 :]
        return value + "x"
    raise AssertionError(f"no flip for {value!r}")


def at(document: Any, path: Path_) -> Any:
    for step in path:
        document = document[step]
    return document


def _dotted(path: Path_) -> str:
    return ".".join(str(step) for step in path)


def _setter(path: Path_, make: Callable[[Any], Any]) -> Callable[[dict[str, Any]], None]:
    def change(document: dict[str, Any]) -> None:
        parent = at(document, path[:-1])
        parent[path[-1]] = make(parent[path[-1]])

    return change


def _remover(path: Path_) -> Callable[[dict[str, Any]], None]:
    def change(document: dict[str, Any]) -> None:
        del at(document, path[:-1])[path[-1]]

    return change


def _adder(path: Path_) -> Callable[[dict[str, Any]], None]:
    def change(document: dict[str, Any]) -> None:
        at(document, path)[ADDED] = "x"

    return change


def _replaced_by(other: str) -> Callable[[Any], Any]:
    def make(_: Any) -> Any:
        return other

    return make


def _grown(items: list[Any]) -> list[Any]:
    if not items:
        return ["x"]
    extra = copy.deepcopy(items[-1])
    return [*items, flipped(extra) if not isinstance(extra, dict | list) else extra]


def variants(document: Any, path: Path_ = ()) -> Iterator[Variant]:
    """Every change of every leaf of `document` but its signature."""
    dotted = _dotted(path)
    if isinstance(document, dict):
        for name, member in document.items():
            if path or name != "signature":
                yield from variants(member, (*path, name))
                where = _dotted((*path, name))
                yield Variant(
                    f"{where} removed", where, _remover((*path, name)), removal_caught_by(where)
                )
        added = f"{dotted}.{ADDED}" if dotted else ADDED
        yield Variant(f"{added} added", added, _adder(path), addition_caught_by(added))
    elif isinstance(document, list):
        for index, member in enumerate(document):
            if isinstance(member, dict | list):
                yield from variants(member, (*path, index))
            else:
                where = f"{dotted}[{index}]"
                yield Variant(
                    f"{where} changed", dotted, _setter((*path, index), flipped), caught_by(dotted)
                )
        yield Variant(f"{dotted} grown", dotted, _setter(path, _grown), caught_by(dotted))
        if document:
            yield Variant(
                f"{dotted} shrunk", dotted, _setter(path, lambda v: v[:-1]), caught_by(dotted)
            )
    else:
        enumerated = dotted in ENUMERATED
        yield Variant(
            f"{dotted} flipped",
            dotted,
            _setter(path, flipped),
            "format" if enumerated else caught_by(dotted),
        )
        for other in ENUMERATED.get(dotted, ()):
            if other != document:
                yield Variant(
                    f"{dotted} = {other}",
                    dotted,
                    _setter(path, _replaced_by(other)),
                    caught_by(dotted),
                )


def unchanged(claim: dict[str, Any]) -> None:
    """No change: the claim as it was."""


# -- re-signing -------------------------------------------------------------------------

_BINDINGS = ("gateway.attestation.binding", "gateway.attestation.evidence.binding")


def resigned(
    claim: dict[str, Any], variant: Variant, key: ClaimKey, *, forger: bool, software: bool
) -> dict[str, Any]:
    """`claim` with `variant` applied, signed by `key`. A forger's key becomes the claim's
    `cnf.jwk`; the binding is recomputed for the changed claim (and, in software mode, the
    evidence's unsigned copy of it), unless the variant changed the binding itself."""
    changed = copy.deepcopy(claim)
    changed.pop("signature")
    variant.change(changed)
    cnf = changed.get("trace", {}).get("cnf")
    if forger and isinstance(cnf, dict):
        cnf["jwk"] = dict(key.public_jwk)
    if not variant.path.startswith(_BINDINGS):
        fix_binding(changed, software)
    # a changed record signature is kept as the variant made it: only the envelope is signed
    return signed(changed, key) if variant.path == "trace.signature" else sign_claim(changed, key)


def fix_binding(claim: dict[str, Any], software: bool) -> None:
    try:
        attestation = claim["gateway"]["attestation"]
        binding = claim_binding(claim)
    except (KeyError, TypeError):
        return  # a member of the binding was removed: there is nothing to fix it up from
    attestation["binding"] = binding
    evidence = attestation.get("evidence")
    if software and isinstance(evidence, dict):  # the software evidence states it unsigned
        evidence["binding"] = binding
