"""Every RIM in the shared NVIDIA vectors, judged at the times MANIFEST.md names, and its
appraisal table reproduced against the genuine SPDM reports: which RIMs verify when, why the
others fail, and exactly which active indices mismatch."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography import x509
from signxml.verifier import XMLVerifier

from cmcp_gpucc import spdm
from cmcp_gpucc.rim import (
    Rim,
    RimError,
    mismatching_indices,
    parse_rim,
    signature_config,
    verify_rim,
)
from cmcp_gpucc.roots import vendored

DRIVER_550 = "nvat-rim-NV_GPU_DRIVER_GH100_550.144.03.xml"
DRIVER_550_BAD_SIGNATURE = "nvat-rim-NV_GPU_DRIVER_GH100_550.144.03-bad-signature.xml"
GB100_DEBUG_ROOT = "nvat-rim-GB100-VBIOS-97.00.83.00.09-debug-root.xml"
DRIVER_535_MISMATCH = "nvat-rim-NV_GPU_DRIVER_GH100_535.86.09_measurement_mismatch.xml"
DRIVER_570_EXPIRED = "nvat-rim-NV_GPU_DRIVER_GH100_570.124.03_expired.xml"
VBIOS_5E = "nvat-rim-NV_GPU_VBIOS_1010_0200_882_96005E0001_measurement_mismatch.xml"
SWITCH = "nvat-rim-NV_SWITCH_BIOS_5612_0002_890_9610550001.xml"
SWITCH_INVALID = "nvat-rim-NV_SWITCH_BIOS_5612_0002_890_9610550001_invalid_signature.xml"
SWITCH_MISMATCH = "nvat-rim-NV_SWITCH_BIOS_5612_0002_890_9610550001_measurement_mismatch.xml"
ALL_RIMS = (
    DRIVER_550, DRIVER_550_BAD_SIGNATURE, GB100_DEBUG_ROOT, DRIVER_535_MISMATCH,
    DRIVER_570_EXPIRED, VBIOS_5E, SWITCH, SWITCH_INVALID, SWITCH_MISMATCH,
)  # fmt: skip
GPU_RIMS = (DRIVER_550, GB100_DEBUG_ROOT, DRIVER_535_MISMATCH, DRIVER_570_EXPIRED, VBIOS_5E)

DEC_2026 = datetime(2026, 12, 1, tzinfo=UTC)
JUN_2025 = datetime(2025, 6, 1, tzinfo=UTC)


def day(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


@pytest.fixture(scope="module")
def roots() -> list[x509.Certificate]:
    return [anchor.cert for anchor in vendored().rim]


def read(vectors: Path, name: str) -> bytes:
    return (vectors / name).read_bytes()


def blocks_of(vectors: Path, name: str) -> dict[int, bytes]:
    """The SPDM measurement blocks of an evidence vector, by block index."""
    if name.endswith(".json"):
        entry = json.loads((vectors / name).read_text())[0]
        raw = base64.b64decode(entry["evidence"])
    else:
        raw = bytes.fromhex((vectors / name).read_text())
    return {index: block.value for index, block in spdm.parse(raw).blocks.items()}


def test_every_rim_vector_is_covered(vectors: Path) -> None:
    assert sorted(p.name for p in vectors.glob("*.xml")) == sorted(ALL_RIMS)


@pytest.mark.parametrize(
    ("name", "version", "edition", "active"),
    [
        (DRIVER_550, "550.144.03", "GPU", [7, *range(21, 41)]),
        (DRIVER_550_BAD_SIGNATURE, "550.144.03", "GPU", [7, *range(21, 41)]),
        (GB100_DEBUG_ROOT, "97.00.83.00.09", "GPU", [*range(14), *range(15, 21)]),
        (DRIVER_535_MISMATCH, "535.86.09", "GPU", [7, *range(21, 42)]),
        (DRIVER_570_EXPIRED, "570.124.03", "GPU", [7, *range(21, 41)]),
        (VBIOS_5E, "96.00.5E.00.01", "GPU", [*range(7), *range(8, 13)]),
        (SWITCH, "96.10.55.00.01", "SWITCH", list(range(31))),
        (SWITCH_INVALID, "96.10.55.00.01", "SWITCH", list(range(31))),
        (SWITCH_MISMATCH, "96.10.55.00.01", "GPU", [*range(7), *range(8, 13)]),
    ],
)
def test_each_rim_parses_as_the_manifest_says(
    vectors: Path, name: str, version: str, edition: str, active: list[int]
) -> None:
    rim = parse_rim(read(vectors, name))
    assert (rim.version, rim.edition) == (version, edition)
    assert [m.index for m in rim.active] == active
    assert len(rim.measurements) == 64
    assert all(len(value) == 48 for m in rim.measurements for value in m.alternatives)
    assert max(len(m.alternatives) for m in rim.active) <= 4


def test_kinds_follow_the_version_shape(vectors: Path) -> None:
    kinds = {name: parse_rim(read(vectors, name)).kind for name in ALL_RIMS}
    assert kinds[DRIVER_550] == kinds[DRIVER_570_EXPIRED] == "driver"
    assert kinds[VBIOS_5E] == kinds[GB100_DEBUG_ROOT] == kinds[SWITCH_MISMATCH] == "vbios"
    assert kinds[SWITCH] is kinds[SWITCH_INVALID] is None  # an NVSwitch's, not a GPU's


@pytest.mark.parametrize(
    ("name", "at"),
    [
        (DRIVER_550, DEC_2026),
        (DRIVER_550, day("2025-01-01")),
        (DRIVER_550, day("2026-12-30")),
        (VBIOS_5E, day("2023-12-14")),
        (VBIOS_5E, JUN_2025),
        (SWITCH, day("2026-06-01")),
        (SWITCH, day("2027-11-01")),
    ],
)
def test_genuine_rims_verify_while_their_signer_is_valid(
    vectors: Path, roots: list[x509.Certificate], name: str, at: datetime
) -> None:
    rim = verify_rim(read(vectors, name), roots, at)
    assert rim.version == parse_rim(read(vectors, name)).version
    assert rim.active == parse_rim(read(vectors, name)).active
    assert rim.signer_chain[-1] == roots[0]
    assert len(rim.signer_chain) == 4


@pytest.mark.parametrize(
    ("name", "at", "reason"),
    [
        # Signer L4 valid only until 2026-12-30: the same RIM fails after it.
        (DRIVER_550, day("2026-12-31"), '"HCC RIM L4 Signer" expired at 2026-12-30'),
        (DRIVER_550, day("2024-12-01"), '"HCC RIM L4 Signer" is not valid until 2024-12-30'),
        # Valid at 2025-06-01 above; its signer expired on 2025-12-12.
        (VBIOS_5E, DEC_2026, '"HCC RIM L4 Signer" expired at 2025-12-12'),
        # Its leaf is valid until 2028-05-19, but its L3 CA only until 2027-11-02.
        (SWITCH, day("2027-12-01"), '"NVIDIA Reference Value L3 LS10 001" expired at 2027-11-02'),
        (SWITCH, JUN_2025, "is not valid until 2026-05-20"),
    ],
)
def test_a_rim_is_judged_at_the_given_time_never_the_wall_clock(
    vectors: Path, roots: list[x509.Certificate], name: str, at: datetime, reason: str
) -> None:
    with pytest.raises(RimError, match=reason.replace("(", r"\(")):
        verify_rim(read(vectors, name), roots, at)


@pytest.mark.parametrize(
    ("name", "at", "reason"),
    [
        # One SignatureValue character changed: the reference digest still holds.
        (DRIVER_550_BAD_SIGNATURE, DEC_2026, "XML signature does not verify with the key of"),
        # A debug-only chain: the leaf's issuer is neither embedded nor pinned.
        (GB100_DEBUG_ROOT, day("2026-06-01"), "L3 GH100 001 Debug Only, which is neither"),
        (DRIVER_535_MISMATCH, day("2026-06-01"), "reference digest does not match"),
        (DRIVER_570_EXPIRED, day("2025-01-01T12:00:00"), "reference digest does not match"),
        (DRIVER_570_EXPIRED, DEC_2026, '"RIM L4 Signer" expired at 2025-01-02'),
        (SWITCH_INVALID, day("2025-06-01"), "reference digest does not match"),
        (SWITCH_MISMATCH, JUN_2025, "reference digest does not match"),
    ],
)
def test_negative_rims_fail_for_their_reason(
    vectors: Path, roots: list[x509.Certificate], name: str, at: datetime, reason: str
) -> None:
    with pytest.raises(RimError, match=reason):
        verify_rim(read(vectors, name), roots, at)


def test_the_debug_rim_fails_its_chain_alone(vectors: Path, roots: list[x509.Certificate]) -> None:
    """Its XML-DSig holds with its embedded leaf (signxml alone, as MANIFEST.md checked it),
    so the chain is what fails; trusting its embedded debug root does not mend the chain
    either, since the L3 between them is missing."""
    document = read(vectors, GB100_DEBUG_ROOT)
    leaf, debug_root = parse_embedded(document)
    at = day("2026-06-01")
    XMLVerifier().verify(document, x509_cert=leaf, expect_config=signature_config(at))
    with pytest.raises(RimError, match="L3 GH100 001 Debug Only, which is neither"):
        verify_rim(document, roots, at)
    with pytest.raises(RimError, match="neither embedded in the RIM nor a pinned root"):
        verify_rim(document, [debug_root], at)


def parse_embedded(document: bytes) -> list[x509.Certificate]:
    from lxml import etree  # type: ignore[import-untyped]

    root = etree.fromstring(document)
    path = ".//{http://www.w3.org/2000/09/xmldsig#}X509Certificate"
    return [
        x509.load_der_x509_certificate(base64.b64decode("".join(e.text.split())))
        for e in root.iterfind(path)
    ]


def test_a_rim_under_a_root_that_is_not_pinned_fails(vectors: Path) -> None:
    document = read(vectors, DRIVER_550)
    device_root = vendored().device[0].cert  # NVIDIA's, but not the CoRIM signing root
    with pytest.raises(RimError, match="self-signed certificate that is not a pinned"):
        verify_rim(document, [device_root], DEC_2026)
    with pytest.raises(RimError, match="No CoRIM signing root is pinned"):
        verify_rim(document, [], DEC_2026)


# MANIFEST.md's appraisal table: RIM, evidence, active, matching, mismatching RIM indices.
APPRAISALS = [
    (VBIOS_5E, "nvat-hopper-535.86.09-attestation-report.hex", 12, 11, (9,)),
    (VBIOS_5E, "nvat-hopper-570.124.03-attestation-report.hex", 12, 11, (11,)),
    (VBIOS_5E, "hopper-attestation-report.hex", 12, 9, (1, 2, 11)),
    (
        DRIVER_535_MISMATCH, "nvat-hopper-535.86.09-attestation-report.hex", 22, 7,
        (7, 21, 22, 25, 26, 27, 29, 30, 31, 32, 34, 37, 39, 40, 41),
    ),
    (
        DRIVER_570_EXPIRED, "nvat-hopper-570.124.03-attestation-report.hex", 21, 5,
        (7, 21, 22, 25, 26, 27, 29, 30, 31, 32, 34, 35, 36, 37, 39, 40),
    ),
    (DRIVER_550, "hopper-attestation-report.hex", 21, 16, (7, 22, 31, 39, 40)),
    (
        DRIVER_550, "nvat-hopper-590.12-evidence.json", 21, 10,
        (7, 21, 22, 25, 26, 27, 29, 30, 31, 39, 40),
    ),
    (GB100_DEBUG_ROOT, "nvat-blackwell-attestation-report.hex", 20, 15, (2, 3, 8, 18, 19)),
]  # fmt: skip
REPORTS = (
    "hopper-attestation-report.hex",
    "nvat-blackwell-attestation-report.hex",
    "nvat-hopper-535.86.09-attestation-report.hex",
    "nvat-hopper-570.124.03-attestation-report.hex",
    "nvat-hopper-590.12-evidence.json",
    "nvat-hopper-invalid-signature-report.hex",
)


@pytest.mark.parametrize("row", APPRAISALS, ids=lambda row: f"{row[0][9:40]}-{row[1][:24]}")
def test_the_appraisal_table(
    vectors: Path, row: tuple[str, str, int, int, tuple[int, ...]]
) -> None:
    rim_name, report, active, matching, mismatching = row
    rim = parse_rim(read(vectors, rim_name))
    blocks = blocks_of(vectors, report)
    assert len(blocks) == 64
    assert len(rim.active) == active
    found = mismatching_indices(rim, blocks)
    assert found == mismatching
    assert active - len(found) == matching


def test_the_mismatch_of_index_9_is_the_one_the_manifest_names(vectors: Path) -> None:
    rim = parse_rim(read(vectors, VBIOS_5E))
    blocks = blocks_of(vectors, "nvat-hopper-535.86.09-attestation-report.hex")
    index_9 = next(m for m in rim.measurements if m.index == 9)
    assert index_9.alternatives[0].hex().startswith("059b32e7")
    assert index_9.alternatives[0].hex().endswith("de03")
    assert blocks[10].hex().startswith("7f3e9382") and blocks[10].hex().endswith("c098")


def test_offset_zero_would_match_almost_nothing(vectors: Path) -> None:
    """RIM index i is block i+1: the same pairs read at index i match 0-5 indices only."""
    for rim_name, report, active, _, _ in APPRAISALS:
        rim = parse_rim(read(vectors, rim_name))
        shifted = {index + 1: value for index, value in blocks_of(vectors, report).items()}
        assert active - len(mismatching_indices(rim, shifted)) <= 5


def test_no_public_gpu_rim_and_report_pair_appraises_clean(vectors: Path) -> None:
    for rim_name in GPU_RIMS:
        rim = parse_rim(read(vectors, rim_name))
        for report in REPORTS:
            assert mismatching_indices(rim, blocks_of(vectors, report)), (rim_name, report)


def test_a_missing_block_is_a_mismatch(vectors: Path) -> None:
    rim = parse_rim(read(vectors, VBIOS_5E))
    blocks = blocks_of(vectors, "nvat-hopper-535.86.09-attestation-report.hex")
    del blocks[1]  # RIM index 0
    assert mismatching_indices(rim, blocks) == (0, 9)
    assert mismatching_indices(rim, {}) == tuple(m.index for m in rim.active)


def test_inactive_indices_are_not_appraised(vectors: Path) -> None:
    rim = parse_rim(read(vectors, VBIOS_5E))
    blocks = blocks_of(vectors, "nvat-hopper-535.86.09-attestation-report.hex")
    inactive = [m.index for m in rim.measurements if not m.active]
    assert 7 in inactive
    for index in inactive:
        blocks[index + 1] = bytes(48)
    assert mismatching_indices(rim, blocks) == (9,)


def test_an_index_passes_on_any_of_its_alternatives(vectors: Path) -> None:
    rim = parse_rim(read(vectors, DRIVER_550))
    several = next(m for m in rim.active if len(m.alternatives) > 1)
    blocks = blocks_of(vectors, "hopper-attestation-report.hex")
    for alternative in several.alternatives:
        blocks[several.index + 1] = alternative
        assert several.index not in mismatching_indices(rim, blocks)
    blocks[several.index + 1] = bytes(47) + b"\x01"
    assert several.index in mismatching_indices(rim, blocks)


def test_a_verified_rim_reads_what_was_signed(vectors: Path, roots: list[x509.Certificate]) -> None:
    verified: Rim = verify_rim(read(vectors, VBIOS_5E), roots, JUN_2025)
    assert verified.tag_id.startswith("560b6686")
    assert verified.measurements == parse_rim(read(vectors, VBIOS_5E)).measurements
