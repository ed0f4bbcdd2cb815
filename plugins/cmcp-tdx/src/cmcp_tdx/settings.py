"""The `attestation.providers.tdx` settings: parsed once, validated fully, then frozen.

Pure stdlib. Every problem is a `ProviderError` that names the setting by its full config
path; unknown keys are refused rather than ignored, so a misspelt setting never silently
falls back to a default. The paths exist to be overridden in tests and unusual hosts.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from cmcp_cli.attestation.api import ProviderError
from cmcp_cli.attestation.toolkit import settings_section

SECTION: Final = "attestation.providers.tdx"
DEFAULT_CONFIGFS: Final = Path("/sys/kernel/config/tsm/report")
DEFAULT_DEVICE: Final = Path("/dev/tdx_guest")
DEFAULT_CCEL: Final = Path("/sys/firmware/acpi/tables/data/CCEL")
SETTING_NAMES: Final = ("configfs_root", "device", "ccel_path", "include_ccel")


@dataclass(frozen=True, slots=True)
class TdxSettings:
    configfs_root: Path = DEFAULT_CONFIGFS
    device: Path = DEFAULT_DEVICE
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
            configfs_root=_path(settings, "configfs_root", defaults.configfs_root),
            device=_path(settings, "device", defaults.device),
            ccel_path=_path(settings, "ccel_path", defaults.ccel_path),
            include_ccel=include,
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
