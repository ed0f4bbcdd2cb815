"""What every provider plugin does the same way: run its named checks in order, read
canonical base64 members of evidence, refuse a settings section it does not know, and judge
a certificate's validity period at the claim's time.

A verifier's check returns its reason for passing, or raises `CheckSkipped` (its input is
missing, or an earlier check refused it) or `CheckFailed` (the evidence does not hold),
each with the reason an auditor reads.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from cryptography import x509

from cmcp_cli.attestation.api import Check, CheckStatus, EvidenceVerdict, ProviderError

NamedCheck = tuple[str, Callable[[], str]]


class CheckSkipped(Exception):  # noqa: N818 - an outcome, not an error
    """The check cannot run: its input is missing or an earlier check refused it."""


class CheckFailed(Exception):  # noqa: N818 - an outcome, not an error
    """The check ran and the evidence does not hold."""


def run_checks(steps: Iterable[NamedCheck]) -> tuple[Check, ...]:
    """Every check in order, each passed, skipped or failed with its reason."""
    results = []
    for name, step in steps:
        try:
            results.append(Check.passed(name, step()))
        except CheckSkipped as skip:
            results.append(Check.skipped(name, str(skip)))
        except CheckFailed as failure:
            results.append(Check.failed(name, str(failure)))
        except Exception as error:  # noqa: BLE001 - a verifier bug must fail closed, not crash
            results.append(Check.failed(name, f"The check could not complete: {error!r}."))
    return tuple(results)


def hardware_verdict(
    checks: tuple[Check, ...],
    required: Iterable[str],
    measurement: str | None,
    *,
    may_skip: Iterable[str] = (),
) -> EvidenceVerdict:
    """The verdict: hardware-attested only when no check failed and every `required` check
    passed (those in `may_skip` may also have been skipped)."""
    status = {check.name: check.status for check in checks}
    allowed = {CheckStatus.PASS}
    skippable = set(may_skip)
    attested = not any(c.status is CheckStatus.FAIL for c in checks) and all(
        status.get(name) in (allowed | {CheckStatus.SKIP} if name in skippable else allowed)
        for name in required
    )
    return EvidenceVerdict(checks, attested, measurement)


def canonical_base64(value: Any, member: str, *, limit: int | None = None) -> bytes:
    """The bytes of an evidence member written as standard, padded base64 (one spelling per
    byte string, so the evidence's digest names exactly one content); `ValueError` says
    what is wrong with it."""
    if not isinstance(value, str) or not value:
        raise ValueError(f"{member} must be a non-empty base64 string")
    if limit is not None and len(value) > (limit + 2) // 3 * 4:
        raise ValueError(f"{member} is larger than {limit} bytes")
    try:
        raw = base64.b64decode(value, validate=True)
    except ValueError:
        raise ValueError(f"{member} is not standard base64") from None
    if base64.b64encode(raw).decode() != value:
        raise ValueError(f"{member} is not canonical padded base64")
    if limit is not None and len(raw) > limit:
        raise ValueError(f"{member} is {len(raw)} bytes, more than {limit}")
    return raw


def settings_section(
    settings: Any, *, section: str, accepted: Iterable[str], provider: str
) -> Mapping[str, Any]:
    """A provider's config section, checked to be a mapping of settings it accepts; an
    absent section is empty. `ProviderError` names the problem and the fix."""
    if settings is None:
        return {}
    if not isinstance(settings, Mapping):
        raise ProviderError(
            f"{section} must be a mapping of settings, not {type(settings).__name__}",
            hint=f"write {section} as a table (or leave it out for the defaults)",
        )
    names = tuple(accepted)
    unknown = sorted(str(key) for key in settings if key not in names)
    if unknown:
        raise ProviderError(
            f"{section}: unknown setting(s) {', '.join(unknown)}",
            hint=f"the {provider} provider accepts {', '.join(names)}; remove or correct the rest",
        )
    return settings


def as_utc(moment: datetime) -> datetime:
    """A time as UTC; a naive time is taken to be UTC already."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def validity_problem(cert: x509.Certificate, label: str, at: datetime) -> str | None:
    """Why `cert` (named `label`) is not valid at `at`, or None when it is."""
    at = as_utc(at)
    start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
    if at < start:
        return f"{label} is not valid until {start.isoformat()} (judged at {at.isoformat()})."
    if at > end:
        return f"{label} expired at {end.isoformat()} (judged at {at.isoformat()})."
    return None
