# ruff: noqa: N801, N802, N815, N816 - every name is nvidia-ml-py's own
"""A test double of nvidia-ml-py's `pynvml` for machines without an NVIDIA GPU.

It is importable as `pynvml` (put this folder first on `PYTHONPATH`) and implements the
functions, structures, constants and exceptions the gpu-cc collector uses, with the names,
argument orders and return shapes of nvidia-ml-py 13.x: ctypes structures filled the way
libnvidia-ml fills them, strings decoded as `convertStrBytes` does, failures raised as the
`NVMLError_*` subclass of the NVML return code.

Each GPU it lists serves a genuine report and device certificate chain from
`shared/attestation-vectors/nvidia-gpucc/`, with NVML's driver and VBIOS strings equal to
what that signed report states. A real GPU signs a fresh report over the caller's nonce;
this double cannot, so it replays the recorded report and ignores the nonce (a verifier
must therefore fail `gpu.nonce` on its evidence, and only that among the device checks).

Environment:
* `NVML_DOUBLE_STATE`: `ok` (default), `no-library` (nvmlInit raises
  NVMLError_LibraryNotFound), `no-driver` (NVMLError_DriverNotLoaded), `no-gpu` (zero
  devices), `unsupported` (the CC queries raise NVMLError_NotSupported), `not-capable`
  (CC capabilities say the GPUs are not CC-capable), `cc-off`, `devtools` (CC on in
  devtools mode), `not-ready` (CC on, GPUs not accepting work), `truncated-report` (the
  report NVML returns is cut short, as a faulty driver might).
* `NVML_DOUBLE_GPUS`: comma-separated vector names, one GPU each (default `hopper-535`):
  `hopper-535`, `hopper-570`, `hopper-550` (nvlgv's sample), `blackwell`. NVML's driver
  version is the system's, so it is the first GPU's: the others' reports then state
  another driver than NVML does, as no real machine would.
* `NVML_DOUBLE_VECTORS`: the vectors folder, when not at the repository's `../shared`.
* `NVML_DOUBLE_NONCE_LOG`: a file to which each requested nonce is appended as a hex line.
"""

from __future__ import annotations

import os
import threading
from ctypes import POINTER, Structure, c_uint, c_uint8, pointer
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

NVML_SUCCESS = 0
NVML_ERROR_UNINITIALIZED = 1
NVML_ERROR_INVALID_ARGUMENT = 2
NVML_ERROR_NOT_SUPPORTED = 3
NVML_ERROR_NO_PERMISSION = 4
NVML_ERROR_NOT_FOUND = 6
NVML_ERROR_DRIVER_NOT_LOADED = 9
NVML_ERROR_LIBRARY_NOT_FOUND = 12
NVML_ERROR_FUNCTION_NOT_FOUND = 13
NVML_ERROR_GPU_IS_LOST = 15
NVML_ERROR_UNKNOWN = 999

NVML_CC_ACCEPTING_CLIENT_REQUESTS_FALSE = 0
NVML_CC_ACCEPTING_CLIENT_REQUESTS_TRUE = 1
NVML_CC_SYSTEM_GPUS_CC_NOT_CAPABLE = 0
NVML_CC_SYSTEM_GPUS_CC_CAPABLE = 1
NVML_CC_SYSTEM_CPU_CAPS_NONE = 0
NVML_CC_SYSTEM_CPU_CAPS_AMD_SEV_SNP = 3
NVML_CC_SYSTEM_DEVTOOLS_MODE_OFF = 0
NVML_CC_SYSTEM_DEVTOOLS_MODE_ON = 1
NVML_CC_SYSTEM_ENVIRONMENT_UNAVAILABLE = 0
NVML_CC_SYSTEM_ENVIRONMENT_SIM = 1
NVML_CC_SYSTEM_ENVIRONMENT_PROD = 2
NVML_CC_SYSTEM_FEATURE_DISABLED = 0
NVML_CC_SYSTEM_FEATURE_ENABLED = 1

NVML_GPU_CERT_CHAIN_SIZE = 0x1000
NVML_GPU_ATTESTATION_CERT_CHAIN_SIZE = 0x1400
NVML_CC_GPU_CEC_NONCE_SIZE = 0x20
NVML_CC_GPU_ATTESTATION_REPORT_SIZE = 0x2000
NVML_CC_GPU_CEC_ATTESTATION_REPORT_SIZE = 0x1000
NVML_CC_CEC_ATTESTATION_REPORT_NOT_PRESENT = 0


class NVMLError(Exception):
    """As in nvidia-ml-py: `NVMLError(code)` makes the subclass of that code."""

    _valClassMapping: ClassVar[dict[int, type[NVMLError]]] = {}
    _errcode_to_string: ClassVar[dict[int, str]] = {
        NVML_ERROR_UNINITIALIZED: "Uninitialized",
        NVML_ERROR_INVALID_ARGUMENT: "Invalid Argument",
        NVML_ERROR_NOT_SUPPORTED: "Not Supported",
        NVML_ERROR_NO_PERMISSION: "Insufficient Permissions",
        NVML_ERROR_NOT_FOUND: "Not Found",
        NVML_ERROR_DRIVER_NOT_LOADED: "Driver Not Loaded",
        NVML_ERROR_LIBRARY_NOT_FOUND: "NVML Shared Library Not Found",
        NVML_ERROR_FUNCTION_NOT_FOUND: "Function Not Found",
        NVML_ERROR_GPU_IS_LOST: "GPU is lost",
        NVML_ERROR_UNKNOWN: "Unknown Error",
    }
    value: int

    def __new__(cls, value: int) -> NVMLError:
        kind = NVMLError._valClassMapping.get(value, cls) if cls is NVMLError else cls
        made = Exception.__new__(kind)
        made.value = value
        return made

    def __init__(self, value: int) -> None:
        super().__init__(value)

    def __str__(self) -> str:
        return NVMLError._errcode_to_string.get(self.value, f"NVML Error with code {self.value}")


def _error_class(name: str, code: int) -> type[NVMLError]:
    def new(cls: type[NVMLError], *_: object) -> NVMLError:
        made = Exception.__new__(cls)
        made.value = code
        return made

    made: type[NVMLError] = type(name, (NVMLError,), {"__new__": new, "__module__": __name__})
    NVMLError._valClassMapping[code] = made
    return made


NVMLError_Uninitialized = _error_class("NVMLError_Uninitialized", NVML_ERROR_UNINITIALIZED)
NVMLError_InvalidArgument = _error_class("NVMLError_InvalidArgument", NVML_ERROR_INVALID_ARGUMENT)
NVMLError_NotSupported = _error_class("NVMLError_NotSupported", NVML_ERROR_NOT_SUPPORTED)
NVMLError_NoPermission = _error_class("NVMLError_NoPermission", NVML_ERROR_NO_PERMISSION)
NVMLError_NotFound = _error_class("NVMLError_NotFound", NVML_ERROR_NOT_FOUND)
NVMLError_DriverNotLoaded = _error_class("NVMLError_DriverNotLoaded", NVML_ERROR_DRIVER_NOT_LOADED)
NVMLError_LibraryNotFound = _error_class("NVMLError_LibraryNotFound", NVML_ERROR_LIBRARY_NOT_FOUND)
NVMLError_FunctionNotFound = _error_class(
    "NVMLError_FunctionNotFound", NVML_ERROR_FUNCTION_NOT_FOUND
)
NVMLError_GpuIsLost = _error_class("NVMLError_GpuIsLost", NVML_ERROR_GPU_IS_LOST)
NVMLError_Unknown = _error_class("NVMLError_Unknown", NVML_ERROR_UNKNOWN)


class struct_c_nvmlDevice_t(Structure):
    # Opaque in libnvidia-ml; here it holds the index the handle was made for.
    _fields_: ClassVar = [("index", c_uint)]


c_nvmlDevice_t = POINTER(struct_c_nvmlDevice_t)


class c_nvmlConfComputeSystemState_t(Structure):
    _fields_: ClassVar = [("environment", c_uint), ("ccFeature", c_uint), ("devToolsMode", c_uint)]


class c_nvmlConfComputeSystemCaps_t(Structure):
    _fields_: ClassVar = [("cpuCaps", c_uint), ("gpusCaps", c_uint)]


class c_nvmlConfComputeGpuCertificate_t(Structure):
    _fields_: ClassVar = [
        ("certChainSize", c_uint),
        ("attestationCertChainSize", c_uint),
        ("certChain", c_uint8 * NVML_GPU_CERT_CHAIN_SIZE),
        ("attestationCertChain", c_uint8 * NVML_GPU_ATTESTATION_CERT_CHAIN_SIZE),
    ]


class c_nvmlConfComputeGpuAttestationReport_t(Structure):
    _fields_: ClassVar = [
        ("isCecAttestationReportPresent", c_uint),
        ("attestationReportSize", c_uint),
        ("cecAttestationReportSize", c_uint),
        ("nonce", c_uint8 * NVML_CC_GPU_CEC_NONCE_SIZE),
        ("attestationReport", c_uint8 * NVML_CC_GPU_ATTESTATION_REPORT_SIZE),
        ("cecAttestationReport", c_uint8 * NVML_CC_GPU_CEC_ATTESTATION_REPORT_SIZE),
    ]


@dataclass(frozen=True)
class _Vector:
    """One GPU: its recorded files and what NVML says about it (the versions are the
    signed report's own, the name and UUID this double's)."""

    report: str
    chain: str
    name: str
    uuid: str
    driver: str
    vbios: str


VECTORS = {
    "hopper-535": _Vector(
        "nvat-hopper-535.86.09-attestation-report.hex",
        "nvat-hopper-535.86.09-cert-chain.pem",
        "NVIDIA H100 80GB HBM3",
        "GPU-0d7e1a3c-5b39-4d2e-9c41-53a3e1f0c535",
        "535.86.09",
        "96.00.5E.00.01",
    ),
    "hopper-570": _Vector(
        "nvat-hopper-570.124.03-attestation-report.hex",
        "nvat-hopper-570.124.03-cert-chain.pem",
        "NVIDIA H100 80GB HBM3",
        "GPU-6a0b2f41-8c7d-4e15-a3b2-1f9e0c4d0570",
        "570.124.03",
        "96.00.5E.00.04",
    ),
    "hopper-550": _Vector(
        "hopper-attestation-report.hex",
        "hopper-device-cert-chain.pem",
        "NVIDIA H100 PCIe",
        "GPU-3c9d4e2a-1b7f-4a60-8e53-2d6c9b1a0550",
        "550.90.07",
        "96.00.9F.00.01",
    ),
    "blackwell": _Vector(
        "nvat-blackwell-attestation-report.hex",
        "nvat-blackwell-cert-chain.pem",
        "NVIDIA B200",
        "GPU-9e4f7a21-3d5c-4b86-a0e7-6c2b8d1f0575",
        "575.32",
        "97.00.88.00.0F",
    ),
}
STATES = frozenset(
    {"ok", "no-library", "no-driver", "no-gpu", "unsupported", "not-capable"}
    | {"cc-off", "devtools", "not-ready", "truncated-report"}
)

_lock = threading.Lock()
_initialized = 0


def _state() -> str:
    state = os.environ.get("NVML_DOUBLE_STATE", "ok")
    if state not in STATES:
        raise ValueError(f"NVML_DOUBLE_STATE={state!r}: use one of {sorted(STATES)}")
    return state


def _gpus() -> list[_Vector]:
    if _state() == "no-gpu":
        return []
    names = os.environ.get("NVML_DOUBLE_GPUS", "hopper-535").split(",")
    unknown = [name for name in names if name not in VECTORS]
    if unknown:
        raise ValueError(f"NVML_DOUBLE_GPUS names {unknown}: use {sorted(VECTORS)}")
    return [VECTORS[name] for name in names]


def _vectors() -> Path:
    given = os.environ.get("NVML_DOUBLE_VECTORS")
    if given:
        return Path(given)
    # tests/nvml_double/pynvml.py in plugins/cmcp-gpucc of a checkout beside ../shared
    repo = Path(__file__).resolve().parents[4]
    return repo.parent / "shared" / "attestation-vectors" / "nvidia-gpucc"


def _require_init() -> None:
    if _initialized <= 0:
        raise NVMLError(NVML_ERROR_UNINITIALIZED)


def _cc_query() -> None:
    _require_init()
    if _state() == "unsupported":
        raise NVMLError(NVML_ERROR_NOT_SUPPORTED)


def _gpu(handle: Any) -> _Vector:
    _require_init()
    gpus = _gpus()
    index = int(handle.contents.index)
    if index >= len(gpus):
        raise NVMLError(NVML_ERROR_INVALID_ARGUMENT)
    return gpus[index]


def nvmlInit() -> None:
    global _initialized  # noqa: PLW0603 - NVML's reference count is process-wide
    state = _state()
    if state == "no-library":
        raise NVMLError(NVML_ERROR_LIBRARY_NOT_FOUND)
    if state == "no-driver":
        raise NVMLError(NVML_ERROR_DRIVER_NOT_LOADED)
    with _lock:
        _initialized += 1


def nvmlShutdown() -> None:
    global _initialized  # noqa: PLW0603
    _require_init()
    with _lock:
        _initialized -= 1


def nvmlSystemGetDriverVersion() -> str:
    _require_init()
    gpus = _gpus()
    return gpus[0].driver if gpus else "535.86.09"


def nvmlDeviceGetCount() -> int:
    _require_init()
    return len(_gpus())


def nvmlDeviceGetHandleByIndex(index: int) -> Any:
    _require_init()
    if not 0 <= index < len(_gpus()):
        raise NVMLError(NVML_ERROR_INVALID_ARGUMENT)
    return pointer(struct_c_nvmlDevice_t(index))


def nvmlDeviceGetName(handle: Any) -> str:
    return _gpu(handle).name


def nvmlDeviceGetUUID(handle: Any) -> str:
    return _gpu(handle).uuid


def nvmlDeviceGetVbiosVersion(handle: Any) -> str:
    return _gpu(handle).vbios


def nvmlSystemGetConfComputeCapabilities() -> c_nvmlConfComputeSystemCaps_t:
    _cc_query()
    capable = _state() != "not-capable"
    caps = NVML_CC_SYSTEM_GPUS_CC_CAPABLE if capable else NVML_CC_SYSTEM_GPUS_CC_NOT_CAPABLE
    return c_nvmlConfComputeSystemCaps_t(NVML_CC_SYSTEM_CPU_CAPS_AMD_SEV_SNP, caps)


def nvmlSystemGetConfComputeState() -> c_nvmlConfComputeSystemState_t:
    _cc_query()
    state = _state()
    off = state in ("cc-off", "not-capable")
    return c_nvmlConfComputeSystemState_t(
        NVML_CC_SYSTEM_ENVIRONMENT_PROD,
        NVML_CC_SYSTEM_FEATURE_DISABLED if off else NVML_CC_SYSTEM_FEATURE_ENABLED,
        NVML_CC_SYSTEM_DEVTOOLS_MODE_ON
        if state == "devtools"
        else NVML_CC_SYSTEM_DEVTOOLS_MODE_OFF,
    )


def nvmlSystemGetConfComputeGpusReadyState() -> int:
    _cc_query()
    if _state() in ("not-ready", "cc-off"):
        return NVML_CC_ACCEPTING_CLIENT_REQUESTS_FALSE
    return NVML_CC_ACCEPTING_CLIENT_REQUESTS_TRUE


def nvmlDeviceGetConfComputeGpuCertificate(
    device: Any,
) -> c_nvmlConfComputeGpuCertificate_t:
    gpu = _gpu(device)
    _cc_query()
    pem = (_vectors() / gpu.chain).read_bytes()
    cert = c_nvmlConfComputeGpuCertificate_t()
    cert.attestationCertChainSize = len(pem)
    cert.attestationCertChain[: len(pem)] = list(pem)
    return cert


def nvmlDeviceGetConfComputeGpuAttestationReport(
    device: Any, c_nonce: bytes
) -> c_nvmlConfComputeGpuAttestationReport_t:
    gpu = _gpu(device)
    _cc_query()
    if _state() == "cc-off":
        raise NVMLError(NVML_ERROR_NOT_SUPPORTED)
    report = c_nvmlConfComputeGpuAttestationReport_t()
    # nvidia-ml-py copies the nonce into the request structure this way; a nonce of another
    # length than the 32-byte field raises there too.
    report.nonce = (c_uint8 * len(c_nonce))(*(c_nonce))
    log = os.environ.get("NVML_DOUBLE_NONCE_LOG")
    if log:
        with Path(log).open("a", encoding="ascii") as handle:
            handle.write(bytes(c_nonce).hex() + "\n")
    recorded = bytes.fromhex((_vectors() / gpu.report).read_text().strip())
    if _state() == "truncated-report":
        recorded = recorded[: len(recorded) // 2]
    report.attestationReportSize = len(recorded)
    report.attestationReport[: len(recorded)] = list(recorded)
    return report
