"""Devices beside the CPU platform: which device providers (`ProviderScope.DEVICE`, such as
gpu-cc) the gateway attests with, and what `attestation.gpu_required` makes of the rest.

At start every installed device provider is loaded, asked whether its devices are here
(with its `attestation.providers.<name>` settings) and, when they are, prepared. A detected
device that cannot be prepared refuses the start, whatever `gpu_required` says: the
operator's settings for it are wrong. One that cannot load or is not detected is left out
and said in the start log; with `gpu_required: true` the start is refused unless at least
one device provider was prepared. `cmcp validate-config` and `cmcp plugins` say the same
before start (`survey_devices`), without preparing anything.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from cmcp_cli.attestation.api import Detection, DeviceCollector, GatewayFacts, ProviderError
from cmcp_cli.attestation.api import ProviderScope as Scope
from cmcp_cli.attestation.manager import (
    ProviderRegistry,
    ProviderUnavailableError,
    RegisteredProvider,
    load_device_collector,
)
from cmcp_cli.config import DEVICE_PROVIDER, CmcpConfig
from cmcp_cli.errors import CmcpError
from cmcp_cli.evidence.attesting import DeviceAttestor

GPU_REQUIRED = ("attestation", "gpu_required")
INSTALL_HINT = (
    f"install the {DEVICE_PROVIDER} plugin with its collector (pip install "
    "'cmcp-gpucc[collector]') and run on a host whose GPUs are in confidential-computing "
    "mode, or set attestation.gpu_required: false"
)


class DeviceStartupError(CmcpError):
    """A device provider keeps the gateway from starting."""


def device_providers(registry: ProviderRegistry) -> tuple[RegisteredProvider, ...]:
    """The installed device providers, by name."""
    return tuple(
        provider
        for _, provider in sorted(registry.providers.items())
        if provider.spec.scope is Scope.DEVICE
    )


@dataclass(frozen=True)
class DeviceFinding:
    """What one device provider finds here: its collector loaded and detected (`collector`
    set, open until closed), or why not (`reason`, with `hint` for what to install)."""

    provider: RegisteredProvider
    collector: DeviceCollector | None
    detail: str
    hint: str | None = None

    @property
    def name(self) -> str:
        return self.provider.spec.name

    def describe(self) -> str:
        hint = f"; {self.hint}" if self.hint else ""
        return f"{self.name}: {self.detail}{hint}"


def find_devices(config: CmcpConfig, registry: ProviderRegistry) -> Iterator[DeviceFinding]:
    """Each installed device provider, loaded and asked whether its devices are here. A
    finding with a collector holds it open: the caller prepares or closes it."""
    for provider in device_providers(registry):
        try:
            collector = load_device_collector(provider)
        except ProviderUnavailableError as exc:
            yield DeviceFinding(provider, None, f"unavailable here, {exc.reason}", exc.hint)
            continue
        settings = config.attestation.providers.get(provider.spec.name, {})
        detection: Detection = collector.detect(settings)
        if detection.present:
            yield DeviceFinding(provider, collector, detection.detail)
        else:
            collector.close()
            yield DeviceFinding(provider, None, f"not detected, {detection.detail}")


def _none_here(findings: list[DeviceFinding]) -> str:
    if not findings:
        return "no device provider is installed"
    return "; ".join(finding.describe() for finding in findings)


@dataclass(frozen=True)
class DeviceChoice:
    attestors: tuple[DeviceAttestor, ...]
    left_out: tuple[str, ...]  # each device provider not attesting, and why


def choose_devices(
    config: CmcpConfig, registry: ProviderRegistry, facts: GatewayFacts
) -> DeviceChoice:
    """Prepare every device provider that detects its devices here. Raises
    `DeviceStartupError` when a detected one cannot be prepared, or when
    `attestation.gpu_required` is true and none was (every collector it opened is then
    closed)."""
    prepared: list[DeviceAttestor] = []
    left_out: list[DeviceFinding] = []
    try:
        for finding in find_devices(config, registry):
            if finding.collector is None:
                left_out.append(finding)
                continue
            name, settings = finding.name, config.attestation.providers.get(finding.name, {})
            attestor = DeviceAttestor(
                finding.provider.spec, finding.provider.version, finding.collector, settings
            )
            prepared.append(attestor)  # closed with the others on failure
            try:
                finding.collector.prepare(facts, settings)
            except ProviderError as exc:
                raise DeviceStartupError(
                    f"the {name} device provider detected {finding.detail}, but cannot "
                    f"attest it: {exc.message}",
                    hint=exc.hint
                    or f"fix attestation.providers.{name} (docs/configuration.md), or "
                    "uninstall the plugin if these devices are not to be attested",
                ) from exc
    except BaseException:
        for opened in prepared:
            opened.collector.close()
        raise
    if config.attestation.gpu_required and not prepared:  # nothing is open
        raise DeviceStartupError(
            "attestation.gpu_required is true, but no device can be attested here: "
            + _none_here(left_out),
            hint=INSTALL_HINT,
        )
    return DeviceChoice(tuple(prepared), tuple(f.describe() for f in left_out))


def survey_devices(config: CmcpConfig, registry: ProviderRegistry) -> tuple[list[str], str | None]:
    """Before start: a note per device provider saying what the gateway will do with it,
    and the reason the start will be refused under `gpu_required`, if it will be."""
    notes: list[str] = []
    found: list[DeviceFinding] = []
    detected = 0  # findings with a collector, closed here
    for finding in find_devices(config, registry):
        found.append(finding)
        if finding.collector is not None:
            finding.collector.close()  # detected, not prepared: it holds nothing else
            detected += 1
            notes.append(
                f"devices: {finding.name} detected {finding.detail}; every session's claim "
                "will carry its evidence (if preparing it fails, the gateway does not start)"
            )
        else:
            notes.append(f"devices: {finding.describe()}; not attested")
    if config.attestation.gpu_required and not detected:
        return notes, _none_here([f for f in found if f.collector is None])
    return notes, None
