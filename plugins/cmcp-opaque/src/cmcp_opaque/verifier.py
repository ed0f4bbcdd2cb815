"""Offline verification of `opaque-token-v1` evidence: a token by an OPAQUE token service.

The verifier proves, from the evidence and the auditor's `[opaque]` platform policy alone:
the token is a JWS compact serialization of the assumed shape; its `alg` is an asymmetric
one the auditor accepts; its `kid` selects exactly one pinned key, which signed it; it was
issued by the pinned issuer for the pinned audience; it was valid at the claim's time; its
nonce is the session binding; its status maps to an EAR status; its measurements are among
the pinned values. Nothing the token states is judged before its signature verifies.

The token is a third party's appraisal, not hardware evidence re-verified here: the verdict
is never hardware-attested, and its `appraisal` (the token's status, by its `iss`) is what
the claim's `trace.appraisal` must state (`cmcp_cli.verify.appraisal`).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Final

from joserfc import jws
from joserfc.errors import JoseError

from cmcp_cli.attestation.api import (
    Appraisal,
    Check,
    CheckStatus,
    EvidenceVerdict,
    TrustInputs,
    Verifier,
)
from cmcp_cli.attestation.toolkit import CheckFailed as _Fail
from cmcp_cli.attestation.toolkit import CheckSkipped as _Skip
from cmcp_cli.attestation.toolkit import NamedCheck, as_utc, require_binding, run_checks
from cmcp_opaque.policy import PinnedKey, Requirements
from cmcp_opaque.settings import https_url_problem
from cmcp_opaque.token import (
    Token,
    TokenError,
    appraisal_status,
    audiences,
    measurement_digest,
    measurements_of,
    nonce_of,
    parse_token,
)

FORMAT: Final = "opaque.format"
URL: Final = "opaque.url"
ALGORITHM: Final = "opaque.algorithm"
KEY: Final = "opaque.key"
SIGNATURE: Final = "opaque.signature"
ISSUER: Final = "opaque.issuer"
AUDIENCE: Final = "opaque.audience"
TIME: Final = "opaque.time"
NONCE: Final = "opaque.nonce"
STATUS: Final = "opaque.status"
MEASUREMENTS: Final = "opaque.measurements"
HARDWARE: Final = "opaque.hardware"
MEMBERS: Final = frozenset({"token", "url"})


def _moment(seconds: int) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat()


class _Run:
    """One verification. Each check returns its reason for passing, or raises `_Skip` /
    `_Fail` with the reason."""

    def __init__(self, evidence: Any, trust: TrustInputs, wanted: Requirements) -> None:
        self.evidence, self.trust, self.wanted = evidence, trust, wanted
        self.token: Token | None = None
        self.key: PinnedKey | None = None
        self.signed = False
        self.status: str | None = None

    def checks(self) -> tuple[Check, ...]:
        steps: tuple[NamedCheck, ...] = (
            (FORMAT, self.format), (URL, self.url), (ALGORITHM, self.algorithm),
            (KEY, self.key_check), (SIGNATURE, self.signature), (ISSUER, self.issuer),
            (AUDIENCE, self.audience), (TIME, self.time), (NONCE, self.nonce),
            (STATUS, self.status_check), (MEASUREMENTS, self.measurements),
            (HARDWARE, self.hardware),
        )  # fmt: skip
        return run_checks(steps)

    def format(self) -> str:
        evidence = self.evidence
        if not isinstance(evidence, Mapping) or set(evidence) != MEMBERS:
            found = sorted(map(str, evidence)) if isinstance(evidence, Mapping) else []
            raise _Fail(
                "The evidence must be exactly {token, url}; it has "
                f"{', '.join(found) or 'neither'}."
            )
        try:
            self.token = parse_token(evidence["token"])
        except TokenError as error:
            raise _Fail(f"The token is refused: {error}.") from None
        return (
            f"A JWS compact serialization (alg {self.token.alg}, kid {self.token.kid}) by "
            f"{self.token.issuer}."
        )

    def _token(self) -> Token:
        if self.token is None:
            raise _Skip(f"No usable token (see {FORMAT}).")
        return self.token

    def _signed(self) -> Token:
        token = self._token()
        if not self.signed:
            raise _Skip(
                "Nothing in the token is trusted: its signature was not verified "
                f"(see {SIGNATURE})."
            )
        return token

    def url(self) -> str:
        url = self.evidence.get("url") if isinstance(self.evidence, Mapping) else None
        problem = https_url_problem(url)
        if problem is not None:
            raise _Fail(f"The URL the gateway asked {problem}.")
        if not self.wanted.urls:
            return f"The gateway asked {url} (the auditor pins no urls)."
        if url not in self.wanted.urls:
            raise _Fail(
                f"The gateway asked {url}, not a pinned URL ({', '.join(self.wanted.urls)})."
            )
        return f"The gateway asked {url}, a pinned URL."

    def algorithm(self) -> str:
        alg = self._token().alg
        if alg not in self.wanted.algorithms:
            raise _Fail(
                f"The token is signed with {alg!r}, not an accepted algorithm "
                f"({', '.join(self.wanted.algorithms)})."
            )
        return f"{alg} is an accepted asymmetric algorithm."

    def key_check(self) -> str:
        token = self._token()
        if not self.wanted.keys:
            raise _Fail(
                "No OPAQUE signing key is pinned: set keys in the [opaque] table of "
                "--platform-policy to the token service's JWKS or PEM file."
            )
        matching = [key for key in self.wanted.keys if key.kid == token.kid]
        if not matching:
            pinned = ", ".join(key.kid for key in self.wanted.keys)
            raise _Fail(f"The token's kid {token.kid!r} is not a pinned key's (pinned: {pinned}).")
        if len(matching) > 1:
            raise _Fail(
                f"The token's kid {token.kid!r} names {len(matching)} pinned keys "
                f"({'; '.join(key.source for key in matching)}): a kid must select exactly one."
            )
        key = matching[0]
        if key.alg is not None and key.alg != token.alg:
            raise _Fail(
                f"The pinned key {key.source} is for {key.alg}, the token uses {token.alg}."
            )
        self.key = key
        return f"The kid selects the pinned key {key.source}."

    def signature(self) -> str:
        token = self._token()
        if self.key is None:
            raise _Skip(f"No pinned key was selected (see {KEY}).")
        if token.alg not in self.wanted.algorithms:
            raise _Skip(f"The algorithm is not accepted (see {ALGORITHM}).")
        try:
            jws.deserialize_compact(token.compact, self.key.key, algorithms=[token.alg])
        except (JoseError, ValueError, TypeError) as error:
            raise _Fail(
                f"The token's {token.alg} signature does not verify with the pinned key "
                f"{self.key.source} ({type(error).__name__}): it was altered or signed by "
                "another key."
            ) from None
        self.signed = True
        return f"The pinned key {self.key.source} signed the token ({token.alg})."

    def issuer(self) -> str:
        token = self._signed()
        if self.wanted.issuer is None:
            raise _Fail(
                f"No issuer is pinned: set issuer in the [opaque] table (the token's is "
                f"{token.issuer})."
            )
        if token.issuer != self.wanted.issuer:
            raise _Fail(
                f"The token was issued by {token.issuer}, not the pinned {self.wanted.issuer}."
            )
        return f"Issued by the pinned issuer {token.issuer}."

    def audience(self) -> str:
        token = self._signed()
        try:
            stated = audiences(token)
        except TokenError as error:
            raise _Fail(f"The token is refused: {error}.") from None
        if self.wanted.audience is None:
            raise _Skip(f"No audience is pinned; the token's aud is {stated or 'absent'}.")
        if stated is None or self.wanted.audience not in stated:
            raise _Fail(
                f"The token's aud {', '.join(stated or ('(absent)',))} does not include the "
                f"pinned audience {self.wanted.audience}."
            )
        return f"The token is for the pinned audience {self.wanted.audience}."

    def time(self) -> str:
        token = self._signed()
        at = as_utc(self.trust.at)
        moment, when = int(at.timestamp()), at.isoformat()
        payload = token.payload
        if payload["iat"] > moment:
            issued = _moment(payload["iat"])
            raise _Fail(f"The token was issued at {issued}, after the claim's time {when}.")
        if "nbf" in payload and payload["nbf"] > moment:
            start = _moment(payload["nbf"])
            raise _Fail(f"The token is not valid before {start} (judged at {when}).")
        expiry = _moment(payload["exp"])
        if moment >= payload["exp"]:
            raise _Fail(f"The token expired at {expiry} (judged at {when}, the claim's time).")
        return f"Valid at the claim's time {when} (expires {expiry})."

    def nonce(self) -> str:
        token, binding = self._signed(), self.trust.binding
        try:
            stated = nonce_of(token, self.wanted.claim_names, self.wanted.nonce_encoding)
        except TokenError as error:
            raise _Fail(f"The token is refused: {error}.") from None
        return require_binding(stated, binding, what="The token's nonce", made="it was issued")

    def status_check(self) -> str:
        token = self._signed()
        try:
            self.status = appraisal_status(
                token, self.wanted.claim_names, self.wanted.status_values
            )
        except TokenError as error:
            raise _Fail(f"The token is refused: {error}.") from None
        return f"The token's appraisal by {token.issuer} is {self.status}."

    def measurements(self) -> str:
        token = self._signed()
        try:
            stated = measurements_of(token, self.wanted.claim_names)
        except TokenError as error:
            raise _Fail(f"The token is refused: {error}.") from None
        if not self.wanted.measurements:
            shown = ", ".join(f"{k}={v}" for k, v in sorted(stated.items())) or "none"
            raise _Skip(f"No measurements are pinned; the token states {shown}.")
        wrong = [
            f"{name} is {stated.get(name, '(absent)')}, not one of {', '.join(accepted)}"
            for name, accepted in self.wanted.measurements.items()
            if stated.get(name) not in accepted
        ]
        if wrong:
            raise _Fail(f"The token's measurements are not the pinned ones: {'; '.join(wrong)}.")
        return f"Every pinned measurement ({', '.join(self.wanted.measurements)}) matches."

    def hardware(self) -> str:
        issuer = self.token.issuer if self.token is not None else "its issuer"
        raise _Skip(
            f"An OPAQUE token is an appraisal by {issuer}, not hardware evidence verified "
            "here: the platform is software-only."
        )

    def measurement(self) -> str | None:
        if self.token is None:
            return None
        try:
            return measurement_digest(measurements_of(self.token, self.wanted.claim_names))
        except TokenError:
            return None

    def appraisal(self, checks: tuple[Check, ...]) -> Appraisal | None:
        passed = {c.name for c in checks if c.status is CheckStatus.PASS}
        if self.token is None or self.status is None or not {SIGNATURE, STATUS} <= passed:
            return None
        return Appraisal(self.status, self.token.issuer)


class OpaqueVerifier(Verifier):
    """Judges `opaque-token-v1` evidence offline against the auditor's pinned keys."""

    def verify(self, evidence: Mapping[str, Any], trust: TrustInputs) -> EvidenceVerdict:
        # ProviderError if unusable
        wanted = Requirements.parse(trust.platform_policy, trust.platform_policy_dir)
        run = _Run(evidence, trust, wanted)
        checks = run.checks()
        return EvidenceVerdict(
            checks,
            hardware_attested=False,
            measurement=run.measurement(),
            appraisal=run.appraisal(checks),
        )
