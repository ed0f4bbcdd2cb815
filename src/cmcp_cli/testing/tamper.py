"""Every single-leaf change of an evidence document, and the rule a verifier's verdict on
each must keep.

A leaf is changed the way an attacker would change it while keeping its form: a lowercase
hex string gets one byte of its decoded bytes flipped, a canonical base64 string likewise
(re-encoded, so the change is in the bytes and not in the spelling), any other string one
character changed, an integer incremented, a boolean negated, and a list loses its last
item (besides each item being changed in turn). Bytes and characters are changed at the
first, middle and last position.

The rule (`tamper_problems`): the verdict on changed evidence fails and is not
hardware-attested, and every check that passed on the genuine evidence and is skipped on
the changed one names in its reason a check that failed, or one skipped for such a reason
(a check may only skip because an earlier one refused its input).

One exception, which a provider declares list by list: a list of independent items, each
judged on its own, that a real host may give fewer of (a TPM with one EK certificate
rather than two). Losing its last item is then indistinguishable from such a host, so the
verdict must fail or be exactly the genuine one, check by check (`same_outcome`).
"""

from __future__ import annotations

import base64
import copy
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from cmcp_cli.attestation.api import CheckStatus, EvidenceVerdict

_HEX = re.compile(r"(?:[0-9a-f]{2})+")
Path = tuple[str | int, ...]
REMOVED = "last item removed"


@dataclass(frozen=True, slots=True)
class Tampering:
    path: Path  # where in the evidence: member names and list positions
    change: str  # what was done there, for the failure message
    evidence: Any  # the whole evidence with that one change

    def __str__(self) -> str:
        where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in self.path)
        return f"{where or '(root)'}: {self.change}"


def _positions(size: int) -> list[int]:
    return sorted({0, size // 2, size - 1})


def _canonical_base64(text: str) -> bytes | None:
    try:
        raw = base64.b64decode(text, validate=True)
    except ValueError:
        return None
    return raw if raw and base64.b64encode(raw).decode() == text else None


def _flipped(raw: bytes) -> Iterator[tuple[int, bytes]]:
    for at in _positions(len(raw)):
        changed = bytearray(raw)
        changed[at] ^= 0x01
        yield at, bytes(changed)


def _leaf_changes(value: Any) -> Iterator[tuple[str, Any]]:
    if isinstance(value, bool):
        yield "negated", not value
    elif isinstance(value, int):
        yield "incremented", value + 1
    elif isinstance(value, str) and _HEX.fullmatch(value):
        for at, changed in _flipped(bytes.fromhex(value)):
            yield f"hex byte {at} flipped", changed.hex()
    elif isinstance(value, str) and (raw := _canonical_base64(value)) is not None:
        for at, changed in _flipped(raw):
            yield f"base64 byte {at} flipped", base64.b64encode(changed).decode()
    elif isinstance(value, str):
        for at in _positions(len(value)) if value else []:
            other = "b" if value[at] != "b" else "c"
            yield f"character {at} changed", value[:at] + other + value[at + 1 :]
        if not value:
            yield "filled", "x"


def _replaced(evidence: Any, path: Path, value: Any) -> Any:
    if not path:
        return value
    changed = copy.deepcopy(evidence)
    parent = changed
    for part in path[:-1]:
        parent = parent[part]
    parent[path[-1]] = value
    return changed


def _walk(value: Any, path: Path) -> Iterator[tuple[Path, str, Any]]:
    if isinstance(value, Mapping):
        for key, item in value.items():
            yield from _walk(item, (*path, key))
    elif isinstance(value, list):
        if value:
            yield path, REMOVED, value[:-1]
        for position, item in enumerate(value):
            yield from _walk(item, (*path, position))
    else:
        for change, changed in _leaf_changes(value):
            yield path, change, changed


def tamperings(evidence: Mapping[str, Any]) -> Iterator[Tampering]:
    """Each single-leaf change of `evidence` (which is left as it was)."""
    for path, change, value in _walk(evidence, ()):
        yield Tampering(path, change, _replaced(evidence, path, value))


def _explained_skips(verdict: EvidenceVerdict) -> set[str]:
    """The checks that failed, and those skipped naming one of these (transitively)."""
    explained = {c.name for c in verdict.checks if c.status is CheckStatus.FAIL}
    skipped = [c for c in verdict.checks if c.status is CheckStatus.SKIP]
    grew = True
    while grew:
        grew = False
        for check in skipped:
            if check.name not in explained and any(n in check.reason for n in explained):
                explained.add(check.name)
                grew = True
    return explained


def tamper_problems(genuine: EvidenceVerdict, tampered: EvidenceVerdict) -> list[str]:
    """What is wrong with the verdict on tampered evidence; empty when it holds the rule."""
    problems = []
    if not tampered.failed:
        problems.append("no check failed")
    if tampered.hardware_attested:
        problems.append("still hardware-attested")
    passed = {c.name for c in genuine.checks if c.status is CheckStatus.PASS}
    if dropped := sorted(passed - {c.name for c in tampered.checks}):
        problems.append(f"{', '.join(dropped)} passed, now not reported")
    explained = _explained_skips(tampered)
    for check in tampered.checks:
        skipped = check.status is CheckStatus.SKIP
        if skipped and check.name in passed and check.name not in explained:
            problems.append(f"{check.name} passed, now skips: {check.reason}")
    return problems


def same_outcome(genuine: EvidenceVerdict, tampered: EvidenceVerdict) -> list[str]:
    """For a declared independent list that lost an item: fails by the rule above, or every
    check ends as it did on the genuine evidence and so does the verdict."""
    if tampered.failed:
        return tamper_problems(genuine, tampered)
    before = {c.name: c.status for c in genuine.checks}
    after = {c.name: c.status for c in tampered.checks}
    problems = [
        f"{name} was {before[name].value}, now {after.get(name, 'not reported')}"
        for name in before
        if after.get(name) is not before[name]
    ]
    if tampered.hardware_attested is not genuine.hardware_attested:
        problems.append("the verdict's hardware attestation changed")
    return problems
