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

`parse_canonical` goes the other way, for stored data such as audit lines: msgspec parses
and refuses any float literal as it meets it, and the data is canonical exactly when its
canonical serialisation is the data itself, byte for byte.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any, NoReturn

import msgspec
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
    value = _loads_without_floats(data)
    # The parsed value holds no floats, so orjson's sorted output is RFC 8785 exactly when
    # it also holds no integer beyond 2**53 (refused by `_SORTED`) and no character at
    # which UTF-16 and code-point key order part.
    fast = _dumps_sorted(value)
    if fast is not None and fast == data and (data.isascii() or not _ORDER_SENSITIVE.search(data)):
        return value
    if canonical_bytes(value) != data:
        raise CanonicalizationError("JSON is not in RFC 8785 canonical form")
    return value


class _FloatLiteralError(Exception):
    pass


def _refuse_float(literal: str) -> NoReturn:
    raise _FloatLiteralError(literal)


# msgspec calls `float_hook` for each number literal with a fraction or an exponent while
# it parses, so floats are refused for the cost of the parse alone; a walk over the parsed
# value would cost more than the parse itself. NaN and Infinity are not JSON to it.
_DECODER = msgspec.json.Decoder(float_hook=_refuse_float)


def _loads_without_floats(data: bytes) -> Any:
    try:
        return _DECODER.decode(data)
    except _FloatLiteralError as exc:
        raise CanonicalizationError("hashed data holds no floating-point numbers") from exc
    except RecursionError as exc:
        raise CanonicalizationError("not JSON: nested too deeply") from exc
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise CanonicalizationError(f"not JSON: {exc}") from exc


_SORTED = orjson.OPT_SORT_KEYS | orjson.OPT_STRICT_INTEGER


def _dumps_sorted(value: Any) -> bytes | None:
    try:
        return orjson.dumps(value, option=_SORTED)
    except orjson.JSONEncodeError:
        return None  # an integer beyond 2**53, or a lone surrogate: rfc8785 decides


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
