"""The `attestation.providers.gpu-cc` settings: parsed once, validated fully, then frozen.

Every problem is a `ProviderError` naming the setting by its full config path; unknown
keys are refused rather than ignored, so a misspelt setting never silently falls back to
a default.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import httpx

from cmcp_cli.attestation.api import ProviderError
from cmcp_cli.attestation.toolkit import settings_section

SECTION: Final = "attestation.providers.gpu-cc"
SETTING_NAMES: Final = ("devices", "rims", "ocsp", "rim_url", "ocsp_url")
MAX_DEVICES: Final = 64  # NVML indices are small; a longer list is a typing mistake


@dataclass(frozen=True, slots=True)
class GpuSettings:
    """The validated settings. With none given, every GPU NVML lists is attested and
    nothing is stapled: the verifier then has no RIM to appraise the measurements with."""

    devices: tuple[int, ...] | None = None  # NVML indices to attest; None: all of them
    rims: tuple[Path, ...] = ()  # RIM files (SWID XML), matched to GPUs by version
    ocsp: tuple[Path, ...] = ()  # DER OCSP responses, stapled to the GPUs they are about
    rim_url: str | None = None  # a RIM service (NVIDIA's protocol) for RIMs not in `rims`
    ocsp_url: str | None = None  # an OCSP responder asked once per start

    @property
    def staples_rims(self) -> bool:
        return bool(self.rims) or self.rim_url is not None

    @classmethod
    def parse(cls, settings: Mapping[str, Any] | None) -> GpuSettings:
        settings = settings_section(
            settings, section=SECTION, accepted=SETTING_NAMES, provider="gpu-cc"
        )
        return cls(
            devices=_devices(settings["devices"]) if "devices" in settings else None,
            rims=_paths("rims", settings.get("rims", ()), "the driver and VBIOS RIM files"),
            ocsp=_paths("ocsp", settings.get("ocsp", ()), "DER OCSP response files"),
            rim_url=_url("rim_url", settings["rim_url"]) if "rim_url" in settings else None,
            ocsp_url=_url("ocsp_url", settings["ocsp_url"]) if "ocsp_url" in settings else None,
        )


def _devices(value: object) -> tuple[int, ...]:
    hint = "list the NVML indices to attest (nvidia-smi -L shows them), e.g. [0, 1]"
    if not isinstance(value, list) or not value or len(value) > MAX_DEVICES:
        raise ProviderError(
            f"{SECTION}.devices must be a non-empty list of GPU indices, got {value!r}",
            hint=f"{hint}; leave the setting out to attest every GPU",
        )
    for index in value:
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < 2**31:
            raise ProviderError(f"{SECTION}.devices: {index!r} is not a GPU index", hint=hint)
    if len(set(value)) != len(value):
        raise ProviderError(f"{SECTION}.devices lists a GPU twice: {value!r}", hint=hint)
    return tuple(value)


def _paths(key: str, value: object, what: str) -> tuple[Path, ...]:
    if not isinstance(value, list | tuple):
        raise ProviderError(
            f"{SECTION}.{key} must be a list of absolute paths, got {value!r}",
            hint=f"list {what}, e.g. [/etc/cmcp/gpu/driver-rim.xml]",
        )
    paths = []
    for item in value:
        if not isinstance(item, str) or not item.startswith("/") or not item.strip():
            raise ProviderError(
                f"{SECTION}.{key}: {item!r} is not an absolute path",
                hint=f"list {what} by absolute path",
            )
        paths.append(Path(item))
    return tuple(paths)


def _url(key: str, value: object) -> str:
    hint = (
        "an https:// URL, e.g. https://rim.attestation.nvidia.com/v1/rim/"
        if key == "rim_url"
        else "an https:// URL, e.g. https://ocsp.ndis.nvidia.com/"
    )
    if not isinstance(value, str):
        raise ProviderError(f"{SECTION}.{key} must be a URL string, got {value!r}", hint=hint)
    try:
        url = httpx.URL(value)
    except (httpx.InvalidURL, TypeError):
        raise ProviderError(f"{SECTION}.{key}: {value!r} is not a URL", hint=hint) from None
    if url.scheme != "https" or not url.host:
        raise ProviderError(
            f"{SECTION}.{key}: {value!r} is not an https URL: RIMs and OCSP responses are "
            "fetched over TLS only",
            hint=hint,
        )
    if url.userinfo or url.query or url.fragment:
        raise ProviderError(
            f"{SECTION}.{key}: {value!r} carries credentials, a query or a fragment",
            hint=hint,
        )
    return value
