"""The genuine Azure CVM sets of ../shared/attestation-vectors/azure-cvm (MANIFEST.md there
states every fact), read in place as evidence of this plugin's types, each with the trust
inputs that verify it: its nonce as the binding and a time inside every certificate's
validity. For tests of the verifiers and of claims carrying them.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from cryptography.hazmat.primitives.serialization import Encoding

from cmcp_azure.evidence import encode, tpm_quote_of_json
from cmcp_cli.attestation.api import TrustInputs
from cmcp_cli.attestation.toolkit import pem_certificates

# Inside the validity of every certificate of the three sets (MANIFEST.md: the first
# Milan VCEK 2023-05-02..2030-05-02, the second 2025-01-28..2032-01-28, the TDX PCK
# 2023-09-13..2030-09-13).
AT: Final = datetime(2026, 12, 1, 12, tzinfo=UTC)
CHALLENGE: Final = b"challenge"  # the nonce of trustee's quote-v1 tests, the quotes' extraData
USERDATA_NONCE: Final = bytes.fromhex(
    "982f5c6e45df0ed3f10b6f60b02f0c8390e281300f3805e2279c16168cd6ae9a"
    "a398f647caa2338748cd0fd9f5f819ef"
)


@dataclass(frozen=True)
class AzureSet:
    """A genuine set as evidence of its type, and the trust inputs that verify it."""

    evidence: dict[str, Any]
    trust: TrustInputs

    def trusting(self, **changes: Any) -> TrustInputs:
        return replace(self.trust, **changes)

    def with_member(self, member: str, value: Any) -> dict[str, Any]:
        return {**self.evidence, member: value}

    def with_bytes(self, member: str, change: Callable[[bytearray], None]) -> dict[str, Any]:
        """The evidence with the base64 member `member` (a path "a.b") changed in place."""
        evidence = json.loads(json.dumps(self.evidence))
        *parents, leaf = member.split(".")
        holder = evidence
        for name in parents:
            holder = holder[name]
        data = bytearray(base64.b64decode(holder[leaf]))
        change(data)
        holder[leaf] = encode(bytes(data))
        return dict(evidence)


def _der_bundle(pem: bytes) -> list[str]:
    return [encode(cert.public_bytes(Encoding.DER)) for cert in pem_certificates(pem)]


def milan_set(azure_vectors: Path) -> AzureSet:
    """The Milan set that binds through the quote alone (user-data all zero)."""
    vcek, ask, ark = _der_bundle((azure_vectors / "trustee-milan-vcek-ask-ark.pem").read_bytes())
    quote = json.loads((azure_vectors / "trustee-milan-tpm-quote.json").read_bytes())
    evidence = {
        "hcl_report": encode((azure_vectors / "trustee-milan-hcl-report.bin").read_bytes()),
        "vcek": vcek,
        "cert_chain": [ask, ark],
        "tpm_quote": tpm_quote_of_json(quote),
    }
    return AzureSet(evidence, TrustInputs(binding=CHALLENGE, at=AT))


def _base64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def userdata_set(azure_vectors: Path) -> AzureSet:
    """The Milan set whose paravisor carried the nonce as user data (trustee evidence v2)."""
    document = json.loads((azure_vectors / "trustee-milan-userdata-evidence.json").read_bytes())
    evidence = {
        "hcl_report": encode(_base64url(document["hcl_report"])),
        "vcek": encode(_base64url(document["vcek"])),
        "tpm_quote": tpm_quote_of_json(document["tpm_quote"]),
    }
    return AzureSet(evidence, TrustInputs(binding=USERDATA_NONCE, at=AT))


def tdx_set(azure_vectors: Path) -> AzureSet:
    """The TDX set: its HCL report, the DCAP quote of its TDREPORT and its vTPM quote."""
    quote = json.loads((azure_vectors / "trustee-tdx-tpm-quote.json").read_bytes())
    evidence = {
        "hcl_report": encode((azure_vectors / "trustee-tdx-hcl-report.bin").read_bytes()),
        "td_quote": encode((azure_vectors / "trustee-tdx-td-quote.bin").read_bytes()),
        "tpm_quote": tpm_quote_of_json(quote),
    }
    return AzureSet(evidence, TrustInputs(binding=CHALLENGE, at=AT))
