"""The auditor's platform policy, `cmcp verify --platform-policy FILE`: requirements on the
hardware evidence beyond what every verifier checks, one TOML table per provider:

    [sev-snp]
    minimum_tcb = { bootloader = 3, tee = 0, snp = 8, microcode = 115 }

    [tdx]
    accepted_tcb_statuses = ["UpToDate"]

The host judges the shape: every table names an installed provider, and uses only the keys
that provider's `ProviderSpec.platform_policy_keys` declares. The provider's verifier judges
the values. An unknown table or key is refused rather than ignored, so a misspelt
requirement can never silently fall away.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cmcp_cli.attestation.manager import ProviderRegistry
from cmcp_cli.errors import UsageError

MAX_POLICY_BYTES = 1 << 20
PlatformPolicy = Mapping[str, Mapping[str, Any]]


def read_platform_policy(path: Path) -> dict[str, dict[str, Any]]:
    """The tables of a platform policy file; `UsageError` when it is not readable TOML made of
    tables."""
    try:
        with path.open("rb") as stream:
            data = stream.read(MAX_POLICY_BYTES + 1)
    except OSError as error:
        raise UsageError(
            f"cannot read the platform policy {path}: {error.strerror or error}"
        ) from None
    if len(data) > MAX_POLICY_BYTES:
        raise UsageError(f"the platform policy {path} is larger than {MAX_POLICY_BYTES} bytes")
    try:
        document = tomllib.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise UsageError(f"the platform policy {path} is not UTF-8 text") from None
    except tomllib.TOMLDecodeError as error:
        raise UsageError(
            f"the platform policy {path} is not valid TOML: {error}",
            hint='one table per provider, e.g. [sev-snp] then minimum_firmware = "1.55"',
        ) from None
    loose = [key for key, value in document.items() if not isinstance(value, dict)]
    if loose:
        raise UsageError(
            f"the platform policy {path} sets {', '.join(sorted(loose))} outside a provider table",
            hint="put each requirement under the table of its provider, e.g. [sev-snp]",
        )
    return document


def check_platform_policy(policy: PlatformPolicy, registry: ProviderRegistry) -> None:
    """Refuse a table no installed provider owns, or a key its provider does not take."""
    for name, table in policy.items():
        provider = registry.providers.get(name)
        if provider is None:
            installed = ", ".join(sorted(registry.providers)) or "none"
            raise UsageError(
                f"the platform policy has a [{name}] table, but no installed provider is "
                f"named {name!r} (installed: {installed})",
                hint=f"install the cmcp plugin of {name!r}, or fix the table's name",
            )
        accepted = provider.spec.platform_policy_keys
        unknown = sorted(set(table) - set(accepted))
        if not unknown:
            continue
        if not accepted:
            raise UsageError(
                f"the platform policy's [{name}] table sets {', '.join(unknown)}, but the "
                f"{name!r} provider takes no platform policy",
                hint=f"remove the [{name}] table",
            )
        raise UsageError(
            f"the platform policy's [{name}] table sets {', '.join(unknown)}, which the "
            f"{name!r} provider does not take",
            hint=f"its keys are {', '.join(accepted)}",
        )
