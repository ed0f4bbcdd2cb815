"""Offline verification of `nvidia-gpu-cc-v1` evidence: an NVIDIA GPU's signed SPDM
measurements, its device certificate chain, and the RIMs and OCSP responses the operator
stapled.

From the evidence and the auditor's trust inputs alone, the verifier proves: the report is
an SPDM 1.1 measurement exchange (`gpu.format`); the device key signed it (`gpu.signature`);
that key's chain runs to the pinned NVIDIA Device Identity CA, every certificate valid at the
claim's time (`gpu.chain`); the requester nonce is the session binding (`gpu.nonce`); which
chip family the chain names (`gpu.architecture`); the firmware digest the report states is
the one the device certificate was made for (`gpu.fwid`); what NVML said about the driver and
VBIOS is what the GPU signed (`gpu.versions`) and meets the auditor's minimums
(`gpu.versions.minimum`); the stapled driver and VBIOS RIMs are NVIDIA's, signed at the
claim's time, for these versions (`gpu.rim.driver`, `gpu.rim.vbios`); every active RIM index
i matches measurement block i+1 (`gpu.measurements`); the RIM pair is one the auditor pinned
(`gpu.rims.pinned`, when the platform policy pins any); no certificate involved was revoked,
by stapled OCSP (`gpu.revocation`); and the GPU is in CC mode, not DevTools (`gpu.debug`).

Each step is a named `Check`; one whose input an earlier failure made meaningless is skipped
naming that check. Malformed evidence is a failed check, never an exception.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from cmcp_cli.attestation.api import Check, CheckStatus, EvidenceVerdict, TrustInputs, Verifier
from cmcp_cli.attestation.toolkit import CheckFailed as _Fail
from cmcp_cli.attestation.toolkit import CheckSkipped as _Skip
from cmcp_cli.attestation.toolkit import NamedCheck, hardware_verdict, require_binding, run_checks
from cmcp_gpucc import certificates as chain
from cmcp_gpucc import opaque, policy, roots, spdm
from cmcp_gpucc.appraisal import Appraiser
from cmcp_gpucc.evidence import decode
from cmcp_gpucc.x509_rules import describe

FORMAT: Final = "gpu.format"
SIGNATURE: Final = "gpu.signature"
CHAIN: Final = "gpu.chain"
NONCE: Final = "gpu.nonce"
ARCHITECTURE: Final = "gpu.architecture"
FWID: Final = "gpu.fwid"
VERSIONS: Final = "gpu.versions"
MINIMUM: Final = "gpu.versions.minimum"
RIM_DRIVER: Final = "gpu.rim.driver"
RIM_VBIOS: Final = "gpu.rim.vbios"
MEASUREMENTS: Final = "gpu.measurements"
PINNED: Final = "gpu.rims.pinned"
REVOCATION: Final = "gpu.revocation"
DEBUG: Final = "gpu.debug"

# hardware_attested needs each of these to pass (REVOCATION may skip when the auditor's
# policy allows it) and no check to fail. FWID, MINIMUM and PINNED skip when there is
# nothing to compare; when they run they must not fail.
HARDWARE_CHECKS: Final = (
    FORMAT, SIGNATURE, CHAIN, NONCE, ARCHITECTURE, VERSIONS, RIM_DRIVER, RIM_VBIOS,
    MEASUREMENTS, REVOCATION, DEBUG,
)  # fmt: skip


# The checks that read what the report states: they count only once it is authenticated.
READS_REPORT: Final = frozenset({NONCE, VERSIONS, MINIMUM, RIM_DRIVER, RIM_VBIOS, MEASUREMENTS})


def sentence(text: object) -> str:
    """A reason as a sentence: capitalised, ending with a full stop."""
    words = str(text).strip().rstrip(".")
    return words[:1].upper() + words[1:] + "."


class _Run:
    """One verification: decoded evidence, parsed structures, and the checks in order. Each
    check returns its reason for passing, or raises `_Skip` / `_Fail` with the reason."""

    def __init__(self, evidence: Any, trust: TrustInputs, wanted: policy.Requirements) -> None:
        self.trust, self.wanted = trust, wanted
        self.d = decode(evidence)
        self.problems = list(self.d.problems)
        self.exchange: spdm.Exchange | None = None
        self.opaque: opaque.OpaqueData | None = None
        if self.d.report is not None:
            try:
                self.exchange = spdm.parse(self.d.report)
                self.opaque = opaque.parse(self.exchange.opaque)
            except (spdm.SpdmError, opaque.OpaqueError) as error:
                self.problems.append(f"the report is refused: {str(error).rstrip('.')}")
        self.certs: list[x509.Certificate] | None = None
        if self.d.certificates is not None:
            try:
                self.certs = [x509.load_der_x509_certificate(b) for b in self.d.certificates]
            except ValueError as error:
                self.problems.append(f"a certificate is not DER X.509 ({error})")
        self.signed = False
        self.chain: chain.DeviceChain | None = None
        self.chip: chain.Chip | None = None
        self.trust_set: roots.TrustSet | None = None
        self.appraiser = Appraiser(self)

    def checks(self) -> tuple[Check, ...]:
        a = self.appraiser
        steps: tuple[NamedCheck, ...] = (
            (FORMAT, self.format), (SIGNATURE, self.signature), (CHAIN, self.chain_check),
            (NONCE, self.nonce), (ARCHITECTURE, self.architecture), (FWID, self.fwid),
            (VERSIONS, self.versions), (MINIMUM, self.minimum),
            (RIM_DRIVER, a.rim_driver), (RIM_VBIOS, a.rim_vbios),
            (MEASUREMENTS, a.measurements), (PINNED, a.pinned), (REVOCATION, a.revocation),
            (DEBUG, self.debug),
        )  # fmt: skip
        return tuple(self._unauthenticated(check) for check in run_checks(steps))

    def _unauthenticated(self, check: Check) -> Check:
        """A check of what the report states proves nothing when its signature did not
        verify: a pass becomes a skip saying so (a failure still shows what is wrong)."""
        if self.signed or check.name not in READS_REPORT or check.status is not CheckStatus.PASS:
            return check
        return Check.skipped(
            check.name,
            f"{check.reason.rstrip('.')}, but the report is not authenticated (see "
            f"{SIGNATURE}), so that proves nothing.",
        )

    def anchors(self) -> roots.TrustSet:
        """The roots the platform policy's `trust_roots` names, else those of the trust
        inputs (a direct caller's `--trust-root`), else the vendored NVIDIA roots."""
        if self.trust_set is None:
            try:
                if self.wanted.trust_roots is not None:
                    given = roots.trust_set(self.wanted.trust_roots, f"{policy.TABLE} trust_roots")
                else:
                    given = roots.trust_set(self.trust.trust_roots)
                self.trust_set = given
            except roots.RootError as error:
                raise _Fail(f"The trust roots are unusable: {str(error).rstrip('.')}.") from None
        return self.trust_set

    def report(self) -> tuple[spdm.Exchange, opaque.OpaqueData]:
        if self.exchange is None or self.opaque is None:
            raise _Skip(f"The report is unusable (see {FORMAT}).")
        return self.exchange, self.opaque

    def format(self) -> str:
        if self.problems:
            raise _Fail("The evidence is malformed: " + "; ".join(self.problems) + ".")
        exchange, data = self.report()
        return (
            f"An SPDM 1.1 measurement report: {len(exchange.blocks)} SHA-384 blocks, driver "
            f"{data.driver_version}, VBIOS {data.vbios_version}, {data.describe_mode()}; "
            f"{len(self.certs or [])} DER certificates."
        )

    def signature(self) -> str:
        # Judged on the raw bytes, so a change anywhere in the signed region fails here even
        # when it also makes the report unparsable.
        if self.d.report is None:
            raise _Skip(f"The evidence has no usable report (see {FORMAT}).")
        if not self.certs:
            raise _Skip(f"The evidence has no usable device certificate (see {FORMAT}).")
        try:
            signed, signature = spdm.split_signature(self.d.report)
            key = chain.leaf_key(self.certs[0])
        except (spdm.SpdmError, chain.ChainError) as error:
            raise _Fail(sentence(error)) from None
        half = spdm.SIGNATURE_SIZE // 2
        r = int.from_bytes(signature[:half], "big")
        s = int.from_bytes(signature[half:], "big")
        try:
            key.verify(encode_dss_signature(r, s), signed, ec.ECDSA(hashes.SHA384()))
        except (InvalidSignature, ValueError):
            raise _Fail(
                f"The report's ECDSA P-384 signature over its first {len(signed)} bytes (request "
                f"and response without the signature) does not verify with the key of "
                f"{describe(self.certs[0])}: the report was altered or signed by another "
                "GPU."
            ) from None
        self.signed = True
        return (
            f"{describe(self.certs[0])} signed the request and response "
            f"({len(signed)} bytes, ECDSA P-384 with SHA-384)."
        )

    def chain_check(self) -> str:
        if not self.certs:
            raise _Skip(f"The evidence has no usable device chain (see {FORMAT}).")
        trust = self.anchors()
        try:
            self.chain = chain.verify_chain(self.certs, trust, self.trust.at)
        except chain.ChainError as error:
            raise _Fail(sentence(error)) from None
        return (
            f"{describe(self.certs[0])} chains through {len(self.certs) - 2} "
            f"intermediates to {self.chain.anchor.describe()}; every certificate is valid at "
            f"{self.trust.at.isoformat()}."
        )

    def nonce(self) -> str:
        exchange, _ = self.report()
        binding = self.trust.binding
        if len(binding) != spdm.NONCE_SIZE:
            raise _Fail(f"The binding is {len(binding)} bytes, not a 32-byte SHA-256.")
        return require_binding(
            exchange.requester_nonce,
            binding,
            what="The SPDM requester nonce",
            made="the report was made",
        )

    def architecture(self) -> str:
        if self.chain is None:
            raise _Skip(f"The device chain is not verified (see {CHAIN}).")
        try:
            self.chip = chain.chip_of(self.chain.certs)
        except chain.ChainError as error:
            raise _Fail(sentence(error)) from None
        return (
            f"{self.chip.describe()}: the identity CA the root issued, "
            f"{describe(self.chain.certs[3])}, and every certificate below it name the "
            "chip (the model, such as H100 or H200, is not in the signed evidence)."
        )

    def fwid(self) -> str:
        _, data = self.report()
        if not self.signed or self.certs is None:
            raise _Skip(f"The report is not authenticated (see {SIGNATURE}).")
        if data.fwid is None:
            raise _Skip(
                "The report states no FWID (opaque field 20; older drivers omit it), so it is "
                "not compared with the device certificate's."
            )
        try:
            stated = chain.leaf_fwid(self.certs[0])
        except chain.ChainError as error:
            raise _Fail(sentence(error)) from None
        if stated is None:
            raise _Fail("The report states an FWID but the device certificate states none.")
        if stated != data.fwid:
            raise _Fail(
                f"The report's FWID {data.fwid.hex()[:16]}… is not the {stated.hex()[:16]}… "
                "the device certificate was issued for: the firmware that signed is not the "
                "firmware the key was made for."
            )
        return "The report's FWID is the firmware digest the device certificate states."

    def versions(self) -> str:
        _, data = self.report()
        nvml = self.d.nvml
        if nvml is None:
            raise _Skip(f"What NVML said is unusable (see {FORMAT}).")
        differ = [
            f"NVML's {what} {said!r} is not the signed {signed!r}"
            for what, said, signed in (
                ("driver version", nvml.driver_version, data.driver_version),
                ("VBIOS version", nvml.vbios_version, data.vbios_version),
            )
            if said != signed
        ]
        if differ:
            raise _Fail("; ".join(differ) + ".")
        return (
            f"NVML's driver {nvml.driver_version} and VBIOS {nvml.vbios_version} are the "
            "versions the GPU signed."
        )

    def minimum(self) -> str:
        _, data = self.report()
        wanted = self.wanted
        if wanted.minimum_driver_version is None and wanted.minimum_vbios_version is None:
            raise _Skip(
                "No minimum_driver_version or minimum_vbios_version in the auditor's platform "
                f"policy ({policy.TABLE} of --platform-policy)."
            )
        met = []
        for what, minimum, version, key in (
            ("driver", wanted.minimum_driver_version, data.driver_version, policy.driver_key),
            ("VBIOS", wanted.minimum_vbios_version, data.vbios_version, policy.vbios_key),
        ):
            if minimum is None:
                continue
            parsed, floor = key(version), key(minimum)
            if parsed is None or floor is None:
                raise _Fail(f"The signed {what} version {version!r} cannot be compared.")
            if not policy.at_least(parsed, floor):
                raise _Fail(
                    f"The signed {what} version {version} is older than the platform "
                    f"policy's minimum {minimum}."
                )
            met.append(f"{what} {version} >= {minimum}")
        return f"The signed versions meet the platform policy: {', '.join(met)}."

    def debug(self) -> str:
        nvml = self.d.nvml
        if nvml is None:
            raise _Skip(f"What NVML said is unusable (see {FORMAT}).")
        if nvml.cc_mode == "on":
            return "NVML reports confidential computing on (not DevTools)."
        if nvml.cc_mode == "off":
            raise _Fail(
                "NVML reports confidential computing off: the GPU does not protect its memory "
                "from the host."
            )
        if self.wanted.allow_debug or self.trust.allow_debug:
            return (
                "NVML reports CC DevTools mode (profiling and debugging tools can read GPU "
                "state); accepted because the auditor allows debug."
            )
        raise _Fail(
            "NVML reports CC DevTools mode: profiling and debugging tools can read GPU state, "
            f"so it is not a production confidential GPU (the auditor may allow it with "
            f"{policy.TABLE} allow_debug = true)."
        )


class GpuVerifier(Verifier):
    """Judges `nvidia-gpu-cc-v1` evidence offline (`cryptography` and `signxml` only)."""

    def verify(self, evidence: Mapping[str, Any], trust: TrustInputs) -> EvidenceVerdict:
        # ProviderError if unusable
        wanted = policy.Requirements.parse(trust.platform_policy, trust.platform_policy_dir)
        run = _Run(evidence, trust, wanted)
        checks = run.checks()
        may_skip = (REVOCATION,) if wanted.allow_unchecked_revocation else ()
        return hardware_verdict(
            checks, HARDWARE_CHECKS, run.appraiser.measurement(), may_skip=may_skip
        )
