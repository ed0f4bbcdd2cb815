"""The provider API: what a plugin declares, and what its collector, verifier and
measurer must do. Plugins import this module (and `cmcp_cli.claim`) and nothing else.

A provider is declared by a `ProviderSpec` returned from the `cmcp_attestation_providers`
hook. Its parts are loaded lazily, so a verifier host never imports a collector's device
code and `cmcp plugins` stays cheap.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol


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
    trust_roots: tuple[bytes, ...] = ()  # PEM data of pinned roots
    allow_debug: bool = False


@dataclass(frozen=True, slots=True)
class EvidenceVerdict:
    checks: tuple[Check, ...]
    hardware_attested: bool  # true only when every hardware check passed to a pinned root
    measurement: str | None = None

    @property
    def failed(self) -> bool:
        return any(c.status is CheckStatus.FAIL for c in self.checks)


class Collector(Protocol):
    def detect(self) -> Detection: ...

    def collect(self, binding: bytes, settings: Mapping[str, Any]) -> Evidence: ...


class Verifier(Protocol):
    def verify(self, evidence: Mapping[str, Any], trust: TrustInputs) -> EvidenceVerdict:
        """Judge evidence offline. Malformed evidence is a failed check, never an exception."""
        ...


class Measurer(Protocol):
    def measure(self, options: Mapping[str, str]) -> str:
        """The exact string for `attestation.expected_measurement`."""
        ...


@dataclass(frozen=True)
class ProviderSpec:
    name: str  # the config's attestation.provider value
    platform: str  # TRACE runtime.platform of its evidence
    evidence_types: tuple[str, ...]
    load_collector: Callable[[], Collector]
    load_verifier: Callable[[], Verifier]
    load_measurer: Callable[[], Measurer] | None = None
    description: str = ""
