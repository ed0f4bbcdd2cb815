"""What `cmcp plugins` reports: each provider, where it comes from, whether it detects
its hardware on this machine, and every plugin that failed to load."""

from __future__ import annotations

from dataclasses import dataclass

from cmcp_cli.attestation.manager import LoadFailure, load_providers


@dataclass(frozen=True)
class ProviderRow:
    name: str
    distribution: str
    version: str
    platform: str
    evidence_types: tuple[str, ...]
    detected: bool
    detail: str

    def to_json(self) -> dict[str, object]:
        return {
            "name": self.name,
            "distribution": self.distribution,
            "version": self.version,
            "platform": self.platform,
            "evidence_types": list(self.evidence_types),
            "detected": self.detected,
            "detail": self.detail,
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
        try:
            detection = spec.load_collector().detect({})  # the provider's defaults
            detected, detail = detection.present, detection.detail
        except Exception as exc:  # noqa: BLE001 - a plugin's own bug is reported, not raised
            detected, detail = False, f"detect failed: {type(exc).__name__}: {exc}"
        rows.append(
            ProviderRow(
                name=name,
                distribution=provider.distribution,
                version=provider.version,
                platform=spec.platform,
                evidence_types=spec.evidence_types,
                detected=detected,
                detail=detail,
            )
        )
    return ProviderInventory(tuple(rows), tuple(failures))
