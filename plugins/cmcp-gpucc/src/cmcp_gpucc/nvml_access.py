"""NVML through nvidia-ml-py (`pynvml`), behind typed calls that say what went wrong.

`pynvml` is imported when a collector is made, never when the plugin is listed or a claim
verified; without it, `load_nvml` raises `ProviderError` with the install hint. The shared
library `libnvidia-ml.so.1` is loaded by `nvmlInit`; its absence is an answer of `detect`,
not an import failure, because the wheel may be installed where no driver is.

Names and shapes are nvidia-ml-py 13.x's: the CC queries return ctypes structures, the
attestation report and the certificate chain are byte arrays with a size member, strings
come back decoded.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Final

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from cmcp_cli.attestation.api import ProviderError

INSTALL_HINT: Final = (
    "install the collector's dependencies: pip install cmcp-gpucc[collector] (nvidia-ml-py, httpx)"
)
NONCE_SIZE: Final = 32  # the SPDM requester nonce NVML takes (NVML_CC_GPU_CEC_NONCE_SIZE)
# NVML return codes (nvml.h), by what they mean to an operator.
_LIBRARY_NOT_FOUND: Final = 12
_DRIVER_NOT_LOADED: Final = 9
_NOT_SUPPORTED: Final = 3
_FUNCTION_NOT_FOUND: Final = 13
_NO_PERMISSION: Final = 4


class NvmlError(Exception):
    """An NVML call failed; the message names the call and NVML's reason."""

    def __init__(self, message: str, code: int | None) -> None:
        super().__init__(message)
        self.code = code

    @property
    def no_library(self) -> bool:
        return self.code == _LIBRARY_NOT_FOUND

    @property
    def no_driver(self) -> bool:
        return self.code == _DRIVER_NOT_LOADED

    @property
    def unsupported(self) -> bool:
        return self.code in (_NOT_SUPPORTED, _FUNCTION_NOT_FOUND)

    @property
    def no_permission(self) -> bool:
        return self.code == _NO_PERMISSION


def load_nvml() -> ModuleType:
    """The `pynvml` module, or `ProviderError` with the install hint."""
    try:
        return importlib.import_module("pynvml")
    except ImportError as error:
        raise ProviderError(
            f"the gpu-cc collector needs NVML's Python binding, which is not installed ({error})",
            hint=INSTALL_HINT,
        ) from None


@dataclass(frozen=True, slots=True)
class CcState:
    """What `nvmlSystemGetConfComputeState` says about the system."""

    enabled: bool  # ccFeature
    devtools: bool  # devToolsMode: CC with the developer tools allowed
    environment: str  # "production", "simulation" or "unavailable"

    @property
    def mode(self) -> str:
        """The CC mode as NVIDIA's tools name it: on, devtools, off."""
        if not self.enabled:
            return "off"
        return "devtools" if self.devtools else "on"


@dataclass(frozen=True, slots=True)
class GpuIdentity:
    """What NVML says about one GPU: unsigned, informative."""

    index: int
    name: str
    uuid: str
    vbios_version: str


class Nvml:
    """The NVML calls of the collector over one `pynvml` module."""

    def __init__(self, module: ModuleType) -> None:
        self._nvml: Any = module

    def _call(self, function: str, *args: Any) -> Any:
        try:
            return getattr(self._nvml, function)(*args)
        except self._nvml.NVMLError as error:
            code = getattr(error, "value", None)
            raise NvmlError(f"{function}: {error}", code) from None

    def init(self) -> None:
        self._call("nvmlInit")

    def shutdown(self) -> None:
        self._call("nvmlShutdown")

    def cc_capable(self) -> bool:
        caps = self._call("nvmlSystemGetConfComputeCapabilities")
        return int(caps.gpusCaps) == int(self._nvml.NVML_CC_SYSTEM_GPUS_CC_CAPABLE)

    def cc_state(self) -> CcState:
        state = self._call("nvmlSystemGetConfComputeState")
        environments = {
            int(self._nvml.NVML_CC_SYSTEM_ENVIRONMENT_PROD): "production",
            int(self._nvml.NVML_CC_SYSTEM_ENVIRONMENT_SIM): "simulation",
        }
        return CcState(
            enabled=int(state.ccFeature) == int(self._nvml.NVML_CC_SYSTEM_FEATURE_ENABLED),
            devtools=int(state.devToolsMode) == int(self._nvml.NVML_CC_SYSTEM_DEVTOOLS_MODE_ON),
            environment=environments.get(int(state.environment), "unavailable"),
        )

    def gpus_ready(self) -> bool:
        state = self._call("nvmlSystemGetConfComputeGpusReadyState")
        return int(state) == int(self._nvml.NVML_CC_ACCEPTING_CLIENT_REQUESTS_TRUE)

    def count(self) -> int:
        return int(self._call("nvmlDeviceGetCount"))

    def driver_version(self) -> str:
        return str(self._call("nvmlSystemGetDriverVersion"))

    def identity(self, index: int) -> GpuIdentity:
        handle = self._call("nvmlDeviceGetHandleByIndex", index)
        return GpuIdentity(
            index=index,
            name=str(self._call("nvmlDeviceGetName", handle)),
            uuid=str(self._call("nvmlDeviceGetUUID", handle)),
            vbios_version=str(self._call("nvmlDeviceGetVbiosVersion", handle)),
        )

    def attestation_report(self, index: int, nonce: bytes) -> bytes:
        """The SPDM GET_MEASUREMENTS request and response the GPU signed over `nonce`."""
        if len(nonce) != NONCE_SIZE:
            raise ValueError(f"the SPDM nonce is {NONCE_SIZE} bytes, not {len(nonce)}")
        handle = self._call("nvmlDeviceGetHandleByIndex", index)
        report = self._call("nvmlDeviceGetConfComputeGpuAttestationReport", handle, nonce)
        return _sized(report.attestationReport, int(report.attestationReportSize), "a report")

    def certificate_chain(self, index: int) -> tuple[bytes, ...]:
        """The GPU's attestation certificate chain as DER, leaf first as NVML gives it."""
        handle = self._call("nvmlDeviceGetHandleByIndex", index)
        certificate = self._call("nvmlDeviceGetConfComputeGpuCertificate", handle)
        pem = _sized(
            certificate.attestationCertChain,
            int(certificate.attestationCertChainSize),
            "an attestation certificate chain",
        )
        try:
            chain = x509.load_pem_x509_certificates(pem)
        except ValueError as error:
            raise NvmlError(
                f"nvmlDeviceGetConfComputeGpuCertificate: the attestation certificate chain is "
                f"not PEM certificates ({error})",
                None,
            ) from None
        return tuple(cert.public_bytes(Encoding.DER) for cert in chain)


def _sized(array: Any, size: int, what: str) -> bytes:
    """The first `size` bytes of a ctypes byte array NVML filled, refusing sizes that do not
    fit it (a driver bug must not turn into a silently truncated report)."""
    capacity = len(array)
    if not 0 < size <= capacity:
        raise NvmlError(f"NVML returned {what} of {size} bytes (room for {capacity})", None)
    return bytes(array[:size])
