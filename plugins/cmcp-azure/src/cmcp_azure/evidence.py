"""The evidence JSON of both Azure types, what the collector writes and the verifiers read:

    azure-sev-snp-hcl-v1:
    {"hcl_report": base64 of NV index 0x01400001 as read (padding included),
     "vcek": base64 DER (the VCEK for the report's chip and TCB),
     "cert_chain": [base64 DER ASK, base64 DER ARK] (optional),
     "tpm_quote": {"attest": base64 TPMS_ATTEST, "signature": base64 TPMT_SIGNATURE,
                   "pcrs": {"sha256": {"0": hex, ..., "23": hex}}}}

    azure-tdx-hcl-v1:
    {"hcl_report": base64, "td_quote": base64 (the DCAP quote of the HCL's TDREPORT),
     "tpm_quote": {...as above...}, "collateral": object (optional, Intel PCS)}

Base64 is standard and padded, canonically (the evidence is hashed into the claim); PCR
values are lowercase hex. Unknown members are refused. What decodes is kept even when
other members do not, so the verifier runs every check whose inputs are sound.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from cmcp_azure import hcl
from cmcp_cli.attestation.toolkit import base64_list, canonical_base64, evidence_object
from cmcp_tpm import pcr
from cmcp_tpm import structures as tpm

SNP_MEMBERS: Final = frozenset({"hcl_report", "vcek", "cert_chain", "tpm_quote"})
TDX_MEMBERS: Final = frozenset({"hcl_report", "td_quote", "tpm_quote", "collateral"})
QUOTE_MEMBERS: Final = frozenset({"attest", "signature", "pcrs"})
BANK: Final = "sha256"  # the only bank the paravisor's quote covers
MAX_BLOB: Final = 64 << 10
MAX_CHAIN: Final = 2
_INDEX = re.compile(r"0|[1-9][0-9]?")
_HEX = re.compile(r"[0-9a-f]{64}")


@dataclass(slots=True)
class TpmQuote:
    attest: bytes | None = None
    signature: bytes | None = None
    pcrs: dict[int, bytes] | None = None  # SHA-256 bank, index -> value


@dataclass(slots=True)
class DecodedEvidence:
    """The members that decoded; None where one was missing or malformed."""

    hcl_report: bytes | None = None
    vcek: bytes | None = None
    cert_chain: list[bytes] = field(default_factory=list)
    td_quote: bytes | None = None
    collateral: Mapping[str, Any] | None = None
    quote: TpmQuote = field(default_factory=TpmQuote)
    problems: list[str] = field(default_factory=list)


def encode(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _blob(
    evidence: Mapping[str, Any], member: str, problems: list[str], limit: int
) -> bytes | None:
    if member not in evidence:
        problems.append(f"missing member {member}")
        return None
    try:
        return canonical_base64(evidence[member], member, limit=limit)
    except ValueError as error:
        problems.append(str(error))
        return None


def _pcrs(value: Any, problems: list[str]) -> dict[int, bytes] | None:
    if not isinstance(value, Mapping) or set(value) != {BANK}:
        problems.append(f"tpm_quote.pcrs must be an object with the one member {BANK}")
        return None
    bank = value[BANK]
    if not isinstance(bank, Mapping):
        problems.append(f"tpm_quote.pcrs.{BANK} must be an object of PCR index to hex value")
        return None
    values: dict[int, bytes] = {}
    for index, digest in bank.items():
        if not isinstance(index, str) or not _INDEX.fullmatch(index) or int(index) >= pcr.PCR_COUNT:
            problems.append(f"tpm_quote.pcrs.{BANK} has key {index!r}, not a PCR index 0..23")
            return None
        if not isinstance(digest, str) or not _HEX.fullmatch(digest):
            problems.append(f"tpm_quote.pcrs.{BANK}.{index} must be 64 lowercase hex digits")
            return None
        values[int(index)] = bytes.fromhex(digest)
    return values


def _quote(value: Any, problems: list[str]) -> TpmQuote:
    quote = TpmQuote()
    if not isinstance(value, Mapping):
        problems.append("tpm_quote must be an object with attest, signature and pcrs")
        return quote
    unknown = sorted(str(key) for key in value if key not in QUOTE_MEMBERS)
    if unknown:
        problems.append(f"unknown member(s) tpm_quote.{', tpm_quote.'.join(unknown)}")
    for member in ("attest", "signature"):
        blob = _blob(value, member, problems, MAX_BLOB)
        setattr(quote, member, blob)
    if "pcrs" not in value:
        problems.append("missing member tpm_quote.pcrs")
    else:
        quote.pcrs = _pcrs(value["pcrs"], problems)
    return quote


def _common(evidence: Any, members: frozenset[str]) -> tuple[DecodedEvidence, Mapping[str, Any]]:
    d = DecodedEvidence()
    document = evidence_object(evidence, members, d.problems)
    if document is None:
        return d, {}
    d.hcl_report = _blob(document, "hcl_report", d.problems, hcl.MAX_SIZE)
    if "tpm_quote" not in document:
        d.problems.append("missing member tpm_quote")
    else:
        d.quote = _quote(document["tpm_quote"], d.problems)
    return d, document


def decode_snp(evidence: Any) -> DecodedEvidence:
    d, document = _common(evidence, SNP_MEMBERS)
    if document:
        d.vcek = _blob(document, "vcek", d.problems, MAX_BLOB)
    if "cert_chain" in document:
        try:
            d.cert_chain = base64_list(
                document["cert_chain"], "cert_chain", limit=MAX_BLOB, most=MAX_CHAIN
            )
        except ValueError as error:
            d.problems.append(str(error))
    return d


def decode_tdx(evidence: Any) -> DecodedEvidence:
    d, document = _common(evidence, TDX_MEMBERS)
    if document:
        d.td_quote = _blob(document, "td_quote", d.problems, MAX_BLOB)
    if "collateral" in document:
        if isinstance(document["collateral"], Mapping):
            d.collateral = document["collateral"]
        else:
            d.problems.append("collateral must be a JSON object")
    return d


def quote_member(attest: bytes, signature: bytes, pcrs: Mapping[int, bytes]) -> dict[str, Any]:
    """The `tpm_quote` member of a quote's TPMS_ATTEST, TPMT_SIGNATURE and SHA-256 PCRs."""
    return {
        "attest": encode(attest),
        "signature": encode(signature),
        "pcrs": {BANK: {str(index): value.hex() for index, value in sorted(pcrs.items())}},
    }


def quote_of_json(document: Any) -> tuple[bytes, bytes, dict[int, bytes]]:
    """The quote in the JSON form Azure attesters write (confidential-containers trustee,
    kinvolk's az-cvm-vtpm): `{"signature": hex of the raw RSASSA-PKCS1v1.5/SHA-256
    signature, "message": hex TPMS_ATTEST, "pcrs": [24 hex SHA-256 values, PCR 0 first]}`.
    A vTPM returns that signature as TPMT_SIGNATURE {RSASSA, SHA-256, sig}, so wrapping it
    re-encodes it losslessly. Returns TPMS_ATTEST, TPMT_SIGNATURE and the PCR values;
    `ValueError` when the document is not of that form."""
    if not isinstance(document, Mapping) or set(document) != {"signature", "message", "pcrs"}:
        raise ValueError("a quote document has exactly the members signature, message and pcrs")
    values = document["pcrs"]
    if not isinstance(values, list) or len(values) != pcr.PCR_COUNT:
        raise ValueError(f"pcrs must be a list of {pcr.PCR_COUNT} hex values")
    try:
        attest = bytes.fromhex(document["message"])
        signature = bytes.fromhex(document["signature"])
        pcrs = {index: bytes.fromhex(value) for index, value in enumerate(values)}
    except (TypeError, ValueError):
        raise ValueError("signature, message and pcrs must be hex strings") from None
    if any(len(value) != pcr.DIGEST_SIZES[BANK] for value in pcrs.values()):
        raise ValueError("every PCR value must be 32 bytes (SHA-256)")
    wrapped = tpm.build_signature(tpm.ALG_RSASSA, tpm.ALG_SHA256, signature)
    return attest, wrapped, pcrs


def tpm_quote_of_json(document: Any) -> dict[str, Any]:
    """The `tpm_quote` member of a quote in the attesters' JSON form (`quote_of_json`)."""
    return quote_member(*quote_of_json(document))
