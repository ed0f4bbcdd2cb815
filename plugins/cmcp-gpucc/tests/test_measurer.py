"""`cmcp measure gpu-cc` run as the installed console script: the measurement of NVIDIA's
genuine driver and VBIOS RIMs at a time both were valid, recomputed here from the XML with
lxml and rfc8785 alone; synthetic RIMs under a test root; and every refusal."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import rfc8785
from cryptography.hazmat.primitives.serialization import Encoding
from lxml import etree  # type: ignore[import-untyped]

from cmcp_gpucc import plugin
from cmcp_gpucc.rim_signing import AT, RimPki, rim_document

CMCP = Path(sys.executable).with_name("cmcp")
DRIVER = "nvat-rim-NV_GPU_DRIVER_GH100_550.144.03.xml"
VBIOS = "nvat-rim-NV_GPU_VBIOS_1010_0200_882_96005E0001_measurement_mismatch.xml"
# The only time window in which both genuine GH100 RIMs verify: 2024-12-30..2025-12-12.
BOTH_VALID = "2025-06-01T00:00:00Z"
SWID = "{http://standards.iso.org/iso/19770/-2/2015/schema.xsd}"
SHA384 = "{http://www.w3.org/2001/04/xmlenc#sha384}"


def measure(*args: str | Path) -> subprocess.CompletedProcess[str]:
    """`cmcp measure gpu-cc ARGS` with none of cMCP's variables from this environment."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("CMCP_")}
    return subprocess.run(
        [str(CMCP), "measure", "gpu-cc", *map(str, args)],
        capture_output=True, text=True, env=env, timeout=60, check=False,
    )  # fmt: skip


def independent_measurement(driver: bytes, vbios: bytes) -> str:
    """The documented preimage, built from the XML without cmcp_gpucc."""

    def golden(xml: bytes) -> dict[str, Any]:
        root = etree.fromstring(xml)
        meta = root.find(f"{SWID}Meta")
        active = {}
        for resource in root.find(f"{SWID}Payload"):
            if resource.get("active") == "True":
                count = int(resource.get("alternatives"))
                active[resource.get("index")] = [
                    resource.get(f"{SHA384}Hash{n}").lower() for n in range(count)
                ]
        return {
            "product": meta.get("product"),
            "version": meta.get("colloquialVersion"),
            "measurements": active,
        }

    preimage: dict[str, Any] = {
        "nvidia_gpu_rims": 1,
        "driver": golden(driver),
        "vbios": golden(vbios),
    }
    return "sha384:" + hashlib.sha384(rfc8785.dumps(preimage)).hexdigest()


@pytest.fixture(scope="module", autouse=True)
def installed() -> None:
    if not CMCP.exists():
        pytest.fail(f"{CMCP} is missing: install the project (scripts/dev.sh setup)")
    listed = subprocess.run(
        [str(CMCP), "measure", "--help"], capture_output=True, text=True, timeout=60, check=False
    )
    if "gpu-cc" not in listed.stdout:
        pytest.fail("cmcp does not list gpu-cc: pip install -e plugins/cmcp-gpucc")


def test_the_genuine_rims_measure_to_the_documented_digest(vectors: Path) -> None:
    result = measure("--rim", vectors / DRIVER, "--rim", vectors / VBIOS, "--at", BOTH_VALID)
    assert result.returncode == 0, result.stderr
    expected = independent_measurement(
        (vectors / DRIVER).read_bytes(), (vectors / VBIOS).read_bytes()
    )
    assert result.stdout.strip() == expected
    swapped = measure("--rim", vectors / VBIOS, "--rim", vectors / DRIVER, "--at", BOTH_VALID)
    assert swapped.stdout.strip() == expected


def test_json_shows_the_golden_values_and_the_policy_versions(vectors: Path) -> None:
    result = measure(
        "--rim", vectors / DRIVER, "--rim", vectors / VBIOS, "--at", BOTH_VALID, "--json"
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    details = report["details"]
    assert report["provider"] == "gpu-cc"
    assert details["judged_at"] == "2025-06-01T00:00:00+00:00"
    assert details["platform_policy"] == {
        "minimum_driver_version": "550.144.03",
        "minimum_vbios_version": "96.00.5E.00.01",
    }
    driver, vbios = details["driver"], details["vbios"]
    assert list(driver["active"]) == [str(i) for i in (7, *range(21, 41))]
    assert list(vbios["active"]) == [str(i) for i in (*range(7), *range(8, 13))]
    assert vbios["active"]["9"][0].startswith("059b32e7")
    assert (driver["signer"], driver["signed_under"]) == (
        "HCC RIM L4 Signer",
        "NVIDIA CoRIM signing Root CA",
    )
    assert driver["valid_until"] == "2026-12-30T16:56:50+00:00"
    assert vbios["valid_until"] == "2025-12-12T23:58:03+00:00"


def test_an_expired_rim_is_refused_at_the_time_given(vectors: Path) -> None:
    late = measure(
        "--rim", vectors / DRIVER, "--rim", vectors / VBIOS, "--at", "2026-01-01T00:00:00Z"
    )
    assert late.returncode == 2
    assert "does not verify at 2026-01-01T00:00:00+00:00" in late.stderr
    assert "expired at 2025-12-12" in " ".join(late.stderr.split())
    # Without --at the time is now: the VBIOS RIM's signer expired in 2025.
    now = measure("--rim", vectors / DRIVER, "--rim", vectors / VBIOS)
    assert now.returncode == 2 and "expired at" in now.stderr


def write_pair(tmp_path: Path, pki: RimPki, *, vbios_product: str = "GH100") -> tuple[Path, Path]:
    driver = tmp_path / "driver.xml"
    vbios = tmp_path / "vbios.xml"
    driver.write_bytes(pki.sign(rim_document({7: [b"\x07" * 48]}, version="590.12")))
    document = rim_document(
        {0: [b"\x10" * 48, b"\x11" * 48]}, version="96.00.A5.00.01", product=vbios_product
    )
    vbios.write_bytes(pki.sign(document))
    return driver, vbios


def test_synthetic_rims_measure_under_their_test_root(tmp_path: Path) -> None:
    pki = RimPki.create()
    driver, vbios = write_pair(tmp_path, pki)
    root = tmp_path / "root.pem"
    root.write_bytes(pki.root.cert.public_bytes(Encoding.PEM))
    at = AT.isoformat()
    result = measure("--rim", driver, "--rim", vbios, "--at", at, "--trust-root", root)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == independent_measurement(driver.read_bytes(), vbios.read_bytes())
    # The same golden values signed under another PKI: the same measurement.
    other = RimPki.create()
    again = tmp_path / "again"
    again.mkdir()
    driver_2, vbios_2 = write_pair(again, other)
    root.write_bytes(other.root.cert.public_bytes(Encoding.PEM))
    resigned = measure("--rim", driver_2, "--rim", vbios_2, "--at", at, "--trust-root", root)
    assert resigned.stdout == result.stdout
    # Not under NVIDIA's vendored root.
    vendored = measure("--rim", driver, "--rim", vbios, "--at", at)
    assert vendored.returncode == 2
    assert "not a pinned CoRIM signing root" in " ".join(vendored.stderr.split())


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("one", "--rim is given 1 time(s): give it twice"),
        ("two_drivers", "are both driver RIMs"),
        ("switch", "neither a GPU driver nor a GPU VBIOS RIM"),
        ("tampered", "reference digest does not match"),
        ("bad_signature", "XML signature does not verify"),
        ("no_zone", "has no time zone"),
        ("not_a_time", "is not an ISO 8601 time"),
        ("missing", "no such file"),
    ],
)
def test_unusable_input_is_refused(vectors: Path, case: str, message: str) -> None:
    driver, vbios = vectors / DRIVER, vectors / VBIOS
    cases: dict[str, list[str | Path]] = {
        "one": ["--rim", driver],
        "two_drivers": ["--rim", driver, "--rim", driver],
        "switch": ["--rim", driver, "--rim", vectors / "nvat-rim-NV_SWITCH_BIOS_5612_0002_890_9610550001.xml", "--at", "2026-06-01T00:00:00Z"],
        "tampered": ["--rim", driver, "--rim", vectors / "nvat-rim-NV_SWITCH_BIOS_5612_0002_890_9610550001_measurement_mismatch.xml"],
        "bad_signature": ["--rim", vectors / "nvat-rim-NV_GPU_DRIVER_GH100_550.144.03-bad-signature.xml", "--rim", vbios],
        "no_zone": ["--rim", driver, "--rim", vbios, "--at", "2025-06-01T00:00:00"],
        "not_a_time": ["--rim", driver, "--rim", vbios, "--at", "June"],
        "missing": ["--rim", driver, "--rim", vectors / "absent.xml"],
    }  # fmt: skip
    args = cases[case]
    if case in ("two_drivers", "tampered", "bad_signature"):
        args += ["--at", BOTH_VALID]
    result = measure(*args)
    assert result.returncode == 2
    assert message in " ".join(result.stderr.split())
    assert result.stdout == ""


def test_rims_of_different_gpus_are_refused(tmp_path: Path) -> None:
    pki = RimPki.create()
    driver, vbios = write_pair(tmp_path, pki, vbios_product="GB100")
    root = tmp_path / "root.pem"
    root.write_bytes(pki.root.cert.public_bytes(Encoding.PEM))
    result = measure("--rim", driver, "--rim", vbios, "--at", AT.isoformat(), "--trust-root", root)
    assert result.returncode == 2
    assert "they describe different GPUs" in " ".join(result.stderr.split())


def test_the_measurer_is_declared() -> None:
    assert plugin.SPEC.measurer == "cmcp_gpucc.measurer:GpuMeasurer"
    names = [option.name for option in plugin.SPEC.load_measurer().options]
    assert names == ["rim", "at", "trust-root"]


def test_rims_that_both_claim_an_index_are_refused(tmp_path: Path) -> None:
    pki = RimPki.create()
    driver, vbios = tmp_path / "driver.xml", tmp_path / "vbios.xml"
    driver.write_bytes(pki.sign(rim_document({7: [b"\x07" * 48]}, version="590.12")))
    vbios.write_bytes(pki.sign(rim_document({7: [b"\x07" * 48]}, version="96.00.A5.00.01")))
    root = tmp_path / "root.pem"
    root.write_bytes(pki.root.cert.public_bytes(Encoding.PEM))
    result = measure("--rim", driver, "--rim", vbios, "--at", AT.isoformat(), "--trust-root", root)
    assert result.returncode == 2
    assert "RIM indices 7 are active in both" in " ".join(result.stderr.split())
