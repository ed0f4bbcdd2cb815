"""TPM 2.0 wire structures that a quote verifier reads, in pure Python.

Unmarshals TPMS_ATTEST (quote), TPMT_PUBLIC, TPMT_SIGNATURE and TPML_PCR_SELECTION as
TPM 2.0 Part 2 defines them (big-endian, TPM2B = u16 size + bytes), computes object and
and qualified names.
Every malformed input raises `TpmFormatError` naming the structure and the problem; no
other exception escapes a parser. The `build_*` functions marshal the same structures so
that tests can make software-signed quotes.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)

from cmcp_tpm.pcr import BANK_ALGORITHMS, BANK_OF_ALGORITHM, PCR_COUNT

TPM_GENERATED_VALUE = 0xFF544347
TPM_ST_ATTEST_QUOTE = 0x8018

ALG_RSA = 0x0001
ALG_SHA1 = 0x0004
ALG_SHA256 = 0x000B
ALG_SHA384 = 0x000C
ALG_SHA512 = 0x000D
ALG_NULL = 0x0010
ALG_RSASSA = 0x0014
ALG_RSAPSS = 0x0016
ALG_ECDSA = 0x0018
ALG_ECDAA = 0x001A
ALG_ECC = 0x0023
ALG_RSAES = 0x0015

ECC_NIST_P256 = 0x0003
ECC_NIST_P384 = 0x0004
ECC_NIST_P521 = 0x0005
CURVES: Mapping[int, ec.EllipticCurve] = {
    ECC_NIST_P256: ec.SECP256R1(),
    ECC_NIST_P384: ec.SECP384R1(),
    ECC_NIST_P521: ec.SECP521R1(),
}
HASH_NAMES: Mapping[int, str] = {
    ALG_SHA1: "sha1",
    ALG_SHA256: "sha256",
    ALG_SHA384: "sha384",
    ALG_SHA512: "sha512",
}

# TPMA_OBJECT bits.
FIXED_TPM = 1 << 1
FIXED_PARENT = 1 << 4
SENSITIVE_DATA_ORIGIN = 1 << 5
USER_WITH_AUTH = 1 << 6
RESTRICTED = 1 << 16
DECRYPT = 1 << 17
SIGN = 1 << 18
AK_ATTRIBUTES = (
    FIXED_TPM | FIXED_PARENT | SENSITIVE_DATA_ORIGIN | USER_WITH_AUTH | RESTRICTED | SIGN
)
# What makes a key a restricted signing key created in and bound to its TPM (an AK), by
# the names the TPM specification gives the bits.
SIGNING_KEY_ATTRIBUTES: Mapping[str, int] = {
    "fixedTPM": FIXED_TPM, "fixedParent": FIXED_PARENT,
    "sensitiveDataOrigin": SENSITIVE_DATA_ORIGIN, "restricted": RESTRICTED, "sign": SIGN,
}  # fmt: skip


def signing_key_problems(
    attributes: int, required: Mapping[str, int] = SIGNING_KEY_ATTRIBUTES
) -> list[str]:
    """Why TPMA_OBJECT `attributes` are not an AK's: each `required` bit not set, and
    decrypt set (an AK only signs); empty when they are."""
    problems = [f"{name} not set" for name, bit in required.items() if not attributes & bit]
    if attributes & DECRYPT:
        problems.append("decrypt set")
    return problems


HIERARCHY_HANDLES: Mapping[str, int] = {
    "owner": 0x40000001,
    "endorsement": 0x4000000B,
    "platform": 0x4000000C,
}


# The most entries a TPML_PCR_SELECTION holds (tpm2-tools' C struct reserves as many).
MAX_PCR_SELECTIONS = 16


class TpmFormatError(ValueError):
    """Bytes that are not the TPM structure they claim to be."""


class _Reader:
    """A bounded big-endian cursor; every read past the end is a `TpmFormatError`."""

    def __init__(self, data: bytes, structure: str) -> None:
        self._data = data
        self._offset = 0
        self._structure = structure

    def take(self, size: int, field: str) -> bytes:
        end = self._offset + size
        if end > len(self._data):
            raise TpmFormatError(
                f"{self._structure} is truncated: {field} needs {size} bytes at offset "
                f"{self._offset}, {len(self._data) - self._offset} remain"
            )
        chunk = self._data[self._offset : end]
        self._offset = end
        return chunk

    def u8(self, field: str) -> int:
        return self.take(1, field)[0]

    def u16(self, field: str) -> int:
        return int.from_bytes(self.take(2, field), "big")

    def u32(self, field: str) -> int:
        return int.from_bytes(self.take(4, field), "big")

    def u64(self, field: str) -> int:
        return int.from_bytes(self.take(8, field), "big")

    def tpm2b(self, field: str, limit: int = 1024) -> bytes:
        size = self.u16(f"{field} size")
        if size > limit:
            raise TpmFormatError(
                f"{self._structure}: {field} claims {size} bytes (at most {limit})"
            )
        return self.take(size, field)

    def finish(self) -> None:
        left = len(self._data) - self._offset
        if left:
            raise TpmFormatError(f"{self._structure} has {left} trailing bytes")


# --- PCR selection -------------------------------------------------------------------


PcrSelection = tuple[tuple[str, tuple[int, ...]], ...]  # (bank, ascending indices), in order


def bank_name(alg: int) -> str:
    bank = BANK_OF_ALGORITHM.get(alg)
    if bank is None:
        raise TpmFormatError(f"PCR bank algorithm 0x{alg:04x} is not sha1, sha256 or sha384")
    return bank


def bitmap_indices(bitmap: bytes) -> tuple[int, ...]:
    indices = tuple(
        8 * byte_index + bit
        for byte_index, byte in enumerate(bitmap)
        for bit in range(8)
        if byte >> bit & 1
    )
    if indices and indices[-1] >= PCR_COUNT:
        raise TpmFormatError(f"PCR selection names PCR {indices[-1]}, beyond the {PCR_COUNT}")
    return indices


def _read_selection(reader: _Reader) -> PcrSelection:
    count = reader.u32("TPML_PCR_SELECTION count")
    if count > MAX_PCR_SELECTIONS:
        raise TpmFormatError(f"TPML_PCR_SELECTION count {count} exceeds {MAX_PCR_SELECTIONS}")
    entries = []
    for _ in range(count):
        bank = bank_name(reader.u16("pcr selection hash"))
        size = reader.u8("sizeofSelect")
        if size > 4:
            raise TpmFormatError(f"sizeofSelect {size} exceeds 4")
        entries.append((bank, bitmap_indices(reader.take(size, "pcrSelect"))))
    return tuple(entries)


def parse_pcr_selection(data: bytes) -> PcrSelection:
    """A marshaled TPML_PCR_SELECTION, exactly."""
    reader = _Reader(data, "TPML_PCR_SELECTION")
    selection = _read_selection(reader)
    reader.finish()
    return selection


def _marshal_selection(selection: PcrSelection) -> bytes:
    out = struct.pack(">I", len(selection))
    for bank, indices in selection:
        bitmap = bytearray(3)
        for index in indices:
            bitmap[index // 8] |= 1 << index % 8
        out += struct.pack(">HB", BANK_ALGORITHMS[bank], 3) + bytes(bitmap)
    return out


# --- TPMS_ATTEST ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Attest:
    magic: int
    type: int
    qualified_signer: bytes
    extra_data: bytes
    clock: int
    reset_count: int
    restart_count: int
    safe: bool
    firmware_version: int
    pcr_selection: PcrSelection
    pcr_digest: bytes


def parse_attest(data: bytes) -> Attest:
    """A quote's TPMS_ATTEST (the TPM2B_ATTEST body), fully consumed.

    The magic is returned, not judged; any type but TPM_ST_ATTEST_QUOTE is an error because
    its body is not a quote."""
    reader = _Reader(data, "TPMS_ATTEST")
    magic = reader.u32("magic")
    attest_type = reader.u16("type")
    signer = reader.tpm2b("qualifiedSigner", 2 + 64)
    extra = reader.tpm2b("extraData", 66)
    clock = reader.u64("clock")
    reset, restart = reader.u32("resetCount"), reader.u32("restartCount")
    safe = reader.u8("safe")
    firmware = reader.u64("firmwareVersion")
    if attest_type != TPM_ST_ATTEST_QUOTE:
        raise TpmFormatError(
            f"TPMS_ATTEST type is 0x{attest_type:04x}, not a quote (TPM_ST_ATTEST_QUOTE 0x8018)"
        )
    selection = _read_selection(reader)
    digest = reader.tpm2b("pcrDigest", 64)
    reader.finish()
    return Attest(
        magic, attest_type, signer, extra, clock, reset, restart, safe != 0, firmware,
        selection, digest,
    )  # fmt: skip


def build_attest(
    qualified_signer: bytes,
    extra_data: bytes,
    selection: PcrSelection,
    pcr_digest: bytes,
    *,
    magic: int = TPM_GENERATED_VALUE,
    attest_type: int = TPM_ST_ATTEST_QUOTE,
    clock: int = 1_000_000,
    firmware_version: int = 0x2020_0314,
) -> bytes:
    def tpm2b(value: bytes) -> bytes:
        return struct.pack(">H", len(value)) + value

    return (
        struct.pack(">IH", magic, attest_type)
        + tpm2b(qualified_signer)
        + tpm2b(extra_data)
        + struct.pack(">QIIB", clock, 1, 0, 1)
        + struct.pack(">Q", firmware_version)
        + _marshal_selection(selection)
        + tpm2b(pcr_digest)
    )


# --- TPMT_PUBLIC and names -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PublicArea:
    raw: bytes  # the marshaled TPMT_PUBLIC the Name is computed over
    type: int
    name_alg: int
    attributes: int
    auth_policy: bytes
    symmetric_alg: int
    scheme: int  # ALG_NULL when the key leaves the scheme to each command
    scheme_hash: int | None
    key_bits: int  # RSA modulus bits, or the curve's bits for ECC
    curve: int | None
    public_key: rsa.RSAPublicKey | ec.EllipticCurvePublicKey

    @property
    def name(self) -> bytes:
        return object_name(self.name_alg, self.raw)


def _hash(alg: int, data: bytes) -> bytes:
    name = HASH_NAMES.get(alg)
    if name is None:
        raise TpmFormatError(f"hash algorithm 0x{alg:04x} is not sha1/sha256/sha384/sha512")
    return hashlib.new(name, data).digest()


def object_name(name_alg: int, public_area: bytes) -> bytes:
    """Name = nameAlg (2 bytes big-endian) || H_nameAlg(marshaled TPMT_PUBLIC)."""
    return struct.pack(">H", name_alg) + _hash(name_alg, public_area)


def qualified_name(name_alg: int, hierarchy_handle: int, name: bytes) -> bytes:
    """The qualified name of a primary object: nameAlg || H(hierarchy handle || Name)."""
    return struct.pack(">H", name_alg) + _hash(name_alg, struct.pack(">I", hierarchy_handle) + name)


def _read_scheme(reader: _Reader, object_type: int) -> tuple[int, int | None]:
    scheme = reader.u16("scheme")
    if scheme == ALG_NULL or (object_type == ALG_RSA and scheme == ALG_RSAES):
        return scheme, None
    scheme_hash = reader.u16("scheme hash")
    if scheme == ALG_ECDAA:
        reader.u16("ECDAA count")
    return scheme, scheme_hash


def _key(
    numbers: Callable[[], rsa.RSAPublicNumbers | ec.EllipticCurvePublicNumbers],
) -> rsa.RSAPublicKey | ec.EllipticCurvePublicKey:
    try:
        return numbers().public_key()
    except ValueError as error:  # cryptography refuses numbers that are not a valid key
        raise TpmFormatError(f"TPMT_PUBLIC holds no usable public key: {error}") from None


def parse_public(data: bytes) -> PublicArea:
    """A TPMT_PUBLIC of an RSA or ECC key (the TPM2B_PUBLIC body), fully consumed."""
    reader = _Reader(data, "TPMT_PUBLIC")
    object_type = reader.u16("type")
    if object_type not in (ALG_RSA, ALG_ECC):
        raise TpmFormatError(f"TPMT_PUBLIC type 0x{object_type:04x} is not an RSA or ECC key")
    name_alg = reader.u16("nameAlg")
    attributes = reader.u32("objectAttributes")
    auth_policy = reader.tpm2b("authPolicy", 64)
    symmetric = reader.u16("symmetric algorithm")
    if symmetric != ALG_NULL:
        reader.u16("symmetric keyBits")
        reader.u16("symmetric mode")
    scheme, scheme_hash = _read_scheme(reader, object_type)
    curve_id: int | None = None
    if object_type == ALG_RSA:
        key_bits = reader.u16("keyBits")
        exponent = reader.u32("exponent") or 65537
        modulus = reader.tpm2b("unique (RSA modulus)", 512)
        if len(modulus) * 8 != key_bits:
            raise TpmFormatError(f"RSA modulus is {len(modulus)} bytes, keyBits {key_bits}")
        key = _key(lambda: rsa.RSAPublicNumbers(exponent, int.from_bytes(modulus, "big")))
    else:
        curve_id = reader.u16("curveID")
        if reader.u16("kdf scheme") != ALG_NULL:
            reader.u16("kdf hash")
        x, y = reader.tpm2b("unique x", 66), reader.tpm2b("unique y", 66)
        curve = CURVES.get(curve_id)
        if curve is None:
            raise TpmFormatError(f"ECC curve 0x{curve_id:04x} is not NIST P-256/384/521")
        key_bits = curve.key_size
        size = (key_bits + 7) // 8
        if len(x) > size or len(y) > size:
            raise TpmFormatError(f"ECC point coordinates exceed {size} bytes")
        numbers = (int.from_bytes(x, "big"), int.from_bytes(y, "big"), curve)
        key = _key(lambda: ec.EllipticCurvePublicNumbers(*numbers))
    reader.finish()
    return PublicArea(
        data, object_type, name_alg, attributes, auth_policy, symmetric, scheme, scheme_hash,
        key_bits, curve_id, key,
    )  # fmt: skip


def build_public(
    key: rsa.RSAPublicKey | ec.EllipticCurvePublicKey,
    *,
    attributes: int = AK_ATTRIBUTES,
    scheme: int | None = None,
    scheme_hash: int = ALG_SHA256,
    name_alg: int = ALG_SHA256,
) -> bytes:
    """A signing key's TPMT_PUBLIC; `scheme` defaults to RSASSA or ECDSA by key type."""
    head = struct.pack(">HI", name_alg, attributes) + struct.pack(">H", 0)  # empty authPolicy
    if isinstance(key, rsa.RSAPublicKey):
        numbers = key.public_numbers()
        scheme = ALG_RSASSA if scheme is None else scheme
        modulus = numbers.n.to_bytes(key.key_size // 8, "big")
        exponent = 0 if numbers.e == 65537 else numbers.e
        body = struct.pack(">HI", key.key_size, exponent) + struct.pack(">H", len(modulus))
        return struct.pack(">H", ALG_RSA) + head + _scheme(scheme, scheme_hash) + body + modulus
    scheme = ALG_ECDSA if scheme is None else scheme
    curve_id = {name.name: alg for alg, name in CURVES.items()}[key.curve.name]
    size = (key.curve.key_size + 7) // 8
    point = key.public_numbers()
    unique = b"".join(struct.pack(">H", size) + v.to_bytes(size, "big") for v in (point.x, point.y))
    params = struct.pack(">HH", curve_id, ALG_NULL)
    return struct.pack(">H", ALG_ECC) + head + _scheme(scheme, scheme_hash) + params + unique


def _scheme(scheme: int, scheme_hash: int) -> bytes:
    symmetric = struct.pack(">H", ALG_NULL)
    if scheme == ALG_NULL:
        return symmetric + struct.pack(">H", ALG_NULL)
    return symmetric + struct.pack(">HH", scheme, scheme_hash)


# --- TPMT_SIGNATURE ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Signature:
    scheme: int
    hash_alg: int
    value: bytes  # RSA: the signature; ECDSA: DER (r, s) as `cryptography` verifies it


def parse_signature(data: bytes) -> Signature:
    """A TPMT_SIGNATURE of scheme RSASSA, RSAPSS or ECDSA, fully consumed."""
    reader = _Reader(data, "TPMT_SIGNATURE")
    scheme = reader.u16("sigAlg")
    if scheme not in (ALG_RSASSA, ALG_RSAPSS, ALG_ECDSA):
        raise TpmFormatError(f"signature scheme 0x{scheme:04x} is not RSASSA, RSAPSS or ECDSA")
    hash_alg = reader.u16("hash")
    if scheme == ALG_ECDSA:
        r = int.from_bytes(reader.tpm2b("signatureR", 66), "big")
        s = int.from_bytes(reader.tpm2b("signatureS", 66), "big")
        value = encode_dss_signature(r, s)
    else:
        value = reader.tpm2b("sig", 512)
    reader.finish()
    return Signature(scheme, hash_alg, value)


def build_signature(scheme: int, hash_alg: int, value: bytes, *, ecc_size: int = 32) -> bytes:
    """TPMT_SIGNATURE from an RSA signature or a DER ECDSA one (r, s padded to `ecc_size`)."""
    head = struct.pack(">HH", scheme, hash_alg)
    if scheme == ALG_ECDSA:
        r, s = decode_dss_signature(value)
        return head + b"".join(
            struct.pack(">H", ecc_size) + v.to_bytes(ecc_size, "big") for v in (r, s)
        )
    return head + struct.pack(">H", len(value)) + value
