"""Finding attestation providers: each entry point of group `cmcp` is loaded on its own.

A plugin that fails to import, register or answer the hook is reported as a
`LoadFailure`, never allowed to crash the CLI. A registered provider whose collector
cannot load here (a missing optional dependency: see `ProviderSpec`) is unavailable
(`load_collector` raises `ProviderUnavailableError`), not a crash. Two providers that
claim the same name or evidence type are both refused, naming both distributions: picking
either would let an installed package decide which code judges another vendor's evidence.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from importlib.metadata import EntryPoint, entry_points
from typing import TypeVar

import pluggy

from cmcp_cli.attestation import software
from cmcp_cli.attestation.api import Collector, DeviceCollector, ProviderError, ProviderSpec
from cmcp_cli.attestation.hookspecs import PROJECT, ProviderHooks

ENTRY_POINT_GROUP = "cmcp"
_Part = TypeVar("_Part")


@dataclass(frozen=True)
class LoadFailure:
    source: str  # the entry point, or the providers in conflict
    distribution: str | None
    error: str
    withdrawn: tuple[str, ...] = ()  # evidence types left without a provider by a conflict

    def to_json(self) -> dict[str, object]:
        return {
            "source": self.source,
            "distribution": self.distribution,
            "error": self.error,
            "withdrawn_evidence_types": list(self.withdrawn),
        }


@dataclass(frozen=True)
class RegisteredProvider:
    spec: ProviderSpec
    distribution: str
    version: str


@dataclass
class ProviderRegistry:
    providers: dict[str, RegisteredProvider] = field(default_factory=dict)
    failures: list[LoadFailure] = field(default_factory=list)

    def for_evidence_type(self, evidence_type: str) -> RegisteredProvider | None:
        for provider in self.providers.values():
            if evidence_type in provider.spec.evidence_types:
                return provider
        return None

    def refused_evidence_type(self, evidence_type: str) -> LoadFailure | None:
        """The conflict that removed this evidence type's providers, if one did."""
        return next((f for f in self.failures if evidence_type in f.withdrawn), None)


class ProviderUnavailableError(Exception):
    """A provider's collector cannot load on this host: what is missing, and what to install."""

    def __init__(self, provider: str, reason: str, hint: str) -> None:
        super().__init__(f"{provider} is unavailable: {reason}")
        self.provider = provider
        self.reason = reason
        self.hint = hint


def load_collector(provider: RegisteredProvider) -> Collector:
    """The provider's collector. `ProviderUnavailableError` when it cannot load here: the
    plugin said so (`ProviderError`) or an import failed. Any other exception is a bug in
    the plugin and propagates as it is."""
    return load_part(provider, provider.spec.load_collector, "collect evidence")


def load_device_collector(provider: RegisteredProvider) -> DeviceCollector:
    """A device provider's collector, unavailable or a bug as `load_collector` says."""
    return load_part(provider, provider.spec.load_device_collector, "attest devices")


def load_part(provider: RegisteredProvider, loader: Callable[[], _Part], purpose: str) -> _Part:
    """One part of the provider (`loader` is one of its spec's), which serves `purpose`;
    unavailable, bug or loaded as `load_collector` says."""
    spec = provider.spec
    try:
        return loader()
    except ProviderError as exc:
        hint = exc.hint or f"reinstall {provider.distribution} with what it needs to {purpose}"
        raise ProviderUnavailableError(spec.name, exc.message, hint) from exc
    except ImportError as exc:
        hint = (
            f"install the dependencies {provider.distribution} {provider.version} needs to "
            f"{purpose} (its documentation names them), or choose another provider"
        )
        raise ProviderUnavailableError(spec.name, f"{type(exc).__name__}: {exc}", hint) from exc


@dataclass(frozen=True)
class _Candidate:
    spec: ProviderSpec
    distribution: str
    version: str


def load_providers(
    plugins: Iterable[EntryPoint] | None = None, *, include_builtin: bool = True
) -> ProviderRegistry:
    """Load every provider plugin (by default, every installed entry point of group `cmcp`)."""
    manager = pluggy.PluginManager(PROJECT)
    manager.add_hookspecs(ProviderHooks)
    registry = ProviderRegistry()
    origins: dict[str, tuple[str, str]] = {}
    if include_builtin:
        manager.register(software.SoftwarePlugin(), name="cmcp.builtin.software")
        origins["cmcp.builtin.software"] = (
            software.SoftwarePlugin.distribution,
            software.SoftwarePlugin.version,
        )
    for entry in entry_points(group=ENTRY_POINT_GROUP) if plugins is None else plugins:
        distribution = entry.dist.name if entry.dist is not None else None
        version = entry.dist.version if entry.dist is not None else "unknown"
        source = f"{entry.name} = {entry.value}"
        try:
            plugin = entry.load()
            manager.register(plugin, name=f"entry-point:{entry.name}")
        except Exception as exc:  # noqa: BLE001 - any failure of third-party code is reported
            registry.failures.append(
                LoadFailure(source, distribution, f"{type(exc).__name__}: {exc}")
            )
            continue
        origins[f"entry-point:{entry.name}"] = (distribution or entry.name, version)
    candidates = _collect(manager, origins, registry)
    _admit(candidates, registry)
    return registry


def _collect(
    manager: pluggy.PluginManager, origins: dict[str, tuple[str, str]], registry: ProviderRegistry
) -> list[_Candidate]:
    """Call each plugin's hook on its own, so one broken plugin cannot hide the others."""
    candidates: list[_Candidate] = []
    for implementation in manager.hook.cmcp_attestation_providers.get_hookimpls():
        name = implementation.plugin_name
        distribution, version = origins.get(name, (name, "unknown"))
        try:
            specs = implementation.function()
        except Exception as exc:  # noqa: BLE001 - any failure of third-party code is reported
            error = f"{type(exc).__name__}: {exc}"
            registry.failures.append(LoadFailure(name, distribution, error))
            continue
        if not isinstance(specs, Sequence) or not all(isinstance(s, ProviderSpec) for s in specs):
            error = "cmcp_attestation_providers must return a list of ProviderSpec"
            registry.failures.append(LoadFailure(name, distribution, error))
            continue
        candidates.extend(_Candidate(spec, distribution, version) for spec in specs)
    return candidates


def _admit(candidates: list[_Candidate], registry: ProviderRegistry) -> None:
    refused: set[int] = set()
    for i, first in enumerate(candidates):
        for j in range(i + 1, len(candidates)):
            second = candidates[j]
            shared = set(first.spec.evidence_types) & set(second.spec.evidence_types)
            clashes = [f"name {first.spec.name!r}"] if first.spec.name == second.spec.name else []
            clashes += [f"evidence type {t!r}" for t in sorted(shared)]
            if clashes:
                refused.update((i, j))
                registry.failures.append(
                    LoadFailure(
                        f"{first.spec.name} / {second.spec.name}",
                        f"{first.distribution} and {second.distribution}",
                        f"both claim {' and '.join(clashes)}; "
                        "both are refused until one is uninstalled",
                        withdrawn=tuple(
                            sorted({*first.spec.evidence_types, *second.spec.evidence_types})
                        ),
                    )
                )
    for index, candidate in enumerate(candidates):
        if index not in refused:
            registry.providers[candidate.spec.name] = RegisteredProvider(
                candidate.spec, candidate.distribution, candidate.version
            )
