"""The provider API: what a plugin declares, and what its collector, verifier and
measurer must do. Plugins import this module (and `cmcp_cli.claim`) and nothing else.

A provider is declared by a `ProviderSpec` returned from the `cmcp_attestation_providers`
hook. Its parts are named by `module:Class` references and imported on first use, so a
verifier host never imports a collector's device code and `cmcp plugins` stays cheap. Each
part's class subclasses its Protocol here (`class TpmCollector(Collector)`): mypy then checks
it against the Protocol where it is defined, and the loader checks the same relation before
making one, so a reference to the wrong class is a load failure, never a duck-typed guess.
"""

from __future__ import annotations

import enum
import importlib
import re
from abc import abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol


class ProviderError(Exception):
    """A failure the user can fix: bad provider settings, an unreachable device, unusable
    measurement input. The host shows the message and the hint; any other exception
    raised by a provider is a bug in it."""

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


class CheckStatus(enum.StrEnum):
    PASS = "pass"  # noqa: S105 - a check outcome, not a password
    FAIL = "fail"
    SKIP = "skip"


@dataclass(frozen=True, slots=True)
class Check:
    """One named verification step with its outcome and the reason for it."""

    name: str
    status: CheckStatus
    reason: str

    @classmethod
    def passed(cls, name: str, reason: str) -> Check:
        return cls(name, CheckStatus.PASS, reason)

    @classmethod
    def failed(cls, name: str, reason: str) -> Check:
        return cls(name, CheckStatus.FAIL, reason)

    @classmethod
    def skipped(cls, name: str, reason: str) -> Check:
        return cls(name, CheckStatus.SKIP, reason)

    def to_json(self) -> dict[str, str]:
        return {"name": self.name, "status": self.status.value, "reason": self.reason}


@dataclass(frozen=True, slots=True)
class Detection:
    present: bool
    detail: str


@dataclass(frozen=True, slots=True)
class Appraisal:
    """A verdict on evidence by the service that appraised it (TRACE `appraisal`): an EAR
    status (`affirming`, `warning`, `contraindicated`, `none`) and that verifier's
    absolute URI."""

    status: str
    verifier: str


@dataclass(frozen=True, slots=True)
class Evidence:
    evidence_type: str
    evidence: Mapping[str, Any]  # JSON, no floats: it is hashed and signed
    platform: str  # the TRACE runtime.platform value
    measurement: str  # sha256:<64 hex> or sha384:<96 hex>
    # Set only by a provider whose evidence is a third party's appraisal rather than
    # hardware evidence (OPAQUE's token): the claim's `trace.appraisal` states it.
    appraisal: Appraisal | None = None


@dataclass(frozen=True, slots=True)
class DeviceEvidence:
    """Evidence of one device (a GPU) beside the CPU platform, over the same binding."""

    device: str  # which device, for people: "GPU 0 (NVIDIA H100 80GB HBM3)"
    evidence_type: str
    evidence: Mapping[str, Any]  # JSON, no floats: it is hashed and signed


@dataclass(frozen=True, slots=True)
class TrustInputs:
    """What the verifier trusts, all given by the auditor, none taken from the evidence."""

    binding: bytes  # recomputed from the claim
    at: datetime  # evidence is judged at the claim's time, not the wall clock
    expected_measurements: tuple[str, ...] = ()
    # PEM data of the roots the auditor gave (`--trust-root`), for the CPU platform's
    # verifier only: a device provider names its roots in its own platform-policy table. A
    # plugin's vendored roots are its own, used only when none is given; reasons name which
    # of the two a chain ended at.
    trust_roots: tuple[bytes, ...] = ()
    allow_debug: bool = False
    policy_hash: str | None = None  # the claim's bundle hash, for evidence that measures it
    gateway_digest: str | None = None  # the claim's gateway digest, for evidence that states it
    # Vendor collateral the auditor supplies (such as Intel's TCB info, QE identity and CRLs
    # as one PCS JSON document), file by file; each verifier takes the kinds it knows and
    # prefers them to any the evidence carries.
    collateral: tuple[bytes, ...] = ()
    # The auditor's requirements for this provider's platform (its table of
    # `cmcp verify --platform-policy`), using only the keys its `ProviderSpec` declares.
    platform_policy: Mapping[str, Any] = field(default_factory=dict)
    # The folder of the platform-policy file: a relative path in `platform_policy` names a
    # file there (`toolkit.policy_path`), wherever the verifier runs. None: no file.
    platform_policy_dir: Path | None = None


@dataclass(frozen=True, slots=True)
class GatewayFacts:
    """What a collector may measure into its platform before the gateway serves."""

    bundle_hash: str
    catalog_hash: str
    gateway_digest: str


@dataclass(frozen=True, slots=True)
class EvidenceVerdict:
    checks: tuple[Check, ...]
    hardware_attested: bool  # true only when every hardware check passed to a pinned root
    measurement: str | None = None
    # The appraisal the evidence states and the verifier confirmed (an OPAQUE token's):
    # the claim's `trace.appraisal` must be exactly this. None: the evidence states none.
    appraisal: Appraisal | None = None

    @property
    def failed(self) -> bool:
        return any(c.status is CheckStatus.FAIL for c in self.checks)


class Collector(Protocol):
    """One instance serves one gateway process. `settings` is the provider's own section of
    the config (`attestation.providers.<name>`), validated by the provider."""

    @abstractmethod
    def detect(self, settings: Mapping[str, Any]) -> Detection:
        """Whether the hardware is here; an answer with its reason, never an exception."""
        ...

    @abstractmethod
    def prepare(self, facts: GatewayFacts, settings: Mapping[str, Any]) -> None:
        """At gateway start, before serving: measure what must be measured, load keys.
        Raises `ProviderError` when the gateway must not start. Called again with the same
        settings when the gateway takes another policy bundle (`facts.bundle_hash`): a
        provider that measures the bundle adds the new one to what it measured, without
        discarding earlier measurements; a `ProviderError` then refuses the bundle."""
        ...

    @abstractmethod
    def collect(self, binding: bytes, settings: Mapping[str, Any]) -> Evidence:
        """Evidence bound to `binding`, for one session; called from several threads."""
        ...

    @abstractmethod
    def close(self) -> None:
        """Release the device; the collector is not used afterwards."""
        ...


class DeviceCollector(Protocol):
    """The collector of a device provider (`ProviderScope.DEVICE`): devices beside the CPU
    platform, such as confidential GPUs, each attested over the session's binding. Its
    `detect`, `prepare` and `close` mean what `Collector`'s do."""

    @abstractmethod
    def detect(self, settings: Mapping[str, Any]) -> Detection: ...

    @abstractmethod
    def prepare(self, facts: GatewayFacts, settings: Mapping[str, Any]) -> None: ...

    @abstractmethod
    def collect(self, binding: bytes, settings: Mapping[str, Any]) -> tuple[DeviceEvidence, ...]:
        """One evidence item per device found at `prepare`, each bound to `binding`; raises
        `ProviderError` when any of them cannot be attested. Called from several threads."""
        ...

    @abstractmethod
    def close(self) -> None: ...


class Verifier(Protocol):
    @abstractmethod
    def verify(self, evidence: Mapping[str, Any], trust: TrustInputs) -> EvidenceVerdict:
        """Judge evidence offline. Malformed evidence is a failed check, never an exception;
        an unusable `trust.platform_policy` value (the auditor's input, not the evidence) is a
        `ProviderError` naming the key."""
        ...


@dataclass(frozen=True, slots=True)
class MeasureOption:
    """One command-line option of `cmcp measure <provider>`: `--<name> METAVAR`."""

    name: str  # lowercase with dashes, without the leading "--"
    help: str
    metavar: str = "VALUE"
    multiple: bool = False
    required: bool = False


@dataclass(frozen=True, slots=True)
class MeasureResult:
    measurement: str  # exactly the string for `attestation.expected_measurement`
    details: Mapping[str, Any] = field(default_factory=dict)  # JSON, shown by `--json`
    # What the operator must read beside the measurement (what it covers, what else to pin),
    # shown on stderr without `--json`; `details` carries the same as fields.
    notes: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class MeasureInputs:
    """What `cmcp measure <provider>` hands a measurer."""

    values: Mapping[str, tuple[str, ...]]  # its own options as given; absent ones left out
    # With `--config`: what that gateway would measure, and the provider's config section,
    # so the result is what that very gateway reports.
    facts: GatewayFacts | None = None
    settings: Mapping[str, Any] = field(default_factory=dict)


class Measurer(Protocol):
    @property
    @abstractmethod
    def options(self) -> Sequence[MeasureOption]: ...

    @abstractmethod
    def measure(self, inputs: MeasureInputs) -> MeasureResult:
        """Compute the measurement. Raises `ProviderError` naming the option (or config
        setting) when the input is unusable."""
        ...


class ProviderScope(enum.StrEnum):
    PLATFORM = "platform"  # the TEE the gateway runs in: one per claim, `trace.runtime`
    DEVICE = "device"  # devices beside it (GPUs): any number per claim, never instead of it


_REFERENCE = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*")


@dataclass(frozen=True)
class ProviderSpec:
    """A provider, as its plugin declares it.

    `collector`, `verifier` and `measurer` are `module:Class` references, imported on
    demand by `load_collector`, `load_verifier` and `load_measurer`. Each class subclasses
    its Protocol (`Collector`, or `DeviceCollector` for a device provider; `Verifier`;
    `Measurer`) and takes no arguments. A collector or measurer that cannot load on this
    host because an optional dependency is missing (a package, the native library it
    links) makes its module raise `ProviderError` on import, whose hint says what to
    install. For a collector the host then reports the provider as unavailable with that
    hint (`cmcp plugins`, `cmcp validate-config`), `attestation.provider: auto` passes it
    over and says why, and choosing it by name is an error that gives the hint; `cmcp
    measure` refuses with it. An `ImportError` escaping an import is taken the same way,
    with a generic hint; any other exception, and a reference to a class that does not
    subclass its Protocol, is a bug in the plugin and keeps its traceback. A verifier
    needs no optional dependency: an auditor's host installs the plugin alone.
    """

    name: str  # the config's attestation.provider value
    platform: str  # TRACE runtime.platform of its evidence
    evidence_types: tuple[str, ...]
    collector: str
    verifier: str
    measurer: str | None = None
    description: str = ""
    # The keys its verifier takes from the auditor's platform policy; a table for a provider
    # that declares none is refused, so a requirement is never silently ignored.
    platform_policy_keys: tuple[str, ...] = ()
    scope: ProviderScope = ProviderScope.PLATFORM

    def __post_init__(self) -> None:
        for reference in (self.collector, self.verifier, self.measurer):
            if reference is not None and _REFERENCE.fullmatch(reference) is None:
                raise ValueError(
                    f"provider {self.name!r}: {reference!r} is not a `module:Class` reference"
                )

    def load_collector(self) -> Collector:
        if self.scope is not ProviderScope.PLATFORM:
            raise TypeError(f"{self.name} is a {self.scope} provider: use load_device_collector")
        part: Collector = _load(self.collector, Collector)
        return part

    def load_device_collector(self) -> DeviceCollector:
        if self.scope is not ProviderScope.DEVICE:
            raise TypeError(f"{self.name} is a {self.scope} provider: use load_collector")
        part: DeviceCollector = _load(self.collector, DeviceCollector)
        return part

    def load_verifier(self) -> Verifier:
        part: Verifier = _load(self.verifier, Verifier)
        return part

    def load_measurer(self) -> Measurer:
        if self.measurer is None:
            raise TypeError(f"the {self.name} provider declares no measurer")
        part: Measurer = _load(self.measurer, Measurer)
        return part


def _load(reference: str, protocol: type[Any]) -> Any:
    """Import `reference` and make one of its class, which must subclass `protocol`."""
    module_name, _, attribute = reference.partition(":")
    made = getattr(importlib.import_module(module_name), attribute, None)
    # A Protocol is not runtime-checkable: the part names it among its bases instead.
    if not isinstance(made, type) or protocol not in made.__mro__:
        raise TypeError(
            f"{reference} is not a class that subclasses {protocol.__name__}: declare it as "
            f"`class {attribute}({protocol.__name__})` so mypy checks it against the Protocol"
        )
    return made()
