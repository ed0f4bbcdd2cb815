"""The library behind `cmcp measure <provider>`: a provider's measurer, fed with the
options the user gave and, with `--config`, with what that gateway would measure.

The result is exactly the string for `attestation.expected_measurement`, checked here so
that a plugin cannot hand the user something the config would then refuse.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path

from cmcp_cli.attestation.api import (
    GatewayFacts,
    MeasureInputs,
    MeasureOption,
    Measurer,
    MeasureResult,
    ProviderError,
)
from cmcp_cli.attestation.manager import ProviderRegistry, ProviderUnavailableError, load_part
from cmcp_cli.attestation.measurement import installation_digest
from cmcp_cli.errors import ConfigError, UsageError
from cmcp_cli.gateway.preflight.attestation import plugin_of
from cmcp_cli.gateway.preflight.report import check_config

_MEASUREMENT = re.compile(r"sha256:[0-9a-f]{64}|sha384:[0-9a-f]{96}")


def measurers(registry: ProviderRegistry) -> list[str]:
    """The installed providers that can precompute a measurement, by name."""
    return sorted(n for n, p in registry.providers.items() if p.spec.measurer is not None)


def load_measurer(registry: ProviderRegistry, name: str) -> Measurer:
    registered = registry.providers.get(name)
    if registered is None or registered.spec.measurer is None:
        known = ", ".join(measurers(registry)) or "none"
        raise UsageError(
            f"no installed provider named {name!r} can measure (installed: {known})",
            hint=f"install its plugin (pip install {plugin_of(name)}) or pick one of: {known}",
        )
    try:
        return load_part(registered, registered.spec.load_measurer, "measure")
    except ProviderUnavailableError as exc:
        raise UsageError(
            f"provider {name!r} cannot measure here: {exc.reason}", hint=exc.hint
        ) from exc


def measure_options(registry: ProviderRegistry, name: str) -> Sequence[MeasureOption]:
    return tuple(load_measurer(registry, name).options)


def measure(
    registry: ProviderRegistry,
    name: str,
    values: Mapping[str, tuple[str, ...]],
    config_path: Path | None = None,
) -> MeasureResult:
    """Run provider `name`'s measurer; `UsageError` or `ConfigError` on unusable input."""
    measurer = load_measurer(registry, name)
    inputs = MeasureInputs(values=dict(values))
    if config_path is not None:
        report = check_config(config_path, on_this_host=False)  # measured for another host
        if not report.ok or report.config is None or report.bundle is None:
            raise ConfigError(
                f"{config_path} has problems; its gateway's measurement cannot be computed",
                problems=report.errors,
                hint=f"run `cmcp validate-config --config {config_path}`",
            )
        if report.catalog is None:
            raise ConfigError(f"{config_path}: the catalog did not load")
        facts = GatewayFacts(
            bundle_hash=report.bundle.hash,
            catalog_hash=report.catalog.hash,
            gateway_digest=installation_digest(),
        )
        settings = report.config.attestation.providers.get(name, {})
        inputs = MeasureInputs(values=dict(values), facts=facts, settings=settings)
    try:
        result = measurer.measure(inputs)
    except ProviderError as exc:
        raise UsageError(f"cmcp measure {name}: {exc.message}", hint=exc.hint) from None
    if not _MEASUREMENT.fullmatch(result.measurement):
        # the plugin broke its contract: a bug, so it keeps its traceback
        raise RuntimeError(
            f"provider {name!r} measured {result.measurement!r}, which is not "
            "'sha256:<64 hex>' or 'sha384:<96 hex>'"
        )
    return result
