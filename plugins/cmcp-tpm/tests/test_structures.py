"""TPM 2.0 unmarshalling against bytes real TPMs produced.

Two sources of real bytes: a quote an swtpm (libtpms) made, captured once with tpm2-tools
5.4 (`tpm2_createprimary -C e -G ecc256:ecdsa-sha256:null -a 'fixedtpm|fixedparent|
sensitivedataorigin|userwithauth|restricted|sign'`, `tpm2_readpublic -f tpmt -n -q`,
`tpm2_pcrreset 23`, `tpm2_pcrextend 23:sha256=abab..ab`, `tpm2_quote -l sha256:0-7,23 -q
000102..1f -m -s -o`) and the Azure vTPM vector in the shared attestation vectors.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from cmcp_tpm import pcr
from cmcp_tpm import structures as tpm
from cmcp_tpm.pcr_file import parse_pcr_file

AZURE = (
    Path(__file__).resolve().parents[4] / "shared" / "attestation-vectors" / "tpm"
    / "azure-vtpm-2026-07-27"
)  # fmt: skip

# swtpm ECC P-256 AK, a primary key of the endorsement hierarchy.
SWTPM_AK_PUBLIC = bytes.fromhex(
    "0023000b00050072000000100018000b00030010002040a2076c80f184ce6cb759d2435f0632377a13d392"
    "06011aa5328e55b41aa7200020d21952ce4a8674b6c96496c8a45e3a5d37561dee954ca4c9221e46b6117d"
    "56d5"
)
SWTPM_AK_NAME = bytes.fromhex(
    "000bc77aef0735f9e6b79c1fe3e0d511fcba91fbe3a59d6cc89a825a52e9b2a37bbc"
)
SWTPM_AK_QUALIFIED_NAME = bytes.fromhex(
    "000bd9e0c259ef48b640f94a4b4e4268120c7a764f06ef7e149ac12f3e55a887fec0"
)
SWTPM_QUOTE = bytes.fromhex(
    "ff54434780180022000bd9e0c259ef48b640f94a4b4e4268120c7a764f06ef7e149ac12f3e55a887fec000"
    "20000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f00000000000027b70000"
    "00010000000001201910230016363600000001000b03ff008000207497f698eb915cee6e1d2fe22fa25083"
    "84f7ff8aa78588eab0fcbfd68a93022a"
)
SWTPM_SIGNATURE = bytes.fromhex(
    "0018000b0020ff6c63f839675df0510a00b15dd7702a8fd892cf18ad1fd07bb45c0b8f902da9002022c4fd"
    "67ca19b84a4f451ffe6684c2360c6928e43e89271b3c6b0a07fa2b253a"
)
# swtpm RSA-2048 AK (RSASSA/SHA-256, exponent marshaled as 0 meaning 65537).
SWTPM_RSA_AK_PUBLIC = bytes.fromhex(
    "0001000b00050072000000100014000b08000000000001009b92acf27e869502728445930a35e7754b9bf1"
    "a70612983f5bdd3dadc851d274b9e4ef11c046ceba457ef4f558bb39f6276b2216dc3459cc47cd079cd63e"
    "4d52e01efe05f158941cad624eb47105d3091292220e22958466521d046417bb9adf881092aef697293659"
    "1ee6c6d48d0cffab1f94f6c01e214e89ff63d693ae3506f6bb21cccf147b754a119ec51cfb2742a19b04c0"
    "365f06229da1b438f57264b61f969151bf7f8691e88d80939fc3f24d374b6981852efa8e6965532510a504"
    "6336e127a4897572ee59b06c5244b59fbc6518c0fe697603629da93da1c38fabb4eb57a4e1cf70bc314c83"
    "da0fc6f48e296c10aacdaf637621fd965437991868f5"
)
SWTPM_RSA_AK_NAME = bytes.fromhex(
    "000b40cfabdaca328250697f4732c46201dad70597c0dc2663935989df643c59c9fa"
)
SELECTION_0_7_23 = (("sha256", (0, 1, 2, 3, 4, 5, 6, 7, 23)),)


def _azure(name: str) -> bytes:
    if not AZURE.is_dir():
        pytest.skip(f"the shared attestation vectors are not at {AZURE}")
    return (AZURE / name).read_bytes()


def test_swtpm_ak_public_parses_to_its_key_name_and_qualified_name() -> None:
    area = tpm.parse_public(SWTPM_AK_PUBLIC)
    assert (area.type, area.name_alg, area.attributes) == (tpm.ALG_ECC, tpm.ALG_SHA256, 0x50072)
    assert area.attributes == tpm.AK_ATTRIBUTES
    assert (area.scheme, area.scheme_hash, area.curve) == (
        tpm.ALG_ECDSA, tpm.ALG_SHA256, tpm.ECC_NIST_P256,
    )  # fmt: skip
    assert isinstance(area.public_key, ec.EllipticCurvePublicKey)
    assert area.public_key.public_numbers().x == int(
        "40a2076c80f184ce6cb759d2435f0632377a13d39206011aa5328e55b41aa720", 16
    )
    assert area.name == SWTPM_AK_NAME
    endorsement = tpm.HIERARCHY_HANDLES["endorsement"]
    assert tpm.qualified_name(area.name_alg, endorsement, area.name) == SWTPM_AK_QUALIFIED_NAME
    assert tpm.build_public(area.public_key) == SWTPM_AK_PUBLIC


def test_swtpm_rsa_ak_public_reads_exponent_zero_as_65537() -> None:
    area = tpm.parse_public(SWTPM_RSA_AK_PUBLIC)
    assert isinstance(area.public_key, rsa.RSAPublicKey)
    assert (area.key_bits, area.public_key.public_numbers().e) == (2048, 65537)
    assert (area.scheme, area.scheme_hash) == (tpm.ALG_RSASSA, tpm.ALG_SHA256)
    assert area.name == SWTPM_RSA_AK_NAME
    assert tpm.build_public(area.public_key) == SWTPM_RSA_AK_PUBLIC


def test_swtpm_quote_parses_and_its_signature_verifies() -> None:
    attest = tpm.parse_attest(SWTPM_QUOTE)
    assert (attest.magic, attest.type) == (tpm.TPM_GENERATED_VALUE, tpm.TPM_ST_ATTEST_QUOTE)
    assert attest.qualified_signer == SWTPM_AK_QUALIFIED_NAME
    assert attest.extra_data == bytes(range(32))
    assert (attest.reset_count, attest.restart_count, attest.safe) == (1, 0, True)
    assert attest.pcr_selection == SELECTION_0_7_23
    pcr23 = pcr.replay("sha256", [b"\xab" * 32])
    assert attest.pcr_digest == pcr.composite("sha256", [bytes(32)] * 8 + [pcr23])

    signature = tpm.parse_signature(SWTPM_SIGNATURE)
    assert (signature.scheme, signature.hash_alg) == (tpm.ALG_ECDSA, tpm.ALG_SHA256)
    key = tpm.parse_public(SWTPM_AK_PUBLIC).public_key
    assert isinstance(key, ec.EllipticCurvePublicKey)
    key.verify(signature.value, SWTPM_QUOTE, ec.ECDSA(hashes.SHA256()))
    assert tpm.build_signature(signature.scheme, signature.hash_alg, signature.value) == (
        SWTPM_SIGNATURE
    )


@pytest.mark.parametrize(
    ("parse", "data"),
    [
        (tpm.parse_attest, SWTPM_QUOTE),
        (tpm.parse_public, SWTPM_AK_PUBLIC),
        (tpm.parse_public, SWTPM_RSA_AK_PUBLIC),
        (tpm.parse_signature, SWTPM_SIGNATURE),
    ],
    ids=["attest", "ecc-public", "rsa-public", "signature"],
)
def test_every_truncation_and_any_trailing_byte_is_a_format_error(
    parse: Callable[[bytes], object], data: bytes
) -> None:
    for end in range(len(data)):
        with pytest.raises(tpm.TpmFormatError):
            parse(data[:end])
    with pytest.raises(tpm.TpmFormatError, match="1 trailing bytes"):
        parse(data + b"\0")


def test_truncation_message_names_the_field_and_offset() -> None:
    with pytest.raises(tpm.TpmFormatError, match=r"TPMS_ATTEST is truncated: pcrDigest needs"):
        tpm.parse_attest(SWTPM_QUOTE[:-1])


def test_attest_of_another_type_is_refused() -> None:
    certify = SWTPM_QUOTE[:4] + struct.pack(">H", 0x8017) + SWTPM_QUOTE[6:]
    with pytest.raises(tpm.TpmFormatError, match="0x8017, not a quote"):
        tpm.parse_attest(certify)


def test_unsupported_objects_and_schemes_are_named() -> None:
    keyed_hash = struct.pack(">H", 0x0008) + SWTPM_AK_PUBLIC[2:]
    with pytest.raises(tpm.TpmFormatError, match="type 0x0008 is not an RSA or ECC key"):
        tpm.parse_public(keyed_hash)
    hmac = struct.pack(">H", 0x0005) + SWTPM_SIGNATURE[2:]
    with pytest.raises(tpm.TpmFormatError, match="scheme 0x0005"):
        tpm.parse_signature(hmac)
    off_curve = SWTPM_AK_PUBLIC[:-1] + bytes([SWTPM_AK_PUBLIC[-1] ^ 1])
    with pytest.raises(tpm.TpmFormatError, match="no usable public key"):
        tpm.parse_public(off_curve)
    sm3_bank = bytes.fromhex("00000001001203ff0000")
    with pytest.raises(tpm.TpmFormatError, match="0x0012 is not sha1, sha256 or sha384"):
        tpm.parse_pcr_selection(sm3_bank)


def test_pcr_selection_bitmap_reads_in_bank_then_index_order() -> None:
    # PCR 23 is bit 7 of the third byte; a sizeofSelect below 3 is read as given.
    marshaled = bytes.fromhex("00000002000b03ff0080000c0101")
    assert tpm.parse_pcr_selection(marshaled) == (
        ("sha256", (0, 1, 2, 3, 4, 5, 6, 7, 23)),
        ("sha384", (0,)),
    )
    with pytest.raises(tpm.TpmFormatError, match="PCR 24"):
        tpm.parse_pcr_selection(bytes.fromhex("00000001000b0400000001"))


def _pcr_file(values: list[bytes], order: str = "<") -> bytes:
    """tpm2-tools' layout as tpm2_quote 5.4 wrote it for the swtpm quote above: the lists
    hold 8 digests each (the TPM's PCR_Read limit), the last one fewer."""
    selection = struct.pack(order + "I", 1) + struct.pack(order + "HB", tpm.ALG_SHA256, 3)
    selection += bytes([0xFF, 0x00, 0x80, 0x00, 0x00]) + bytes(132 - 12)
    chunks = [values[i : i + 8] for i in range(0, len(values), 8)]
    out = selection + struct.pack(order + "I", len(chunks))
    for chunk in chunks:
        out += struct.pack(order + "I", len(chunk))
        for slot in range(8):
            digest = chunk[slot] if slot < len(chunk) else b""
            out += struct.pack(order + "H", len(digest)) + digest.ljust(64, b"\0")
    return out


@pytest.mark.parametrize("order", ["<", ">"], ids=["little-endian", "big-endian"])
def test_pcr_file_with_two_digest_lists(order: str) -> None:
    values = [hashlib.sha256(bytes([i])).digest() for i in range(9)]
    data = _pcr_file(values, order)
    assert len(data) == 1200  # the size of the swtpm quote's `-o` file
    assert parse_pcr_file(data) == {
        "sha256": dict(zip((0, 1, 2, 3, 4, 5, 6, 7, 23), values, strict=True))
    }
    with pytest.raises(tpm.TpmFormatError, match="8 values for 9 selected PCRs"):
        parse_pcr_file(_pcr_file(values[:8], order))
    with pytest.raises(tpm.TpmFormatError):
        parse_pcr_file(data[:-1])


def test_azure_quote_matches_the_manifest() -> None:
    quote = _azure("quote.msg")
    assert len(quote) == 145
    attest = tpm.parse_attest(quote)
    assert (attest.magic, attest.type) == (0xFF544347, 0x8018)
    assert attest.extra_data == bytes.fromhex(_azure("nonce.hex").decode().strip())
    assert attest.pcr_selection == (("sha256", (0, 1, 2, 3, 4, 5, 6, 7)),)
    assert attest.pcr_digest.hex() == (
        "461684441feb67717a22b7f43096ec2f92a6582f5987f82729b3749180fede61"
    )


def test_azure_pcr_file_hashes_to_the_quoted_digest() -> None:
    pcrs = parse_pcr_file(_azure("pcrs.bin"))
    assert list(pcrs) == ["sha256"] and sorted(pcrs["sha256"]) == list(range(8))
    composite = pcr.composite("sha256", [pcrs["sha256"][i] for i in range(8)])
    assert composite == tpm.parse_attest(_azure("quote.msg")).pcr_digest


def test_azure_raw_signature_wraps_losslessly_and_verifies() -> None:
    raw = _azure("quote.sig")
    marshaled = tpm.build_signature(tpm.ALG_RSASSA, tpm.ALG_SHA256, raw)
    assert marshaled[:6] == bytes.fromhex("0014000b0100")
    signature = tpm.parse_signature(marshaled)
    assert signature.value == raw
    key = serialization.load_pem_public_key(_azure("ak.pub"))
    assert isinstance(key, rsa.RSAPublicKey)
    key.verify(raw, _azure("quote.msg"), padding.PKCS1v15(), hashes.SHA256())
