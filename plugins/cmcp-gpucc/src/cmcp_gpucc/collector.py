"""Collecting `nvidia-gpu-cc-v1` evidence from the confidential GPUs beside the CPU platform.

At gateway start `prepare` opens NVML, checks that confidential computing is on and the GPUs
accept work, fixes which GPUs are attested (`devices`, default all) and gathers what the
operator staples (`cmcp_gpucc.staples`: RIMs matched to each GPU by version, OCSP
responses). Per session `collect` asks each GPU for an SPDM GET_MEASUREMENTS report signed
over the session's binding (the requester nonce) and its attestation certificate chain, and
writes them with what NVML says about the GPU.

The collector does not compare the report's requester nonce with the binding. The verifier
judges it from the signed report (`gpu.nonce`) without trusting anything the collector did,
and a report made for another nonce (a replay) fails there; a check here would add nothing
an auditor can rely on. The collector refuses only what cannot be evidence at all: a report
that is not an SPDM 1.1 GET_MEASUREMENTS exchange, a chain that is not certificates, a size
NVML cannot have returned.

`detect` answers why a GPU cannot attest: no NVML binding (making the collector fails with
the install hint), no NVML library or driver, no GPU, confidential computing unsupported,
off, or the GPUs not yet accepting work.
"""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from cmcp_cli.attestation.api import (
    Detection,
    DeviceCollector,
    DeviceEvidence,
    GatewayFacts,
    ProviderError,
)
from cmcp_cli.attestation.prepared import PreparedState
from cmcp_gpucc import spdm
from cmcp_gpucc.evidence import encode
from cmcp_gpucc.nvml_access import GpuIdentity, Nvml, NvmlError, load_nvml
from cmcp_gpucc.plugin import EVIDENCE_TYPE
from cmcp_gpucc.settings import SECTION, GpuSettings
from cmcp_gpucc.staples import Staples, gather_staples

BINDING_SIZE: Final = spdm.NONCE_SIZE  # the SPDM requester nonce is the binding (DESIGN §6)
_READY_HINT: Final = (
    "the GPUs accept work once their attestation was checked and the ready state set "
    "(nvidia-smi conf-compute -srs 1); see docs/gpu-cc.md"
)


@dataclass(frozen=True)
class _Prepared:
    """What `prepare` established; `collect` only reads it."""

    settings: GpuSettings
    nvml: Nvml
    gpus: tuple[GpuIdentity, ...]
    driver_version: str
    cc_mode: str
    staples: Mapping[int, Staples]  # by NVML index


class GpuCollector(DeviceCollector):
    """The DeviceCollector of the gpu-cc provider (see the module docstring)."""

    def __init__(self) -> None:
        self._module = load_nvml()  # without nvidia-ml-py no collector is made
        self._state: PreparedState[_Prepared] = PreparedState(
            "GpuCollector", lambda prepared: _shutdown_quietly(prepared.nvml)
        )

    def detect(self, settings: Mapping[str, Any]) -> Detection:
        try:
            parsed = GpuSettings.parse(settings)
        except ProviderError as error:
            return Detection(False, f"{error.message} ({error.hint})")
        nvml = Nvml(self._module)
        try:
            nvml.init()
        except NvmlError as failure:
            return Detection(False, _init_problem(failure))
        try:
            problem, detail = _survey(nvml, parsed)
        except NvmlError as failure:
            return Detection(False, f"NVML could not be queried: {failure}")
        finally:
            _shutdown_quietly(nvml)
        return Detection(problem is None, problem or detail)

    def prepare(self, facts: GatewayFacts, settings: Mapping[str, Any]) -> None:  # noqa: ARG002
        # Nothing is measured into the GPUs: the binding carries the policy hash.
        parsed = GpuSettings.parse(settings)
        with self._state.lock:
            prepared = self._state.current
            if prepared is not None and prepared.settings == parsed:
                return  # another bundle: the same GPUs and staples serve it
            self._state.replace_locked(None)
            self._state.replace_locked(_prepare(Nvml(self._module), parsed))

    def collect(self, binding: bytes, settings: Mapping[str, Any]) -> tuple[DeviceEvidence, ...]:
        parsed = GpuSettings.parse(settings)
        if len(binding) != BINDING_SIZE:
            raise ProviderError(f"the binding is {len(binding)} bytes, not {BINDING_SIZE}")
        with self._state.lock:
            prepared = self._state.for_collect_locked(
                parsed,
                f"{SECTION} changed after the gateway prepared the GPUs",
                hint="restart the gateway so that it finds the GPUs and their RIMs again",
            )
            return tuple(_collect_one(prepared, gpu, binding) for gpu in prepared.gpus)

    def close(self) -> None:
        self._state.close()


def _init_problem(failure: NvmlError) -> str:
    if failure.no_library:
        return (
            "no NVML library: libnvidia-ml.so.1 is not installed or not on the loader path "
            f"(install the NVIDIA driver; {failure})"
        )
    if failure.no_driver:
        return f"the NVIDIA kernel driver is not loaded ({failure})"
    if failure.no_permission:
        return f"this user may not open the NVIDIA devices ({failure})"
    return f"NVML did not start: {failure}"


def _survey(nvml: Nvml, settings: GpuSettings) -> tuple[str | None, str]:
    """Why the GPUs cannot attest (None when they can), and what was found."""
    count = nvml.count()
    if count == 0:
        return "NVML sees no GPU in this machine", ""
    try:
        capable = nvml.cc_capable()
        state = nvml.cc_state()
    except NvmlError as failure:
        if failure.unsupported:
            return (
                f"confidential computing is unsupported here: {failure} (it needs a Hopper or "
                "Blackwell GPU and driver R535 or later in a confidential VM)",
                "",
            )
        raise
    if not capable:
        return "the GPUs are not capable of confidential computing (NVML CC capabilities)", ""
    if not state.enabled:
        return (
            "confidential computing is off on the GPUs (nvidia-smi conf-compute -f: CC status "
            "OFF); the host turns it on before the VM starts (NVIDIA's nvidia_gpu_tools.py "
            "--set-cc-mode=on)",
            "",
        )
    if not nvml.gpus_ready():
        return f"the GPUs do not accept work yet (CC ready state off); {_READY_HINT}", ""
    missing = [i for i in settings.devices or () if i >= count]
    if missing:
        listed = ", ".join(map(str, missing))
        return f"{SECTION}.devices names GPU {listed}, but NVML lists {count} GPU(s)", ""
    indices = settings.devices if settings.devices is not None else tuple(range(count))
    names = ", ".join(f"GPU {i} ({nvml.identity(i).name})" for i in indices)
    mode = state.mode + ("" if state.environment == "production" else f", {state.environment}")
    return None, f"{names}: CC mode {mode}, driver {nvml.driver_version()}"


def _prepare(nvml: Nvml, settings: GpuSettings) -> _Prepared:
    try:
        nvml.init()
    except NvmlError as failure:
        raise ProviderError(_init_problem(failure), hint=_cc_hint()) from None
    try:
        problem, _ = _survey(nvml, settings)
        _refuse(problem)
        count = nvml.count()
        indices = settings.devices if settings.devices is not None else tuple(range(count))
        gpus = tuple(nvml.identity(index) for index in indices)
        driver = nvml.driver_version()
        cc_mode = nvml.cc_state().mode
        chains = {gpu.index: nvml.certificate_chain(gpu.index) for gpu in gpus}
        # Naming a GPU's RIMs takes its project and SKUs, which only its report states.
        reports = {
            gpu.index: nvml.attestation_report(gpu.index, secrets.token_bytes(BINDING_SIZE))
            for gpu in gpus
            if settings.rim_url is not None
        }
        staples = gather_staples(settings, gpus, driver, chains, reports)
    except NvmlError as failure:
        _shutdown_quietly(nvml)
        raise ProviderError(f"NVML could not be queried: {failure}", hint=_cc_hint()) from None
    except BaseException:
        _shutdown_quietly(nvml)
        raise
    return _Prepared(settings, nvml, gpus, driver, cc_mode, staples)


def _refuse(problem: str | None) -> None:
    if problem is not None:
        raise ProviderError(problem, hint=_cc_hint())


def _collect_one(prepared: _Prepared, gpu: GpuIdentity, binding: bytes) -> DeviceEvidence:
    nvml = prepared.nvml
    label = f"GPU {gpu.index} ({gpu.name})"
    try:
        report = nvml.attestation_report(gpu.index, binding)
        chain = nvml.certificate_chain(gpu.index)
        now = nvml.identity(gpu.index)
        driver = nvml.driver_version()
    except NvmlError as failure:
        raise ProviderError(
            f"{label} could not be attested: {failure}",
            hint="check nvidia-smi conf-compute -q and the driver's kernel log; " + _cc_hint(),
        ) from None
    if (now.uuid, now.vbios_version, driver) != (
        gpu.uuid,
        gpu.vbios_version,
        prepared.driver_version,
    ):
        raise ProviderError(
            f"{label} changed since the gateway started (UUID, VBIOS or driver version): "
            "the RIMs stapled at start may no longer describe it",
            hint="restart the gateway",
        )
    try:
        spdm.parse(report)
    except spdm.SpdmError as error:
        raise ProviderError(
            f"{label} returned an unusable attestation report: {error}",
            hint="update the NVIDIA driver; a report NVML returns is SPDM 1.1 GET_MEASUREMENTS",
        ) from None
    if not chain:
        raise ProviderError(f"{label} returned an empty attestation certificate chain")
    evidence: dict[str, Any] = {
        "report": encode(report),
        "certificates": [encode(cert) for cert in chain],
        # What NVML says that the verifier holds against the signed report; the index, name
        # and UUID, which nothing signed confirms, describe the device instead.
        "nvml": {
            "driver_version": driver,
            "vbios_version": gpu.vbios_version,
            "cc_mode": prepared.cc_mode,
        },
    }
    staples = prepared.staples[gpu.index]
    if staples.rims:
        evidence["rims"] = {kind: encode(xml) for kind, xml in sorted(staples.rims.items())}
    if staples.ocsp:
        evidence["ocsp"] = [encode(response) for response in staples.ocsp]
    device = f"GPU {gpu.index} ({gpu.name}, {gpu.uuid})"
    return DeviceEvidence(device=device, evidence_type=EVIDENCE_TYPE, evidence=evidence)


def _cc_hint() -> str:
    return (
        "run the gateway in a confidential VM whose H100, H200 or Blackwell GPUs are in CC "
        "mode and ready (docs/gpu-cc.md, Running the gateway with GPUs)"
    )


def _shutdown_quietly(nvml: Nvml) -> None:
    with contextlib.suppress(NvmlError):  # NVML went away with the driver: nothing to release
        nvml.shutdown()
