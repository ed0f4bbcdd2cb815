"""Offline verification of `tpm2-quote-v1` evidence: a TPM 2.0 quote bound to a session.

The verifier recomputes everything from the evidence and the auditor's trust inputs: the
quote's structure and binding, the AK that signed it (its attributes and its name as a
primary key of the claimed hierarchy), the signature, the PCR values against the quoted
digest, the gateway's event log against those values and the claim's policy bundle, and
the AK and EK certificates against the roots the auditor gave. Each step is a named
`Check`; a step whose input an earlier failure made meaningless is skipped naming that
check. A check skipped for want of the auditor's input (no root, no policy hash) is never
hardware-attested; once roots are given, a chain that misses them fails. Malformed
evidence is a failed check, never an exception.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from cmcp_cli.attestation.api import Check, CheckStatus, EvidenceVerdict, TrustInputs, Verifier
from cmcp_cli.attestation.toolkit import CheckFailed as _Fail
from cmcp_cli.attestation.toolkit import CheckSkipped as _Skip
from cmcp_cli.attestation.toolkit import NamedCheck, hardware_verdict, require_binding, run_checks
from cmcp_tpm import certificates, pcr
from cmcp_tpm import structures as tpm
from cmcp_tpm.evidence import decode

SHAPE = "tpm.evidence.shape"
MAGIC = "tpm.attest.magic"
TYPE = "tpm.attest.type"
EXTRA_DATA = "tpm.attest.extra_data"
AK_PUBLIC = "tpm.ak.public"
AK_ATTRIBUTES = "tpm.ak.attributes"
SIGNER = "tpm.attest.signer"
SIGNATURE = "tpm.signature"
PCR_DIGEST = "tpm.pcr.digest"
REPLAY = "tpm.eventlog.replay"
POLICY = "tpm.eventlog.policy"
AK_CERTIFICATE = "tpm.ak.certificate"
EK_CERTIFICATE = "tpm.ek.certificate"

# hardware_attested needs each of these to pass, and no check to fail: the AK certified
# to a root the auditor gave, and the TPM's EK certified to one.
HARDWARE_CHECKS = (
    AK_CERTIFICATE, EK_CERTIFICATE, AK_ATTRIBUTES, SIGNER, SIGNATURE, EXTRA_DATA, PCR_DIGEST,
    REPLAY,
)  # fmt: skip
POLICY_EVENT = "cmcp-policy-bundle"

_POLICY_HASH = re.compile(r"sha256:([0-9a-f]{64})")
_SIGNATURE_HASHES = {tpm.ALG_SHA256: hashes.SHA256(), tpm.ALG_SHA384: hashes.SHA384()}
_SCHEME_NAMES = {tpm.ALG_RSASSA: "RSASSA", tpm.ALG_RSAPSS: "RSAPSS", tpm.ALG_ECDSA: "ECDSA"}
_COMPOSITE_HASHES = {32: "sha256", 48: "sha384"}


def _clause(error: object) -> str:
    """A quoted error message without its own final period."""
    return str(error).rstrip(".")


def _prefix(data: bytes) -> str:
    return data[:8].hex() + ("…" if len(data) > 8 else "")


def _unusable(member: str) -> str:
    return f"Evidence member {member} is unusable (see {SHAPE})."


class _Run:
    """One verification: decoded evidence, parsed structures, and the checks in order. Each
    check returns its reason for passing, or raises `_Skip` / `_Fail` with the reason."""

    def __init__(self, evidence: Any, trust: TrustInputs) -> None:
        self.trust = trust
        self.d = decode(evidence)
        self.attest: tpm.Attest | None = None
        self.attest_error = ""
        if self.d.attest is not None:
            try:
                self.attest = tpm.parse_attest(self.d.attest)
            except tpm.TpmFormatError as error:
                self.attest_error = str(error)
        self.area: tpm.PublicArea | None = None
        self.key: certificates.AkKey | None = None
        self.pem = self.d.ak_public_pem is not None

    def checks(self) -> tuple[Check, ...]:
        steps: tuple[NamedCheck, ...] = (
            (SHAPE, self.shape), (MAGIC, self.magic), (TYPE, self.type),
            (EXTRA_DATA, self.extra_data), (AK_PUBLIC, self.ak_public),
            (AK_ATTRIBUTES, self.ak_attributes), (SIGNER, self.signer),
            (SIGNATURE, self.signature), (PCR_DIGEST, self.pcr_digest), (REPLAY, self.replay),
            (POLICY, self.policy), (AK_CERTIFICATE, self.ak_certificate),
            (EK_CERTIFICATE, self.ek_certificate),
        )  # fmt: skip
        return run_checks(steps)

    def _quote(self) -> tpm.Attest:
        if self.attest is None:
            raise _Skip(f"The attest did not parse (see {TYPE}).")
        return self.attest

    def shape(self) -> str:
        if self.d.problems:
            raise _Fail("The evidence is malformed: " + "; ".join(self.d.problems) + ".")
        return "Every member is present, of its type, and decodes."

    def _raw_attest(self) -> bytes:
        if self.d.attest is None:
            raise _Skip(_unusable("attest"))
        return self.d.attest

    def magic(self) -> str:
        if len(attest := self._raw_attest()) < 4:
            raise _Fail(f"The attest is {len(attest)} bytes, too short for a magic.")
        magic = int.from_bytes(attest[:4], "big")
        if magic != tpm.TPM_GENERATED_VALUE:
            raise _Fail(f"The attest magic is 0x{magic:08x}, not 0xff544347: not made by a TPM.")
        return "The attest carries TPM_GENERATED_VALUE 0xff544347."

    def type(self) -> str:
        self._raw_attest()
        if self.attest is None:
            raise _Fail(f"The attest is not a well-formed quote: {_clause(self.attest_error)}.")
        return "The attest is a TPM_ST_ATTEST_QUOTE, fully consumed."

    def extra_data(self) -> str:
        actual, expected = self._quote().extra_data, self.trust.binding
        return require_binding(actual, expected, what="The quote's extraData", made="it was made")

    def ak_public(self) -> str:
        if self.d.ak_public is not None:
            try:
                self.area = tpm.parse_public(self.d.ak_public)
            except tpm.TpmFormatError as error:
                raise _Fail(f"The AK's TPMT_PUBLIC does not parse: {_clause(error)}.") from None
            key: object = self.area.public_key
        elif self.d.ak_public_pem is not None:
            try:
                key = serialization.load_pem_public_key(self.d.ak_public_pem)
            except (ValueError, UnsupportedAlgorithm) as error:
                raise _Fail(f"ak_public_pem is not a PEM public key: {_clause(error)}.") from None
        else:
            raise _Skip(_unusable("ak_public"))
        self.key, refusal = certificates.accept_ak_key(key)
        if self.key is None:
            raise _Fail(f"The AK is {refusal}; the verifier refuses it.")
        form = "a PEM key (third-party evidence)" if self.pem else "a TPMT_PUBLIC"
        return f"The AK is {form} of an acceptable RSA or ECC key."

    def _area(self) -> tpm.PublicArea:
        if self.pem:
            raise _Skip(
                "The AK is given as a PEM key, so its TPM attributes and name are unknown: "
                "not hardware attested."
            )
        if self.area is None:
            raise _Skip(f"The AK's TPMT_PUBLIC is unusable (see {AK_PUBLIC}).")
        return self.area

    def ak_attributes(self) -> str:
        attributes = self._area().attributes
        problems = tpm.signing_key_problems(attributes)
        if problems:
            raise _Fail(
                f"The AK (attributes 0x{attributes:08x}) is not a restricted signing key of "
                f"this TPM: {'; '.join(problems)}."
            )
        return "The AK is a restricted signing key created in and bound to its TPM."

    def signer(self) -> str:
        area, quote, hierarchy = self._area(), self._quote(), self.d.ak_hierarchy
        if hierarchy is None:
            raise _Skip(_unusable("ak_hierarchy"))
        if area.name_alg not in (tpm.ALG_SHA256, tpm.ALG_SHA384, tpm.ALG_SHA512):
            raise _Fail(f"The AK's nameAlg 0x{area.name_alg:04x} is too weak to name it.")
        handle = tpm.HIERARCHY_HANDLES[hierarchy]
        expected = tpm.qualified_name(area.name_alg, handle, area.name)
        if quote.qualified_signer != expected:
            raise _Fail(
                f"The quote's qualifiedSigner {_prefix(quote.qualified_signer)} is not the AK "
                f"as a primary key of the {hierarchy} hierarchy ({_prefix(expected)})."
            )
        return f"The quote names the AK, a primary key of the {hierarchy} hierarchy, as signer."

    def signature(self) -> str:
        attest, blob, key = self.d.attest, self.d.signature, self.key
        if attest is None or blob is None:
            raise _Skip(_unusable("attest or signature"))
        if key is None:
            raise _Skip(f"The AK key is unusable (see {AK_PUBLIC}).")
        try:
            sig = tpm.parse_signature(blob)
        except tpm.TpmFormatError as error:
            raise _Fail(f"The signature does not parse: {_clause(error)}.") from None
        scheme = _SCHEME_NAMES[sig.scheme]
        if sig.hash_alg == tpm.ALG_SHA1:
            raise _Fail(f"The {scheme} signature uses SHA-1, which is refused.")
        algorithm = _SIGNATURE_HASHES.get(sig.hash_alg)
        if algorithm is None:
            raise _Fail(f"The signature hash 0x{sig.hash_alg:04x} is not SHA-256 or SHA-384.")
        if isinstance(key, rsa.RSAPublicKey) != (sig.scheme != tpm.ALG_ECDSA):
            raise _Fail(f"A {scheme} signature cannot come from this AK's type of key.")
        own = (self.area.scheme, self.area.scheme_hash) if self.area else (tpm.ALG_NULL, None)
        if own[0] != tpm.ALG_NULL and own != (sig.scheme, sig.hash_alg):
            raise _Fail(
                f"The signature is {scheme}/{algorithm.name}, not the AK's own scheme "
                f"(0x{own[0]:04x}, hash 0x{own[1] or 0:04x})."
            )
        if not certificates.signature_verifies(key, sig, algorithm, attest):
            raise _Fail("The signature does not verify over the attest with the AK's key.")
        return f"The AK's {scheme}/{algorithm.name} signature over the attest verifies."

    def pcr_digest(self) -> str:
        quote, pcrs = self._quote(), self.d.pcrs
        if pcrs is None:
            raise _Skip(_unusable("pcrs"))
        quoted = {(bank, i) for bank, indices in quote.pcr_selection for i in indices}
        reported = {(bank, i) for bank, values in pcrs.items() for i in values}
        if missing := sorted(quoted - reported):
            raise _Fail(f"The reported values lack {_pcr_list(missing)}, which the quote selects.")
        if extra := sorted(reported - quoted):
            raise _Fail(f"The evidence reports {_pcr_list(extra)}, which is not quoted.")
        hash_name = _COMPOSITE_HASHES.get(len(quote.pcr_digest))
        if hash_name is None:
            raise _Fail(f"The pcrDigest is {len(quote.pcr_digest)} bytes, not SHA-256 or SHA-384.")
        values = [pcrs[bank][i] for bank, indices in quote.pcr_selection for i in indices]
        actual = pcr.composite(hash_name, values)
        if actual != quote.pcr_digest:
            raise _Fail(
                f"The reported PCR values hash to {actual.hex()}, not the quoted pcrDigest "
                f"{quote.pcr_digest.hex()}."
            )
        return f"The reported values of {_pcr_list(sorted(quoted))} hash to the pcrDigest."

    def replay(self) -> str:
        quote, log, pcrs = self._quote(), self.d.event_log, self.d.pcrs
        if log is None or pcrs is None:
            raise _Skip(_unusable("event_log or pcrs"))
        if not log:
            raise _Fail("The event log is empty: the gateway's extends are missing.")
        quoted = {(bank, i) for bank, indices in quote.pcr_selection for i in indices}
        logged: dict[tuple[str, int], list[bytes]] = {}
        for n, event in enumerate(log):
            if (event.bank, event.pcr) not in quoted:
                raise _Fail(f"Event {n} extends {event.bank}:{event.pcr}, which is not quoted.")
            logged.setdefault((event.bank, event.pcr), []).append(event.digest)
        for (bank, index), digests in logged.items():
            reported, replayed = pcrs.get(bank, {}).get(index), pcr.replay(bank, digests)
            if reported != replayed:
                shown = "no value" if reported is None else reported.hex()
                raise _Fail(
                    f"Replaying the {len(digests)} event(s) of {bank} PCR {index} from reset "
                    f"gives {replayed.hex()}, but the evidence reports {shown}."
                )
        return f"The event log reproduces {_pcr_list(sorted(logged))} from reset."

    def policy(self) -> str:
        expected, log = self.trust.policy_hash, self.d.event_log
        if expected is None:
            raise _Skip("No policy hash was given to compare the event log with.")
        if log is None:
            raise _Skip(_unusable("event_log"))
        match = _POLICY_HASH.fullmatch(expected)
        if match is None:
            raise _Fail(f"The claim's policy hash {expected!r} is not sha256:<64 hex>.")
        # The policy events are the bundles the gateway ran since it reset its PCR, in
        # order (its first, then one per bundle it took while serving); the replay check
        # ties them to the quoted value. A session's bundle is one of them: the last when
        # its evidence was collected before any later bundle was taken, an earlier one
        # when the gateway took another while the session went on under its own.
        events = [e for e in log if e.type == POLICY_EVENT]
        if not events:
            raise _Fail(f"The event log has 0 {POLICY_EVENT} events, not one or more.")
        first = events[0]
        for n, event in enumerate(events):
            if (event.bank, event.pcr) != (first.bank, first.pcr):
                raise _Fail(
                    f"{POLICY_EVENT} event {n} extends {event.bank} PCR {event.pcr}, not "
                    f"{first.bank} PCR {first.pcr} as the first does."
                )
            named = _POLICY_HASH.fullmatch(event.data)
            if named is None or event.digest != bytes.fromhex(named.group(1)):
                raise _Fail(
                    f"{POLICY_EVENT} event {n} extends {event.digest.hex()}, "
                    f"not the bundle it names ({event.data!r})."
                )
        positions = [n for n, event in enumerate(events) if event.data == expected]
        if not positions:
            logged = ", ".join(repr(event.data) for event in events)
            raise _Fail(
                f"The logged policy bundles ({logged}) do not include the claim's {expected}."
            )
        where = f"{first.bank} PCR {first.pcr}"
        if len(events) == 1:
            return f"The log measures the claim's policy bundle into {where}."
        return (
            f"The log measures the claim's policy bundle into {where} as bundle "
            f"{positions[-1] + 1} of the {len(events)} the gateway ran since the PCR's reset."
        )

    def ak_certificate(self) -> str:
        blobs, tie = self.d.ak_certificates, self.d.ak_tie
        if blobs is None or tie is None:
            raise _Skip(_unusable("ak_certificates or ak_tie"))
        return _outcome(certificates.judge_ak(blobs, tie, self.key, self.trust))

    def ek_certificate(self) -> str:
        if self.d.ek_certificates is None:
            raise _Skip(_unusable("ek_certificates"))
        return _outcome(certificates.judge_ek(self.d.ek_certificates, self.trust))

    def measurement(self) -> str | None:
        digest = self.attest.pcr_digest if self.attest is not None else b""
        hash_name = _COMPOSITE_HASHES.get(len(digest))
        return None if hash_name is None else pcr.measurement_string(hash_name, digest)


def _outcome(outcome: tuple[CheckStatus, str]) -> str:
    status, reason = outcome
    if status is CheckStatus.FAIL:
        raise _Fail(reason)
    if status is CheckStatus.SKIP:
        raise _Skip(reason)
    return reason


def _pcr_list(pcrs: list[tuple[str, int]]) -> str:
    banks: dict[str, list[str]] = {}
    for bank, index in pcrs:
        banks.setdefault(bank, []).append(str(index))
    return " ".join(f"{bank}:{','.join(indices)}" for bank, indices in banks.items()) or "none"


class TpmVerifier(Verifier):
    """Judges `tpm2-quote-v1` evidence offline (stdlib and `cryptography` only)."""

    def verify(self, evidence: Mapping[str, Any], trust: TrustInputs) -> EvidenceVerdict:
        run = _Run(evidence, trust)
        return hardware_verdict(run.checks(), HARDWARE_CHECKS, run.measurement())
