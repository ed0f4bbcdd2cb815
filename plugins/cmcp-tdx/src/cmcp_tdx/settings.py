"""The `attestation.providers.tdx` settings: parsed once, validated fully, then frozen.

Pure stdlib. Every problem is a `ProviderError` that names the setting by its full config
path; unknown keys are refused rather than ignored, so a misspelt setting never silently
falls back to a default. The paths exist to be overridden in tests and unusual hosts.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal, TypeAlias

from cmcp_cli.attestation.api import ProviderError
from cmcp_cli.attestation.toolkit import settings_section

SECTION: Final = "attestation.providers.tdx"
DEFAULT_CONFIGFS: Final = Path("/sys/kernel/config/tsm/report")
DEFAULT_DEVICE: Final = Path("/dev/tdx_guest")
DEFAULT_CCEL: Final = Path("/sys/firmware/acpi/tables/data/CCEL")
SETTING_NAMES: Final = (
    "interface",
    "configfs_root",
    "device",
    "qgs",
    "qgs_timeout",
    "ccel_path",
    "include_ccel",
)
Interface = Literal["auto", "configfs", "device"]
INTERFACES: Final[tuple[Interface, ...]] = ("auto", "configfs", "device")
VSOCK_CID_HOST: Final = 2
QGS_VSOCK_PORT: Final = 4050  # libtdx_attest's default (`port=4050` in /etc/tdx-attest.conf)
MAX_U32: Final = 0xFFFFFFFF  # VMADDR_CID_ANY and VMADDR_PORT_ANY: bind wildcards, not peers
MAX_UNIX_PATH: Final = 107  # sun_path holds 108 bytes with the terminating NUL
DEFAULT_QGS_TIMEOUT: Final = 30.0
MAX_QGS_TIMEOUT: Final = 600.0


@dataclass(frozen=True, slots=True)
class VsockAddress:
    """The QGS on the host as the TD reaches it over AF_VSOCK."""

    cid: int = VSOCK_CID_HOST
    port: int = QGS_VSOCK_PORT

    def __str__(self) -> str:
        return f"vsock:{self.cid}:{self.port}"


@dataclass(frozen=True, slots=True)
class UnixAddress:
    """A QGS listening on a Unix socket: the QGS's own host, and tests."""

    path: Path

    def __str__(self) -> str:
        return f"unix:{self.path}"


QgsAddress: TypeAlias = VsockAddress | UnixAddress
DEFAULT_QGS: Final = VsockAddress()


@dataclass(frozen=True, slots=True)
class TdxSettings:
    interface: Interface = "auto"
    configfs_root: Path = DEFAULT_CONFIGFS
    device: Path = DEFAULT_DEVICE
    qgs: QgsAddress = DEFAULT_QGS
    qgs_timeout: float = DEFAULT_QGS_TIMEOUT
    ccel_path: Path = DEFAULT_CCEL
    include_ccel: bool = True

    @classmethod
    def parse(cls, settings: Mapping[str, Any] | None) -> TdxSettings:
        """Validate the provider's config section; `ProviderError` names the first problem."""
        settings = settings_section(
            settings, section=SECTION, accepted=SETTING_NAMES, provider="TDX"
        )
        include = settings.get("include_ccel", True)
        if not isinstance(include, bool):
            raise ProviderError(
                f"{SECTION}.include_ccel must be true or false, got {include!r}",
                hint="true (the default) adds the CCEL event log so a verifier replays the RTMRs",
            )
        defaults = cls()
        return cls(
            interface=_interface(settings.get("interface", defaults.interface)),
            configfs_root=_path(settings, "configfs_root", defaults.configfs_root),
            device=_path(settings, "device", defaults.device),
            qgs=parse_qgs_address(settings["qgs"]) if "qgs" in settings else defaults.qgs,
            qgs_timeout=_timeout(settings.get("qgs_timeout", defaults.qgs_timeout)),
            ccel_path=_path(settings, "ccel_path", defaults.ccel_path),
            include_ccel=include,
        )


def _interface(value: object) -> Interface:
    for interface in INTERFACES:
        if value == interface:
            return interface
    raise ProviderError(
        f"{SECTION}.interface: {value!r} is not an interface",
        hint='use "auto" (configfs-tsm when the kernel has it, else /dev/tdx_guest and the '
        'host\'s quote generation service), "configfs" or "device"',
    )


def _path(settings: Mapping[str, Any], key: str, default: Path) -> Path:
    if key not in settings:
        return default
    value = settings[key]
    if not isinstance(value, str) or not value.startswith("/") or "\x00" in value:
        raise ProviderError(
            f"{SECTION}.{key} must be an absolute path, got {value!r}",
            hint=f"the default is {default}",
        )
    return Path(value)


def _timeout(value: object) -> float:
    number = value if isinstance(value, int | float) and not isinstance(value, bool) else None
    if number is None or not math.isfinite(number) or not 0 < number <= MAX_QGS_TIMEOUT:
        raise ProviderError(
            f"{SECTION}.qgs_timeout must be a number of seconds above 0 and at most "
            f"{MAX_QGS_TIMEOUT:g}, got {value!r}",
            hint=f"the default is {DEFAULT_QGS_TIMEOUT:g}: the QGS may fetch collateral from "
            "its PCCS before it answers",
        )
    return float(number)


def parse_qgs_address(value: object) -> QgsAddress:
    """`vsock:CID:PORT` or `unix:/absolute/path`; `ProviderError` names `...tdx.qgs`."""
    if isinstance(value, str):
        kind, _, rest = value.partition(":")
        if kind == "vsock":
            cid, _, port = rest.partition(":")
            if _is_u32(cid, 0) and _is_u32(port, 1):
                return VsockAddress(int(cid), int(port))
        elif kind == "unix" and rest.startswith("/") and "\x00" not in rest:
            if len(rest.encode("utf-8", "surrogateescape")) <= MAX_UNIX_PATH:
                return UnixAddress(Path(rest))
            raise ProviderError(
                f"{SECTION}.qgs: the socket path {rest!r} is longer than the "
                f"{MAX_UNIX_PATH} bytes a Unix socket address holds",
                hint="use a shorter path to the QGS socket",
            )
    raise ProviderError(
        f"{SECTION}.qgs: {value!r} is not a QGS address",
        hint=f'write "vsock:CID:PORT" (the default is "{DEFAULT_QGS}", the host seen from '
        'the TD) or "unix:/absolute/path/to/qgs.socket"',
    )


def _is_u32(text: str, minimum: int) -> bool:
    # decimal digits only: int() would also take signs, underscores and spaces
    return text.isascii() and text.isdigit() and minimum <= int(text) < MAX_U32
