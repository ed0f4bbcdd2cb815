"""`cmcp verify` on several claims of one session: each verified on its own, then the
links between them.

With `claims.per_call` a session issues a claim after each tool call and a last one at
its end, each over the chain up to its issuance and each naming the digest of the one
before (`gateway.previous_claim`, `claim.model.claim_digest`). Given in order, the claims
must be of one session, signed by one key (a recovery claim, signed by the process that
closed the session, excepted), numbered without a gap from the first given, and each must
link the one given before it; so a claim removed, reordered or given twice fails a named
check.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cmcp_cli.attestation.api import Check, CheckStatus
from cmcp_cli.claim.canonical import CanonicalizationError
from cmcp_cli.claim.keys import jwk_thumbprint
from cmcp_cli.claim.model import claim_digest, is_gateway_claim
from cmcp_cli.errors import ExitCode
from cmcp_cli.strict_json import read_json_file
from cmcp_cli.verify.audit_log import one_replay_per_log
from cmcp_cli.verify.claim import VerifyOptions, VerifyReport, verify_claim_file

SEQUENCE_CHECKS = (
    "sequence: claims",
    "sequence: session",
    "sequence: key",
    "sequence: numbers",
    "sequence: links",
)


@dataclass
class SequenceReport:
    claims: list[tuple[Path, VerifyReport]]
    checks: list[Check] = field(default_factory=list)

    @property
    def failed(self) -> bool:
        return any(report.failed for _, report in self.claims) or any(
            check.status is CheckStatus.FAIL for check in self.checks
        )

    @property
    def exit_code(self) -> ExitCode:
        if self.failed:
            return ExitCode.FAILED
        codes = {report.exit_code for _, report in self.claims}
        return ExitCode.NOT_VERIFIABLE if ExitCode.NOT_VERIFIABLE in codes else ExitCode.OK

    @property
    def verdict(self) -> str:
        for path, report in self.claims:
            if report.failed:
                return f"NOT VERIFIED: {path}: {report.verdict.removeprefix('NOT VERIFIED: ')}"
        failed = [check for check in self.checks if check.status is CheckStatus.FAIL]
        if failed:
            return f"NOT VERIFIED: {failed[0].name} failed ({failed[0].reason})"
        worst = max(self.claims, key=lambda item: int(item[1].exit_code))[1]
        return f"{worst.verdict}; {len(self.claims)} claims form one linked sequence"

    def to_json(self) -> dict[str, object]:
        return {
            "kind": "claim-sequence",
            "verdict": self.verdict,
            "exit_code": int(self.exit_code),
            "claims": [{"path": str(path), **report.to_json()} for path, report in self.claims],
            "checks": [check.to_json() for check in self.checks],
        }


def verify_sequence(
    paths: Sequence[Path],
    options: VerifyOptions,
    trust_root_files: tuple[Path, ...] = (),
    collateral_files: tuple[Path, ...] = (),
    platform_policy_file: Path | None = None,
) -> SequenceReport:
    """Verify each claim (`verify_claim_file`, against the audit log too when given), then
    the links between them in the order given.

    Raises `UsageError` (exit 2) for a file that cannot be read at all.
    """
    with one_replay_per_log():
        report = SequenceReport(
            [
                (
                    path,
                    verify_claim_file(
                        path, options, trust_root_files, collateral_files, platform_policy_file
                    ),
                )
                for path in paths
            ]
        )
    report.checks.extend(sequence_checks([read_json_file(path, "claim") for path in paths]))
    return report


def sequence_checks(documents: Sequence[Any]) -> list[Check]:
    """The named checks of claims given in order against each other."""
    unusable = [
        f"claim {index + 1}"
        for index, document in enumerate(documents)
        if not _well_formed(document)
    ]
    if unusable:
        reason = (
            f"{', '.join(unusable)} is not a GatewayClaim with a session, a sequence number, "
            "a link and a key (a standalone TRACE record carries no sequence)"
        )
        return [Check.failed(name, reason) for name in SEQUENCE_CHECKS]
    claims: list[Mapping[str, Any]] = list(documents)
    gateways = [claim["gateway"] for claim in claims]
    checks = [Check.passed("sequence: claims", f"{len(claims)} GatewayClaims, in the order given")]
    sessions = sorted({gateway["session_id"] for gateway in gateways})
    if len(sessions) == 1:
        checks.append(Check.passed("sequence: session", f"every claim is of session {sessions[0]}"))
    else:
        checks.append(
            Check.failed(
                "sequence: session",
                f"the claims are of {len(sessions)} sessions: {', '.join(sessions)}",
            )
        )
    checks.append(_key(claims))
    numbers = [gateway["sequence_number"] for gateway in gateways]
    expected = list(range(numbers[0], numbers[0] + len(numbers)))
    if numbers == expected:
        checks.append(
            Check.passed(
                "sequence: numbers",
                f"sequence numbers {numbers[0]} to {numbers[-1]}, "
                "without a gap, repeat or reordering",
            )
        )
    else:
        checks.append(
            Check.failed(
                "sequence: numbers",
                f"the claims are numbered {numbers}, not {expected}: a claim was removed, "
                "repeated or moved",
            )
        )
    checks.append(_links(claims))
    return checks


def _well_formed(document: Any) -> bool:
    if not isinstance(document, Mapping) or not is_gateway_claim(document):
        return False
    gateway, trace = document.get("gateway"), document.get("trace")
    if not isinstance(gateway, Mapping) or not isinstance(trace, Mapping):
        return False
    cnf = trace.get("cnf")
    jwk = cnf.get("jwk") if isinstance(cnf, Mapping) else None
    previous = gateway.get("previous_claim", 0)
    return (
        isinstance(gateway.get("session_id"), str)
        and type(gateway.get("sequence_number")) is int
        and (previous is None or isinstance(previous, str))
        and isinstance(jwk, Mapping)
        and all(isinstance(jwk.get(k), str) for k in ("kty", "crv", "x"))
    )


def _key(claims: Sequence[Mapping[str, Any]]) -> Check:
    """One key signs a session's claims; only a recovery claim, the session's last, is
    signed by the later process that closed it."""
    keys = [jwk_thumbprint(claim["trace"]["cnf"]["jwk"]) for claim in claims]
    own = [
        key for claim, key in zip(claims, keys, strict=True) if "recovery" not in claim["gateway"]
    ]
    recovered = [index for index, claim in enumerate(claims) if "recovery" in claim["gateway"]]
    if recovered and recovered != [len(claims) - 1]:
        return Check.failed(
            "sequence: key",
            "a recovery claim is not the last: a session is recovered once, at its end",
        )
    if len(set(own)) > 1:
        return Check.failed(
            "sequence: key",
            f"the claims are signed by {len(set(own))} keys "
            f"({', '.join(sorted(set(own)))}), not the session's one",
        )
    also = " (and the recovery claim by its recovering process's key)" if recovered else ""
    return Check.passed(
        "sequence: key", f"every claim is signed by key {own[0] if own else keys[0]}{also}"
    )


def _links(claims: Sequence[Mapping[str, Any]]) -> Check:
    first = claims[0]["gateway"]
    broken: list[str] = []
    if first["sequence_number"] == 1 and first["previous_claim"] is not None:
        broken.append("claim 1 of the session links to a claim before it")
    for before, claim in itertools.pairwise(claims):
        number = claim["gateway"]["sequence_number"]
        try:
            digest = claim_digest(before)
        except CanonicalizationError:
            broken.append(f"the claim before claim {number} has no canonical form to digest")
            continue
        if claim["gateway"]["previous_claim"] != digest:
            broken.append(
                f"claim {number} links to {claim['gateway']['previous_claim']}, but the claim "
                f"given before it ({before['gateway']['sequence_number']}) has digest {digest}"
            )
    if broken:
        return Check.failed("sequence: links", "; ".join(broken))
    start = (
        "the first claim links to none"
        if first["sequence_number"] == 1
        else f"the first claim given ({first['sequence_number']}) links to one not given"
    )
    return Check.passed(
        "sequence: links", f"each claim links the digest of the one before it; {start}"
    )
