"""RFC 8785 (JCS) canonical bytes and the digest strings used in every contract.

Everything cMCP hashes or signs goes through `canonical_bytes`. The published
implementation (the `rfc8785` package) is the authority; for speed, orjson's sorted
output is used instead where it is provably the same bytes:

- no floats (JCS and orjson format some of them differently; cMCP hashes none),
- integers within +-(2**53 - 1), which both print as plain digits,
- string keys only, and no character at or above U+E000 anywhere in the output: only such
  characters make UTF-16 key order (JCS) differ from code-point order (orjson),
- string escaping, which is identical in both (control characters as \\u00xx except
  \\b \\f \\n \\r \\t, then `"` and `\\`; nothing else escaped); the tests check this.

Any value outside those bounds goes to `rfc8785`, which serialises it or refuses it.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

import orjson
import rfc8785

SHA256_PREFIX = "sha256:"
_SHA256_TAGGED = re.compile(r"sha256:[0-9a-f]{64}")
_SAFE_INTEGER = 2**53 - 1
# UTF-8 lead bytes of U+E000..U+10FFFF: where UTF-16 and code-point order can disagree.
_ORDER_SENSITIVE = re.compile(rb"[\xee-\xf4]")


class CanonicalizationError(ValueError):
    """The value has no RFC 8785 form (NaN, an integer beyond IEEE 754, a lone surrogate...)."""


def canonical_bytes(value: Any) -> bytes:
    """The RFC 8785 serialisation of a JSON-compatible value."""
    if _fast_path_applies(value):
        try:
            fast = orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
        except orjson.JSONEncodeError:
            pass  # e.g. a lone surrogate: let rfc8785 give the verdict
        else:
            if fast.isascii() or _ORDER_SENSITIVE.search(fast) is None:
                return fast
    try:
        return rfc8785.dumps(value)
    except rfc8785.CanonicalizationError as exc:
        raise CanonicalizationError(str(exc)) from exc


def parse_canonical(data: bytes) -> Any:
    """Parse JSON that must already be in canonical form as cMCP hashes it: RFC 8785 with
    integers only (within +-(2**53 - 1)) and no floats; `CanonicalizationError` if not."""
    value, _ = parse_canonical_without(data, None)
    return value


def parse_canonical_without(data: bytes, key: str | None) -> tuple[Any, bytes]:
    """Parse canonical JSON, and give the canonical bytes of the object without `key`.

    Both in one pass: an audit line is checked for canonical form, and the bytes its hash
    covers (the entry without `hash`) are produced from the same verdict.
    """
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise CanonicalizationError(f"not JSON: {exc}") from exc
    if key is not None and not isinstance(value, dict):
        raise CanonicalizationError("JSON is not an object")
    fast = _dumps_sorted(value)
    if fast is not None and fast == data and _parsed_is_jcs(value, fast):
        if key is None:
            return value, data
        return value, _without_member(data, key, value) or orjson.dumps(
            {k: v for k, v in value.items() if k != key}, option=_SORTED
        )
    if type(value) is float or (isinstance(value, dict | list) and _contains_float(value)):
        raise CanonicalizationError("hashed data holds no floating-point numbers")
    if canonical_bytes(value) != data:
        raise CanonicalizationError("JSON is not in RFC 8785 canonical form")
    body = value if key is None else {k: v for k, v in value.items() if k != key}
    return value, canonical_bytes(body)


_SORTED = orjson.OPT_SORT_KEYS | orjson.OPT_STRICT_INTEGER


def _dumps_sorted(value: Any) -> bytes | None:
    try:
        return orjson.dumps(value, option=_SORTED)
    except orjson.JSONEncodeError:
        return None  # an integer beyond 2**53 or a non-string key: rfc8785 decides


def _without_member(data: bytes, key: str, value: dict[str, Any]) -> bytes | None:
    """The canonical bytes of `value` without `key`, cut from its canonical bytes `data`.

    Exact when the member's text occurs once: then it is the top-level member, and removing
    it and one adjacent comma leaves the canonical form of the rest (members stay sorted).
    Returns None when the cut is not certain, and the caller serialises instead.
    """
    member_value = value.get(key)
    if not isinstance(member_value, str) or not member_value.isascii():
        return None
    member = b'"' + key.encode() + b'":' + orjson.dumps(member_value)
    if data.count(member) != 1:
        return None
    start = data.index(member)
    end = start + len(member)
    if data[start - 1 : start] == b",":
        return data[: start - 1] + data[end:]
    if data[end : end + 1] == b",":
        return data[:start] + data[end + 1 :]
    return data[:start] + data[end:]  # the only member


def _parsed_is_jcs(value: Any, out: bytes) -> bool:
    """Whether `out`, orjson's sorted output of `value` parsed from JSON, is RFC 8785.

    A parsed value holds only JSON types and string keys, and `_SORTED` already refused
    integers beyond 2**53; what remains to rule out is a float (orjson and JCS write some
    differently) and characters that make UTF-16 key order differ from code-point order.
    """
    if isinstance(value, dict | list) and _contains_float(value):
        return False
    if type(value) is float:
        return False
    return out.isascii() or _ORDER_SENSITIVE.search(out) is None


def _contains_float(container: Any) -> bool:
    item: Any
    for item in container.values() if type(container) is dict else container:
        kind = type(item)
        if kind is float:
            return True
        if (kind is dict or kind is list) and _contains_float(item):
            return True
    return False


def _fast_path_applies(value: Any) -> bool:
    """Whether `value` holds only what orjson and RFC 8785 serialise identically."""
    stack = [value]
    while stack:
        item = stack.pop()
        kind = type(item)
        if kind is str or kind is bool or item is None:
            continue
        if kind is int:
            if -_SAFE_INTEGER <= item <= _SAFE_INTEGER:
                continue
            return False
        if kind is dict:
            for key in item:
                if type(key) is not str:
                    return False
            stack.extend(item.values())
            continue
        if kind is list:
            stack.extend(item)
            continue
        return False  # floats, tuples, subclasses: rfc8785 decides
    return True


def sha256_tagged(data: bytes) -> str:
    """`sha256:<lowercase hex>` of raw bytes."""
    return SHA256_PREFIX + hashlib.sha256(data).hexdigest()


def canonical_sha256(value: Any) -> str:
    """`sha256:<hex>` of the JCS bytes of a JSON value."""
    return sha256_tagged(canonical_bytes(value))


def is_sha256_tagged(text: str) -> bool:
    """Whether `text` is exactly `sha256:` followed by 64 lowercase hex digits."""
    return _SHA256_TAGGED.fullmatch(text) is not None
