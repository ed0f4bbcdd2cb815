"""The genuine Azure vTPM quote from the shared attestation vectors, judged offline: it
verifies as its MANIFEST.md states, and the AK certificate shipped with it certifies a
different key, so using it must fail."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from cmcp_cli.attestation.api import CheckStatus, TrustInputs
from cmcp_cli.testing.verdicts import assert_fails, reason, statuses
from cmcp_tpm import structures as tpm
from cmcp_tpm.pcr_file import parse_pcr_file
from cmcp_tpm.synthetic import b64
from cmcp_tpm.verifier import TpmVerifier

AZURE = (
    Path(__file__).resolve().parents[4] / "shared" / "attestation-vectors" / "tpm"
    / "azure-vtpm-2026-07-27"
)  # fmt: skip
AT = datetime(2026, 7, 27, 12, tzinfo=UTC)  # the day the quote was taken
ALL_CHECKS = (
    "tpm.evidence.shape", "tpm.attest.magic", "tpm.attest.type", "tpm.attest.extra_data",
    "tpm.ak.public", "tpm.ak.attributes", "tpm.attest.signer", "tpm.signature",
    "tpm.pcr.digest", "tpm.eventlog.replay", "tpm.eventlog.policy", "tpm.ak.certificate",
    "tpm.ek.certificate",
)  # fmt: skip


def _azure(name: str) -> bytes:
    if not AZURE.is_dir():
        pytest.skip(f"the shared attestation vectors are not at {AZURE}")
    return (AZURE / name).read_bytes()


def azure_evidence() -> dict[str, Any]:
    """The vector's files as evidence. quote.sig is the bare RSASSA-PKCS1v1.5/SHA-256
    signature that `tpm2_quote -f plain` writes; a TPM returns it as TPMT_SIGNATURE
    {sigAlg RSASSA, hash SHA-256, TPM2B sig}, so wrapping it re-encodes it losslessly."""
    pcrs = parse_pcr_file(_azure("pcrs.bin"))
    signature = tpm.build_signature(tpm.ALG_RSASSA, tpm.ALG_SHA256, _azure("quote.sig"))
    return {
        "attest": b64(_azure("quote.msg")),
        "signature": b64(signature),
        "ak_public_pem": _azure("ak.pub").decode(),
        "ak_certificates": [],
        "ek_certificates": [],
        "ak_tie": {"status": "untied"},  # only a PEM AK key was kept
        "pcrs": {
            bank: {str(i): v.hex() for i, v in values.items()} for bank, values in pcrs.items()
        },
        "event_log": [],
    }


def azure_trust(**changes: Any) -> TrustInputs:
    return TrustInputs(
        binding=bytes.fromhex(_azure("nonce.hex").decode().strip()), at=AT, **changes
    )


def test_azure_quote_verifies_but_is_not_hardware_attested() -> None:
    verdict = TpmVerifier().verify(azure_evidence(), azure_trust())
    status = statuses(verdict)
    for name in ("tpm.attest.magic", "tpm.attest.type", "tpm.attest.extra_data",
                 "tpm.signature", "tpm.pcr.digest"):  # fmt: skip
        assert status[name] is CheckStatus.PASS, reason(verdict, name)
    assert status["tpm.ak.attributes"] is CheckStatus.SKIP
    assert status["tpm.attest.signer"] is CheckStatus.SKIP
    assert "PEM" in reason(verdict, "tpm.attest.signer")
    assert not verdict.hardware_attested
    assert verdict.measurement == (
        "sha256:461684441feb67717a22b7f43096ec2f92a6582f5987f82729b3749180fede61"
    )
    assert tuple(check.name for check in verdict.checks) == ALL_CHECKS


def test_azure_ak_certificate_certifies_a_different_key() -> None:
    certificate = _azure("akcert_0x01C101D0.der")
    own_root = x509.load_der_x509_certificate(certificate).public_bytes(Encoding.PEM)
    evidence = azure_evidence() | {
        "ak_certificates": [b64(certificate)],
        "ak_tie": {"status": "certified"},
    }
    verdict = TpmVerifier().verify(evidence, azure_trust(trust_roots=(own_root,)))
    assert_fails(verdict, "tpm.ak.certificate", "certifies a different key")
    assert statuses(verdict)["tpm.signature"] is CheckStatus.PASS


def test_azure_quote_for_another_nonce_fails_the_binding() -> None:
    verdict = TpmVerifier().verify(azure_evidence(), TrustInputs(binding=bytes(32), at=AT))
    assert_fails(verdict, "tpm.attest.extra_data", "0efb4d54837cedf4")
