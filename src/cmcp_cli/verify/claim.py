"""The offline verifier behind `cmcp verify` (DESIGN §7).

Each check is reported by name with pass, fail or skip and its reason. Nothing in a claim
is trusted before its signature verifies; after that, every pin the auditor gave is
compared, the binding is recomputed from the claim, the evidence (the CPU platform's and
each device's) is judged by the one provider registered for its type (`verify.evidence`),
and an audit log, when given, must be an intact chain
that determines every member of the claim it can (`audit.matching.match_claim`). No
network: this package cannot import a socket.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cmcp_cli.attestation.api import Check, CheckStatus
from cmcp_cli.attestation.manager import (
    ProviderRegistry,
    load_providers,
)
from cmcp_cli.attestation.platform_policy import (
    PlatformPolicy,
    check_platform_policy,
    read_platform_policy,
)
from cmcp_cli.attestation.software import PLATFORM as SOFTWARE_PLATFORM
from cmcp_cli.claim.appraisal import unix_seconds
from cmcp_cli.claim.keys import jwk_thumbprint
from cmcp_cli.claim.model import is_gateway_claim
from cmcp_cli.claim.signing import check_signature
from cmcp_cli.errors import ExitCode, UsageError
from cmcp_cli.strict_json import read_json_file
from cmcp_cli.verify import shape
from cmcp_cli.verify.appraisal import record_appraisal_check
from cmcp_cli.verify.audit_log import audit_log_checks
from cmcp_cli.verify.evidence import judge_evidence
from cmcp_cli.verify.nonce import nonce_check
from cmcp_cli.verify.receipt import LOG_SIGNATURE, ReceiptInput, receipt_checks

DEFAULT_MAX_AGE_SECONDS = 86_400  # TRACE v0.2 §3.2.2 default maximum record age
FUTURE_SKEW_SECONDS = 300
_THUMBPRINT = re.compile(r"[A-Za-z0-9_-]{43}")


@dataclass(frozen=True)
class VerifyOptions:
    policy_hash: str | None = None
    catalog_hash: str | None = None
    trusted_key: str | None = None  # RFC 7638 thumbprint of the gateway's key
    expected_measurements: tuple[str, ...] = ()
    trust_roots: tuple[bytes, ...] = ()
    collateral: tuple[bytes, ...] = ()
    allow_debug: bool = False
    platform_policy: PlatformPolicy = field(default_factory=dict)  # provider name -> table
    platform_policy_dir: Path | None = None  # where its relative paths are taken from
    audit_log: Path | None = None
    at: datetime | None = None
    max_age_seconds: int = DEFAULT_MAX_AGE_SECONDS
    allow_software: bool = False
    expected_nonce: str | None = None  # the auditor's challenge, `--expected-nonce`
    receipt: ReceiptInput | None = None  # --receipt, with --log-key's key


@dataclass
class VerifyReport:
    kind: str  # "gateway-claim" or "trace-record"
    checks: list[Check] = field(default_factory=list)
    hardware_attested: bool = False
    software: bool = False
    allow_software: bool = False
    # What a well-formed GatewayClaim states of its catalog's pinning (CATALOG_PINNING).
    catalog_pinning: str | None = None
    # Devices (`devices[i]`) whose evidence no verifier here could judge.
    unjudged_devices: tuple[str, ...] = ()
    # A receipt was given, and no log key to prove its root is the log's.
    unproven_anchor: bool = False

    @property
    def failed(self) -> bool:
        return any(c.status is CheckStatus.FAIL for c in self.checks)

    @property
    def exit_code(self) -> ExitCode:
        if self.failed:
            return ExitCode.FAILED
        if self.unjudged_devices or self.unproven_anchor:
            return ExitCode.NOT_VERIFIABLE
        if self.hardware_attested or (self.software and self.allow_software):
            return ExitCode.OK
        return ExitCode.NOT_VERIFIABLE

    @property
    def verdict(self) -> str:
        if self.failed:
            first = next(c for c in self.checks if c.status is CheckStatus.FAIL)
            return f"NOT VERIFIED: {first.name} failed ({first.reason})"
        if self.unjudged_devices:
            return (
                "VALID, NOT VERIFIABLE HERE: the evidence of "
                f"{', '.join(self.unjudged_devices)} could not be judged on this machine"
            )
        if self.unproven_anchor:
            return (
                "VALID, NOT VERIFIABLE HERE: nothing proves the receipt's root is the "
                "transparency log's (give the log's key with --log-key)"
            )
        if self.hardware_attested:
            return "VERIFIED: signature, pins, binding and hardware evidence all check out"
        if self.software and self.allow_software:
            return "VERIFIED (software mode accepted with --allow-software): not hardware-attested"
        if self.software:
            return "VALID, NOT HARDWARE-ATTESTED: software mode (--allow-software accepts it)"
        return (
            "VALID, NOT VERIFIABLE HERE: the hardware evidence could not be judged on this machine"
        )

    def to_json(self) -> dict[str, object]:
        return {
            "kind": self.kind,
            "verdict": self.verdict,
            "exit_code": int(self.exit_code),
            "hardware_attested": self.hardware_attested,
            "software_mode": self.software,
            "catalog_pinning": self.catalog_pinning,
            "checks": [c.to_json() for c in self.checks],
        }


def verify_document(
    document: Any, options: VerifyOptions, registry: ProviderRegistry
) -> VerifyReport:
    """Verify a GatewayClaim or a standalone TRACE record.

    Raises `UsageError` when the auditor's platform policy does not fit the providers.
    """
    check_platform_policy(options.platform_policy, registry)
    gateway_claim = isinstance(document, Mapping) and is_gateway_claim(document)
    report = VerifyReport(
        kind="gateway-claim" if gateway_claim else "trace-record",
        allow_software=options.allow_software,
    )
    checks = report.checks
    if not isinstance(document, Mapping):
        checks.append(Check.failed("format", "the document is not a JSON object"))
        return report
    problems = shape.claim_problems(document) if gateway_claim else shape.trace_problems(document)
    unhashable = shape.hashable_problem(document)
    if unhashable:
        problems.append(unhashable)
    if problems:
        checks.append(Check.failed("format", "; ".join(problems)))
        return report
    checks.append(Check.passed("format", f"a well-formed {report.kind.replace('-', ' ')}"))
    # From here on every member the checks read exists with its type.
    trace: Mapping[str, Any] = document["trace"] if gateway_claim else document

    jwk = trace["cnf"]["jwk"]
    signature_problem = check_signature(document, jwk)
    # A 1.1 claim's record carries its own signature (TRACE's embedded form), so the record
    # verifies, and is anchored, on its own; a 1.0 claim's has none (the shape check holds
    # each version to its own), and the envelope's signature alone covers it.
    record_signed = gateway_claim and "signature" in trace
    if signature_problem is None and record_signed:
        record_problem = check_signature(trace, jwk)
        signature_problem = record_problem and f"trace.signature: {record_problem}"
    if signature_problem:
        checks.append(Check.failed("signature", signature_problem))
        checks.append(Check.skipped("remaining checks", "nothing in an unsigned claim is trusted"))
        return report
    signed_what = "the claim and its TRACE record" if record_signed else "the document"
    checks.append(
        Check.passed(
            "signature",
            f"Ed25519 over the RFC 8785 form of {signed_what}, by the key in trace.cnf.jwk",
        )
    )

    thumbprint = jwk_thumbprint(jwk)
    checks.append(_key_pin(thumbprint, options.trusted_key))
    stated = document["gateway"]["attestation"] if gateway_claim else {}
    checks.append(_freshness(trace["iat"], options, stated))
    checks.append(nonce_check(trace["runtime"], options.expected_nonce, evidence=gateway_claim))
    checks.append(
        _pin("policy pin", trace["policy"]["bundle_hash"], options.policy_hash, "--policy-hash")
    )
    if gateway_claim:
        gateway = document["gateway"]
        report.catalog_pinning = gateway["catalog"]["pinning"]
        checks.append(_catalog_pin(gateway["catalog"], options.catalog_hash))
        checks.append(_consistency(trace, gateway))
        checks.append(_recovery(gateway))
        judged = judge_evidence(document, thumbprint, options, registry)
        checks.extend(judged.checks)
        report.hardware_attested = judged.hardware_attested
        report.software = judged.software
        report.unjudged_devices = tuple(judged.unjudged_devices)
    else:
        checks.append(Check.skipped("catalog pin", "a TRACE record does not carry the catalog"))
        checks.append(Check.skipped("recovery", "a TRACE record does not say who closed it"))
        checks.append(
            Check.skipped("attestation", "a standalone TRACE record carries no evidence to judge")
        )
        appraisal = record_appraisal_check(trace["appraisal"], trace["runtime"]["platform"])
        checks.append(appraisal)
        # an appraisal that cannot be confirmed here leaves the record not verifiable here
        report.software = (
            trace["runtime"]["platform"] == SOFTWARE_PLATFORM
            and appraisal.status is CheckStatus.PASS
        )
    checks.append(_measurement(trace["runtime"]["measurement"], options.expected_measurements))
    checks.extend(audit_log_checks(document, gateway_claim, options.audit_log))
    anchoring = receipt_checks(trace, options.receipt)
    checks.extend(anchoring)
    report.unproven_anchor = any(
        c.name == LOG_SIGNATURE and c.status is CheckStatus.SKIP for c in anchoring
    )
    return report


def _key_pin(thumbprint: str, pinned: str | None) -> Check:
    if pinned is None:
        return Check.skipped(
            "key pin", f"no --trusted-key; the claim was signed by key {thumbprint}"
        )
    if pinned == thumbprint:
        return Check.passed("key pin", f"signed by the pinned key {thumbprint}")
    return Check.failed(
        "key pin", f"signed by key {thumbprint}, not the pinned {pinned}: the claim was re-signed"
    )


def _freshness(iat: int, options: VerifyOptions, attestation: Mapping[str, Any]) -> Check:
    """The claim was issued within `max_age_seconds` of the verification time and, when it
    states its evidence validity, its newest evidence was not yet stale when it was
    issued: `generated_at + validity_seconds >= iat` (both as the claim states them)."""
    at = options.at or datetime.now(UTC)
    moment = int(at.timestamp())
    issued = datetime.fromtimestamp(iat, UTC).isoformat()
    if iat > moment + FUTURE_SKEW_SECONDS:
        return Check.failed("freshness", f"issued at {issued}, after the verification time")
    age = moment - iat
    if age > options.max_age_seconds:
        return Check.failed(
            "freshness",
            f"issued at {issued}, {age} s before the verification time; the maximum age is "
            f"{options.max_age_seconds} s (use --at or --max-age to verify an older claim)",
        )
    validity = attestation.get("validity_seconds")
    if validity is None:
        return Check.passed("freshness", f"issued at {issued}, {max(age, 0)} s old")
    generated = unix_seconds(attestation["generated_at"])
    if generated is None:
        return Check.failed(
            "freshness", f"generated_at {attestation['generated_at']!r} is not an RFC 3339 time"
        )
    stale_at = generated + validity
    if iat > stale_at:
        return Check.failed(
            "freshness",
            f"issued at {issued}, {iat - stale_at} s after its newest evidence (generated at "
            f"{attestation['generated_at']}) went stale: validity_seconds is {validity}",
        )
    return Check.passed(
        "freshness",
        f"issued at {issued}, {max(age, 0)} s old; its newest evidence, generated at "
        f"{attestation['generated_at']}, was fresh then (validity {validity} s)",
    )


def _pin(name: str, actual: str, pinned: str | None, flag: str) -> Check:
    if pinned is None:
        return Check.skipped(name, f"no {flag} given; the claim states {actual}")
    if pinned == actual:
        return Check.passed(name, f"{actual} is the pinned value")
    return Check.failed(name, f"the claim states {actual}, the pinned value is {pinned}")


# What each catalog pinning means for an auditor (docs/verifying.md).
PINNING_MEANING = {
    "explicit": "the catalog is a file the operator provided",
    "first-contact": "the catalog is whatever the upstreams advertised at the gateway's "
    "first start (trust on first use), not one a reviewer approved",
}


def _catalog_pin(catalog: Mapping[str, Any], pinned: str | None) -> Check:
    check = _pin("catalog pin", catalog["hash"], pinned, "--catalog-hash")
    pinning = catalog["pinning"]
    reason = f"{check.reason}; pinning {pinning}: {PINNING_MEANING[pinning]}"
    return replace(check, reason=reason)


def _consistency(trace: Mapping[str, Any], gateway: Mapping[str, Any]) -> Check:
    chain, summary = gateway["audit_chain"], gateway["call_summary"]
    issues = []
    if not trace["subject"].endswith(f"/cmcp/session/{gateway['session_id']}"):
        issues.append("trace.subject does not name gateway.session_id")
    if trace["tool_transcript"]["hash"] != chain["tip"]:
        issues.append("tool_transcript.hash is not the audit chain tip")
    if trace["tool_transcript"]["call_count"] != summary["total"]:
        issues.append("tool_transcript.call_count is not call_summary.total")
    counted = sum(summary[k] for k in ("allowed", "denied", "redacted", "escalated"))
    if counted != summary["total"]:
        issues.append("call_summary decisions do not add up to its total")
    issues += by_kind_issues(summary)
    if issues:
        return Check.failed("consistency", "; ".join(issues))
    return Check.passed("consistency", "trace and gateway agree on session, transcript and counts")


def _recovery(gateway: Mapping[str, Any]) -> Check:
    """Whether the claim was issued by the process that ran the session, or by a later
    one that recovered it after that process died (`gateway.recovery`)."""
    recovery = gateway.get("recovery")
    if recovery is None:
        return Check.skipped("recovery", "issued by the gateway process that ran the session")
    interrupted, process = recovery["interrupted_process"], recovery["process"]
    if interrupted == process:
        return Check.failed(
            "recovery",
            f"gateway.recovery names process {interrupted} as both the interrupted and the "
            "recovering process: a process does not recover its own session",
        )
    return Check.passed(
        "recovery",
        f"a recovery claim: the session was interrupted in gateway process {interrupted}; "
        f"this claim was issued by process {process} after it restarted",
    )


def by_kind_issues(summary: Mapping[str, Any]) -> list[str]:
    """Where `call_summary.by_kind` does not add up: per kind, decisions to its total;
    across kinds, each count to the summary's (faults of no message count only in the
    summary, so by_kind's faults may fall short of it, never exceed it)."""
    if "by_kind" not in summary:
        return []
    by_kind: Mapping[str, Mapping[str, int]] = summary["by_kind"]
    decisions = ("allowed", "denied", "redacted", "escalated")
    issues = [
        f"call_summary.by_kind.{name} decisions do not add up to its total"
        for name, counts in by_kind.items()
        if sum(counts[k] for k in decisions) != counts["total"]
    ]
    issues += [
        f"call_summary.by_kind {key} counts do not add up to call_summary.{key}"
        for key in ("total", *decisions)
        if sum(counts[key] for counts in by_kind.values()) != summary[key]
    ]
    if sum(counts["faulted"] for counts in by_kind.values()) > summary["faulted"]:
        issues.append("call_summary.by_kind counts more faults than call_summary.faulted")
    return issues


def _measurement(measurement: str, expected: tuple[str, ...]) -> Check:
    if not expected:
        return Check.skipped(
            "measurement", f"no --expected-measurement; the claim states {measurement}"
        )
    if measurement in expected:
        return Check.passed("measurement", f"{measurement} is in the pinned set")
    return Check.failed("measurement", f"{measurement} is not in the pinned set")


def verify_claim_file(
    path: Path,
    options: VerifyOptions,
    trust_root_files: tuple[Path, ...] = (),
    collateral_files: tuple[Path, ...] = (),
    platform_policy_file: Path | None = None,
) -> VerifyReport:
    """Read a claim or TRACE record and verify it with every installed provider available.

    Raises `UsageError` (exit 2) for input that cannot be read at all.
    """
    document = read_json_file(path, "claim")
    roots = tuple(_read_bytes(root, "trust root") for root in trust_root_files)
    collateral = tuple(_read_bytes(item, "collateral") for item in collateral_files)
    options = replace(
        options,
        trust_roots=options.trust_roots + roots,
        collateral=options.collateral + collateral,
    )
    if platform_policy_file is not None:
        options = replace(
            options,
            platform_policy=read_platform_policy(platform_policy_file),
            platform_policy_dir=platform_policy_file.absolute().parent,
        )
    return verify_document(document, options, load_providers())


def resolve_trusted_key(value: str) -> str:
    """A pinned key given as an RFC 7638 thumbprint, or as a file holding the public JWK."""
    candidate = Path(value)
    if candidate.is_file():
        document = read_json_file(candidate, "trusted key")
        jwk = document.get("jwk", document) if isinstance(document, Mapping) else None
        if not isinstance(jwk, Mapping) or not {"kty", "crv", "x"} <= set(jwk):
            raise UsageError(f"{candidate} holds no OKP public JWK")
        return jwk_thumbprint(jwk)
    if not _THUMBPRINT.fullmatch(value):
        raise UsageError(
            f"--trusted-key {value!r} is neither a file nor an RFC 7638 thumbprint "
            "(43 base64url characters)"
        )
    return value


def _read_bytes(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read {what} {path}: {exc.strerror or exc}") from exc
