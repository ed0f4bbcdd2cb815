"""Redacting what a governed message returns as `@redact(...)` says, counting what was
redacted.

For a tool result, detectors scan every string of the result (text content and structured
content alike); JSON pointers replace one value of `structuredContent`. A redacted string
stays a string, so a client validating `structuredContent` against the tool's
`outputSchema` still accepts it. For the other kinds (`redact_answer`): a resource's
`contents[].text` is scanned and a `blob` (binary no detector can read) is replaced by a
text item `[REDACTED:blob]`; a prompt's messages and description are scanned; a client's
sampling answer has its `content` scanned; an elicitation answer has each value of its
`content` scanned, and pointers address that `content` object (`/card_number`). Listings
(`list_tools`, `list_roots`) carry nothing to redact. Counts per kind are returned for the
audit entry; values never are.
"""

from __future__ import annotations

import copy
import json
import re
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any

from cmcp_cli.policy.annotations import RedactionSpec

MASK = "[REDACTED:{kind}]"


def _luhn_valid(digits: str) -> bool:
    total = 0
    for index, char in enumerate(reversed(digits)):
        value = int(char)
        if index % 2:
            value = value * 2 - 9 if value > 4 else value * 2
        total += value
    return total % 10 == 0


def _card(match: re.Match[str]) -> bool:
    digits = re.sub(r"[ -]", "", match.group(0))
    return 13 <= len(digits) <= 19 and _luhn_valid(digits)


def _iban(match: re.Match[str]) -> bool:
    text = match.group(0).replace(" ", "")
    rearranged = text[4:] + text[:4]
    number = "".join(str(int(c, 36)) for c in rearranged)
    return int(number) % 97 == 1


def _always(_: re.Match[str]) -> bool:
    return True


# kind -> (pattern, confirm): a match counts only when `confirm` accepts it (checksums).
DETECTORS: Mapping[str, tuple[re.Pattern[str], Callable[[re.Match[str]], bool]]] = {
    "private_key": (
        re.compile(
            r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY-----"
            r".*?-----END (?:[A-Z0-9]+ )*PRIVATE KEY-----",
            re.DOTALL,
        ),
        _always,
    ),
    "jwt": (
        re.compile(r"\beyJ[A-Za-z0-9_-]{4,}\.eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{8,}"),
        _always,
    ),
    "cloud_key": (
        re.compile(
            r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"  # AWS access key id
            r"|\bAIza[0-9A-Za-z_-]{35}\b"  # Google API key
            r"|\bgh[pousr]_[A-Za-z0-9]{36,}\b"  # GitHub token
            r"|\bxox[abprs]-[A-Za-z0-9-]{10,}"  # Slack token
            r"|\bAccountKey=[A-Za-z0-9+/=]{40,}"  # Azure storage key
        ),
        _always,
    ),
    "email": (
        re.compile(
            r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9-]+)+\b"
        ),
        _always,
    ),
    "iban": (re.compile(r"\b[A-Z]{2}[0-9]{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?\b"), _iban),
    "card": (re.compile(r"\b(?:[0-9][ -]?){12,18}[0-9]\b"), _card),
    "ssn": (
        re.compile(r"\b(?!000|666|9[0-9]{2})[0-9]{3}-(?!00)[0-9]{2}-(?!0000)[0-9]{4}\b"),
        _always,
    ),
    "phone": (
        re.compile(r"(?<![\w+])\+?[0-9](?:[ .()-]?[0-9]){6,14}\b(?!-)"),
        _always,
    ),
}
# Longest, most specific first, so a key is not half-eaten by the phone detector.
_ORDER = ("private_key", "jwt", "cloud_key", "email", "iban", "card", "ssn", "phone")


def redact_result(
    result: Mapping[str, Any], spec: RedactionSpec
) -> tuple[dict[str, Any], dict[str, int]]:
    """A redacted copy of a `tools/call` result and the count of redactions by kind."""
    counts: Counter[str] = Counter()
    redacted = copy.deepcopy(dict(result))
    structured = redacted.get("structuredContent")
    removed: list[str] = []
    for pointer in spec.pointers:
        if isinstance(structured, dict | list) and _replace_at(structured, pointer, removed):
            counts[f"pointer:{pointer}"] += 1
    if removed and "content" in redacted:
        # Text content often mirrors structuredContent (the SDKs serialise it there too):
        # a value removed by pointer is removed wherever else it is written out.
        redacted["content"] = _scan(redacted["content"], lambda text: _mask_values(text, removed))
    kinds = [kind for kind in _ORDER if kind in spec.detectors]
    if kinds:
        for key in ("content", "structuredContent"):
            if key in redacted:
                redacted[key] = _scan(redacted[key], lambda text: redact_text(text, kinds, counts))
    return redacted, dict(counts)


def redact_answer(
    kind: str, result: Mapping[str, Any], spec: RedactionSpec
) -> tuple[dict[str, Any], dict[str, int]]:
    """A redacted copy of the result a message of `kind` (a `MessageKind` value) returns,
    and the count of redactions by kind; see the module docstring for what is scanned."""
    if kind == "call_tool":
        return redact_result(result, spec)
    counts: Counter[str] = Counter()
    redacted = copy.deepcopy(dict(result))
    kinds = [detector for detector in _ORDER if detector in spec.detectors]

    def scan(value: Any) -> Any:
        return _scan(value, lambda text: redact_text(text, kinds, counts)) if kinds else value

    if kind == "read_resource":
        contents = redacted.get("contents")
        if isinstance(contents, list):
            redacted["contents"] = [_resource_item(item, scan, counts) for item in contents]
    elif kind == "get_prompt":
        for key in ("messages", "description"):
            if key in redacted:
                redacted[key] = scan(redacted[key])
    elif kind == "create_message":
        if "content" in redacted:
            redacted["content"] = scan(redacted["content"])
    elif kind == "elicit":
        content = redacted.get("content")
        if isinstance(content, dict):
            removed: list[str] = []
            for pointer in spec.pointers:
                if _replace_at(content, pointer, removed):
                    counts[f"pointer:{pointer}"] += 1
            redacted["content"] = {key: scan(value) for key, value in content.items()}
    return redacted, dict(counts)


def _resource_item(item: Any, scan: Callable[[Any], Any], counts: Counter[str]) -> Any:
    """One `contents[]` item of a resource read: its text scanned; a blob, which no
    detector can read, replaced by a text item (fail closed, and still a valid item)."""
    if not isinstance(item, dict):
        return item
    if "blob" in item:
        counts["blob"] += 1
        kept = {key: value for key, value in item.items() if key in ("uri", "_meta")}
        return {**kept, "mimeType": "text/plain", "text": MASK.format(kind="blob")}
    if isinstance(item.get("text"), str):
        return {**item, "text": scan(item["text"])}
    return item


def _mask_values(text: str, values: list[str]) -> str:
    for value in values:
        if value:
            text = text.replace(value, MASK.format(kind="pointer"))
            escaped = json.dumps(value)[1:-1]
            if escaped != value:
                text = text.replace(escaped, MASK.format(kind="pointer"))
    return text


def _scan(value: Any, rewrite: Callable[[str], str]) -> Any:
    if isinstance(value, str):
        return rewrite(value)
    if isinstance(value, list):
        return [_scan(item, rewrite) for item in value]
    if isinstance(value, dict):
        # MCP content blocks carry their type and media type in strings: leave keys and
        # those two alone, scan the rest.
        return {
            key: item if key in ("type", "mimeType") else _scan(item, rewrite)
            for key, item in value.items()
        }
    return value


def redact_text(text: str, kinds: list[str], counts: Counter[str]) -> str:
    for kind in kinds:
        pattern, confirm = DETECTORS[kind]

        def mask(
            match: re.Match[str], kind: str = kind, confirm: Callable[..., bool] = confirm
        ) -> str:
            if not confirm(match):
                return match.group(0)
            counts[kind] += 1
            return MASK.format(kind=kind)

        text = pattern.sub(mask, text)
    return text


def _replace_at(document: dict[str, Any] | list[Any], pointer: str, removed: list[str]) -> bool:
    """Replace the value at an RFC 6901 pointer: a string with the mask, others with null
    (a schema that types the field may then reject it: point at strings)."""
    parts = [p.replace("~1", "/").replace("~0", "~") for p in pointer.split("/")[1:]]
    target: Any = document
    for part in parts[:-1]:
        target = _child(target, part)
        if target is None:
            return False
    last: str | int = parts[-1]
    if isinstance(target, list):
        if not (isinstance(last, str) and last.isdigit() and int(last) < len(target)):
            return False
        last = int(last)
    elif not (isinstance(target, dict) and last in target):
        return False
    old = target[last]
    if isinstance(old, str):
        removed.append(old)
        target[last] = MASK.format(kind="pointer")
    else:
        target[last] = None
    return True


def _child(value: Any, part: str) -> Any:
    if isinstance(value, dict):
        return value.get(part)
    if isinstance(value, list) and part.isdigit() and int(part) < len(value):
        return value[int(part)]
    return None
