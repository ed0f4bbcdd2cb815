"""The PCR values file that tpm2-tools writes (`tpm2_quote -o`, `tpm2_pcrread -o`): not a
TPM structure but C structs in host byte order, read into {bank: {index: value}}."""

from __future__ import annotations

import struct
from collections.abc import Sequence

from cmcp_tpm.pcr import DIGEST_SIZES
from cmcp_tpm.structures import MAX_PCR_SELECTIONS, TpmFormatError, bank_name, bitmap_indices

# tpm2-tools' PCR file holds C structs: TPML_PCR_SELECTION is u32 count + 16 entries of
# (u16 hash, u8 sizeofSelect, u8 pcrSelect[4], 1 pad byte); TPML_DIGEST is u32 count +
# 8 entries of (u16 size, 64-byte buffer).
_FILE_SELECTION_SIZE = 4 + MAX_PCR_SELECTIONS * 8
_FILE_DIGESTS = 8
_FILE_DIGEST_LIST_SIZE = 4 + _FILE_DIGESTS * 66


def parse_pcr_file(data: bytes) -> dict[str, dict[int, bytes]]:
    """The PCR values file of `tpm2_quote -o` / `tpm2_pcrread -o`: {bank: {index: value}}.

    Layout (host byte order, C struct sizes): TPML_PCR_SELECTION (132 bytes), u32 number
    of TPML_DIGEST lists, then that many lists of 532 bytes each (u32 count + 8 slots of
    u16 size + 64 bytes). The lists' used digests, concatenated, are the selected PCRs in
    selection order (banks in order, ascending index). The byte order is taken from the
    first count, which must be 1..16."""
    if len(data) < _FILE_SELECTION_SIZE + 4:
        raise TpmFormatError(f"PCR file is {len(data)} bytes, shorter than its header")
    order = "<" if 0 < int.from_bytes(data[:4], "little") <= MAX_PCR_SELECTIONS else ">"
    count = struct.unpack_from(order + "I", data)[0]
    if not 0 < count <= MAX_PCR_SELECTIONS:
        raise TpmFormatError(f"PCR file selection count {count} is not 1..16")
    selection = []
    for entry in range(count):
        alg, size = struct.unpack_from(order + "HB", data, 4 + 8 * entry)
        if size > 4:
            raise TpmFormatError(f"PCR file sizeofSelect {size} exceeds 4")
        bitmap = data[4 + 8 * entry + 3 : 4 + 8 * entry + 3 + size]
        selection.append((bank_name(alg), bitmap_indices(bitmap)))
    lists = struct.unpack_from(order + "I", data, _FILE_SELECTION_SIZE)[0]
    expected = _FILE_SELECTION_SIZE + 4 + lists * _FILE_DIGEST_LIST_SIZE
    if len(data) != expected:
        raise TpmFormatError(
            f"PCR file with {lists} digest lists is {len(data)} bytes, not {expected}"
        )
    digests: list[bytes] = []
    for list_index in range(lists):
        offset = _FILE_SELECTION_SIZE + 4 + list_index * _FILE_DIGEST_LIST_SIZE
        used = struct.unpack_from(order + "I", data, offset)[0]
        if used > _FILE_DIGESTS:
            raise TpmFormatError(f"PCR file digest list {list_index} counts {used} (at most 8)")
        for slot in range(used):
            start = offset + 4 + 66 * slot
            size = struct.unpack_from(order + "H", data, start)[0]
            if size > 64:
                raise TpmFormatError(f"PCR file digest of {size} bytes exceeds 64")
            digests.append(data[start + 2 : start + 2 + size])
    return _assign(selection, digests)


def _assign(
    selection: Sequence[tuple[str, tuple[int, ...]]], digests: list[bytes]
) -> dict[str, dict[int, bytes]]:
    wanted = sum(len(indices) for _, indices in selection)
    if len(digests) != wanted:
        raise TpmFormatError(f"PCR file holds {len(digests)} values for {wanted} selected PCRs")
    values: dict[str, dict[int, bytes]] = {}
    remaining = iter(digests)
    for bank, indices in selection:
        for index in indices:
            value = next(remaining)
            if len(value) != DIGEST_SIZES[bank]:
                raise TpmFormatError(f"PCR file value of {bank} PCR {index} is {len(value)} bytes")
            values.setdefault(bank, {})[index] = value
    return values
