"""`cmcp measure sev-snp`: the launch digest an SEV-SNP guest's reports will carry in
MEASUREMENT, computed offline with the sev-snp-measure package (the `measure` extra).

The digest covers the firmware image (OVMF with SEV metadata), the VMSA of every vCPU (so
the vCPU count and type, the VMM and the guest features matter), and, with measured direct
boot, the hashes of the kernel, initrd and command line that QEMU puts in the firmware's
SEV hashes table. The output is `sha384:<hex>`, the string `attestation.expected_measurement`
takes. The gateway's binding travels in REPORT_DATA, so --config changes nothing here.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Final

from cmcp_cli.attestation.api import (
    MeasureInputs,
    MeasureOption,
    Measurer,
    MeasureResult,
    ProviderError,
)
from cmcp_cli.attestation.toolkit import measure_value, measure_values

PACKAGE: Final = "sev-snp-measure"
INSTALL_HINT: Final = "pip install 'cmcp-sev[measure]' (it pins sev-snp-measure==0.0.13)"
VMM_TYPES: Final = {"qemu": "QEMU", "ec2": "ec2", "gce": "gce"}
MAX_VCPUS: Final = 1024
SNP_KERNEL_HASHES: Final = 0x10  # the OVMF SEV metadata section for measured direct boot

OPTIONS: tuple[MeasureOption, ...] = (
    MeasureOption(
        "ovmf", "The guest firmware: an OVMF build with SEV-SNP metadata.", "PATH", required=True
    ),
    MeasureOption("vcpus", "The number of guest vCPUs.", "N", required=True),
    MeasureOption(
        "vcpu-type",
        "The QEMU CPU model the guest runs as, e.g. EPYC-v4, EPYC-Milan, EPYC-Genoa "
        "(QEMU needs it or --vcpu-sig).",
        "CPUTYPE",
    ),
    MeasureOption("vcpu-sig", "The guest vCPU signature (CPUID 1 EAX) instead.", "VALUE"),
    MeasureOption("vmm-type", "The VMM: qemu (default), ec2 or gce.", "VMM"),
    MeasureOption(
        "guest-features", "SEV_FEATURES of the guest's VMSAs, in hex (default 0x1).", "HEX"
    ),
    MeasureOption("kernel", "The kernel of a measured direct boot.", "PATH"),
    MeasureOption("initrd", "The initrd of a measured direct boot (with --kernel).", "PATH"),
    MeasureOption("append", "The kernel command line (with --kernel).", "CMDLINE"),
)


def _module(name: str) -> Any:
    try:
        return importlib.import_module(name)
    except ImportError:
        raise ProviderError(
            f"`cmcp measure sev-snp` needs the {PACKAGE} package, which is not installed",
            hint=INSTALL_HINT,
        ) from None


def _file(name: str, value: str) -> str:
    path = Path(value)
    if not path.is_file():
        raise ProviderError(f"--{name} {value}: no such file")
    return str(path)


def _integer(name: str, value: str, base: int) -> int:
    try:
        return int(value, base)
    except ValueError:
        kind = "a hex number such as 0x1" if base == 16 else "a number"
        raise ProviderError(f"--{name} {value!r} is not {kind}") from None


class SevMeasurer(Measurer):
    """The Measurer of the sev-snp provider (see the module docstring)."""

    @property
    def options(self) -> Sequence[MeasureOption]:
        return OPTIONS

    def measure(self, inputs: MeasureInputs) -> MeasureResult:
        values = measure_values(inputs.values, OPTIONS)
        ovmf_arg, vcpus_arg = measure_value(values, "ovmf"), measure_value(values, "vcpus")
        if ovmf_arg is None or vcpus_arg is None:
            raise ProviderError("--ovmf and --vcpus are required")
        ovmf_path = _file("ovmf", ovmf_arg)
        vcpus = _integer("vcpus", vcpus_arg, 10)
        if not 1 <= vcpus <= MAX_VCPUS:
            raise ProviderError(f"--vcpus {vcpus} is not between 1 and {MAX_VCPUS}")
        vmm_name = (measure_value(values, "vmm-type") or "qemu").lower()
        if vmm_name not in VMM_TYPES:
            raise ProviderError(f"--vmm-type {vmm_name!r} is not one of {', '.join(VMM_TYPES)}")
        features_arg = measure_value(values, "guest-features") or "0x1"
        features = _integer("guest-features", features_arg, 16)
        kernel, initrd, append = (measure_value(values, n) for n in ("kernel", "initrd", "append"))
        if (initrd is not None or append is not None) and kernel is None:
            raise ProviderError("--initrd and --append describe a direct boot: give --kernel too")

        guest = _module("sevsnpmeasure.guest")
        ovmf_module = _module("sevsnpmeasure.ovmf")
        vmm_types = _module("sevsnpmeasure.vmm_types")
        vcpu_types = _module("sevsnpmeasure.vcpu_types")
        vcpu_sig = self._vcpu_sig(values, vmm_name, vcpu_types.CPU_SIGS)
        try:
            ovmf = ovmf_module.OVMF(ovmf_path)
        except (RuntimeError, ValueError, OSError) as error:
            raise ProviderError(f"--ovmf {ovmf_path} is not a usable OVMF image: {error}") from None
        sections = [int(item.section_type_int) for item in ovmf.metadata_items()]
        if not sections:
            raise ProviderError(
                f"--ovmf {ovmf_path} has no SEV metadata: it cannot launch an SEV-SNP guest",
                hint="use an OVMF built with SEV support (OvmfPkg/AmdSev or OvmfPkgX64)",
            )
        if kernel is not None and SNP_KERNEL_HASHES not in sections:
            raise ProviderError(
                f"--ovmf {ovmf_path} has no SEV hashes table (SNP_KERNEL_HASHES), so it does "
                "not support measured direct boot: --kernel, --initrd and --append cannot be "
                "measured with it",
                hint="use an OVMF built from OvmfPkg/AmdSev/AmdSevX64.dsc, or boot without "
                "--kernel",
            )
        try:
            digest = guest.snp_calc_launch_digest(
                vcpus, vcpu_sig, ovmf_path,
                _file("kernel", kernel) if kernel else None,
                _file("initrd", initrd) if initrd else None,
                append, features, "", vmm_types.VMMType[VMM_TYPES[vmm_name]],
            )  # fmt: skip
        except (RuntimeError, ValueError, OSError) as error:
            raise ProviderError(f"sev-snp-measure could not compute the digest: {error}") from None
        details = {
            "ovmf": ovmf_path, "vcpus": vcpus, "vcpu_sig": f"0x{vcpu_sig:x}", "vmm_type": vmm_name,
            "guest_features": f"0x{features:x}", "kernel": kernel, "initrd": initrd,
            "append": append, "sev_snp_measure": _version(),
        }  # fmt: skip
        return MeasureResult("sha384:" + bytes(digest).hex(), details)

    @staticmethod
    def _vcpu_sig(values: dict[str, tuple[str, ...]], vmm: str, signatures: Any) -> int:
        vcpu_type, vcpu_sig = measure_value(values, "vcpu-type"), measure_value(values, "vcpu-sig")
        if vcpu_type is not None and vcpu_sig is not None:
            raise ProviderError("give --vcpu-type or --vcpu-sig, not both")
        if vcpu_sig is not None:
            return _integer("vcpu-sig", vcpu_sig, 0)
        if vcpu_type is not None:
            if vcpu_type not in signatures:
                raise ProviderError(
                    f"--vcpu-type {vcpu_type!r} is not a QEMU EPYC model",
                    hint=f"one of {', '.join(signatures)}",
                )
            return int(signatures[vcpu_type])
        if vmm == "qemu":
            raise ProviderError("QEMU guests need --vcpu-type (e.g. EPYC-v4) or --vcpu-sig")
        return 0  # EC2 and GCE VMSAs do not carry the signature


def _version() -> str:
    try:
        return version(PACKAGE)
    except PackageNotFoundError:
        return "unknown"
