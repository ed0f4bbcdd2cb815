"""The policy annotations cMCP gives meaning to, parsed and checked when a bundle loads.

`@redact("email, card, /customer/ssn")` on a permit: forward the call, then redact the
response with the named detectors and JSON pointers into structured content.
`@escalate("reason")` on a forbid: hold the call until an operator approves it.
`@id("name")` names the policy in decisions and audit entries.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

ID = "id"
REDACT = "redact"
ESCALATE = "escalate"

# The detectors the gateway implements. Names are part of the policy language: a bundle
# naming anything else is refused at load, not discovered at the first matching call.
REDACTION_DETECTORS: frozenset[str] = frozenset(
    {"email", "phone", "card", "ssn", "iban", "cloud_key", "private_key", "jwt"}
)
_POINTER = re.compile(r"(/([^~/]|~[01])*)+")


class AnnotationError(ValueError):
    """An annotation cMCP interprets has a value it cannot use."""


@dataclass(frozen=True, slots=True)
class RedactionSpec:
    detectors: frozenset[str]
    pointers: tuple[str, ...]  # RFC 6901 JSON pointers into structuredContent

    def merged(self, other: RedactionSpec) -> RedactionSpec:
        pointers = self.pointers + tuple(p for p in other.pointers if p not in self.pointers)
        return RedactionSpec(self.detectors | other.detectors, pointers)

    def to_json(self) -> dict[str, list[str]]:
        return {"detectors": sorted(self.detectors), "pointers": list(self.pointers)}


EMPTY_REDACTION = RedactionSpec(frozenset(), ())


def parse_redaction(value: str) -> RedactionSpec:
    """Parse the value of `@redact`: comma-separated detector names and JSON pointers."""
    detectors: set[str] = set()
    pointers: list[str] = []
    items = [item.strip() for item in value.split(",")]
    if not any(items):
        raise AnnotationError(
            "@redact names nothing to redact; list detectors "
            f"({', '.join(sorted(REDACTION_DETECTORS))}) or JSON pointers such as /customer/ssn"
        )
    for item in items:
        if not item:
            raise AnnotationError(f"@redact({value!r}) has an empty entry")
        if item.startswith("/"):
            if _POINTER.fullmatch(item) is None:
                raise AnnotationError(
                    f"@redact entry {item!r} is not an RFC 6901 JSON pointer "
                    "(escape '~' as ~0 and '/' inside a name as ~1)"
                )
            if item not in pointers:
                pointers.append(item)
        elif item in REDACTION_DETECTORS:
            detectors.add(item)
        else:
            raise AnnotationError(
                f"@redact names unknown detector {item!r}; known detectors: "
                f"{', '.join(sorted(REDACTION_DETECTORS))} (a JSON pointer starts with '/')"
            )
    return RedactionSpec(frozenset(detectors), tuple(pointers))


def check_annotations(effect: str, annotations: dict[str, str]) -> list[str]:
    """Problems with the annotations cMCP interprets on one policy; empty when usable."""
    problems: list[str] = []
    if ID in annotations and not annotations[ID].strip():
        problems.append("@id is empty; give the policy a name or drop the annotation")
    if REDACT in annotations:
        if effect != "permit":
            problems.append(
                "@redact applies to permit policies only; on a forbid it would do nothing"
            )
        else:
            try:
                parse_redaction(annotations[REDACT])
            except AnnotationError as exc:
                problems.append(str(exc))
    if ESCALATE in annotations:
        if effect != "forbid":
            problems.append(
                "@escalate applies to forbid policies only; on a permit it would do nothing"
            )
        elif not annotations[ESCALATE].strip():
            problems.append(
                '@escalate needs a reason an operator can read, e.g. @escalate("wire > 10k")'
            )
    return problems
