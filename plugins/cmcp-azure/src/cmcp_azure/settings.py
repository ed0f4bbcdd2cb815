"""The `attestation.providers.azure-sev-snp` and `.azure-tdx` settings: parsed once,
validated fully, then frozen.

Pure stdlib (no tpm2-pytss), so a verifier host and `cmcp validate-config` read them too.
Every problem is a `ProviderError` naming the setting by its full config path; unknown keys
are refused rather than ignored, and so are the SNP-only keys in the TDX section, so a
setting never silently does nothing.
"""

from __future__ import annotations

import math
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from cmcp_azure.plugin import SNP_NAME, TDX_NAME
from cmcp_cli.attestation.api import ProviderError
from cmcp_cli.attestation.toolkit import settings_section
from cmcp_tpm.settings import (
    DEFAULT_TCTI,
    PERSISTENT_FIRST,
    PERSISTENT_OWNER_LAST,
    handle_setting,
    tcti_setting,
)

DEFAULT_AK_HANDLE: Final = 0x81000003  # where Azure's paravisor persists the vTPM's AK
DEFAULT_IMDS_URL: Final = "http://169.254.169.254"  # Azure's instance metadata service
DEFAULT_TIMEOUT_SECONDS: Final = 10.0
MAX_TIMEOUT_SECONDS: Final = 120.0
COMMON_SETTINGS: Final = ("tcti", "ak_handle", "user_data", "imds_url", "timeout_seconds")
SNP_ONLY_SETTINGS: Final = ("vcek", "cert_chain")
SETTING_NAMES: Final = {
    SNP_NAME: COMMON_SETTINGS + SNP_ONLY_SETTINGS,
    TDX_NAME: COMMON_SETTINGS,
}


def section(provider: str) -> str:
    return f"attestation.providers.{provider}"


@dataclass(frozen=True, slots=True)
class AzureSettings:
    """The validated settings of one Azure provider; the defaults are an Azure CVM's."""

    provider: str  # azure-sev-snp or azure-tdx
    tcti: str = DEFAULT_TCTI
    ak_handle: int = DEFAULT_AK_HANDLE
    # Write the binding to NV 0x01400002 so that the hardware report carries it; without
    # it only the AK quote binds the session.
    user_data: bool = True
    imds_url: str = DEFAULT_IMDS_URL
    timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS
    # SNP only: the VCEK and its ASK/ARK as the operator saved them, instead of asking IMDS.
    vcek: Path | None = None
    cert_chain: tuple[Path, ...] = ()

    @property
    def section(self) -> str:
        return section(self.provider)

    def name(self, key: str) -> str:
        return f"{self.section}.{key}"

    @classmethod
    def parse(cls, provider: str, settings: Mapping[str, Any] | None) -> AzureSettings:
        """Validate the provider's config section; `ProviderError` names the first problem."""
        where = section(provider)
        if provider == TDX_NAME and isinstance(settings, Mapping):
            misplaced = sorted(k for k in SNP_ONLY_SETTINGS if settings.get(k) is not None)
            if misplaced:
                raise ProviderError(
                    f"{where}: {', '.join(misplaced)} is for SEV-SNP only; a TDX CVM's TD "
                    "quote comes from the host's quote service (imds_url) every time",
                    hint=f"remove {', '.join(misplaced)} from {where}",
                )
        settings = settings_section(
            settings, section=where, accepted=SETTING_NAMES[provider], provider=provider
        )
        parsed = cls(provider)
        values: dict[str, Any] = {}
        if "tcti" in settings:
            values["tcti"] = tcti_setting(parsed.name("tcti"), settings["tcti"])
        if "ak_handle" in settings:
            values["ak_handle"] = handle_setting(
                parsed.name("ak_handle"),
                settings["ak_handle"],
                first=PERSISTENT_FIRST,
                last=PERSISTENT_OWNER_LAST,
                kind="persistent handle",
                example=f"0x{DEFAULT_AK_HANDLE:08X}",
            )
        if "user_data" in settings:
            values["user_data"] = _flag(parsed.name("user_data"), settings["user_data"])
        if "imds_url" in settings:
            values["imds_url"] = base_url(parsed.name("imds_url"), settings["imds_url"])
        if "timeout_seconds" in settings:
            values["timeout_seconds"] = _timeout(
                parsed.name("timeout_seconds"), settings["timeout_seconds"]
            )
        # null stands for unset, as the configuration reference writes the defaults
        files = {k: settings[k] for k in SNP_ONLY_SETTINGS if settings.get(k) is not None}
        if files:
            values.update(_certificate_files(parsed, files))
            if "imds_url" in values:
                raise ProviderError(
                    f"{parsed.name('imds_url')} is set, and so are vcek and cert_chain: an SNP "
                    "collector asks the instance metadata service only for what those files "
                    "give, so the URL would not be used",
                    hint=f"remove {parsed.name('imds_url')}, or remove vcek and cert_chain to "
                    "fetch the VCEK and its chain from it",
                )
        return cls(provider, **values)


def _flag(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise ProviderError(
            f"{name} must be true or false, got {value!r}",
            hint=f"write {name.rsplit('.', 1)[-1]}: true or false (YAML booleans, unquoted)",
        )
    return value


def base_url(name: str, value: object) -> str:
    """An http(s) origin, optionally with a path, without query, fragment or credentials;
    returned without a trailing slash so that endpoint paths append to it."""
    hint = (
        f'the default is "{DEFAULT_IMDS_URL}" (Azure\'s instance metadata service, reachable '
        "from every Azure VM); only a test double needs another"
    )
    if not isinstance(value, str) or not value or value != value.strip():
        raise ProviderError(f"{name} must be an http:// or https:// URL, got {value!r}", hint=hint)
    try:
        parts = urllib.parse.urlsplit(value)
        port = parts.port
    except ValueError as error:
        raise ProviderError(f"{name}: {value!r} is not a URL ({error})", hint=hint) from None
    problem = None
    if parts.scheme not in ("http", "https"):
        problem = f"its scheme is {parts.scheme or 'missing'}, not http or https"
    elif not parts.hostname:
        problem = "it names no host"
    elif parts.username is not None or parts.password is not None:
        problem = "it carries credentials"
    elif parts.query or parts.fragment or value.endswith(("?", "#")):
        problem = "it has a query or a fragment; give the service's base URL only"
    elif port == 0:
        problem = "its port is 0"
    if problem is not None:
        raise ProviderError(f"{name}: {value!r} is refused: {problem}", hint=hint)
    return value.rstrip("/")


def _timeout(name: str, value: object) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or not 0 < value <= MAX_TIMEOUT_SECONDS
    ):
        raise ProviderError(
            f"{name} must be a number of seconds in (0, {MAX_TIMEOUT_SECONDS:g}], got {value!r}",
            hint=f"the default is {DEFAULT_TIMEOUT_SECONDS:g}",
        )
    return float(value)


def _certificate_files(parsed: AzureSettings, settings: Mapping[str, Any]) -> dict[str, Any]:
    """`vcek` and `cert_chain`, both or neither: a VCEK without its chain (or a chain without
    its VCEK) would leave the collector to fetch half of what it verifies together."""
    vcek, chain = parsed.name("vcek"), parsed.name("cert_chain")
    if "vcek" not in settings or "cert_chain" not in settings:
        given, missing = (vcek, chain) if "vcek" in settings else (chain, vcek)
        raise ProviderError(
            f"{given} is set but {missing} is not: the VCEK and its ASK/ARK chain are given "
            "together, or both fetched from the instance metadata service",
            hint=f"set both (AMD KDS serves the chain as one PEM file, ASK then ARK), or "
            f"remove {given}",
        )
    value = settings["cert_chain"]
    paths = value if isinstance(value, list | tuple) else [value]
    if not paths:
        raise ProviderError(
            f"{chain} is an empty list",
            hint="give one PEM file holding the ASK then the ARK, or a list of PEM/DER files",
        )
    return {
        "vcek": _file(vcek, settings["vcek"]),
        "cert_chain": tuple(_file(chain, path) for path in paths),
    }


def _file(name: str, value: object) -> Path:
    if not isinstance(value, str) or not value.startswith("/") or value != value.strip():
        raise ProviderError(
            f"{name} must be an absolute file path, got {value!r}",
            hint="for example /etc/cmcp/vcek.pem",
        )
    return Path(value)
