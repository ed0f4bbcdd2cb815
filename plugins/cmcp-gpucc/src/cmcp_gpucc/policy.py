"""The auditor's GPU requirements: the `[gpu-cc]` table of `cmcp verify --platform-policy`.

    allow_unchecked_revocation = true      # no stapled OCSP may still be hardware-attested
    minimum_driver_version = "550.54.15"   # the signed driver version must be at least this
    minimum_vbios_version = "96.00.9F.00.01"
    allow_debug = true                     # accept a GPU in CC DevTools mode
    rim_measurements = ["sha384:…"]        # accept only these RIM pairs (`cmcp measure gpu-cc`)
    trust_roots = ["nvidia-device-identity-ca.pem", "nvidia-corim-root.pem"]

`trust_roots` names PEM files whose self-signed certificates replace the vendored NVIDIA
roots, for the device chain and the RIM chains alike; a relative path is taken from the
folder of the platform-policy file. Absent, the vendored roots are the anchors.

Driver versions compare as dot-separated decimal numbers (535.86.9 < 535.104.5), VBIOS
versions as their five hex bytes in the order NVIDIA prints them. An unusable value is a
`ProviderError` that names the key: it is the auditor's input, not the evidence.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from cmcp_cli.attestation.api import ProviderError
from cmcp_cli.attestation.toolkit import platform_policy_table, policy_flag, read_policy_file
from cmcp_gpucc.plugin import NAME, PLATFORM_POLICY_KEYS

TABLE: Final = f"[{NAME}]"
_DRIVER: Final = re.compile(r"\d{1,5}(?:\.\d{1,5}){0,3}")
_VBIOS: Final = re.compile(r"[0-9A-Fa-f]{2}(?:\.[0-9A-Fa-f]{2}){4}")
_MEASUREMENT: Final = re.compile(r"sha384:[0-9a-f]{96}")


def driver_key(version: str) -> tuple[int, ...] | None:
    """A driver version as numbers, or None when it is not dotted decimal numbers."""
    if _DRIVER.fullmatch(version) is None:
        return None
    return tuple(int(part) for part in version.split("."))


def vbios_key(version: str) -> tuple[int, ...] | None:
    """A VBIOS version ("96.00.9F.00.01") as its five bytes, or None when malformed."""
    if _VBIOS.fullmatch(version) is None:
        return None
    return tuple(int(part, 16) for part in version.split("."))


def at_least(version: tuple[int, ...], minimum: tuple[int, ...]) -> bool:
    width = max(len(version), len(minimum))
    pad = (0,) * width
    return (version + pad)[:width] >= (minimum + pad)[:width]


@dataclass(frozen=True, slots=True)
class Requirements:
    """The validated `[gpu-cc]` table; defaults where the auditor set nothing."""

    allow_unchecked_revocation: bool = False
    minimum_driver_version: str | None = None
    minimum_vbios_version: str | None = None
    allow_debug: bool = False
    rim_measurements: tuple[str, ...] | None = None  # None: any RIM pair NVIDIA signed
    trust_roots: tuple[bytes, ...] | None = None  # PEM data of the roots named; None: vendored

    @classmethod
    def parse(cls, table: Mapping[str, Any], folder: Path | None = None) -> Requirements:
        """`ProviderError` names the first unusable key; the files `trust_roots` names are
        read from `folder` (the platform-policy file's) when relative."""
        table = platform_policy_table(
            table, name=TABLE, accepted=PLATFORM_POLICY_KEYS, provider="gpu-cc"
        )
        flags = {
            key: policy_flag(table, TABLE, key)
            for key in ("allow_unchecked_revocation", "allow_debug")
        }
        driver = table.get("minimum_driver_version")
        if driver is not None and (not isinstance(driver, str) or driver_key(driver) is None):
            raise ProviderError(
                f"{TABLE} minimum_driver_version must be a driver version such as "
                f'"550.54.15", got {driver!r}'
            )
        vbios = table.get("minimum_vbios_version")
        if vbios is not None and (not isinstance(vbios, str) or vbios_key(vbios) is None):
            raise ProviderError(
                f"{TABLE} minimum_vbios_version must be a VBIOS version such as "
                f'"96.00.9F.00.01" (five hex bytes), got {vbios!r}'
            )
        pins = table.get("rim_measurements")
        if pins is not None and (
            not isinstance(pins, list)
            or not pins
            or not all(isinstance(p, str) and _MEASUREMENT.fullmatch(p) for p in pins)
        ):
            raise ProviderError(
                f"{TABLE} rim_measurements must be a non-empty list of sha384:<96 hex> "
                f"strings as `cmcp measure gpu-cc` prints them, got {pins!r}"
            )
        return cls(
            allow_unchecked_revocation=flags["allow_unchecked_revocation"],
            minimum_driver_version=driver,
            minimum_vbios_version=vbios,
            allow_debug=flags["allow_debug"],
            rim_measurements=None if pins is None else tuple(pins),
            trust_roots=_trust_roots(table["trust_roots"], folder)
            if "trust_roots" in table
            else None,
        )


def _trust_roots(value: Any, folder: Path | None) -> tuple[bytes, ...]:
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
        raise ProviderError(
            f"{TABLE} trust_roots must be a non-empty list of PEM file paths, got {value!r}",
            hint="name the NVIDIA Device Identity CA and CoRIM signing Root CA files, or leave "
            "trust_roots out for the vendored roots",
        )
    return tuple(read_policy_file(name, folder, f"{TABLE} trust_roots")[1] for name in value)
