"""The `attestation.providers.sev-snp` settings: parsed once, validated fully, then frozen.

Every problem is a `ProviderError` naming the setting by its full config path; unknown
keys are refused rather than ignored, so a misspelt setting never silently falls back to
a default.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

from cmcp_cli.attestation.api import ProviderError
from cmcp_cli.attestation.toolkit import settings_section

SECTION: Final = "attestation.providers.sev-snp"
DEFAULT_CONFIGFS: Final = Path("/sys/kernel/config/tsm/report")
DEFAULT_DEVICE: Final = Path("/dev/sev-guest")
SETTING_NAMES: Final = ("interface", "configfs_root", "device", "privlevel", "vcek_file")
Interface = Literal["auto", "configfs", "ioctl"]
INTERFACES: Final[tuple[Interface, ...]] = ("auto", "configfs", "ioctl")


@dataclass(frozen=True, slots=True)
class SevSettings:
    """The validated settings; the defaults are those of a Linux SEV-SNP guest."""

    interface: Interface = "auto"
    configfs_root: Path = DEFAULT_CONFIGFS
    device: Path = DEFAULT_DEVICE
    privlevel: int | None = None  # the VMPL to request; None leaves the kernel's default
    vcek_file: Path | None = None  # a VCEK (DER or PEM) for hosts with no certificate table

    @classmethod
    def parse(cls, settings: Mapping[str, Any] | None) -> SevSettings:
        settings = settings_section(
            settings, section=SECTION, accepted=SETTING_NAMES, provider="SEV-SNP"
        )
        parsed = cls()
        if "interface" in settings:
            parsed = _replace(parsed, interface=_interface(settings["interface"]))
        for key in ("configfs_root", "device", "vcek_file"):
            if key in settings:
                parsed = _replace(parsed, **{key: _path(key, settings[key])})
        if "privlevel" in settings:
            parsed = _replace(parsed, privlevel=_privlevel(settings["privlevel"]))
        return parsed


def _replace(settings: SevSettings, **changes: Any) -> SevSettings:
    values = {name: getattr(settings, name) for name in SETTING_NAMES} | changes
    return SevSettings(**values)


def _interface(value: object) -> Interface:
    for interface in INTERFACES:
        if value == interface:
            return interface
    raise ProviderError(
        f"{SECTION}.interface: {value!r} is not an interface",
        hint='use "auto" (configfs-tsm, else /dev/sev-guest), "configfs" or "ioctl"',
    )


def _path(key: str, value: object) -> Path:
    if not isinstance(value, str) or not value.strip() or not value.startswith("/"):
        raise ProviderError(
            f"{SECTION}.{key} must be an absolute path, got {value!r}",
            hint="for example /sys/kernel/config/tsm/report or /dev/sev-guest",
        )
    return Path(value)


def _privlevel(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 3:
        raise ProviderError(
            f"{SECTION}.privlevel: {value!r} is not a VMPL",
            hint="the report's VMPL is 0, 1, 2 or 3, at least the guest's own level",
        )
    return value
