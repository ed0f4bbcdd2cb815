"""The provider API: what a plugin declares, and what its collector, verifier and
measurer must do. Plugins import this module (and `cmcp_cli.claim`) and nothing else.

A provider is declared by a `ProviderSpec` returned from the `cmcp_attestation_providers`
hook. Its parts are loaded lazily, so a verifier host never imports a collector's device
code and `cmcp plugins` stays cheap.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
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
class Evidence:
    evidence_type: str
    evidence: Mapping[str, Any]  # JSON, no floats: it is hashed and signed
    platform: str  # the TRACE runtime.platform value
    measurement: str  # sha256:<64 hex> or sha384:<96 hex>


@dataclass(frozen=True, slots=True)
class TrustInputs:
    """What the verifier trusts, all given by the auditor, none taken from the evidence."""

    binding: bytes  # recomputed from the claim
    at: datetime  # evidence is judged at the claim's time, not the wall clock
    expected_measurements: tuple[str, ...] = ()
    # PEM data of the roots the auditor gave (`--trust-root`). A plugin's vendored roots are
    # its own, used only when none is given; reasons name which of the two a chain ended at.
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

    @property
    def failed(self) -> bool:
        return any(c.status is CheckStatus.FAIL for c in self.checks)


class Collector(Protocol):
    """One instance serves one gateway process. `settings` is the provider's own section of
    the config (`attestation.providers.<name>`), validated by the provider."""

    def detect(self, settings: Mapping[str, Any]) -> Detection:
        """Whether the hardware is here; an answer with its reason, never an exception."""
        ...

    def prepare(self, facts: GatewayFacts, settings: Mapping[str, Any]) -> None:
        """At gateway start, before serving: measure what must be measured, load keys.
        Raises `ProviderError` when the gateway must not start. Called again with the same
        settings when the gateway takes another policy bundle (`facts.bundle_hash`): a
        provider that measures the bundle adds the new one to what it measured, without
        discarding earlier measurements; a `ProviderError` then refuses the bundle."""
        ...

    def collect(self, binding: bytes, settings: Mapping[str, Any]) -> Evidence:
        """Evidence bound to `binding`, for one session; called from several threads."""
        ...

    def close(self) -> None:
        """Release the device; the collector is not used afterwards."""
        ...


class Verifier(Protocol):
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
    def options(self) -> Sequence[MeasureOption]: ...

    def measure(self, inputs: MeasureInputs) -> MeasureResult:
        """Compute the measurement. Raises `ProviderError` naming the option (or config
        setting) when the input is unusable."""
        ...


@dataclass(frozen=True)
class ProviderSpec:
    """A provider, as its plugin declares it.

    `load_collector`, `load_verifier` and `load_measurer` import their part on demand. A
    collector or measurer that cannot load on this host because an optional dependency is
    missing (a package, the native library it links) makes its loader raise
    `ProviderError` whose hint says what to install. For a collector the host then
    reports the provider as unavailable with that hint (`cmcp plugins`, `cmcp
    validate-config`), `attestation.provider: auto` passes it over and says why, and
    choosing it by name is an error that gives the hint; `cmcp measure` refuses with it.
    An `ImportError` escaping those loaders is taken the same way, with a generic hint;
    any other exception is a bug in the plugin and keeps its traceback. A verifier needs
    no optional dependency: an auditor's host installs the plugin alone.
    """

    name: str  # the config's attestation.provider value
    platform: str  # TRACE runtime.platform of its evidence
    evidence_types: tuple[str, ...]
    load_collector: Callable[[], Collector]
    load_verifier: Callable[[], Verifier]
    load_measurer: Callable[[], Measurer] | None = None
    description: str = ""
    # The keys its verifier takes from the auditor's platform policy; a table for a provider
    # that declares none is refused, so a requirement is never silently ignored.
    platform_policy_keys: tuple[str, ...] = ()
