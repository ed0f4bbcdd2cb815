"""Sets no genuine vector gives, signed by test roots (`cmcp_azure.testing.synthetic`):
the guest OS's own SNP report over runtime data of its making, and sets whose paravisor
carried a 32-byte session binding as user data, as the collector writes it."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from cmcp_azure.evidence import encode, quote_member
from cmcp_azure.snp_verifier import AzureSnpVerifier
from cmcp_azure.tdx_verifier import AzureTdxVerifier
from cmcp_azure.testing.synthetic import SNP_FIELDS, SnpAuthority, snp_set, tdx_set
from cmcp_cli.attestation.api import CheckStatus, EvidenceVerdict, TrustInputs
from cmcp_cli.testing.verdicts import assert_fails, statuses
from cmcp_tpm import pcr
from cmcp_tpm import structures as tpm

BINDING = bytes(range(32))


@pytest.fixture(scope="module")
def ak() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def quote(ak: rsa.RSAPrivateKey, binding: bytes) -> dict[str, object]:
    """A quote over SHA-256 PCRs 0-23 (all zero) signed by `ak`, as a vTPM makes it."""
    values = {index: bytes(32) for index in range(pcr.PCR_COUNT)}
    selection = (("sha256", tuple(range(pcr.PCR_COUNT))),)
    digest = pcr.composite("sha256", values.values())
    attest = tpm.build_attest(b"\x00\x0b" + bytes(32), binding, selection, digest)
    signature = ak.sign(attest, padding.PKCS1v15(), hashes.SHA256())
    wrapped = tpm.build_signature(tpm.ALG_RSASSA, tpm.ALG_SHA256, signature)
    return quote_member(attest, wrapped, values)


def verify(authority: SnpAuthority, ak: rsa.RSAPrivateKey, user_data: bytes) -> EvidenceVerdict:
    made = snp_set(ak.public_key(), user_data=user_data, authority=authority, size=2600)
    evidence = {
        "hcl_report": encode(made.hcl_report),
        "vcek": encode(made.vcek),
        "cert_chain": [encode(cert) for cert in made.chain],
        "tpm_quote": quote(ak, BINDING),
    }
    trust = TrustInputs(
        binding=BINDING, at=datetime.now(UTC), trust_roots=(authority.pki.root_pem(),)
    )
    return AzureSnpVerifier().verify(evidence, trust)


def test_the_binding_as_user_data_passes_with_the_test_root(ak: rsa.RSAPrivateKey) -> None:
    verdict = verify(SnpAuthority.create(), ak, BINDING + bytes(32))
    assert verdict.hardware_attested and not verdict.failed, verdict.checks
    assert statuses(verdict)["azure.user_data"] is CheckStatus.PASS
    assert statuses(verdict)["azure.snp.vmpl"] is CheckStatus.PASS


def test_a_report_the_guest_os_asked_for_is_not_the_paravisors(ak: rsa.RSAPrivateKey) -> None:
    # Every other link holds: the chip signed it, over runtime data carrying the
    # attacker's key, which signed the quote. Only the VMPL tells it apart.
    guest = SnpAuthority.create(fields=dataclasses.replace(SNP_FIELDS, vmpl=2))
    verdict = verify(guest, ak, BINDING + bytes(32))
    assert_fails(verdict, "azure.snp.vmpl", "VMPL 2, not 0")
    failed = sorted(
        name for name, status in statuses(verdict).items() if status is CheckStatus.FAIL
    )
    assert failed == ["azure.snp.vmpl"]


def test_a_tdx_set_with_the_binding_as_user_data_passes_with_the_test_root(
    ak: rsa.RSAPrivateKey,
) -> None:
    made = tdx_set(ak.public_key(), user_data=BINDING + bytes(32), size=2600)
    evidence = {
        "hcl_report": encode(made.hcl_report),
        "td_quote": encode(made.td_quote),
        "tpm_quote": quote(ak, BINDING),
    }
    trust = TrustInputs(binding=BINDING, at=datetime.now(UTC), trust_roots=(made.root_pem,))
    verdict = AzureTdxVerifier().verify(evidence, trust)
    assert verdict.hardware_attested and not verdict.failed, verdict.checks
    assert statuses(verdict)["azure.user_data"] is CheckStatus.PASS
    assert statuses(verdict)["azure.td_quote.body"] is CheckStatus.PASS
    assert statuses(verdict)["tdx.tcb.status"] is CheckStatus.SKIP  # no collateral
    # the same set judged for another session fails both bindings
    other = AzureTdxVerifier().verify(evidence, dataclasses.replace(trust, binding=bytes(32)))
    failed = sorted(name for name, status in statuses(other).items() if status is CheckStatus.FAIL)
    assert failed == ["azure.quote.nonce", "azure.user_data"]
