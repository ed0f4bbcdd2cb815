"""The shape of a GatewayClaim and of a TRACE v0.2 record: every field a verifier reads.

Each function returns the list of what is wrong, so the report can say all of it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from cmcp_cli.claim.canonical import CanonicalizationError, canonical_bytes
from cmcp_cli.claim.challenge import challenge_problem
from cmcp_cli.claim.model import (
    CATALOG_PINNING,
    CLAIM_VERSION,
    CLAIM_VERSIONS,
    DEVICE_MEMBERS,
    EAT_PROFILE,
    RECORD_UNSIGNED_VERSION,
)
from cmcp_cli.policy.request import MessageKind

_DIGEST = re.compile(r"sha(256:[0-9a-f]{64}|384:[0-9a-f]{96})")
_SPIFFE = re.compile(r"spiffe://[a-z0-9.\-_]+/.+")
_URI = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*:\S+")
_HTTPS = re.compile(r"https://[^/?#\s]+\S*")
_HEX32 = re.compile(r"[0-9a-f]{64}")
_SHA256 = re.compile(r"sha256:[0-9a-f]{64}")
_MISSING = object()
_ALL_ZEROS = re.compile(r"sha(256|384):0+")
_SUMMARY_KEYS = ("total", "allowed", "denied", "redacted", "escalated", "faulted")


def _obj(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _is_int(value: Any) -> bool:
    return type(value) is int and -(2**53 - 1) <= value <= 2**53 - 1


def trace_problems(trace: Any) -> list[str]:
    """What keeps `trace` from being a TRACE v0.2 record cMCP can rely on."""
    if not isinstance(trace, Mapping):
        return ["trace is not an object"]
    problems: list[str] = []
    if trace.get("eat_profile") != EAT_PROFILE:
        problems.append(f"eat_profile is {trace.get('eat_profile')!r}, not {EAT_PROFILE!r}")
    if not _is_int(trace.get("iat")) or trace["iat"] < 1_700_000_000:
        problems.append("iat is not integer Unix seconds")
    if not isinstance(trace.get("subject"), str) or not _SPIFFE.fullmatch(trace["subject"]):
        problems.append("subject is not a SPIFFE ID with a path")
    model = _obj(trace.get("model"))
    if not all(isinstance(model.get(k), str) for k in ("provider", "model_id")):
        problems.append("model needs provider and model_id")
    runtime = _obj(trace.get("runtime"))
    measurement = runtime.get("measurement")
    if not isinstance(runtime.get("platform"), str):
        problems.append("runtime.platform is missing")
    if not isinstance(measurement, str) or not _DIGEST.fullmatch(measurement):
        problems.append("runtime.measurement is not sha256:<64 hex> or sha384:<96 hex>")
    elif _ALL_ZEROS.fullmatch(measurement):
        problems.append("runtime.measurement is all zeros")
    policy = _obj(trace.get("policy"))
    if not isinstance(policy.get("bundle_hash"), str) or not _DIGEST.fullmatch(
        policy["bundle_hash"]
    ):
        problems.append("policy.bundle_hash is not a digest")
    if policy.get("enforcement_mode") not in ("enforce", "advisory", "silent"):
        problems.append("policy.enforcement_mode is not enforce, advisory or silent")
    if not isinstance(policy.get("version"), str):
        problems.append("policy.version is missing")
    if not isinstance(trace.get("data_class"), str):
        problems.append("data_class is missing")
    transcript = _obj(trace.get("tool_transcript"))
    if not isinstance(transcript.get("hash"), str) or not _DIGEST.fullmatch(transcript["hash"]):
        problems.append("tool_transcript.hash is not a digest")
    if not _is_int(transcript.get("call_count")) or transcript["call_count"] < 0:
        problems.append("tool_transcript.call_count is not a count")
    provenance = _obj(trace.get("build_provenance"))
    if not _is_int(provenance.get("slsa_level")) or not isinstance(provenance.get("digest"), str):
        problems.append("build_provenance needs slsa_level and digest")
    elif not _DIGEST.fullmatch(provenance["digest"]):
        problems.append("build_provenance.digest is not a digest")
    appraisal = _obj(trace.get("appraisal"))
    if appraisal.get("status") not in ("affirming", "warning", "contraindicated", "none"):
        problems.append("appraisal.status is not an EAR status")
    if not isinstance(appraisal.get("verifier"), str) or not _URI.fullmatch(appraisal["verifier"]):
        problems.append("appraisal.verifier is not an absolute URI")
    problems += _optional_problems(trace, runtime, appraisal)
    jwk = _obj(_obj(trace.get("cnf")).get("jwk"))
    if jwk.get("kty") != "OKP" or jwk.get("crv") != "Ed25519" or not isinstance(jwk.get("x"), str):
        problems.append("cnf.jwk is not an OKP Ed25519 public key")
    return problems


def _optional_problems(
    trace: Mapping[str, Any], runtime: Mapping[str, Any], appraisal: Mapping[str, Any]
) -> list[str]:
    """The members a record carries only with a challenge, an appraisal, an anchor or its
    own signature: each must be well formed when present."""
    problems = []
    if "nonce" in runtime and challenge_problem(runtime["nonce"]):
        problems.append(f"runtime.nonce is not a challenge: {challenge_problem(runtime['nonce'])}")
    if "policy_ref" in appraisal and not (
        isinstance(appraisal["policy_ref"], str) and _URI.fullmatch(appraisal["policy_ref"])
    ):
        problems.append("appraisal.policy_ref is not an absolute URI")
    if "timestamp" in appraisal and not _is_int(appraisal["timestamp"]):
        problems.append("appraisal.timestamp is not integer Unix seconds")
    if "transparency" in trace and not (
        isinstance(trace["transparency"], str) and _HTTPS.fullmatch(trace["transparency"])
    ):
        problems.append("transparency is not an https URI")
    if "signature" in trace and not isinstance(trace["signature"], str):
        problems.append("signature is not a string")
    return problems


def claim_problems(claim: Mapping[str, Any]) -> list[str]:
    """What keeps `claim` from being a GatewayClaim; includes its trace's problems."""
    problems: list[str] = []
    version = claim.get("cmcp_version")
    if version not in CLAIM_VERSIONS:
        problems.append(f"cmcp_version is {version!r}, not one of {', '.join(CLAIM_VERSIONS)}")
    record_signed = "signature" in _obj(claim.get("trace"))
    if version == CLAIM_VERSION and not record_signed:
        problems.append(f"trace.signature is missing: a {CLAIM_VERSION} claim's record is signed")
    if version == RECORD_UNSIGNED_VERSION and record_signed:
        problems.append(f"trace.signature is in a {version} claim, whose record is not signed")
    problems += [f"trace.{p}" for p in trace_problems(claim.get("trace"))]
    gateway = _obj(claim.get("gateway"))
    if not gateway:
        return [*problems, "gateway is missing"]
    if not isinstance(gateway.get("session_id"), str) or not gateway["session_id"]:
        problems.append("gateway.session_id is missing")
    if not isinstance(gateway.get("gateway_version"), str):
        problems.append("gateway.gateway_version is missing")
    if not _is_int(gateway.get("sequence_number")) or gateway["sequence_number"] < 1:
        problems.append("gateway.sequence_number is not a positive integer")
    previous = gateway.get("previous_claim", _MISSING)
    if previous is not None and (not isinstance(previous, str) or not _SHA256.fullmatch(previous)):
        problems.append("gateway.previous_claim is neither null nor a sha256:<64 hex> digest")
    chain = _obj(gateway.get("audit_chain"))
    if not all(
        isinstance(chain.get(k), str) and _DIGEST.fullmatch(chain[k]) for k in ("root", "tip")
    ):
        problems.append("gateway.audit_chain needs root and tip digests")
    if not _is_int(chain.get("length")) or chain["length"] < 1:
        problems.append("gateway.audit_chain.length is not a positive integer")
    summary = _obj(gateway.get("call_summary"))
    if not all(_is_int(summary.get(k)) and summary[k] >= 0 for k in _SUMMARY_KEYS):
        problems.append(f"gateway.call_summary needs counts {', '.join(_SUMMARY_KEYS)}")
    if "by_kind" in summary:  # absent in claims of gateways that governed tool calls only
        problems += _by_kind_problems(summary["by_kind"])
    tools = summary.get("tools_invoked")
    if not isinstance(tools, list) or not all(isinstance(t, str) for t in tools):
        problems.append("gateway.call_summary.tools_invoked is not a list of names")
    catalog = _obj(gateway.get("catalog"))
    if not isinstance(catalog.get("hash"), str) or not isinstance(
        catalog.get("drift_detected"), bool
    ):
        problems.append("gateway.catalog needs hash and drift_detected")
    if catalog.get("pinning") not in CATALOG_PINNING:
        problems.append(f"gateway.catalog.pinning is not {' or '.join(CATALOG_PINNING)}")
    attestation = _obj(gateway.get("attestation"))
    for key in ("provider", "provider_version", "evidence_type", "generated_at"):
        if not isinstance(attestation.get(key), str):
            problems.append(f"gateway.attestation.{key} is missing")
    if not isinstance(attestation.get("binding"), str) or not _HEX32.fullmatch(
        attestation["binding"]
    ):
        problems.append("gateway.attestation.binding is not 64 lowercase hex digits")
    if not isinstance(attestation.get("evidence"), Mapping):
        problems.append("gateway.attestation.evidence is not an object")
    if "devices" in attestation:  # only in the claim of a gateway that attested devices
        problems += _device_problems(attestation["devices"])
    problems += _freshness_problems(attestation)
    if "recovery" in gateway:  # only in the claim of a session a later process closed
        recovery = _obj(gateway["recovery"])
        if set(recovery) != {"interrupted_process", "process"} or not all(
            isinstance(value, str) and value for value in recovery.values()
        ):
            problems.append("gateway.recovery needs exactly interrupted_process and process")
    return problems


def _device_problems(devices: Any) -> list[str]:
    """`gateway.attestation.devices`: a non-empty list of items of exactly DEVICE_MEMBERS,
    each a string but the evidence, an object."""
    where = "gateway.attestation.devices"
    if not isinstance(devices, list) or not devices:
        return [f"{where} is not a non-empty list (it is absent when no device is attested)"]
    problems = []
    named = [member for member in DEVICE_MEMBERS if member != "evidence"]
    for index, item in enumerate(devices):
        at = f"{where}[{index}]"
        if not isinstance(item, Mapping) or set(item) != set(DEVICE_MEMBERS):
            problems.append(f"{at} needs exactly {', '.join(DEVICE_MEMBERS)}")
        elif not all(isinstance(item[k], str) and item[k] for k in named):
            problems.append(f"{at} needs {', '.join(named)} as non-empty strings")
        elif not isinstance(item["evidence"], Mapping):
            problems.append(f"{at}.evidence is not an object")
    return problems


_KIND_KEYS = _SUMMARY_KEYS
# Stated together, by claims whose gateway records its evidence validity.
FRESHNESS_KEYS = ("measurement_pin", "validity_seconds", "stale_warnings")


def _freshness_problems(attestation: Mapping[str, Any]) -> list[str]:
    stated = [key for key in FRESHNESS_KEYS if key in attestation]
    if not stated:
        return []
    if len(stated) != len(FRESHNESS_KEYS):
        return [f"gateway.attestation needs all of {', '.join(FRESHNESS_KEYS)} or none"]
    problems = []
    pin = attestation["measurement_pin"]
    if pin is not None and not (isinstance(pin, str) and _DIGEST.fullmatch(pin)):
        problems.append("gateway.attestation.measurement_pin is not null or a measurement")
    validity = attestation["validity_seconds"]
    if not _is_int(validity) or validity < 1:
        problems.append("gateway.attestation.validity_seconds is not a positive integer")
    warnings = attestation["stale_warnings"]
    if not _is_int(warnings) or warnings < 0:
        problems.append("gateway.attestation.stale_warnings is not a count")
    return problems


def _by_kind_problems(by_kind: Any) -> list[str]:
    """`call_summary.by_kind`: per known message kind, the same counts as the totals."""
    where = "gateway.call_summary.by_kind"
    if not isinstance(by_kind, Mapping):
        return [f"{where} is not an object of counts per message kind"]
    problems = []
    known = {kind.value for kind in MessageKind}
    for name, counts in by_kind.items():
        if name not in known:
            problems.append(f"{where} names {name!r}, which is not a message kind")
        elif not isinstance(counts, Mapping) or set(counts) != set(_KIND_KEYS):
            problems.append(f"{where}.{name} needs exactly the counts {', '.join(_KIND_KEYS)}")
        elif not all(_is_int(counts[k]) and counts[k] >= 0 for k in _KIND_KEYS):
            problems.append(f"{where}.{name} counts are not non-negative integers")
    return problems


def hashable_problem(document: Any) -> str | None:
    """Why the document has no canonical form (floats are not allowed), if it has none."""
    try:
        canonical_bytes(document)
    except CanonicalizationError as exc:
        return str(exc)
    return _float_path(document)


def _float_path(value: Any, path: str = "$") -> str | None:
    if isinstance(value, float):
        return f"{path} is a floating-point number; signed data carries none"
    if isinstance(value, Mapping):
        for key, member in value.items():
            found = _float_path(member, f"{path}.{key}")
            if found:
                return found
    if isinstance(value, list):
        for index, member in enumerate(value):
            found = _float_path(member, f"{path}[{index}]")
            if found:
                return found
    return None
