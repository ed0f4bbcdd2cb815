"""A platform policy: requirements on the hardware evidence beyond what every verifier
checks, one TOML table per provider. An auditor gives one to `cmcp verify --platform-policy
FILE`; the gateway appraising its own evidence takes one from `trace.appraisal.platform_policy`:

    [sev-snp]
    minimum_tcb = { bootloader = 3, tee = 0, snp = 8, microcode = 115 }

    [tdx]
    accepted_tcb_statuses = ["UpToDate"]

The host judges the shape: every table names an installed provider, and uses only the keys
that provider's `ProviderSpec.platform_policy_keys` declares. The provider's verifier judges
the values. An unknown table or key is refused rather than ignored, so a misspelt
requirement can never silently fall away. Each verifier is given its own provider's table
only (`verifier_trust`).
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from cmcp_cli.attestation.api import ProviderScope, ProviderSpec, TrustInputs
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


def verifier_trust(
    spec: ProviderSpec,
    trust: TrustInputs,
    policy: PlatformPolicy,
    policy_dir: Path | None,
) -> TrustInputs:
    """What the verifier of `spec` is given: `trust` with that provider's own table of the
    platform policy. A device provider's verifier gets neither the expected measurements nor
    the trust roots: those are the CPU platform's, and a device provider names its own roots
    in its table, so a CPU vendor's root never stands in for a device vendor's."""
    given = replace(
        trust, platform_policy=policy.get(spec.name, {}), platform_policy_dir=policy_dir
    )
    if spec.scope is ProviderScope.DEVICE:
        given = replace(given, expected_measurements=(), trust_roots=())
    return given
