"""What every provider plugin does the same way: run its named checks in order and judge
the binding the evidence states; read an evidence object and its canonical base64 members;
refuse a settings section or a platform-policy table it does not know, and read the files a
platform policy names from the policy file's folder; take a measurer's options; read the
auditor's PEM trust roots; name, fingerprint and judge a certificate (self-signed, its
ECDSA P-384 key, its validity period at the claim's time); and give its test PKI's
certificates a keyUsage.

A verifier's check returns its reason for passing, or raises `CheckSkipped` (its input is
missing, or an earlier check refused it) or `CheckFailed` (the evidence does not hold),
each with the reason an auditor reads.
"""

from __future__ import annotations

import base64
import hashlib
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.utils import CryptographyDeprecationWarning

from cmcp_cli.attestation.api import (
    Check,
    CheckStatus,
    EvidenceVerdict,
    MeasureOption,
    ProviderError,
)

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


def require_binding(stated: bytes, binding: bytes, *, what: str, made: str) -> str:
    """The passing reason when the evidence's `stated` value (`what`, such as "The quote's
    extraData") is the session binding; else `CheckFailed` saying that `made` (such as "it
    was made") for another session or claim."""
    if stated != binding:
        raise CheckFailed(
            f"{what} {_prefix(stated)} is not the session binding {_prefix(binding)}: {made} "
            "for another session or claim."
        )
    return f"{what} is the session binding."


@contextmanager
def refused_as(
    errors: type[Exception] | tuple[type[Exception], ...], message: str, *, hint: str
) -> Iterator[None]:
    """Within the block, an exception of `errors` (a parser's, on input a provider was given)
    becomes `ProviderError(f"{message}: {error}", hint=hint)`."""
    try:
        yield
    except errors as error:
        raise ProviderError(f"{message}: {error}", hint=hint) from None


@dataclass(frozen=True, slots=True)
class ExpectedReportData:
    """What a hardware report's 64-byte REPORT_DATA must hold when its guest could not put
    the session binding there itself (a paravisor puts the hash of its own document, which
    then carries the binding's link), and what that value means, for the reasons an
    auditor reads.

    A hardware verifier (`SevVerifier`, `TdxVerifier`) takes it as the keyword
    `report_data` instead of the session binding followed by 32 zero bytes, with
    `policy_table`: the platform-policy table `trust.platform_policy` comes from, which its
    reasons and errors name (another provider's, when that provider judges the report)."""

    value: bytes
    meaning: str  # such as "the SHA-256 of the runtime data followed by 32 zero bytes"


def require_report_data(actual: bytes, expected: ExpectedReportData, *, field: str) -> str:
    """The passing reason when the report's `field` (such as "REPORT_DATA") holds the
    expected value; else `CheckFailed` naming both."""
    if actual != expected.value:
        raise CheckFailed(
            f"{field} {_prefix(actual)} is not {expected.meaning} ({_prefix(expected.value)}): "
            "the report was made for other data."
        )
    return f"{field} is {expected.meaning}."


def _prefix(data: bytes) -> str:
    return data[:8].hex() + ("…" if len(data) > 8 else "")


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


def evidence_object(
    evidence: Any, members: Iterable[str], problems: list[str]
) -> Mapping[str, Any] | None:
    """The evidence as a JSON object, or None (with the problem added to `problems`) when
    it is not one; a member outside `members` is a problem too."""
    if not isinstance(evidence, Mapping):
        problems.append(f"the evidence is a {type(evidence).__name__}, not a JSON object")
        return None
    known = frozenset(members)
    unknown = sorted(str(key) for key in evidence if key not in known)
    if unknown:
        problems.append(f"unknown member(s) {', '.join(unknown)}")
    return evidence


def base64_list(value: Any, member: str, *, limit: int, most: int) -> list[bytes]:
    """A list of 1 to `most` canonical base64 members of at most `limit` bytes each;
    `ValueError` says what is wrong with it."""
    if not isinstance(value, list) or not 0 < len(value) <= most:
        raise ValueError(f"{member} must be a list of 1 to {most} base64 strings")
    return [canonical_base64(item, f"{member}[{n}]", limit=limit) for n, item in enumerate(value)]


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


def platform_policy_table(
    table: Any, *, name: str, accepted: Iterable[str], provider: str
) -> Mapping[str, Any]:
    """The auditor's platform-policy table `name` (such as `[tdx]`), checked to hold only
    the keys the provider accepts; `ProviderError` names the problem and the fix."""
    return settings_section(
        table, section=f"the platform policy's {name} table", accepted=accepted, provider=provider
    )


def policy_flag(table: Mapping[str, Any], name: str, key: str, *, default: bool = False) -> bool:
    """A true/false key of the platform-policy table `name`, `default` when absent."""
    value = table.get(key, default)
    if not isinstance(value, bool):
        raise ProviderError(
            f"{name} {key} must be true or false, got {value!r}",
            hint=f"write {key} = true or {key} = false (or leave it out for "
            f"{str(default).lower()})",
        )
    return value


def policy_path(value: str, base: Path | None) -> Path:
    """A file the auditor's platform policy names: a relative path is taken from the folder
    of the policy file (`TrustInputs.platform_policy_dir`), never from where the verifier
    happens to run; from the working directory only when no file gave the policy."""
    path = Path(value)
    return path if path.is_absolute() or base is None else base / path


def read_policy_file(
    value: str, base: Path | None, what: str, *, limit: int = 1 << 20
) -> tuple[Path, bytes]:
    """The path (`policy_path`) and content of a file the platform policy names as `what`
    (such as `[gpu-cc] trust_roots`); `ProviderError` when it cannot be read or is larger
    than `limit` bytes."""
    path = policy_path(value, base)
    hint = "a relative path is taken from the folder of the platform-policy file"
    return path, read_bounded(path, limit, what, hint=hint)


def read_bounded(path: Path, limit: int, what: str, *, hint: str) -> bytes:
    """The content of a file the operator or auditor names as `what`; `ProviderError` (with
    `hint`) when it cannot be read, or is larger than `limit` bytes."""
    try:
        with path.open("rb") as stream:
            data = stream.read(limit + 1)
    except OSError as error:
        raise ProviderError(
            f"{what}: {path} cannot be read ({error.strerror or error})", hint=hint
        ) from None
    if len(data) > limit:
        raise ProviderError(f"{what}: {path} is larger than {limit} bytes")
    return data


def measure_values(
    values: Mapping[str, tuple[str, ...]], options: Iterable[MeasureOption]
) -> dict[str, tuple[str, ...]]:
    """A measurer's option values, refused (`ProviderError`) when one is not among its
    `options`."""
    given = dict(values)
    unknown = sorted(set(given) - {option.name for option in options})
    if unknown:
        raise ProviderError(f"unknown option(s) {', '.join('--' + n for n in unknown)}")
    return given


def measure_value(values: Mapping[str, tuple[str, ...]], name: str) -> str | None:
    """The one value of a measurer's option `--name`, None when not given; `ProviderError`
    when it is given more than once (which of them was meant is not guessed)."""
    given = values.get(name, ())
    if len(given) > 1:
        raise ProviderError(f"--{name} is given {len(given)} times", hint=f"give --{name} once")
    return given[0] if given else None


def pem_certificates(blob: bytes) -> list[x509.Certificate]:
    """The certificates of PEM data (`ValueError` when it holds none). Vendors issue
    certificates that cryptography warns about (AMD's VCEKs have serial number 0); what
    such a warning names plays no part in these checks, so it is silenced here."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CryptographyDeprecationWarning)
        return x509.load_pem_x509_certificates(blob)


def trust_root_certificates(trust_roots: Sequence[bytes]) -> list[x509.Certificate]:
    """Every certificate of the auditor's PEM trust roots (each item may hold several);
    `ValueError` names the item that is not PEM certificate data."""
    certs: list[x509.Certificate] = []
    for position, pem in enumerate(trust_roots, 1):
        try:
            certs.extend(pem_certificates(pem))
        except ValueError as error:
            raise ValueError(
                f"trust root {position} is not PEM certificate data ({str(error).rstrip('.')})"
            ) from None
    return certs


def certificate_fingerprint(cert: x509.Certificate) -> str:
    """The SHA-256 of the certificate's DER, in hex: what a vendored root is pinned by."""
    return hashlib.sha256(cert.public_bytes(Encoding.DER)).hexdigest()


def common_name(cert: x509.Certificate) -> str:
    """The certificate's subject common name, or its whole subject when it has none."""
    names = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    value = names[0].value if names else cert.subject.rfc4514_string()
    return value if isinstance(value, str) else value.decode(errors="replace")


def p384_key_problem(cert: x509.Certificate, label: str, signs: str) -> str | None:
    """Why `cert` (named `label`) does not hold the ECDSA P-384 key that signs `signs`, or
    None when it does."""
    try:
        key = cert.public_key()
    except (ValueError, UnsupportedAlgorithm) as error:
        return f"{label} has an unusable public key ({str(error).rstrip('.')})."
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP384R1):
        return f"{label} does not hold an ECDSA P-384 key, the key type that signs {signs}."
    return None


def key_usage(
    *, digital_signature: bool = False, key_cert_sign: bool = False, crl_sign: bool = False
) -> x509.KeyUsage:
    """A keyUsage allowing exactly the usages named true (for the test PKIs plugins build):
    signing data, signing certificates, signing CRLs."""
    return x509.KeyUsage(
        digital_signature=digital_signature, content_commitment=False, key_encipherment=False,
        data_encipherment=False, key_agreement=False, key_cert_sign=key_cert_sign,
        crl_sign=crl_sign, encipher_only=False, decipher_only=False,
    )  # fmt: skip


def self_signed(cert: x509.Certificate) -> bool:
    """Whether the certificate names itself as its issuer and its own key signed it."""
    if cert.subject != cert.issuer:
        return False
    try:
        cert.verify_directly_issued_by(cert)
    except Exception:  # noqa: BLE001 - any failure means not self-signed
        return False
    return True


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
