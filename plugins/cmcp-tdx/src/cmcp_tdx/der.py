"""Just enough DER to read Intel's SGX extension of a PCK certificate (OID
1.2.840.113741.1.13.1): a SEQUENCE of {OID, value} pairs, where a value is an OCTET STRING,
an INTEGER, an ENUMERATED, or another such SEQUENCE (the TCB). X.509 itself is parsed by
`cryptography`; this reads only the extension's contents, which it hands over as bytes.
"""

from __future__ import annotations

from typing import Final

SEQUENCE: Final = 0x30
OID: Final = 0x06
INTEGER: Final = 0x02
OCTET_STRING: Final = 0x04
ENUMERATED: Final = 0x0A
_MAX_DEPTH: Final = 4


class DerError(ValueError):
    pass


def _tlv(data: bytes, offset: int) -> tuple[int, bytes, int]:
    """(tag, contents, offset after) of the element at `offset`; definite lengths only."""
    if offset + 2 > len(data):
        raise DerError("truncated element")
    tag, first = data[offset], data[offset + 1]
    offset += 2
    if first < 0x80:
        length = first
    else:
        count = first & 0x7F
        if count == 0 or count > 4 or offset + count > len(data):
            raise DerError("bad length")
        length = int.from_bytes(data[offset : offset + count], "big")
        offset += count
    if offset + length > len(data):
        raise DerError("element runs past its container")
    return tag, data[offset : offset + length], offset + length


def elements(data: bytes) -> list[tuple[int, bytes]]:
    """The (tag, contents) of each element in `data`, which they must fill exactly."""
    found, offset = [], 0
    while offset < len(data):
        tag, contents, offset = _tlv(data, offset)
        found.append((tag, contents))
    return found


def sequence(data: bytes) -> bytes:
    """The contents of `data`, which must be exactly one SEQUENCE."""
    found = elements(data)
    if len(found) != 1 or found[0][0] != SEQUENCE:
        raise DerError("not exactly one SEQUENCE")
    return found[0][1]


def oid_string(contents: bytes) -> str:
    if not contents:
        raise DerError("empty OID")
    parts, value = [], 0
    for byte in contents:
        value = (value << 7) | (byte & 0x7F)
        if not byte & 0x80:
            parts.append(value)
            value = 0
    if contents[-1] & 0x80:
        raise DerError("truncated OID")
    first = min(parts[0] // 40, 2)
    return ".".join(map(str, [first, parts[0] - 40 * first, *parts[1:]]))


def integer(contents: bytes) -> int:
    if not contents:
        raise DerError("empty INTEGER")
    return int.from_bytes(contents, "big", signed=True)


def oid_values(data: bytes, depth: int = 0) -> dict[str, tuple[int, bytes]]:
    """Every {OID, value} pair of a SEQUENCE OF SEQUENCE {OID, value}, flattened: a value
    that is itself such a sequence contributes its own pairs too."""
    if depth > _MAX_DEPTH:
        raise DerError("nested too deeply")
    pairs: dict[str, tuple[int, bytes]] = {}
    for tag, contents in elements(data):
        if tag != SEQUENCE:
            raise DerError("an entry is not a SEQUENCE")
        inner = elements(contents)
        if len(inner) != 2 or inner[0][0] != OID:
            raise DerError("an entry is not {OID, value}")
        name = oid_string(inner[0][1])
        value_tag, value = inner[1]
        pairs[name] = (value_tag, value)
        if value_tag == SEQUENCE:
            pairs.update(oid_values(value, depth + 1))
    return pairs
