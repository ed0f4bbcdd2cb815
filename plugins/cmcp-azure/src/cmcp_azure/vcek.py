"""The VCEK and its ASK/ARK chain that the SNP collector ships with every report: from the
files the operator saved (`vcek`, `cert_chain`), or from Azure's instance metadata service
once at start. Either way they are checked against the paravisor's report before the
gateway starts, by cmcp-sev's own verifier with the chain's ARK as the only root: the
VCEK must be issued (through the ASK) by that ARK, for the report's chip and TCB, and must
have signed the report. A VCEK that would fail every claim is refused at start, not found
out by the auditor. Whether that ARK is AMD's is the verifier's to judge against its pins.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from cmcp_azure import hcl, links
from cmcp_azure.evidence import encode
from cmcp_azure.settings import AzureSettings
from cmcp_cli.attestation.api import CheckStatus, ProviderError, TrustInputs
from cmcp_cli.attestation.toolkit import self_signed
from cmcp_sev import certificates as certs
from cmcp_sev import kds, roots
from cmcp_sev import structures as snp
from cmcp_sev import verifier as sev

MAX_FILE: Final = 64 << 10
# The cmcp-sev checks a VCEK and chain must pass for the report the collector read, with
# REPORT_DATA judged as the Azure verifier judges it (the runtime data's digest). Debug and
# minimums are the auditor's to judge.
REQUIRED: Final = (
    sev.SHAPE, sev.VERSION, sev.PRODUCT, sev.CHAIN, sev.PINNED, sev.SIGNATURE, sev.TCB,
    sev.CHIP_ID, sev.REPORT_DATA,
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class Certificates:
    vcek: bytes  # DER
    chain: tuple[bytes, ...]  # DER: the ASK, then the ARK
    source: str  # where they came from, for messages


def from_files(settings: AzureSettings) -> Certificates:
    """The operator's VCEK and chain files (PEM or DER)."""
    if settings.vcek is None:
        raise ValueError("the settings name no VCEK file")
    (vcek,) = _load(settings.vcek, settings.name("vcek"), single=True)
    chain = [c for path in settings.cert_chain for c in _load(path, settings.name("cert_chain"))]
    return Certificates(
        vcek=vcek,
        chain=tuple(ordered_chain(chain, settings.name("cert_chain"))),
        source=f"{settings.name('vcek')} and {settings.name('cert_chain')}",
    )


def _load(path: Path, setting: str, *, single: bool = False) -> list[bytes]:
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_FILE + 1)
    except OSError as error:
        raise ProviderError(
            f"{setting}: cannot read {path} ({error.strerror})",
            hint="check the path and that the gateway's user may read it",
        ) from None
    if len(data) > MAX_FILE:
        raise ProviderError(
            f"{setting}: {path} is larger than {MAX_FILE} bytes, more than certificates take",
            hint="give the VCEK, ASK and ARK certificates as AMD KDS serves them (DER or PEM)",
        )
    try:
        certs = (
            roots.load_pem(data) if data.lstrip().startswith(b"-----") else [roots.load_der(data)]
        )
    except ValueError:
        raise ProviderError(
            f"{setting}: {path} is neither PEM certificates nor one DER certificate",
            hint="save the certificate as AMD KDS serves it (DER), or as PEM",
        ) from None
    if single and len(certs) != 1:
        raise ProviderError(
            f"{setting}: {path} holds {len(certs)} certificates, not the VCEK alone",
            hint="put the VCEK in vcek and the ASK and ARK in cert_chain",
        )
    return [cert.public_bytes(Encoding.DER) for cert in certs]


def ordered_chain(chain: list[bytes], what: str) -> list[bytes]:
    """The ASK then the ARK: exactly two certificates, one of them self-signed."""
    certs = [roots.load_der(der) for der in chain]
    rooted = [self_signed(cert) for cert in certs]
    if len(certs) != 2 or rooted.count(True) != 1:
        raise ProviderError(
            f"{what} holds {len(certs)} certificate(s), {rooted.count(True)} of them "
            "self-signed: it must be the ASK and the ARK that issued the VCEK",
            hint="use AMD KDS's cert_chain for the processor (ASK then ARK)",
        )
    return [chain[rooted.index(False)], chain[rooted.index(True)]]


def check(certificates: Certificates, report: hcl.HclReport, *, restart: bool = False) -> None:
    """Refuse (`ProviderError`) unless the VCEK and chain verify the paravisor's report;
    `restart`: they were fetched at start for an earlier report."""
    ark = roots.load_der(certificates.chain[-1])
    evidence = {
        "report": encode(report.hardware_report),
        "signing_key": "vcek",
        "vcek": encode(certificates.vcek),
        "cert_chain": [encode(der) for der in certificates.chain],
    }
    trust = TrustInputs(
        binding=bytes(32),  # unused: REPORT_DATA is judged against the runtime data
        at=datetime.now(UTC),
        trust_roots=(ark.public_bytes(Encoding.PEM),),
        allow_debug=True,
    )
    verdict = sev.SevVerifier().verify(
        evidence, trust, report_data=links.expected_report_data(report)
    )
    checks = {c.name: c for c in verdict.checks}
    failed = [checks[name] for name in REQUIRED if checks[name].status is not CheckStatus.PASS]
    if failed:
        reasons = "; ".join(f"{c.name}: {c.reason}" for c in failed)
        raise ProviderError(
            f"the VCEK and chain from {certificates.source} do not verify the paravisor's "
            f"SNP report: {reasons}",
            hint=(
                "restart the gateway so that it gets the VCEK for the report's chip and TCB again"
                if restart
                else f"give the VCEK for this chip and TCB ({kds_url(report, ark)}) and AMD's "
                "ASK and ARK for the processor as vcek and cert_chain"
            ),
        )


def kds_url(report: hcl.HclReport, ark: x509.Certificate | None = None) -> str:
    """Where AMD KDS serves the VCEK for this report: its chip and TCB, when the report or
    the ARK names the product (a v2 report does not)."""
    try:
        parsed = snp.parse_report(report.hardware_report)
        product = parsed.cpuid_product
        if product is None and ark is not None:
            product = certs.product_of(certs.describe(ark))
        return kds.vcek_url(product, parsed) if product is not None else kds.KDS
    except snp.ReportFormatError:
        return kds.KDS
