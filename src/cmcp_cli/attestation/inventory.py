"""What `cmcp plugins` reports: each provider, where it comes from, its scope (the CPU
platform, or devices beside it), whether it can run here (detected, not detected, or
unavailable: its collector cannot load, with the hint that fixes it), and every plugin
that failed to load."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from cmcp_cli.attestation.api import Detection, ProviderScope
from cmcp_cli.attestation.manager import (
    LoadFailure,
    ProviderUnavailableError,
    RegisteredProvider,
    load_collector,
    load_device_collector,
    load_providers,
)


class ProviderState(enum.StrEnum):
    DETECTED = "detected"  # its hardware is here
    NOT_DETECTED = "not-detected"  # it loads, but finds no hardware
    UNAVAILABLE = "unavailable"  # its collector cannot load here: see the hint
    FAILED = "failed"  # the plugin raised something else: a bug in it


@dataclass(frozen=True)
class ProviderRow:
    name: str
    distribution: str
    version: str
    platform: str
    evidence_types: tuple[str, ...]
    state: ProviderState
    detail: str
    hint: str | None = None
    scope: ProviderScope = ProviderScope.PLATFORM

    @property
    def detected(self) -> bool:
        return self.state is ProviderState.DETECTED

    def to_json(self) -> dict[str, object]:
        return {
            "name": self.name,
            "distribution": self.distribution,
            "version": self.version,
            "platform": self.platform,
            "evidence_types": list(self.evidence_types),
            "scope": self.scope.value,
            "state": self.state.value,
            "detected": self.detected,
            "detail": self.detail,
            "hint": self.hint,
        }


@dataclass(frozen=True)
class ProviderInventory:
    providers: tuple[ProviderRow, ...]
    failures: tuple[LoadFailure, ...]

    def to_json(self) -> dict[str, object]:
        return {
            "providers": [p.to_json() for p in self.providers],
            "failures": [f.to_json() for f in self.failures],
        }


def inventory() -> ProviderInventory:
    registry = load_providers()
    rows = []
    failures = list(registry.failures)
    for name, provider in sorted(registry.providers.items()):
        spec = provider.spec
        state, detail, hint = _probe(provider)
        rows.append(
            ProviderRow(
                name=name,
                distribution=provider.distribution,
                version=provider.version,
                platform=spec.platform,
                evidence_types=spec.evidence_types,
                state=state,
                detail=detail,
                hint=hint,
                scope=spec.scope,
            )
        )
    return ProviderInventory(tuple(rows), tuple(failures))


def _probe(provider: RegisteredProvider) -> tuple[ProviderState, str, str | None]:
    """Load the collector and ask it whether its hardware is here (with its defaults). A
    plugin's own bug is reported in its row: one broken plugin does not hide the others."""
    try:
        if provider.spec.scope is ProviderScope.DEVICE:
            detect = load_device_collector(provider).detect
        else:
            detect = load_collector(provider).detect
    except ProviderUnavailableError as exc:
        return ProviderState.UNAVAILABLE, exc.reason, exc.hint
    except Exception as exc:  # noqa: BLE001 - a plugin's own bug is reported, not raised
        return ProviderState.FAILED, f"its collector failed to load: {_named(exc)}", _bug(provider)
    try:
        detection: Detection = detect({})  # leaves nothing open: only `prepare` takes one
    except Exception as exc:  # noqa: BLE001 - a plugin's own bug is reported, not raised
        return ProviderState.FAILED, f"detect failed: {_named(exc)}", _bug(provider)
    if detection.present:
        return ProviderState.DETECTED, detection.detail, None
    return ProviderState.NOT_DETECTED, detection.detail, None


def _named(exc: Exception) -> str:
    return f"{type(exc).__name__}: {exc}"


def _bug(provider: RegisteredProvider) -> str:
    return f"a bug in {provider.distribution} {provider.version}: report it to its maintainers"
