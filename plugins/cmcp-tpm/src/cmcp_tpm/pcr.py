"""PCR arithmetic shared by the verifier, the measurer and the collector.

A PCR of bank H starts at zero bytes of H's digest size (PCRs 0-15 and 23 after reset;
PCRs 17-22 start at 0xFF..FF until a dynamic launch, which a quote would show as such)
and changes only by extend: v' = H(v || digest). A quote signs the composite
H(v_1 || ... || v_n) of the selected values, in selection order: banks as the selection
lists them, and within a bank ascending PCR index.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping

# TPM_ALG_ID of the banks cMCP reads, and their digest sizes.
BANK_ALGORITHMS: Mapping[str, int] = {"sha1": 0x0004, "sha256": 0x000B, "sha384": 0x000C}
BANK_OF_ALGORITHM: Mapping[int, str] = {alg: name for name, alg in BANK_ALGORITHMS.items()}
DIGEST_SIZES: Mapping[str, int] = {"sha1": 20, "sha256": 32, "sha384": 48}
PCR_COUNT = 24


def initial_value(bank: str) -> bytes:
    """A PCR's value after reset (all that cMCP replays: it resets its PCR before extending)."""
    return bytes(DIGEST_SIZES[bank])


def extend(bank: str, value: bytes, digest: bytes) -> bytes:
    if len(value) != DIGEST_SIZES[bank] or len(digest) != DIGEST_SIZES[bank]:
        raise ValueError(f"a {bank} extend takes {DIGEST_SIZES[bank]}-byte values")
    return hashlib.new(bank, value + digest).digest()


def replay(bank: str, digests: Iterable[bytes]) -> bytes:
    """The value a PCR reaches from reset after extending `digests` in order."""
    value = initial_value(bank)
    for digest in digests:
        value = extend(bank, value, digest)
    return value


def composite(hash_name: str, values: Iterable[bytes]) -> bytes:
    """The quote's pcrDigest: `hash_name` over the selected values in selection order."""
    return hashlib.new(hash_name, b"".join(values)).digest()


def measurement_string(hash_name: str, digest: bytes) -> str:
    """`sha256:<hex>` / `sha384:<hex>`: the form of `attestation.expected_measurement`."""
    return f"{hash_name}:{digest.hex()}"


def parse_selection(text: str) -> tuple[int, ...]:
    """`0-7,23` -> (0, 1, ..., 7, 23): ascending, unique, each below 24."""
    indices: set[int] = set()
    for part in filter(None, (p.strip() for p in text.split(","))):
        low, _, high = part.partition("-")
        try:
            first, last = int(low), int(high or low)
        except ValueError:
            raise ValueError(f"{part!r} is not a PCR index or a range like 0-7") from None
        if not 0 <= first <= last < PCR_COUNT:
            raise ValueError(f"{part!r}: PCR indices run from 0 to {PCR_COUNT - 1}")
        indices.update(range(first, last + 1))
    if not indices:
        raise ValueError("the PCR selection is empty")
    return tuple(sorted(indices))
