"""Offline verification of `tdx-quote-v1` evidence: a TDX DCAP quote bound to a session.

Evidence is `{"quote": base64, "ccel": base64 (optional), "collateral": object
(optional)}`. The verifier parses the quote, builds the PCK chain to the pinned Intel SGX
Root CA as of the claim's time, checks that the PCK key signed the QE report, that the QE
report binds the attestation key, that the attestation key signed the quote, that the
quote's REPORTDATA is the session binding, the TD's debug attribute, the measurement
against the auditor's set, the RTMRs against the CCEL log, and the TCB status against
Intel's collateral (statuses accepted by default, or as the auditor's platform policy
says, `cmcp_tdx.appraisal`). Each step is a named `Check`; a step whose input an earlier failure
made meaningless is skipped with the reason. Malformed evidence is a failed check, never
an exception.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any, Final

from cryptography import x509

from cmcp_cli.attestation.api import Check, EvidenceVerdict, TrustInputs, Verifier
from cmcp_cli.attestation.toolkit import CheckFailed as _Fail
from cmcp_cli.attestation.toolkit import CheckSkipped as _Skip
from cmcp_cli.attestation.toolkit import (
    ExpectedReportData,
    as_utc,
    canonical_base64,
    hardware_verdict,
    require_report_data,
    run_checks,
)
from cmcp_tdx import appraisal, ccel, collateral, pki
from cmcp_tdx import quote as tdx
from cmcp_tdx.measurement import describe, measurement_string

SHAPE: Final = "tdx.evidence.shape"
HEADER: Final = "tdx.quote.header"
PCK_CHAIN: Final = "tdx.pck.chain"
ROOT_PINNED: Final = "tdx.root.pinned"
QE_SIGNATURE: Final = "tdx.qe.signature"
QE_BINDING: Final = "tdx.qe.binding"
QUOTE_SIGNATURE: Final = "tdx.quote.signature"
REPORT_DATA: Final = "tdx.report_data"
DEBUG: Final = "tdx.td.debug"
RTMR_REPLAY: Final = "tdx.rtmr.replay"
TCB_STATUS: Final = "tdx.tcb.status"

# Every check, in the order run.
CHECKS: Final = (
    SHAPE, HEADER, PCK_CHAIN, ROOT_PINNED, QE_SIGNATURE, QE_BINDING, QUOTE_SIGNATURE,
    REPORT_DATA, DEBUG, RTMR_REPLAY, TCB_STATUS,
)  # fmt: skip
# hardware_attested needs each of these to pass, and no check to fail.
HARDWARE_CHECKS: Final = (
    HEADER, PCK_CHAIN, ROOT_PINNED, QE_SIGNATURE, QE_BINDING, QUOTE_SIGNATURE, REPORT_DATA,
    DEBUG,
)  # fmt: skip
MEMBERS: Final = frozenset({"quote", "ccel", "collateral"})
MAX_QUOTE: Final = 1 << 16
MAX_CCEL: Final = 1 << 24


class _Run:
    def __init__(
        self,
        evidence: Any,
        trust: TrustInputs,
        collateral: Any,
        wanted: appraisal.Requirements,
        *,
        collateral_problem: str | None,
        expected_report_data: ExpectedReportData | None = None,
    ) -> None:
        self.trust, self.wanted = trust, wanted
        self.expected_report_data = expected_report_data
        self.collateral_problem = collateral_problem
        self.problems: list[str] = []
        self.raw: bytes | None = None
        self.log: bytes | None = None
        self.collateral: Any = collateral
        self.collateral_source = "the verifier"
        self.quote: tdx.Quote | None = None
        self.chain: list[x509.Certificate] | None = None
        self.given_chain: list[x509.Certificate] = []
        self.roots: list[x509.Certificate] = []
        self.roots_source = ""
        self._decode(evidence)

    def _decode(self, evidence: Any) -> None:
        if not isinstance(evidence, Mapping):
            self.problems.append("the evidence is not a JSON object")
            return
        if unknown := sorted(map(str, set(evidence) - MEMBERS)):
            self.problems.append(f"unknown members {', '.join(unknown)}")
        if "quote" not in evidence:
            self.problems.append("missing member quote")
        else:
            try:
                self.raw = canonical_base64(evidence["quote"], "quote", limit=MAX_QUOTE)
            except ValueError as error:
                self.problems.append(str(error))
        if "ccel" in evidence:
            try:
                self.log = canonical_base64(evidence["ccel"], "ccel", limit=MAX_CCEL)
            except ValueError as error:
                self.problems.append(str(error))
        if "collateral" in evidence:
            if not isinstance(evidence["collateral"], Mapping):
                self.problems.append("collateral must be a JSON object")
            elif self.collateral is None:
                self.collateral, self.collateral_source = evidence["collateral"], "the evidence"

    def checks(self) -> tuple[Check, ...]:
        steps = (
            self.shape, self.header, self.pck_chain, self.root_pinned, self.qe_signature,
            self.qe_binding, self.quote_signature, self.report_data, self.debug,
            self.rtmr_replay, self.tcb_status,
        )  # fmt: skip
        return run_checks(zip(CHECKS, steps, strict=True))

    def shape(self) -> str:
        if self.problems:
            raise _Fail("The evidence is malformed: " + "; ".join(self.problems) + ".")
        extras = [m for m, v in (("a CCEL log", self.log), ("collateral", self.collateral)) if v]
        return "The evidence holds a quote" + "".join(f" and {e}" for e in extras) + "."

    def _quote(self) -> tdx.Quote:
        if self.quote is None:
            raise _Skip(f"The quote is unusable (see {HEADER}).")
        return self.quote

    def header(self) -> str:
        if self.raw is None:
            raise _Skip(f"The evidence carries no usable quote (see {SHAPE}).")
        try:
            parsed = tdx.parse_quote(self.raw)
        except tdx.QuoteFormatError as error:
            raise _Fail(f"The quote is not a TDX DCAP quote: {error}.") from None
        self.quote = parsed
        head = parsed.header
        if head.att_key_type != tdx.ATT_KEY_ECDSA_P256:
            raise _Fail(f"The attestation key type is {head.att_key_type}, not 2 (ECDSA P-256).")
        if head.tee_type != tdx.TEE_TYPE_TDX:
            raise _Fail(f"The TEE type is 0x{head.tee_type:02x}, not 0x81 (TDX).")
        if head.qe_vendor_id != tdx.INTEL_QE_VENDOR_ID:
            raise _Fail(f"The QE vendor id {head.qe_vendor_id.hex()} is not Intel's.")
        body = "TD report 1.5" if parsed.body_type == tdx.BODY_TYPE_TD15 else "TD report 1.0"
        tail = (
            f" {parsed.trailing} unsigned byte(s) after the quote's declared end are ignored."
            if parsed.trailing
            else ""
        )
        return (
            f"A TDX quote v{head.version} ({body}) with an ECDSA P-256 key from Intel's QE.{tail}"
        )

    def pck_chain(self) -> str:
        quote = self._quote()
        try:
            self.roots, self.roots_source = pki.pinned_roots(self.trust.trust_roots)
            self.given_chain = pki.load_pem_chain(quote.pck_chain_pem, "PCK certificate chain")
            chain = pki.verify_chain(self.given_chain, self.roots, self.trust.at, "PCK chain")
            pki.p256_leaf_key(chain[0], "PCK certificate")
        except pki.PkiError as error:
            raise _Fail(f"{str(error)[:1].upper()}{str(error)[1:]}.") from None
        names = [pki.common_name(cert) for cert in chain]
        if names[0] != pki.PCK_LEAF_CN or len(chain) != 3 or names[1] not in pki.PCK_CA_CNS:
            raise _Fail(f"The chain {' -> '.join(names)} is not PCK certificate -> PCK CA -> root.")
        self.chain = chain
        at = as_utc(self.trust.at).isoformat()
        return f"{' -> '.join(names)} verifies, each certificate valid at {at}."

    def root_pinned(self) -> str:
        self._quote()
        if self.chain is None:
            top = self.given_chain[-1] if self.given_chain else None
            shown = f" its top certificate has SHA-256 {pki.fingerprint(top)}" if top else ""
            raise _Fail(
                f"The PCK chain does not reach {self.roots_source or 'a pinned root'}:{shown}."
            )
        root = self.chain[-1]
        whose = (
            "the vendored Intel SGX Root CA"
            if not self.trust.trust_roots
            else "a root given with --trust-root"
        )
        return (
            f"The chain ends at {pki.common_name(root)!r}, SHA-256 {pki.fingerprint(root)}, "
            f"{whose}."
        )

    def _leaf(self) -> x509.Certificate:
        if self.chain is None:
            raise _Skip(f"The PCK certificate is not trusted (see {PCK_CHAIN}).")
        return self.chain[0]

    def qe_signature(self) -> str:
        quote, leaf = self._quote(), self._leaf()
        key = pki.p256_leaf_key(leaf, "PCK certificate")
        if not pki.raw_signature_ok(key, quote.qe_report_signature, quote.qe_report_raw):
            raise _Fail("The QE report signature does not verify with the PCK certificate's key.")
        return "The PCK certificate's key signed the Quoting Enclave's report."

    def qe_binding(self) -> str:
        quote = self._quote()
        expected = hashlib.sha256(quote.attestation_key + quote.qe_auth_data).digest()
        data = quote.qe_report.report_data
        if data[:32] != expected or any(data[32:]):
            raise _Fail(
                f"The QE report's REPORTDATA {data.hex()} is not SHA-256(attestation key || QE "
                f"auth data) {expected.hex()} followed by zeros: the QE did not vouch for the key."
            )
        return "The QE report binds the attestation key (SHA-256 of key and QE auth data)."

    def quote_signature(self) -> str:
        quote = self._quote()
        try:
            key = pki.p256_key(quote.attestation_key)
        except pki.PkiError as error:
            raise _Fail(f"{error}.") from None
        if not pki.raw_signature_ok(key, quote.signature, quote.signed):
            raise _Fail("The quote signature over the header and TD body does not verify.")
        registers = describe(quote.body.mrtd, quote.body.rtmrs)
        return f"The attestation key signed the quote header and TD body ({registers})."

    def report_data(self) -> str:
        actual = self._quote().body.report_data
        if self.expected_report_data is not None:
            return require_report_data(actual, self.expected_report_data, field="REPORTDATA")
        expected = self.trust.binding + bytes(64 - len(self.trust.binding))
        if len(self.trust.binding) != 32 or actual != expected:
            raise _Fail(
                f"REPORTDATA {actual.hex()} is not the session binding "
                f"{self.trust.binding.hex()} followed by 32 zero bytes: the quote was made for "
                "another session or key."
            )
        return "REPORTDATA is the session binding followed by 32 zero bytes."

    def debug(self) -> str:
        body = self._quote().body
        if body.debug and not self.trust.allow_debug:
            raise _Fail(
                f"TDATTRIBUTES {body.td_attributes.hex()} has DEBUG set: the host can read and "
                "change the TD's memory (allow debug explicitly to accept it)."
            )
        state = "set, and allowed" if body.debug else "clear"
        return f"TDATTRIBUTES {body.td_attributes.hex()}: DEBUG is {state}."

    def rtmr_replay(self) -> str:
        body = self._quote().body
        if self.log is None:
            raise _Skip("The evidence carries no CCEL event log; RTMRs were not replayed.")
        try:
            events = ccel.parse(self.log)
            replayed = ccel.replay(events)
        except ccel.CcelError as error:
            raise _Fail(f"The CCEL event log is unusable: {error}.") from None
        for n, (got, quoted) in enumerate(zip(replayed, body.rtmrs, strict=True)):
            if got != quoted:
                raise _Fail(
                    f"Replaying the CCEL log gives RTMR{n} {got.hex()}, but the quote reports "
                    f"{quoted.hex()}."
                )
        return (
            f"The {len(events)} CCEL events reproduce the quote's RTMR0..3 (their digests: "
            "the events' data is not covered by the quote)."
        )

    def tcb_status(self) -> str:
        quote = self._quote()
        if self.collateral_problem is not None:
            raise _Fail(f"The collateral cannot be used: {self.collateral_problem}.")
        if self.collateral is None:
            unappraised = "No Intel collateral was supplied: TCB status was not appraised"
            if self.wanted.require_collateral:
                raise _Fail(
                    f"{unappraised}, and the auditor's platform policy requires it. Supply "
                    "Intel PCS collateral with --collateral (or in the evidence)."
                )
            raise _Skip(f"{unappraised}.")
        if self.chain is None:
            raise _Skip(f"The PCK certificate is not trusted (see {PCK_CHAIN}).")
        try:
            found = collateral.appraise(
                self.collateral, quote, self.chain, self.roots, self.trust.at
            )
        except (collateral.CollateralError, pki.PkiError) as error:
            raise _Fail(f"The collateral from {self.collateral_source} fails: {error}.") from None
        advisories = f"; advisories {', '.join(found.advisories)}" if found.advisories else ""
        outcome = f"TCB status {found.status} ({found.detail}{advisories})"
        accepted = self.wanted.accepted_tcb_statuses
        if found.status not in accepted:
            whose = "the default" if accepted == collateral.ACCEPTED else "the auditor's policy"
            raise _Fail(
                f"{outcome}, which {whose} does not accept (accepted: "
                f"{', '.join(s for s in collateral.STATUSES if s in accepted)}): the platform "
                "needs a TCB recovery before it can be trusted."
            )
        return f"{outcome}, from collateral in {self.collateral_source} valid at the time."

    def measurement(self) -> str | None:
        if self.quote is None:
            return None
        return measurement_string(self.quote.body.mrtd, self.quote.body.rtmrs)


class AmbiguousCollateralError(ValueError):
    pass


def auditor_collateral(trust: TrustInputs) -> Mapping[str, Any] | None:
    """The PCS collateral among what the auditor supplied (`cmcp verify --collateral`): the
    JSON object with any of the PCS collateral members (one lacking some, or with others,
    is still taken, and its appraisal fails naming them, rather than passed over in
    silence). Files of other kinds are another verifier's; two PCS documents are ambiguous
    and refused (`AmbiguousCollateralError`) rather than one picked."""
    found: list[Mapping[str, Any]] = []
    for item in trust.collateral:
        try:
            document = json.loads(item)
        except (ValueError, UnicodeDecodeError):
            continue
        if isinstance(document, Mapping) and set(document) & collateral.MEMBERS:
            found.append(document)
    if len(found) > 1:
        raise AmbiguousCollateralError(
            "more than one Intel PCS collateral document was supplied; give one per verification"
        )
    return found[0] if found else None


class TdxVerifier(Verifier):
    """Judges `tdx-quote-v1` evidence offline (stdlib and `cryptography` only). Collateral
    given here (the auditor's own, from Intel's PCS) takes precedence over the evidence's."""

    def __init__(self, collateral: Mapping[str, Any] | None = None) -> None:
        self.collateral = collateral

    def verify(
        self,
        evidence: Mapping[str, Any],
        trust: TrustInputs,
        *,
        report_data: ExpectedReportData | None = None,
        policy_table: str = appraisal.TABLE,
    ) -> EvidenceVerdict:
        """`report_data` and `policy_table`: see `ExpectedReportData` (REPORTDATA)."""
        problem = None
        try:
            given = self.collateral if self.collateral is not None else auditor_collateral(trust)
        except AmbiguousCollateralError as error:
            given, problem = None, str(error)
        wanted = appraisal.Requirements.parse(  # ProviderError if unusable
            trust.platform_policy, name=policy_table
        )
        run = _Run(
            evidence, trust, given, wanted, collateral_problem=problem,
            expected_report_data=report_data,
        )  # fmt: skip
        return hardware_verdict(run.checks(), HARDWARE_CHECKS, run.measurement())
