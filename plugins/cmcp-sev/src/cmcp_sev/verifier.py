"""Offline verification of `sev-snp-report-v1` evidence: an AMD SEV-SNP attestation report
with the VCEK (or VLEK) that signed it.

The verifier proves, from the evidence and the auditor's trust inputs alone: the report is
well formed; the endorsement key certificate chains VCEK -> ASK -> ARK (VLEK -> ASVK ->
ARK) to a pinned AMD root for the report's product, every certificate valid at the claim's
time; that key signed the report; the key was issued for the report's TCB and chip; the
report carries the session binding; the guest policy forbids debugging (unless the auditor
allows it); and, when the auditor's platform policy sets them, the platform's TCB and
firmware and the guest's policy meet its minimums (`cmcp_sev.appraisal`). The launch
measurement is compared with the auditor's pins by `cmcp verify` itself.

Each step is a named `Check`; a step whose input an earlier failure made meaningless is
skipped with the reason. Malformed evidence is a failed check, never an exception.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from cmcp_cli.attestation.api import Check, EvidenceVerdict, TrustInputs, Verifier
from cmcp_cli.attestation.toolkit import CheckFailed as _Fail
from cmcp_cli.attestation.toolkit import CheckSkipped as _Skip
from cmcp_cli.attestation.toolkit import (
    ExpectedReportData,
    hardware_verdict,
    require_report_data,
    run_checks,
    validity_problem,
)
from cmcp_sev import appraisal, kds, revocation, roots
from cmcp_sev import certificates as certs
from cmcp_sev import structures as snp
from cmcp_sev.evidence import decode

SHAPE: Final = "sev.evidence.shape"
VERSION: Final = "sev.report.version"
PRODUCT: Final = "sev.product"
CHAIN: Final = "sev.vcek.chain"
PINNED: Final = "sev.ark.pinned"
REVOCATION: Final = "sev.ask.revocation"  # skipped without an AMD CRL, unless required
SIGNATURE: Final = "sev.report.signature"
TCB: Final = "sev.vcek.tcb"
CHIP_ID: Final = "sev.vcek.chip_id"
REPORT_DATA: Final = "sev.report_data"
DEBUG: Final = "sev.policy.debug"
# The auditor's platform policy; skipped when it sets nothing, so not in HARDWARE_CHECKS.
TCB_MINIMUM: Final = "sev.tcb.minimum"
GUEST_POLICY: Final = "sev.policy.guest"

# Every check, in the order run.
CHECKS: Final = (
    SHAPE, VERSION, PRODUCT, CHAIN, PINNED, REVOCATION, SIGNATURE, TCB, CHIP_ID, REPORT_DATA,
    DEBUG, TCB_MINIMUM, GUEST_POLICY,
)  # fmt: skip
# hardware_attested needs each of these to pass (CHIP_ID may skip for a VLEK), none to fail.
HARDWARE_CHECKS: Final = (
    SHAPE, VERSION, PRODUCT, CHAIN, PINNED, SIGNATURE, TCB, CHIP_ID, REPORT_DATA, DEBUG,
)  # fmt: skip
_SIGNING_KEY_NAMES: Final = {"vcek": snp.SigningKey.VCEK, "vlek": snp.SigningKey.VLEK}


def _clause(error: object) -> str:
    return str(error).rstrip(".")


def _unusable(what: str, check: str) -> str:
    return f"The {what} is unusable (see {check})."


class _Run:
    """One verification: decoded evidence, parsed structures, and the checks in order. Each
    check returns its reason for passing, or raises `_Skip` / `_Fail` with the reason."""

    def __init__(
        self,
        evidence: Any,
        trust: TrustInputs,
        wanted: appraisal.Requirements,
        expected_report_data: ExpectedReportData | None = None,
    ) -> None:
        self.trust, self.wanted = trust, wanted
        self.expected_report_data = expected_report_data
        self.d = decode(evidence)
        self.report: snp.Report | None = None
        self.report_error = ""
        if self.d.report is not None:
            try:
                self.report = snp.parse_report(self.d.report)
            except snp.ReportFormatError as error:
                self.report_error = str(error)
        self.leaf: x509.Certificate | None = None
        self.leaf_error = ""
        if self.d.leaf is not None:
            try:
                self.leaf = roots.load_der(self.d.leaf)
            except ValueError as error:
                self.leaf_error = f"is not a DER X.509 certificate ({_clause(error)})"
        self.supplied: list[x509.Certificate] = []
        self.supplied_error = ""
        for position, blob in enumerate(self.d.cert_chain, 1):
            try:
                self.supplied.append(roots.load_der(blob))
            except ValueError as error:
                self.supplied_error = f"cert_chain[{position - 1}] is not DER X.509 ({error})"
        self.product: snp.Product | None = None
        self.intermediate: x509.Certificate | None = None
        self.ark: x509.Certificate | None = None
        self.chain_ok = False
        self.leaf_name = (self.d.signing_key or "vcek").upper()

    def checks(self) -> tuple[Check, ...]:
        steps = (
            self.shape, self.version, self.product_check, self.chain, self.pinned,
            self.revocation, self.signature, self.tcb, self.chip_id, self.report_data,
            self.debug, self.tcb_minimum, self.guest_policy,
        )  # fmt: skip
        return run_checks(zip(CHECKS, steps, strict=True))

    def _report(self) -> snp.Report:
        if self.report is None:
            raise _Skip(_unusable("report", VERSION))
        return self.report

    def _product(self) -> snp.Product:
        if self.product is None:
            raise _Skip(f"The processor product is unknown (see {PRODUCT}).")
        return self.product

    def shape(self) -> str:
        problems = list(self.d.problems)
        if self.leaf_error:
            problems.append(f"{self.d.signing_key} {self.leaf_error}")
        if self.supplied_error:
            problems.append(self.supplied_error)
        if problems:
            raise _Fail("The evidence is malformed: " + "; ".join(problems) + ".")
        return "Every member is present, of its type, and decodes."

    def version(self) -> str:
        if self.d.report is None:
            raise _Skip(f"The evidence has no usable report (see {SHAPE}).")
        if self.report is None:
            raise _Fail(f"The report is refused: {_clause(self.report_error)}.")
        r = self.report
        return (
            f"An ATTESTATION_REPORT v{r.version} (firmware {r.current_version}, VMPL {r.vmpl}, "
            f"policy 0x{r.policy:x} ABI >= {r.abi[0]}.{r.abi[1]}, "
            f"flags {', '.join(r.policy_flags) or 'none'}), every reserved field zero."
        )

    def product_check(self) -> str:
        report = self._report()
        sources: dict[str, snp.Product] = {}
        if report.cpuid is not None:
            family, model, _ = report.cpuid
            product = report.cpuid_product
            if product is None:
                raise _Fail(
                    f"The report's CPUID family 0x{family:02x} model 0x{model:02x} is not a "
                    "Milan, Genoa or Turin processor, the products whose roots are known."
                )
            sources["the report's CPUID"] = product
        if self.d.product is not None:
            sources["the evidence's product"] = self.d.product
        if self.leaf is not None and (named := certs.product_of(certs.describe_issuer(self.leaf))):
            sources[f"the {self.leaf_name}'s issuer"] = named
        if not sources:
            raise _Fail(
                "Nothing tells the processor product: a v2 report without an endorsement key "
                "certificate or a product member."
            )
        if len(set(sources.values())) > 1:
            said = "; ".join(f"{where} says {p.value}" for where, p in sources.items())
            raise _Fail(f"The evidence disagrees about the processor product: {said}.")
        self.product = next(iter(sources.values()))
        return f"An AMD EPYC {self.product.value} ({', '.join(sources)})."

    def _trust(self) -> roots.TrustSet:
        try:
            return roots.trust_set(self.trust.trust_roots)
        except roots.RootError as error:
            raise _Fail(f"The trust roots are unusable: {_clause(error)}.") from None

    def chain(self) -> str:
        if self.d.leaf is None:
            if self.d.signing_key == "vlek":
                raise _Fail(
                    "No VLEK was supplied: a VLEK-signed report is verifiable only with the "
                    "VLEK certificate the cloud provider installed on the host (extended report)."
                )
            where = kds.vcek_source(self.product, self.report)
            raise _Fail(
                "No VCEK was supplied, so nothing ties the report to AMD: the host returned no "
                f"certificate table. Get the VCEK for this chip and TCB from {where}, and add it "
                "as the evidence's vcek (the verifier never fetches it)."
            )
        if self.leaf is None:
            raise _Skip(_unusable(self.leaf_name, SHAPE))
        label = f"the {self.leaf_name} ({certs.describe(self.leaf)})"
        if (problem := certs.leaf_key_problem(self.leaf, label)) is not None:
            raise _Fail(problem[0].upper() + problem[1:])
        trust = self._trust()
        candidates = tuple(c for c in self.supplied if c.subject != c.issuer) + trust.intermediates
        issuer = certs.find_issuer(self.leaf, candidates)
        if issuer is None:
            issuer_name = self.leaf.issuer.rfc4514_string()
            namesake = next((c for c in candidates if c.subject == self.leaf.issuer), None)
            if namesake is not None:
                problem = certs.signature_problem(self.leaf, namesake, label)
                raise _Fail(f"{problem} It was not issued by any known {issuer_name}.")
            raise _Fail(
                f"No ASK or ASVK named {issuer_name}, supplied or vendored, issued {label}."
            )
        issuer_label = f"the intermediate {certs.describe(issuer)}"
        for problem in (
            certs.ca_problem(issuer, issuer_label),
            validity_problem(self.leaf, label, self.trust.at),
            validity_problem(issuer, issuer_label, self.trust.at),
        ):
            if problem is not None:
                raise _Fail(problem[0].upper() + problem[1:])
        self.intermediate = issuer
        return (
            f"{certs.describe(issuer)} signed the {self.leaf_name} (RSA-PSS SHA-384); both are "
            f"valid at {self.trust.at.isoformat()}."
        )

    def pinned(self) -> str:
        intermediate = self.intermediate
        if intermediate is None:
            raise _Skip(f"The {self.leaf_name} has no verified issuer (see {CHAIN}).")
        trust = self._trust()
        anchors = tuple(a.cert for a in trust.anchors)
        ark = certs.find_issuer(intermediate, anchors)
        if ark is None:
            supplied = certs.find_issuer(intermediate, tuple(self.supplied))
            named = (
                f" It chains to the supplied {certs.describe(supplied)} "
                f"(sha256 {roots.fingerprint(supplied)}), which is not pinned."
                if supplied is not None
                else ""
            )
            raise _Fail(
                f"{certs.describe(intermediate)} was not issued by a pinned root "
                f"({trust.source}: {trust.describe()}).{named}"
            )
        anchor = next(a for a in trust.anchors if a.cert is ark)
        label = f"the pinned root {certs.describe(ark)}"
        for problem in (
            certs.ca_problem(ark, label),
            certs.signature_problem(ark, ark, label),
            validity_problem(ark, label, self.trust.at),
        ):
            if problem is not None:
                raise _Fail(problem[0].upper() + problem[1:])
        product = self._product()
        root_product = anchor.product or certs.product_of(certs.describe(ark))
        if root_product is not None and root_product is not product:
            raise _Fail(
                f"The chain ends at the {root_product.value} root {certs.describe(ark)}, but the "
                f"report is from a {product.value}."
            )
        if (problem := self._supplied_off_path(intermediate, ark)) is not None:
            raise _Fail(problem)
        self.chain_ok, self.ark = True, ark
        return (
            f"{certs.describe(intermediate)} was issued by {anchor.describe()}, valid at the time."
        )

    def _supplied_off_path(
        self, intermediate: x509.Certificate, ark: x509.Certificate
    ) -> str | None:
        # The host's certificates are evidence too: each must be the intermediate or the
        # root the chain went through, so an altered or foreign one is refused, not ignored.
        for position, cert in enumerate(self.supplied):
            if cert not in (intermediate, ark):
                return (
                    f"cert_chain[{position}] ({certs.describe(cert)}, sha256 "
                    f"{roots.fingerprint(cert)}) is neither {certs.describe(intermediate)} "
                    f"that issued the {self.leaf_name} nor the root {certs.describe(ark)} "
                    "the chain ended at: the evidence carries a certificate that was altered "
                    "or belongs to another chain."
                )
        return None

    def revocation(self) -> str:
        intermediate, ark = self.intermediate, self.ark
        if intermediate is None or ark is None:
            raise _Skip(f"The chain did not reach a pinned root (see {PINNED}).")
        try:
            crls = revocation.crls_in(self.trust.collateral)
            verdict = revocation.check_intermediate(crls, ark, intermediate, self.trust.at)
        except revocation.RevocationError as error:
            raise _Fail(str(error)) from None
        if verdict is not None:
            return verdict
        kind = "vlek" if self.d.signing_key == "vlek" else "vcek"
        unchecked = (
            f"No CRL of {certs.describe(ark)} was supplied: whether AMD revoked "
            f"{certs.describe(intermediate)} was not checked. AMD KDS serves it at "
            f"{kds.crl_url(kind, self._product())}; pass it with --collateral"
        )
        if crls:
            issuers = "; ".join(sorted({crl.issuer.rfc4514_string() for crl in crls}))
            unchecked += f" (the CRLs supplied are issued by {issuers})"
        if self.wanted.require_crl:
            raise _Fail(f"{unchecked}, as the auditor's platform policy requires.")
        raise _Skip(f"{unchecked}.")

    def signature(self) -> str:
        # Judged on the raw bytes, not the parsed report, so that any change to the signed
        # region fails here even when it also makes the report malformed.
        raw = self.d.report
        if raw is None or len(raw) != snp.REPORT_SIZE:
            raise _Skip(_unusable("report", VERSION))
        if self.leaf is None:
            raise _Skip(f"No usable {self.leaf_name} to verify with (see {CHAIN}).")
        expected = _SIGNING_KEY_NAMES[self.d.signing_key or "vcek"]
        signing_key = (int.from_bytes(raw[0x048:0x04C], "little") >> 2) & 0b111
        if signing_key != expected:
            raise _Fail(
                f"The report's SIGNING_KEY field is {signing_key} "
                f"({_signing_key_name(signing_key)}), but the evidence gives a {self.leaf_name}."
            )
        key = self.leaf.public_key()
        if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(
            key.curve, ec.SECP384R1
        ):
            raise _Fail(f"The {self.leaf_name} does not hold an ECDSA P-384 key.")
        r = int.from_bytes(raw[0x2A0 : 0x2A0 + snp.ECDSA_COMPONENT_SIZE], "little")
        s = int.from_bytes(raw[0x2E8 : 0x2E8 + snp.ECDSA_COMPONENT_SIZE], "little")
        try:
            key.verify(
                encode_dss_signature(r, s), raw[: snp.SIGNED_SIZE], ec.ECDSA(hashes.SHA384())
            )
        except InvalidSignature:
            raise _Fail(
                f"The report's ECDSA P-384 signature over bytes 0x000..0x29F does not verify "
                f"with the {self.leaf_name}'s key: the report was altered or signed by another "
                "chip."
            ) from None
        return f"The {self.leaf_name} signed the report (ECDSA P-384, SHA-384)."

    def tcb(self) -> str:
        report, product = self._report(), self._product()
        if self.leaf is None:
            raise _Skip(f"No usable {self.leaf_name} (see {CHAIN}).")
        try:
            extensions = certs.amd_extensions(self.leaf)
            reported = report.reported_tcb.decode(product)
        except (certs.ExtensionError, snp.ReportFormatError) as error:
            raise _Fail(f"The TCB cannot be compared: {_clause(error)}.") from None
        wanted = {"bl": reported.bootloader, "tee": reported.tee, "snp": reported.snp}
        wanted["ucode"] = reported.microcode
        if reported.fmc is not None:
            wanted["fmc"] = reported.fmc
        elif "fmc" in extensions.spl:
            raise _Fail(
                f"The {self.leaf_name} carries fmcSPL, a Turin extension, but the report is "
                f"from a {product.value}."
            )
        missing = [name for name in wanted if name not in extensions.spl]
        if missing:
            raise _Fail(f"The {self.leaf_name} lacks the {', '.join(missing)} SPL extension(s).")
        differ = [
            f"{name} {extensions.spl[name]} != {value}"
            for name, value in wanted.items()
            if extensions.spl[name] != value
        ]
        if differ:
            raise _Fail(
                f"The {self.leaf_name} was issued for another TCB than the report's "
                f"REPORTED_TCB ({reported.describe()}): {'; '.join(differ)}."
            )
        current = report.current_tcb.decode(product).describe()
        return (
            f"The {self.leaf_name} was issued for the report's REPORTED_TCB "
            f"{reported.describe()} (CURRENT_TCB {current}); {TCB_MINIMUM} judges minimums."
        )

    def chip_id(self) -> str:
        report, product = self._report(), self._product()
        if self.d.signing_key == "vlek":
            raise _Skip(
                "A VLEK is issued to a cloud provider, not to one chip: the report's chip id "
                "is not bound by it."
            )
        if self.leaf is None:
            raise _Skip(f"No usable VCEK (see {CHAIN}).")
        try:
            hwid = certs.amd_extensions(self.leaf).hwid
        except certs.ExtensionError as error:
            raise _Fail(f"The VCEK's extensions are malformed: {_clause(error)}.") from None
        if hwid is None:
            raise _Fail("The VCEK has no hwID extension (1.3.6.1.4.1.3704.1.4).")
        if not any(report.chip_id):
            raise _Fail(
                "The report's CHIP_ID is all zeros (MASK_CHIP_ID): it cannot be matched with "
                "the VCEK's hwID."
            )
        if product is snp.Product.TURIN:
            if len(hwid) != 8 or hwid != report.chip_id[:8]:
                raise _Fail(
                    f"The Turin VCEK's 8-byte hwID {hwid.hex()} is not the first 8 bytes of the "
                    f"report's CHIP_ID {report.chip_id[:8].hex()}."
                )
            return (
                "The Turin VCEK's 8-byte hwID equals the first 8 bytes of the report's CHIP_ID "
                "(Turin VCEKs name the chip by those 8 bytes, as AMD KDS does)."
            )
        if hwid != report.chip_id:
            raise _Fail(
                f"The VCEK's hwID {hwid[:8].hex()}… is not the report's CHIP_ID "
                f"{report.chip_id[:8].hex()}…: the VCEK belongs to another chip."
            )
        return "The VCEK's hwID is the report's 64-byte CHIP_ID."

    def report_data(self) -> str:
        report, binding = self._report(), self.trust.binding
        if self.expected_report_data is not None:
            return require_report_data(
                report.report_data, self.expected_report_data, field="REPORT_DATA"
            )
        if len(binding) != 32:
            raise _Fail(f"The binding is {len(binding)} bytes, not a 32-byte SHA-256.")
        expected = binding + bytes(32)
        if report.report_data != expected:
            raise _Fail(
                f"REPORT_DATA {report.report_data[:8].hex()}… is not the session binding "
                f"{binding[:8].hex()}… followed by 32 zero bytes: the report was made for "
                "another session or claim."
            )
        return "REPORT_DATA is the session binding followed by 32 zero bytes."

    def debug(self) -> str:
        report = self._report()
        if not report.debug:
            return "The guest policy forbids debugging (DEBUG, bit 19, is clear)."
        if self.trust.allow_debug:
            return (
                "The guest policy allows debugging (DEBUG, bit 19): the host can read and "
                "change guest memory. Accepted because the auditor allows debug guests."
            )
        raise _Fail(
            "The guest policy allows debugging (DEBUG, bit 19, is set): the host can read and "
            "change guest memory, so nothing the guest says can be trusted."
        )

    def tcb_minimum(self) -> str:
        return appraisal.check_platform(self._report(), self._product(), self.wanted)

    def guest_policy(self) -> str:
        return appraisal.check_guest(self._report(), self.wanted)

    def measurement(self) -> str | None:
        return None if self.report is None else "sha384:" + self.report.measurement.hex()


def _signing_key_name(value: int) -> str:
    try:
        return snp.SigningKey(value).name
    except ValueError:
        return "reserved"


class SevVerifier(Verifier):
    """Judges `sev-snp-report-v1` evidence offline (stdlib and `cryptography` only)."""

    def verify(
        self,
        evidence: Mapping[str, Any],
        trust: TrustInputs,
        *,
        report_data: ExpectedReportData | None = None,
        policy_table: str = appraisal.TABLE,
    ) -> EvidenceVerdict:
        """`report_data` and `policy_table`: see `ExpectedReportData` (REPORT_DATA)."""
        wanted = appraisal.Requirements.parse(  # ProviderError if unusable
            trust.platform_policy, name=policy_table
        )
        run = _Run(evidence, trust, wanted, report_data)
        # a VLEK carries no chip id: its check is skipped, and attestation rests on the rest
        may_skip = (CHIP_ID,) if run.d.signing_key == "vlek" else ()
        return hardware_verdict(run.checks(), HARDWARE_CHECKS, run.measurement(), may_skip=may_skip)
