"""Complete synthetic HCL sets, as an Azure paravisor and the host would give them, over an
attestation key, user data and vm-configuration of the test's choosing:

- SEV-SNP: an HCL report whose SNP report (REPORT_DATA = SHA-256 of the runtime data, then
  zeros) is signed by a test VCEK, with its ASK and ARK (`cmcp_sev.synthetic.AmdPki`);
- TDX: an HCL report whose TDREPORT states that REPORTDATA (with a zero MAC: no CPU made
  it), and the DCAP quote of that TDREPORT's body under a test Intel-like root
  (`cmcp_tdx.synthetic.IntelPki`), as Azure's IMDS makes it;

and the vTPM AK's quote of SHA-256 PCRs 0..23 over a binding (`ak_quote`), as the raw
TPM structures (TPMS_ATTEST, TPMT_SIGNATURE) the evidence carries.

cmcp-sev's and cmcp-tdx's verifiers pass the hardware report of such a set with the test
root given as a trust root and the runtime data's SHA-256 standing for the binding.
Nothing here is used by the collector or the verifiers.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Final

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import Encoding

from cmcp_azure import hcl, runtime_data, tdreport
from cmcp_azure.hcl import ReportType
from cmcp_sev.structures import Product
from cmcp_sev.synthetic import AmdPki, ReportFields, report_body, sign_report
from cmcp_tdx.synthetic import IntelPki, td_body
from cmcp_tpm import pcr
from cmcp_tpm import structures as tpm
from cmcp_tpm.synthetic import sign_quote

# The launch digest and policy of a paravisor the test VCEK's reports state: VMPL 0 (the
# paravisor's), debug off, SMT allowed.
MEASUREMENT: Final = hashlib.sha384(b"test paravisor").digest()
SNP_FIELDS: Final = ReportFields(version=2, policy=0x3001F, measurement=MEASUREMENT)
SNP_HCL_VERSION: Final = 1  # the versions of the genuine sets
TDX_HCL_VERSION: Final = 2
QUOTED_PCRS: Final = tuple(range(24))


def report_data_for(runtime: bytes) -> bytes:
    """The REPORT_DATA a paravisor gives the hardware for this runtime data."""
    return hashlib.sha256(runtime).digest() + bytes(32)


@dataclass
class SnpAuthority:
    """A test AMD PKI and the VCEK of one chip at one TCB, which signs its SNP reports."""

    pki: AmdPki
    chip_key: ec.EllipticCurvePrivateKey
    fields: ReportFields  # every field of its reports but REPORT_DATA
    vcek: x509.Certificate

    @classmethod
    def create(
        cls, product: Product = Product.MILAN, fields: ReportFields = SNP_FIELDS
    ) -> SnpAuthority:
        pki = AmdPki.create(product)
        chip_key = ec.generate_private_key(ec.SECP384R1())
        return cls(pki, chip_key, fields, pki.vcek(chip_key, fields))

    def report(self, report_data: bytes) -> bytes:
        """A signed 1184-byte SNP report of this chip carrying `report_data`."""
        return sign_report(
            report_body(replace(self.fields, report_data=report_data)), self.chip_key
        )

    @property
    def vcek_der(self) -> bytes:
        return self.vcek.public_bytes(Encoding.DER)

    @property
    def chain_der(self) -> tuple[bytes, bytes]:
        """ASK, then ARK, as THIM's `certificateChain` and the evidence's `cert_chain`."""
        return (self.pki.ask.public_bytes(Encoding.DER), self.pki.ark.public_bytes(Encoding.DER))

    def write(self, folder: Path) -> SnpFiles:
        """PEM files of the VCEK, its chain (ASK then ARK) and the root to pin."""
        files = SnpFiles(folder / "vcek.pem", folder / "cert_chain.pem", folder / "ark.pem")
        files.vcek.write_bytes(self.vcek.public_bytes(Encoding.PEM))
        files.chain.write_bytes(
            self.pki.ask.public_bytes(Encoding.PEM) + self.pki.ark.public_bytes(Encoding.PEM)
        )
        files.root.write_bytes(self.pki.root_pem())
        return files


@dataclass(frozen=True)
class SnpFiles:
    vcek: Path
    chain: Path
    root: Path


def snp_hcl_report(
    authority: SnpAuthority, runtime: bytes, *, size: int = 0, version: int = SNP_HCL_VERSION
) -> bytes:
    """An HCL report carrying `runtime` and an SNP report the VCEK signed over its hash."""
    hardware = authority.report(report_data_for(runtime))
    return hcl.build(ReportType.SNP, hardware, runtime, version=version, size=size)


def tdx_hcl_report(
    runtime: bytes, *, size: int = 0, version: int = TDX_HCL_VERSION, **body: bytes
) -> bytes:
    """An HCL report carrying `runtime` and a TDREPORT whose REPORTDATA is its hash; `body`
    replaces TD body fields by name (`mrtd=...`)."""
    report = tdreport.build(td_body(report_data_for(runtime), **body))
    return hcl.build(ReportType.TDX, report, runtime, version=version, size=size)


def td_quote(pki: IntelPki, td_report: bytes) -> bytes:
    """The DCAP quote Azure's host makes of a TDREPORT: its body, signed under `pki`."""
    return pki.quote(tdreport.body_of(td_report))


@dataclass(frozen=True)
class SnpSet:
    hcl_report: bytes
    runtime_data: bytes
    vcek: bytes  # DER
    chain: tuple[bytes, bytes]  # DER: ASK, ARK
    root_pem: bytes  # the test ARK, to pin with --trust-root
    authority: SnpAuthority


@dataclass(frozen=True)
class TdxSet:
    hcl_report: bytes
    runtime_data: bytes
    td_quote: bytes
    root_pem: bytes  # the test Intel-like root, to pin with --trust-root
    pki: IntelPki


def snp_set(
    ak_public: rsa.RSAPublicKey,
    *,
    user_data: bytes = b"",
    vm_configuration: Mapping[str, Any] | None = None,
    authority: SnpAuthority | None = None,
    size: int = 0,
) -> SnpSet:
    """A complete SEV-SNP set over `ak_public` (the vTPM's AK, HCLAkPub)."""
    signer = authority or SnpAuthority.create()
    runtime = runtime_data.build(ak_public, vm_configuration=vm_configuration, user_data=user_data)
    report = snp_hcl_report(signer, runtime, size=size)
    return SnpSet(report, runtime, signer.vcek_der, signer.chain_der, signer.pki.root_pem(), signer)


def tdx_set(
    ak_public: rsa.RSAPublicKey,
    *,
    user_data: bytes = b"",
    vm_configuration: Mapping[str, Any] | None = None,
    pki: IntelPki | None = None,
    size: int = 0,
) -> TdxSet:
    """A complete TDX set over `ak_public`: the HCL report and the TD quote of its TDREPORT."""
    intel = pki or IntelPki.create()
    runtime = runtime_data.build(ak_public, vm_configuration=vm_configuration, user_data=user_data)
    report = tdx_hcl_report(runtime, size=size)
    quote = td_quote(intel, hcl.parse(report).hardware_report)
    return TdxSet(report, runtime, quote, intel.root_pem(), intel)


@dataclass(frozen=True)
class AkQuote:
    attest: bytes  # TPMS_ATTEST
    signature: bytes  # TPMT_SIGNATURE: RSASSA-PKCS1-v1_5, SHA-256
    pcrs: tuple[bytes, ...]  # the SHA-256 PCRs 0..23 quoted


def ak_quote(ak: rsa.RSAPrivateKey, binding: bytes, pcrs: Sequence[bytes] | None = None) -> AkQuote:
    """The quote the vTPM's AK (a restricted RSASSA signing key under the owner hierarchy)
    makes of SHA-256 PCRs 0..23 with `binding` as qualifying data."""
    values = (
        tuple(pcrs)
        if pcrs is not None
        else tuple(hashlib.sha256(b"boot %d" % index).digest() for index in QUOTED_PCRS)
    )
    if len(values) != len(QUOTED_PCRS):
        raise ValueError(f"give {len(QUOTED_PCRS)} PCR values, not {len(values)}")
    public = tpm.build_public(ak.public_key(), scheme=tpm.ALG_RSASSA)
    name = tpm.object_name(tpm.ALG_SHA256, public)
    signer = tpm.qualified_name(tpm.ALG_SHA256, tpm.HIERARCHY_HANDLES["owner"], name)
    digest = pcr.composite("sha256", values)
    attest = tpm.build_attest(signer, binding, (("sha256", QUOTED_PCRS),), digest)
    signature = sign_quote(ak, tpm.ALG_RSASSA, tpm.ALG_SHA256, attest)
    return AkQuote(attest, signature, values)
