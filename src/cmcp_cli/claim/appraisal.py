"""The names a claim gives the gateway's own appraisal of its evidence (TRACE `appraisal`).

In a hardware mode the gateway appraises the evidence it collects with the provider's own
verifier, as `cmcp verify` would. The claim then states:

- `verifier`: `urn:cmcp:runtime-appraisal:cmcp-gateway/<version>`, which names this software
  and its version and says the appraisal is the runtime's own, not a third party's;
- `policy_ref`: `urn:cmcp:appraisal-policy:sha256:<hex>`, the SHA-256 of the RFC 8785 form of
  `policy_document`: the CPU provider's name, the pinned measurements, the bytes of each
  trust-root and collateral file, that provider's platform-policy table as written and the
  debug setting. It does not cover the tables of device providers' verifiers, nor the
  content of files a table names by path (read by the verifier at each appraisal): two
  claims naming the same policy_ref were appraised under the same CPU inputs, and an
  auditor holding them can recompute it, but a device table or a file a table names can
  differ between them;
- `timestamp`: the Unix seconds of the evidence's `generated_at`, when it was appraised.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any, Final

from cmcp_cli.claim.canonical import canonical_sha256, sha256_tagged

RUNTIME_VERIFIER_PREFIX: Final = "urn:cmcp:runtime-appraisal:cmcp-gateway/"
POLICY_REF_PREFIX: Final = "urn:cmcp:appraisal-policy:sha256:"
POLICY_VERSION: Final = "cmcp-appraisal-policy-1"
# What the runtime's own appraisal can find; `none` is never one (it appraised something).
RUNTIME_STATUSES: Final = ("affirming", "warning", "contraindicated")
_POLICY_REF = re.compile(re.escape(POLICY_REF_PREFIX) + r"[0-9a-f]{64}")
# A version as `cmcp_cli.__version__` spells it: no whitespace, slash or URI delimiter.
_VERSION = re.compile(r"[0-9A-Za-z][0-9A-Za-z.+_-]*")


def runtime_verifier(version: str) -> str:
    """The `appraisal.verifier` of the runtime's own appraisal by this gateway version."""
    return RUNTIME_VERIFIER_PREFIX + version


def runtime_verifier_version(verifier: str) -> str | None:
    """The gateway version a runtime-appraisal verifier URI names; None when `verifier` is
    not one (another software's name, or a malformed version)."""
    if not verifier.startswith(RUNTIME_VERIFIER_PREFIX):
        return None
    version = verifier.removeprefix(RUNTIME_VERIFIER_PREFIX)
    return version if _VERSION.fullmatch(version) else None


def is_policy_ref(value: object) -> bool:
    """Whether `value` is an appraisal policy URI of the form `policy_ref` makes."""
    return isinstance(value, str) and _POLICY_REF.fullmatch(value) is not None


def policy_document(
    *,
    provider: str,
    expected_measurements: Iterable[str],
    trust_roots: Iterable[bytes],
    collateral: Iterable[bytes],
    platform_policy: Mapping[str, Any],
    allow_debug: bool,
) -> dict[str, Any]:
    """The CPU inputs of an appraisal: the provider whose verifier judged the evidence, the
    pinned measurements, each trust-root and collateral file by the SHA-256 of its bytes
    (sorted, so the order they are listed in does not matter), that provider's table of the
    platform policy as written (a file it names, by its path only) and whether debug
    platforms are accepted. Device providers' tables are not in it."""
    return {
        "v": POLICY_VERSION,
        "provider": provider,
        "expected_measurements": sorted(expected_measurements),
        "trust_roots": sorted(sha256_tagged(item) for item in trust_roots),
        "collateral": sorted(sha256_tagged(item) for item in collateral),
        "platform_policy": dict(platform_policy),
        "allow_debug": allow_debug,
    }


def policy_ref(document: Mapping[str, Any]) -> str:
    """The `appraisal.policy_ref` of a `policy_document`. Raises `CanonicalizationError` when
    the platform-policy table has no RFC 8785 form (a float or a date in the TOML)."""
    return POLICY_REF_PREFIX + canonical_sha256(document).removeprefix("sha256:")


def unix_seconds(text: str) -> int | None:
    """Unix seconds (rounded down) of an RFC 3339 time such as `generated_at`, or None."""
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return None if moment.tzinfo is None else int(moment.timestamp())
