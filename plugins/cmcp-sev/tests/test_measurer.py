"""`cmcp measure sev-snp` against sev-snp-measure's own CLI on Debian's OVMF, and its
refusals. Debian's OVMF (apt package `ovmf`) has SEV-SNP metadata but no SEV hashes table,
so measured direct boot must be refused with it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cmcp_cli.attestation.api import MeasureInputs, ProviderError
from cmcp_sev import plugin
from cmcp_sev.measurer import SevMeasurer

OVMF_CANDIDATES = (
    Path("/usr/share/ovmf/OVMF.amdsev.fd"),
    Path("/usr/share/OVMF/OVMF.amdsev.fd"),
    Path("/usr/share/ovmf/OVMF.fd"),
    Path("/usr/share/OVMF/OVMF_CODE.fd"),
)
NO_SEV_METADATA = Path("/usr/share/OVMF/OVMF_CODE_4M.fd")


def _require(what: str, how: str) -> None:
    reason = f"{what} is not installed ({how})"
    if os.environ.get("CI"):  # CI installs it: a skip there would hide a gap
        pytest.fail(reason)
    pytest.skip(reason)


def _cli() -> str:
    cli = shutil.which("sev-snp-measure", path=str(Path(sys.executable).parent))
    if cli is None:
        _require("sev-snp-measure", "pip install 'cmcp-sev[measure]'")
    assert cli is not None
    return cli


def _ovmf() -> Path:
    for path in OVMF_CANDIDATES:
        if path.is_file():
            return path
    _require("Debian's OVMF", "apt-get install -y ovmf")
    raise AssertionError("unreachable")


def _measure(**values: str) -> str:
    inputs = MeasureInputs(values={k.replace("_", "-"): (v,) for k, v in values.items()})
    return SevMeasurer().measure(inputs).measurement


@pytest.mark.parametrize(
    ("vcpus", "vcpu_type", "vmm", "features"),
    [("1", "EPYC-v4", "QEMU", "0x1"), ("4", "EPYC-Milan", "QEMU", "0x21"),
     ("8", "EPYC-Genoa", "ec2", "0x1"), ("2", "EPYC-v4", "gce", "0x1")],
)  # fmt: skip
def test_matches_the_sev_snp_measure_cli(
    vcpus: str, vcpu_type: str, vmm: str, features: str
) -> None:
    cli, ovmf = _cli(), _ovmf()
    expected = subprocess.run(
        [cli, "--mode", "snp", "--vcpus", vcpus, "--vcpu-type", vcpu_type, "--vmm-type", vmm,
         "--guest-features", features, "--ovmf", str(ovmf)],
        capture_output=True, text=True, check=True, timeout=60,
    ).stdout.strip()  # fmt: skip
    ours = _measure(
        ovmf=str(ovmf), vcpus=vcpus, vcpu_type=vcpu_type, vmm_type=vmm.lower(),
        guest_features=features,
    )  # fmt: skip
    assert ours == f"sha384:{expected}"
    assert len(expected) == 96


def test_direct_boot_needs_an_ovmf_with_a_hashes_table(tmp_path: Path) -> None:
    _cli()
    kernel = tmp_path / "vmlinuz"
    kernel.write_bytes(b"kernel")
    with pytest.raises(ProviderError, match="no SEV hashes table") as raised:
        _measure(ovmf=str(_ovmf()), vcpus="1", vcpu_type="EPYC-v4", kernel=str(kernel))
    assert raised.value.hint is not None and "AmdSev" in raised.value.hint


def test_an_ovmf_without_sev_metadata_is_refused() -> None:
    _cli()
    if not NO_SEV_METADATA.is_file():
        _require("Debian's OVMF", "apt-get install -y ovmf")
    with pytest.raises(ProviderError, match="no SEV metadata"):
        _measure(ovmf=str(NO_SEV_METADATA), vcpus="1", vcpu_type="EPYC-v4")


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"vcpus": "1", "ovmf": None}, "--ovmf and --vcpus are required"),
        ({"ovmf": "/nonexistent.fd", "vcpus": "1"}, "no such file"),
        ({"vcpus": "0"}, "not between 1"),
        ({"vcpus": "x"}, "is not a number"),
        ({"vcpus": "1", "vmm_type": "xen"}, "is not one of qemu, ec2, gce"),
        ({"vcpus": "1", "vcpu_type": "EPYC-v4", "guest_features": "zz"}, "hex number"),
        ({"vcpus": "1"}, "need --vcpu-type"),
        ({"vcpus": "1", "vcpu_type": "Xeon"}, "not a QEMU EPYC model"),
        ({"vcpus": "1", "vcpu_type": "EPYC", "vcpu_sig": "0x800f12"}, "not both"),
        ({"vcpus": "1", "vcpu_type": "EPYC", "initrd": "/x"}, "give --kernel too"),
    ],
)
def test_unusable_inputs_are_refused(values: dict[str, str | None], message: str) -> None:
    _cli()
    given = {"ovmf": str(_ovmf())} | values  # the firmware unless the case replaces it
    with pytest.raises(ProviderError, match=message):
        _measure(**{key: value for key, value in given.items() if value is not None})


def test_a_missing_package_names_the_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "sevsnpmeasure.guest", None)
    with pytest.raises(ProviderError, match="sev-snp-measure package") as raised:
        _measure(ovmf=__file__, vcpus="1")
    assert raised.value.hint is not None and "cmcp-sev[measure]" in raised.value.hint


def test_the_measurer_is_declared() -> None:
    assert plugin.SPEC.measurer is not None
    names = [option.name for option in plugin.SPEC.load_measurer().options]
    assert names[:2] == ["ovmf", "vcpus"] and "vcpu-type" in names and "append" in names
