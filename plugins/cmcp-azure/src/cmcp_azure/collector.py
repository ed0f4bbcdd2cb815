"""The collectors of an Azure CVM, one per hardware behind the paravisor, sharing one flow.

`detect`: the vTPM answers and its NV index 0x01400001 holds an HCL report of this
provider's hardware (an Azure CVM of the other hardware, or a TPM without that index, is
named as such).

`prepare`, at start: read the report, check that the key at `ak_handle` is the `HCLAkPub`
its runtime data attests (a quote by any other key binds nothing to the hardware), prove
the binding path end to end (the paravisor carries written user data into the next report,
or, with `user_data = false`, carries none), and get what a verifier needs beside the
report, checked against it: for SNP the VCEK and chain (`cmcp_azure.vcek`), for TDX a DCAP
quote of the TDREPORT from the host's quote service. A check that fails refuses the start.

`collect`, per session, under one lock (the vTPM serves one request at a time, and the
user data written must be the one the report read carries): write `binding ‖ 32 zero bytes`
to NV 0x01400002, read the report until its runtime data carries that user data (the
paravisor refreshes it when the index is written; bounded by `timeout_seconds`), and quote
the SHA-256 PCRs 0..23 with the AK and the binding as qualifying data. For TDX the report's
TDREPORT then goes to the quote service.

tpm2-pytss (which needs libtss2) comes through `cmcp_azure.vtpm`; where it is not usable,
importing this module raises `ProviderError` with cmcp-azure's install hint, so the host
reports the provider unavailable.
"""

from __future__ import annotations

import secrets
import time
from abc import abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Final

from cmcp_azure import hcl, imds, runtime_data, vcek, vtpm
from cmcp_azure.evidence import encode, quote_member
from cmcp_azure.plugin import (
    SNP_EVIDENCE_TYPE,
    SNP_NAME,
    SNP_SPEC,
    TDX_EVIDENCE_TYPE,
    TDX_NAME,
    TDX_SPEC,
)
from cmcp_azure.settings import AzureSettings
from cmcp_azure.vtpm import ESAPI, ESYS_TR
from cmcp_cli.attestation.api import Collector, Detection, Evidence, GatewayFacts, ProviderError
from cmcp_cli.attestation.prepared import PreparedState
from cmcp_cli.attestation.toolkit import refused_as
from cmcp_sev import structures as snp
from cmcp_tdx import quote as tdx
from cmcp_tdx.collector import trimmed_quote
from cmcp_tdx.measurement import measurement_string
from cmcp_tpm.collector import device_path
from cmcp_tpm.tpm_access import open_tpm

BINDING_SIZE: Final = 32
_FIRST_WAIT_SECONDS: Final = 0.05
_MAX_WAIT_SECONDS: Final = 1.0


@dataclass(frozen=True, slots=True)
class _Prepared:
    """What `prepare` established; `collect` only reads it."""

    settings: AzureSettings
    esapi: ESAPI
    ak: ESYS_TR
    runtime: runtime_data.RuntimeData  # the runtime data read at start (its HCLAkPub)
    certificates: vcek.Certificates | None  # SNP only


@dataclass(frozen=True, slots=True)
class _Read:
    """One HCL report as read, with what it was parsed into."""

    raw: bytes
    report: hcl.HclReport
    runtime: runtime_data.RuntimeData


class _AzureCollector(Collector):
    provider: ClassVar[str]
    evidence_type: ClassVar[str]
    platform: ClassVar[str]  # the TRACE platform: the hardware's, which the verifier proves
    report_type: ClassVar[hcl.ReportType]
    hardware: ClassVar[str]  # for messages: "SEV-SNP" or "TDX"

    def __init__(self) -> None:
        self._state: PreparedState[_Prepared] = PreparedState(
            type(self).__name__, lambda prepared: prepared.esapi.close()
        )

    # --- the Collector protocol -------------------------------------------------------

    def detect(self, settings: Mapping[str, Any]) -> Detection:
        try:
            parsed = AzureSettings.parse(self.provider, settings)
        except ProviderError as error:
            return Detection(False, f"{error.message} ({error.hint})")
        device = device_path(parsed.tcti)
        if device is not None and not device.exists():
            return Detection(
                False,
                f"not an Azure CVM: no vTPM device at {device} ({parsed.name('tcti')})",
            )
        try:
            with self._state.lock:
                prepared = self._state.current
                if prepared is not None and prepared.settings.tcti == parsed.tcti:
                    return Detection(True, self._describe(self._read_locked(prepared.esapi)))
                esapi = open_tpm(parsed.tcti, setting=parsed.name("tcti"))
                try:
                    return Detection(True, self._describe(self._read_locked(esapi)))
                finally:
                    esapi.close()
        except ProviderError as error:
            return Detection(False, error.message)
        except Exception as error:  # noqa: BLE001 - detect answers with a reason, never raises
            return Detection(False, f"the vTPM at {parsed.tcti!r} could not be read: {error}")

    def prepare(self, facts: GatewayFacts, settings: Mapping[str, Any]) -> None:  # noqa: ARG002
        # Nothing is measured into the platform: the binding carries the policy hash, so
        # another bundle with the same settings needs nothing new.
        parsed = AzureSettings.parse(self.provider, settings)
        with self._state.lock:
            if self._state.current is not None and self._state.current.settings == parsed:
                return
            self._state.replace_locked(None)
            esapi = open_tpm(parsed.tcti, setting=parsed.name("tcti"))
            try:
                read = self._read_locked(esapi)
                ak = self._check_ak(esapi, parsed, read.runtime)
                self._check_user_data_path(esapi, parsed, read)
                certificates = self._prepare_hardware(parsed, read)
            except BaseException:
                esapi.close()
                raise
            self._state.replace_locked(_Prepared(parsed, esapi, ak, read.runtime, certificates))

    def collect(self, binding: bytes, settings: Mapping[str, Any]) -> Evidence:
        parsed = AzureSettings.parse(self.provider, settings)
        if len(binding) != BINDING_SIZE:
            raise ProviderError(f"the binding is {len(binding)} bytes, not {BINDING_SIZE}")
        with self._state.lock:
            prepared = self._state.for_collect_locked(
                parsed,
                f"{parsed.section} changed after the gateway started",
                hint="restart the gateway so that it checks the vTPM and its key again",
            )
            expected = self._user_data(parsed, binding)
            if parsed.user_data:
                vtpm.write_user_data(prepared.esapi, expected)
            read = self._fresh_report(prepared, expected)
            quote = vtpm.quote(prepared.esapi, prepared.ak, binding)
        evidence, measurement = self._hardware_evidence(prepared, read)
        evidence["tpm_quote"] = quote_member(quote.attest, quote.signature, quote.pcrs)
        return Evidence(
            evidence_type=self.evidence_type,
            evidence=evidence,
            platform=self.platform,
            measurement=measurement,
        )

    def close(self) -> None:
        self._state.close()

    # --- what each hardware adds ------------------------------------------------------

    @abstractmethod
    def _prepare_hardware(self, settings: AzureSettings, read: _Read) -> vcek.Certificates | None:
        """What a verifier needs beside the report, checked against it; None when nothing
        is kept for `collect`."""

    @abstractmethod
    def _hardware_evidence(self, prepared: _Prepared, read: _Read) -> tuple[dict[str, Any], str]:
        """The evidence members beside `tpm_quote`, and the measurement."""

    # --- the shared steps -------------------------------------------------------------

    def _read_locked(self, esapi: ESAPI) -> _Read:
        """The HCL report of this provider's hardware, parsed; `ProviderError` otherwise."""
        if not vtpm.hcl_report_defined(esapi):
            raise ProviderError(
                f"not an Azure CVM: the vTPM has no HCL report ({vtpm.HCL_WHERE} is not defined)",
                hint="run the gateway in an Azure confidential VM (DCasv5/ECasv5 for SEV-SNP, "
                "DCesv5/ECesv5 for TDX), or use provider tpm for a plain vTPM",
            )
        raw = vtpm.read_hcl_report(esapi)
        with refused_as(
            hcl.HclFormatError,
            f"{vtpm.HCL_WHERE} does not hold an HCL report",
            hint="this vTPM is not an Azure paravisor's; use provider tpm",
        ):
            report = hcl.parse(raw)
        if report.report_type is not self.report_type:
            raise ProviderError(
                f"an Azure CVM of other hardware: its HCL report holds a "
                f"{report.report_type.name} report, not {self.report_type.name}",
                hint=f"use provider {report.report_type.provider} (or auto) on this VM",
            )
        with refused_as(
            runtime_data.RuntimeDataError,
            "the runtime data of the paravisor's HCL report is unusable",
            hint="no verifier would accept this report; report the VM size and image",
        ):
            runtime = runtime_data.parse(report.runtime_data)
        return _Read(raw, report, runtime)

    def _describe(self, read: _Read) -> str:
        return (
            f"Azure {self.hardware} CVM: the paravisor's HCL report (v{read.report.version}) "
            f"at {vtpm.HCL_WHERE}"
        )

    def _check_ak(
        self, esapi: ESAPI, settings: AzureSettings, runtime: runtime_data.RuntimeData
    ) -> ESYS_TR:
        ak, public = vtpm.load_ak(esapi, settings.ak_handle, settings.name("ak_handle"))
        if public.public_numbers() != runtime.ak_public.public_numbers():
            raise ProviderError(
                f"the key at {settings.name('ak_handle')} 0x{settings.ak_handle:08X} is not "
                f"the vTPM's attestation key that the paravisor's report attests "
                f"({runtime_data.AK_KID} in its runtime data): a quote by it would bind "
                "nothing to the hardware",
                hint=f"remove {settings.name('ak_handle')} (Azure persists the AK at "
                "0x81000003), or point it at the key whose public part is HCLAkPub",
            )
        return ak

    @staticmethod
    def _user_data(settings: AzureSettings, binding: bytes) -> bytes:
        if not settings.user_data:
            return bytes(hcl.USER_DATA_SIZE)
        return binding + bytes(hcl.USER_DATA_SIZE - len(binding))

    def _check_user_data_path(self, esapi: ESAPI, settings: AzureSettings, read: _Read) -> None:
        """With user data: a throwaway binding written must come back in the report. Without:
        the report must carry none, or a verifier would take it for another session's."""
        if settings.user_data:
            probe = self._user_data(settings, secrets.token_bytes(BINDING_SIZE))
            vtpm.write_user_data(esapi, probe)
            self._wait_for(esapi, settings, read.runtime, probe)
        elif any(read.runtime.user_data):
            raise ProviderError(
                f"{vtpm.USER_DATA_WHERE} holds data that the paravisor puts in every report "
                f"({read.runtime.user_data[:8].hex()}…): a verifier would take it for another "
                "session's binding",
                hint=f"set {settings.name('user_data')} = true (the default), or clear the "
                f"index: tpm2_nvundefine 0x{hcl.USER_DATA_NV_INDEX:08X} -C o",
            )

    def _fresh_report(self, prepared: _Prepared, expected: bytes) -> _Read:
        return self._wait_for(prepared.esapi, prepared.settings, prepared.runtime, expected)

    def _wait_for(
        self,
        esapi: ESAPI,
        settings: AzureSettings,
        attested: runtime_data.RuntimeData,
        expected: bytes,
    ) -> _Read:
        """Read the report until its user data is `expected`, for at most `timeout_seconds`;
        each read must attest the same AK as the report read at start."""
        deadline = time.monotonic() + settings.timeout_seconds
        wait, reads = _FIRST_WAIT_SECONDS, 0
        while True:
            read = self._read_locked(esapi)
            reads += 1
            if read.runtime.ak_public.public_numbers() != attested.ak_public.public_numbers():
                raise ProviderError(
                    "the paravisor's report attests another AK than the one it attested at start",
                    hint="restart the gateway so that it checks the vTPM's key again",
                )
            if read.runtime.user_data == expected:
                return read
            if time.monotonic() + wait > deadline:
                break
            time.sleep(wait)
            wait = min(wait * 2, _MAX_WAIT_SECONDS)
        if settings.user_data:
            raise ProviderError(
                f"the paravisor did not carry the user data written to "
                f"{vtpm.USER_DATA_WHERE} into its report ({reads} reads in "
                f"{settings.timeout_seconds:g} s; the report's user-data is "
                f"{read.runtime.user_data[:8].hex()}…)",
                hint=f"another process may be writing the index; or set "
                f"{settings.name('user_data')} = false so that the AK quote alone binds the "
                "session",
            )
        raise ProviderError(
            f"the paravisor's report carries user data "
            f"({read.runtime.user_data[:8].hex()}…) that this gateway did not write: a "
            "verifier would take it for another session's binding",
            hint=f"another process writes {vtpm.USER_DATA_WHERE}; stop it, or set "
            f"{settings.name('user_data')} = true",
        )


class AzureSnpCollector(_AzureCollector):
    """The collector of provider azure-sev-snp."""

    provider = SNP_NAME
    evidence_type = SNP_EVIDENCE_TYPE
    platform = SNP_SPEC.platform
    report_type = hcl.ReportType.SNP
    hardware = "SEV-SNP"

    def _prepare_hardware(self, settings: AzureSettings, read: _Read) -> vcek.Certificates:
        if settings.vcek is not None:
            certificates = vcek.from_files(settings)
        else:
            url = settings.imds_url
            try:
                fetched = imds.fetch_snp_certificates(url, timeout=settings.timeout_seconds)
            except ProviderError as error:
                raise ProviderError(
                    error.message,
                    hint=f"{error.hint}; AMD KDS serves this VM's VCEK at "
                    f"{vcek.kds_url(read.report)}",
                ) from None
            where = f"the instance metadata service at {url}"
            certificates = vcek.Certificates(
                vcek=fetched.vcek,
                chain=tuple(vcek.ordered_chain(list(fetched.chain), f"the chain from {where}")),
                source=where,
            )
        vcek.check(certificates, read.report)
        return certificates

    def _hardware_evidence(self, prepared: _Prepared, read: _Read) -> tuple[dict[str, Any], str]:
        certificates = prepared.certificates
        if certificates is None:
            raise RuntimeError("AzureSnpCollector.collect before prepare finished")
        # The chip or its TCB may change under a running VM (a host update): evidence the
        # VCEK from start does not verify is refused here rather than by every auditor.
        vcek.check(certificates, read.report, restart=True)
        report = snp.parse_report(read.report.hardware_report)  # vcek.check parsed it
        evidence: dict[str, Any] = {
            "hcl_report": encode(read.raw),
            "vcek": encode(certificates.vcek),
            "cert_chain": [encode(der) for der in certificates.chain],
        }
        return evidence, "sha384:" + report.measurement.hex()


class AzureTdxCollector(_AzureCollector):
    """The collector of provider azure-tdx."""

    provider = TDX_NAME
    evidence_type = TDX_EVIDENCE_TYPE
    platform = TDX_SPEC.platform
    report_type = hcl.ReportType.TDX
    hardware = "TDX"

    def _prepare_hardware(self, settings: AzureSettings, read: _Read) -> None:
        self._td_quote(settings, read)  # the quote service answers for this TD, or no start

    def _hardware_evidence(self, prepared: _Prepared, read: _Read) -> tuple[dict[str, Any], str]:
        raw = self._td_quote(prepared.settings, read)
        body = tdx.parse_quote(raw).body
        evidence = {"hcl_report": encode(read.raw), "td_quote": encode(raw)}
        return evidence, measurement_string(body.mrtd, body.rtmrs)

    @staticmethod
    def _td_quote(settings: AzureSettings, read: _Read) -> bytes:
        """A DCAP quote of the report's TDREPORT (`imds` refuses one of another TD body),
        without bytes after its declared end."""
        url = settings.imds_url
        blob = imds.fetch_td_quote(
            url, read.report.hardware_report, timeout=settings.timeout_seconds
        )
        return trimmed_quote(blob, read.report.report_data, f"the quote service at {url}")
