"""`cmcp measure azure-sev-snp` and `cmcp measure azure-tdx`: the measurement an Azure
CVM's claims will carry, read from an HCL report taken on a known-good VM.

On Azure the hardware report measures Microsoft's paravisor (HCL) and its firmware, which
Microsoft builds and launches: no operator holds the image that digest is computed over, so
nothing here recomputes it. The measurer reads the report the paravisor wrote on a VM of
the image and size to be pinned (`tpm2_nvread -C o 0x01400001 -o hcl-report.bin`) and
states its measurement as the verifier does:

    azure-sev-snp  sha384:<MEASUREMENT of the SNP report>, the paravisor's launch digest
    azure-tdx      cmcp_tdx.measurement.measurement_string(MRTD, RTMR0..3) of the TD
                   report, which the DCAP quote's TD body must repeat

Neither covers the guest OS: the paravisor measures the boot into the vTPM's PCRs, which
the auditor pins with the `pcrs` platform-policy key. Given a vTPM quote (or the PCR
values file tpm2-tools writes) from the same VM, the measurer prints those values ready
to paste. The gateway's binding travels in the quote and the report's user data, so
`--config` changes nothing here.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from cmcp_azure import hcl, links, runtime_data, tdreport
from cmcp_azure.evidence import quote_of_json
from cmcp_azure.plugin import SNP_NAME, TDX_NAME
from cmcp_cli.attestation.api import (
    MeasureInputs,
    MeasureOption,
    Measurer,
    MeasureResult,
    ProviderError,
)
from cmcp_cli.attestation.toolkit import (
    CheckFailed,
    measure_value,
    measure_values,
    read_bounded,
    refused_as,
)
from cmcp_cli.strict_json import StrictJSONError, loads_strict
from cmcp_sev.structures import ReportFormatError, parse_report
from cmcp_tdx.measurement import measurement_string
from cmcp_tpm import pcr
from cmcp_tpm import structures as tpm
from cmcp_tpm.pcr_file import parse_pcr_file

MAX_QUOTE: Final = 64 << 10
MAX_PCR_FILE: Final = 64 << 10
# The boot chain (4) and the secure boot policy (7). PCR 0 holds the firmware volume, which
# Azure updates, and PCR 6 differs from VM to VM: pinning either would refuse VMs of the
# same image.
DEFAULT_PIN: Final = (4, 7)
PARAVISOR_VMPL: Final = 0  # the paravisor requests its reports at the most privileged level
NV_READ: Final = f"tpm2_nvread -C o {hcl.NV_INDEX:#010x} -o hcl-report.bin"
PCR_READ: Final = "tpm2_pcrread sha256:0-23 -o pcrs.bin"
COVERS: Final = (
    "the paravisor (HCL) and the firmware it launches, as Microsoft builds them; it changes "
    "when Azure updates the paravisor"
)
NOT_COVERED: Final = (
    "the guest OS: the boot loader and kernel the firmware loads, and the secure boot policy, "
    "are measured into the vTPM's PCRs, which the auditor pins with the `pcrs` "
    "platform-policy key"
)

OPTIONS: tuple[MeasureOption, ...] = (
    MeasureOption(
        "hcl-report",
        f"The HCL report of a known-good VM of the image and size to pin ({NV_READ}).",
        "PATH",
        required=True,
    ),
    MeasureOption(
        "tpm-quote",
        "A vTPM quote over sha256:0-23 from the same VM, as az-cvm-vtpm and trustee write it "
        "(JSON {message, signature, pcrs}, hex): checked against the report's HCLAkPub, its "
        "PCR values are printed to pin.",
        "PATH",
    ),
    MeasureOption(
        "pcr-file",
        f"Instead of --tpm-quote: the PCR values file of the same VM ({PCR_READ}, or "
        "`tpm2_quote -o`); nothing signs it.",
        "PATH",
    ),
    MeasureOption(
        "pin-pcrs",
        "The PCRs to print for the `pcrs` key, e.g. 1-5,7 (default 4,7: the boot chain and "
        "the secure boot policy).",
        "PCRS",
    ),
)


def _read(name: str, path: str, limit: int, hint: str) -> bytes:
    return read_bounded(Path(path), limit, f"--{name}", hint=hint)


def _unusable(path: str, part: str, errors: type[Exception]) -> AbstractContextManager[None]:
    """A part of --hcl-report that does not parse: the file is not as the VM read it."""
    return refused_as(
        errors, f"--hcl-report {path}: its {part} is unusable",
        hint=f"read the report again on the VM: {NV_READ}",
    )  # fmt: skip


@dataclass(frozen=True, slots=True)
class _Hardware:
    """What the hardware report inside the HCL report says, for the operator."""

    measurement: str  # as the provider's collector and verifier state it
    covers: str
    fields: dict[str, Any]
    debug: str | None  # why claims of this VM fail, when its report allows debugging


def _debug_note(check: str) -> str:
    return (
        f"this report allows debugging the VM: `cmcp verify` fails {check} on its claims "
        "(unless --allow-debug), so it is no known-good VM to measure"
    )


class _AzureMeasurer(Measurer):
    provider: str
    report_type: hcl.ReportType

    @property
    def options(self) -> Sequence[MeasureOption]:
        return OPTIONS

    def measure(self, inputs: MeasureInputs) -> MeasureResult:
        values = measure_values(inputs.values, OPTIONS)
        path = measure_value(values, "hcl-report")
        if path is None:
            raise ProviderError("--hcl-report is required", hint=f"read it on the VM: {NV_READ}")
        report, runtime = self._report(path)
        hardware = self._hardware(path, report)
        configuration = runtime.vm_configuration
        details: dict[str, Any] = {
            "hcl_report": path,
            "hcl_version": report.version,
            "covers": hardware.covers,
            "not_covered": NOT_COVERED,
            **hardware.fields,
            "runtime_data_sha256": report.runtime_data_digest.hex(),
            "vm_configuration": {
                "secure_boot": configuration.secure_boot,
                "tpm_enabled": configuration.tpm_enabled,
                "console_enabled": configuration.console_enabled,
                "vm_unique_id": configuration.vm_unique_id,
            },
        }
        notes = [
            f"covers: {hardware.covers}",
            f"does not cover: {NOT_COVERED}",
            _configuration_note(configuration),
        ]
        if hardware.debug is not None:
            notes.append(hardware.debug)
        pinned = _pcrs(values, runtime)
        if pinned is not None:
            selected, source = pinned
            table = {str(index): value.hex() for index, value in selected.items()}
            details["pcrs"] = table
            details["pcr_source"] = source
            notes.append(f"PCRs from {source}; to pin them, in the auditor's platform policy:")
            notes.append(f"[{self.provider}]\npcrs = {_toml_table(table)}")
        return MeasureResult(hardware.measurement, details, notes=tuple(notes))

    def _report(self, path: str) -> tuple[hcl.HclReport, runtime_data.RuntimeData]:
        data = _read("hcl-report", path, hcl.MAX_SIZE, f"read it on the VM: {NV_READ}")
        whole = f"give the whole NV index as the VM reads it: {NV_READ}"
        with refused_as(
            hcl.HclFormatError, f"--hcl-report {path} is not an HCL report", hint=whole
        ):
            report = hcl.parse(data)
        if report.report_type is not self.report_type:
            other = report.report_type.provider
            raise ProviderError(
                f"--hcl-report {path} holds a {report.report_type.name} report, not "
                f"{self.report_type.name}: it comes from an {other} VM",
                hint=f"measure it with `cmcp measure {other}`",
            )
        if report.report_data != report.expected_report_data:
            raise ProviderError(
                f"--hcl-report {path}: REPORT_DATA is not the SHA-256 of its runtime data, so "
                "the paravisor did not write these bytes together (the file was altered or "
                "assembled from two reports)",
                hint=f"read the report again on the VM: {NV_READ}",
            )
        with _unusable(path, "runtime data", runtime_data.RuntimeDataError):
            runtime = runtime_data.parse(report.runtime_data)
        return report, runtime

    @abstractmethod
    def _hardware(self, path: str, report: hcl.HclReport) -> _Hardware: ...


class AzureSnpMeasurer(_AzureMeasurer):
    """The Measurer of the azure-sev-snp provider (see the module docstring)."""

    provider = SNP_NAME
    report_type = hcl.ReportType.SNP

    def _hardware(self, path: str, report: hcl.HclReport) -> _Hardware:
        with _unusable(path, "SNP report", ReportFormatError):
            snp = parse_report(report.hardware_report)
        if snp.vmpl != PARAVISOR_VMPL:
            raise ProviderError(
                f"--hcl-report {path}: its SNP report was requested at VMPL {snp.vmpl}, not "
                f"{PARAVISOR_VMPL} where the paravisor runs: the guest OS made it, over runtime "
                "data of its own, and the verifier refuses such reports (azure.snp.vmpl)",
                hint=f"read the paravisor's report on the VM: {NV_READ}",
            )
        fields = {
            "snp_report": {
                "version": snp.version, "vmpl": snp.vmpl, "guest_svn": snp.guest_svn,
                "policy": f"{snp.policy:#x}", "debug": snp.debug,
                "family_id": snp.family_id.hex(), "image_id": snp.image_id.hex(),
                "host_data": snp.host_data.hex(), "id_key_digest": snp.id_key_digest.hex(),
                "author_key_digest": snp.author_key_digest.hex(),
                "reported_tcb": snp.reported_tcb.raw.hex(), "chip_id": snp.chip_id.hex(),
            },
        }  # fmt: skip
        return _Hardware(
            measurement="sha384:" + snp.measurement.hex(),
            covers=f"the SNP report's MEASUREMENT: {COVERS}",
            fields=fields,
            debug=_debug_note("sev.policy.debug") if snp.debug else None,
        )


class AzureTdxMeasurer(_AzureMeasurer):
    """The Measurer of the azure-tdx provider (see the module docstring)."""

    provider = TDX_NAME
    report_type = hcl.ReportType.TDX

    def _hardware(self, path: str, report: hcl.HclReport) -> _Hardware:
        with _unusable(path, "TD report", tdreport.TdReportFormatError):
            body = tdreport.body_of(report.hardware_report)
        zero = "" if any(b"".join(body.rtmrs)) else " (all zero here)"
        covers = f"the TD report's MRTD and RTMR0..3{zero}, which its DCAP quote repeats: {COVERS}"
        fields = {
            "td_report": {
                "mrtd": body.mrtd.hex(),
                **{f"rtmr{n}": value.hex() for n, value in enumerate(body.rtmrs)},
                "td_attributes": body.td_attributes.hex(), "debug": body.debug,
                "xfam": body.xfam.hex(), "mrconfigid": body.mrconfigid.hex(),
                "mrowner": body.mrowner.hex(), "mrownerconfig": body.mrownerconfig.hex(),
                "mrseam": body.mrseam.hex(), "tee_tcb_svn": body.tee_tcb_svn.hex(),
            },
        }  # fmt: skip
        return _Hardware(
            measurement=measurement_string(body.mrtd, body.rtmrs),
            covers=covers,
            fields=fields,
            debug=_debug_note("tdx.td.debug") if body.debug else None,
        )


def _configuration_note(configuration: runtime_data.VmConfiguration) -> str:
    def said(value: bool | None) -> str:
        return "not stated" if value is None else str(value).lower()

    return (
        f"this VM's vm-configuration: secure-boot {said(configuration.secure_boot)}, "
        f"tpm-enabled {said(configuration.tpm_enabled)}, console-enabled "
        f"{said(configuration.console_enabled)} (the platform-policy keys "
        "require_secure_boot, require_tpm_enabled and allow_console judge these)"
    )


def _toml_table(table: Mapping[str, str]) -> str:
    return "{ " + ", ".join(f'"{key}" = "{value}"' for key, value in table.items()) + " }"


# ---------------------------------------------------------------- the PCRs to pin


def _pcrs(
    values: Mapping[str, tuple[str, ...]], runtime: runtime_data.RuntimeData
) -> tuple[dict[int, bytes], str] | None:
    quote_path, file_path = measure_value(values, "tpm-quote"), measure_value(values, "pcr-file")
    selection_text = measure_value(values, "pin-pcrs")
    if quote_path is not None and file_path is not None:
        raise ProviderError(
            "--tpm-quote and --pcr-file both give the PCR values", hint="give one of them"
        )
    if quote_path is None and file_path is None:
        if selection_text is not None:
            raise ProviderError(
                "--pin-pcrs selects among PCR values, and none are given",
                hint="add --tpm-quote or --pcr-file from the same VM",
            )
        return None
    try:
        selection = DEFAULT_PIN if selection_text is None else pcr.parse_selection(selection_text)
    except ValueError as error:
        raise ProviderError(
            f"--pin-pcrs {selection_text}: {error}", hint="give PCR indices and ranges, e.g. 4,7"
        ) from None
    if quote_path is not None:
        quoted, source = _quoted_pcrs(quote_path, runtime), f"--tpm-quote {quote_path}"
    else:
        quoted, source = _file_pcrs(file_path or ""), f"--pcr-file {file_path} (unsigned)"
    missing = [index for index in selection if index not in quoted]
    if missing:
        raise ProviderError(
            f"{source} has no sha256 value for PCR {', '.join(map(str, missing))}",
            hint=f"read all 24 on the VM: {PCR_READ}",
        )
    return {index: quoted[index] for index in selection}, source


def _quoted_pcrs(path: str, runtime: runtime_data.RuntimeData) -> dict[int, bytes]:
    """The 24 PCR values of a quote JSON, refused unless the quote is over exactly them and
    HCLAkPub of the report signed it: values that no quote by this VM's key covers are not
    that VM's boot. The checks are the verifier's (`cmcp_azure.links`)."""
    hint = "give the quote JSON of the same VM, {message, signature, pcrs} in hex"
    data = _read("tpm-quote", path, MAX_QUOTE, hint)
    with refused_as(StrictJSONError, f"--tpm-quote {path} is not JSON", hint=hint):
        document = loads_strict(data)
    with refused_as(ValueError, f"--tpm-quote {path}", hint=hint):
        attest_bytes, signature, quoted = quote_of_json(document)
    selection = "quote with the collector's selection on the VM: tpm2_quote -l sha256:0-23"
    with refused_as(CheckFailed, f"--tpm-quote {path}", hint=selection):
        attest = links.quote_attest(attest_bytes)
    same_vm = "take the report and the quote on the same VM"
    with refused_as(CheckFailed, f"--tpm-quote {path}", hint=same_vm):
        links.verify_quote_signature(runtime.ak_public, attest_bytes, signature)
    unchanged = "give the pcrs the quote was taken over, as the VM read them"
    with refused_as(CheckFailed, f"--tpm-quote {path}", hint=unchanged):
        links.verify_quote_pcrs(attest, quoted)
    return quoted


def _file_pcrs(path: str) -> dict[int, bytes]:
    data = _read("pcr-file", path, MAX_PCR_FILE, f"write it on the VM: {PCR_READ}")
    with refused_as(
        tpm.TpmFormatError,
        f"--pcr-file {path} is not a tpm2-tools PCR values file",
        hint=f"write it on the VM: {PCR_READ}",
    ):
        banks = parse_pcr_file(data)
    return dict(banks.get("sha256", {}))
