"""Intel PCS collateral for a TDX quote, appraised offline as of the claim's time.

The collateral (the JSON object Intel's PCS/PCCS hands out, as `dcap-qvl` serialises it):
`tcb_info` and `qe_identity` (the signed JSON texts), their raw r||s ECDSA signatures in
hex and their issuer chains (PEM), the Intel SGX Root CA CRL and the PCK CA CRL (hex DER or
PEM), and the PCK CRL's issuer chain.

Appraisal, every step fail-closed with the reason:
1. both CRLs are signed by their issuers (the pinned root; the quote's PCK CA), and the
   time lies between their thisUpdate and nextUpdate; the PCK CA, the TCB signing
   certificate and the PCK leaf are not revoked;
2. the TCB info and QE identity issuer chains verify to the pinned root at the time, and
   their signatures over the exact JSON texts verify; the time lies between each one's
   issueDate and nextUpdate;
3. the TCB info is TDX v3 for the PCK certificate's FMSPC and PCE id; the TDX module
   (MRSIGNERSEAM, SEAMATTRIBUTES, and for module versions > 0 its identity's TCB levels)
   matches; the QE report matches the QE identity (MRSIGNER, ISVPRODID, masked MISCSELECT
   and ATTRIBUTES) and its ISVSVN selects the QE's TCB level;
4. the platform TCB level is the first (highest first) whose SGX components and PCE SVN
   the PCK certificate reaches and whose TDX components TEE_TCB_SVN reaches.
The result is the worst of the platform, TDX module and QE statuses.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from cryptography import x509

from cmcp_cli.attestation.toolkit import as_utc
from cmcp_tdx import pki
from cmcp_tdx.quote import Quote

MEMBERS: Final = frozenset(
    {
        "pck_crl_issuer_chain", "root_ca_crl", "pck_crl", "tcb_info_issuer_chain", "tcb_info",
        "tcb_info_signature", "qe_identity_issuer_chain", "qe_identity", "qe_identity_signature",
    }
)  # fmt: skip
# Severity order, as Intel's QVL merges statuses: the worst wins.
STATUSES: Final = (
    "UpToDate", "SWHardeningNeeded", "ConfigurationNeeded", "ConfigurationAndSWHardeningNeeded",
    "OutOfDate", "OutOfDateConfigurationNeeded", "Revoked",
)  # fmt: skip
# A TCB level the verifier accepts: patched, or needing only software hardening or
# configuration the advisories name. Out-of-date or revoked platforms fail.
ACCEPTED: Final = frozenset(STATUSES[:4])
_HEX = re.compile(r"[0-9a-fA-F]+")


class CollateralError(ValueError):
    """The collateral is malformed, unauthentic, stale, or rules the platform out."""


@dataclass(frozen=True, slots=True)
class Appraisal:
    status: str
    advisories: tuple[str, ...]
    detail: str  # which levels matched


def _text(collateral: Mapping[str, Any], key: str) -> str:
    value = collateral.get(key)
    if not isinstance(value, str) or not value:
        raise CollateralError(f"collateral member {key} must be a non-empty string")
    return value


def _hex_bytes(value: str, what: str) -> bytes:
    if not _HEX.fullmatch(value) or len(value) % 2:
        raise CollateralError(f"{what} is not hex")
    return bytes.fromhex(value)


def _crl(value: str, what: str) -> x509.CertificateRevocationList:
    try:
        if value.lstrip().startswith("-----BEGIN"):
            return x509.load_pem_x509_crl(value.encode())
        return x509.load_der_x509_crl(_hex_bytes(value, what))
    except ValueError as error:
        raise CollateralError(f"the {what} is not a CRL ({error})") from None


def _time(value: object, what: str) -> datetime:
    if not isinstance(value, str):
        raise CollateralError(f"{what} is missing")
    try:
        return as_utc(datetime.fromisoformat(value))
    except ValueError:
        raise CollateralError(f"{what} {value!r} is not an RFC 3339 time") from None


def _window(issued: datetime, next_update: datetime, at: datetime, what: str) -> None:
    if at < issued:
        raise CollateralError(
            f"the {what} was issued at {issued.isoformat()}, after {at.isoformat()}"
        )
    if at > next_update:
        raise CollateralError(
            f"the {what} expired: its nextUpdate is {next_update.isoformat()}, before the "
            f"claim time {at.isoformat()}"
        )


def _check_crl(
    crl: x509.CertificateRevocationList, issuer: x509.Certificate, at: datetime, what: str,
    subjects: Sequence[x509.Certificate],
) -> None:  # fmt: skip
    if crl.issuer != issuer.subject:
        raise CollateralError(
            f"the {what} is issued by {crl.issuer.rfc4514_string()}, not "
            f"{issuer.subject.rfc4514_string()}"
        )
    if not crl.is_signature_valid(pki.p256_leaf_key(issuer, f"{what} issuer")):
        raise CollateralError(f"the {what} signature does not verify with its issuer's key")
    next_update = crl.next_update_utc
    if next_update is None:
        raise CollateralError(f"the {what} has no nextUpdate")
    _window(crl.last_update_utc, next_update, at, what)
    for cert in subjects:
        if crl.get_revoked_certificate_by_serial_number(cert.serial_number) is not None:
            raise CollateralError(
                f"certificate {pki.common_name(cert)!r} (serial {cert.serial_number:x}) is "
                f"revoked by the {what}"
            )


def _signed_json(
    collateral: Mapping[str, Any], name: str, roots: Sequence[x509.Certificate], at: datetime,
) -> tuple[dict[str, Any], x509.Certificate]:  # fmt: skip
    text = _text(collateral, name)
    signature = _hex_bytes(_text(collateral, f"{name}_signature"), f"{name}_signature")
    chain = pki.load_pem_chain(
        _text(collateral, f"{name}_issuer_chain").encode(), f"{name} issuer chain"
    )
    try:
        validated = pki.verify_chain(chain, roots, at, f"{name} issuer chain")
    except pki.PkiError as error:
        raise CollateralError(str(error)) from None
    signer = validated[0]
    if not pki.raw_signature_ok(
        pki.p256_leaf_key(signer, f"{name} signer"), signature, text.encode()
    ):
        raise CollateralError(
            f"the {name} signature does not verify with {pki.common_name(signer)!r}"
        )
    try:
        document = json.loads(text)
    except ValueError:
        raise CollateralError(f"the signed {name} is not JSON") from None
    if not isinstance(document, dict):
        raise CollateralError(f"the signed {name} is not a JSON object")
    _window(_time(document.get("issueDate"), f"{name} issueDate"),
            _time(document.get("nextUpdate"), f"{name} nextUpdate"), at, name)  # fmt: skip
    return document, signer


def _hexfield(document: Mapping[str, Any], key: str, size: int, what: str) -> bytes:
    value = document.get(key)
    raw = _hex_bytes(value, f"{what}.{key}") if isinstance(value, str) else b""
    if len(raw) != size:
        raise CollateralError(f"{what}.{key} is not {size} bytes of hex")
    return raw


def _levels(document: Mapping[str, Any], what: str) -> list[dict[str, Any]]:
    levels = document.get("tcbLevels")
    if not isinstance(levels, list) or not levels or not all(isinstance(x, dict) for x in levels):
        raise CollateralError(f"{what}.tcbLevels is not a non-empty list of levels")
    for level in levels:
        if level.get("tcbStatus") not in STATUSES:
            raise CollateralError(
                f"{what} has a level with unknown status {level.get('tcbStatus')!r}"
            )
    return levels


def _status(level: Mapping[str, Any]) -> tuple[str, tuple[str, ...]]:
    advisories = level.get("advisoryIDs", [])
    if not isinstance(advisories, list) or not all(isinstance(a, str) for a in advisories):
        raise CollateralError("a level's advisoryIDs is not a list of strings")
    return str(level["tcbStatus"]), tuple(advisories)


def _svns(tcb: Any, key: str, what: str) -> list[int]:
    components = tcb.get(key) if isinstance(tcb, dict) else None
    if not isinstance(components, list) or len(components) != 16:
        raise CollateralError(f"{what}.{key} is not 16 components")
    values = [c.get("svn") if isinstance(c, dict) else None for c in components]
    if not all(type(v) is int for v in values):
        raise CollateralError(f"{what}.{key} has a component without an integer svn")
    return [int(v) for v in values]  # type: ignore[arg-type]


def _masked_equal(actual: bytes, expected: bytes, mask: bytes) -> bool:
    return all((a & m) == (e & m) for a, e, m in zip(actual, expected, mask, strict=True))


def _qe_status(quote: Quote, identity: Mapping[str, Any]) -> tuple[str, tuple[str, ...]]:
    if identity.get("id") != "TD_QE" or identity.get("version") not in (2, 3):
        raise CollateralError(
            f"the QE identity is {identity.get('id')!r} v{identity.get('version')}, not TD_QE v2/v3"
        )
    qe = quote.qe_report
    if qe.mr_signer != _hexfield(identity, "mrsigner", 32, "qe_identity"):
        raise CollateralError(f"the QE's MRSIGNER {qe.mr_signer.hex()} is not the QE identity's")
    if qe.isv_prod_id != identity.get("isvprodid"):
        raise CollateralError(f"the QE's ISVPRODID {qe.isv_prod_id} is not the QE identity's")
    misc = qe.misc_select.to_bytes(4, "little")
    misc_expected = _hexfield(identity, "miscselect", 4, "qe_identity")[::-1]
    misc_mask = _hexfield(identity, "miscselectMask", 4, "qe_identity")[::-1]
    attributes = _hexfield(identity, "attributes", 16, "qe_identity")
    attributes_mask = _hexfield(identity, "attributesMask", 16, "qe_identity")
    if not _masked_equal(misc, misc_expected, misc_mask) or not _masked_equal(
        qe.attributes, attributes, attributes_mask
    ):
        raise CollateralError("the QE's MISCSELECT or ATTRIBUTES do not match the QE identity")
    for level in _levels(identity, "qe_identity"):
        tcb = level.get("tcb")
        if isinstance(tcb, dict) and type(tcb.get("isvsvn")) is int and qe.isv_svn >= tcb["isvsvn"]:
            return _status(level)
    raise CollateralError(f"the QE's ISVSVN {qe.isv_svn} is below every QE identity level")


def _module_status(quote: Quote, info: Mapping[str, Any]) -> tuple[str, tuple[str, ...]] | None:
    body = quote.body
    module = info.get("tdxModule")
    if not isinstance(module, dict):
        raise CollateralError("the TCB info has no tdxModule")
    levels: list[dict[str, Any]] | None = None
    version = body.tee_tcb_svn[1]
    identities = info.get("tdxModuleIdentities") or []
    if version > 0 and identities:
        wanted = f"TDX_{version:02X}"
        found = [
            i for i in identities if isinstance(i, dict) and str(i.get("id", "")).upper() == wanted
        ]
        if not found:
            raise CollateralError(f"the TCB info has no TDX module identity {wanted}")
        module, levels = found[0], _levels(found[0], wanted)
    if body.mrsignerseam != _hexfield(module, "mrsigner", 48, "tdxModule"):
        raise CollateralError(
            f"MRSIGNERSEAM {body.mrsignerseam.hex()} is not the TDX module signer the TCB "
            "info names"
        )
    expected = _hexfield(module, "attributes", 8, "tdxModule")
    mask = _hexfield(module, "attributesMask", 8, "tdxModule")
    if not _masked_equal(body.seam_attributes, expected, mask) or any(
        a & ~m & 0xFF for a, m in zip(body.seam_attributes, mask, strict=True)
    ):
        raise CollateralError(
            f"SEAMATTRIBUTES {body.seam_attributes.hex()} do not match the TDX module's"
        )
    if levels is None:
        return None
    for level in levels:
        tcb = level.get("tcb")
        if (
            isinstance(tcb, dict)
            and type(tcb.get("isvsvn")) is int
            and body.tee_tcb_svn[0] >= tcb["isvsvn"]
        ):
            return _status(level)
    raise CollateralError(f"the TDX module's ISVSVN {body.tee_tcb_svn[0]} is below every level")


def _platform_level(quote: Quote, pck: pki.PckInfo, info: Mapping[str, Any]) -> Mapping[str, Any]:
    ranked = []
    for level in _levels(info, "tcb_info"):
        tcb = level.get("tcb")
        pce_svn = tcb.get("pcesvn") if isinstance(tcb, dict) else None
        if type(pce_svn) is not int:
            raise CollateralError("a TCB level has no integer pcesvn")
        sgx, tdx = _svns(tcb, "sgxtcbcomponents", "tcb"), _svns(tcb, "tdxtcbcomponents", "tcb")
        ranked.append((sgx, pce_svn, tdx, level))
    ranked.sort(key=lambda item: (item[0], item[1], item[2]), reverse=True)
    for sgx, pce_svn, tdx, level in ranked:
        sgx_ok = all(a >= b for a, b in zip(pck.component_svns, sgx, strict=True))
        tdx_ok = all(a >= b for a, b in zip(quote.body.tee_tcb_svn, tdx, strict=True))
        if pck.pce_svn >= pce_svn and sgx_ok and tdx_ok:
            return level
    raise CollateralError(
        "no TCB level of the TCB info is reached by the platform (PCK SVNs "
        f"{list(pck.component_svns)}, PCE SVN {pck.pce_svn}, "
        f"TEE_TCB_SVN {quote.body.tee_tcb_svn.hex()})"
    )


def appraise(
    collateral: Any, quote: Quote, pck_chain: Sequence[x509.Certificate],
    roots: Sequence[x509.Certificate], at: datetime,
) -> Appraisal:  # fmt: skip
    """The TCB status of the quote's platform as of `at`; `CollateralError` otherwise.
    `pck_chain` is the quote's validated chain: leaf, PCK CA, pinned root."""
    if not isinstance(collateral, Mapping):
        raise CollateralError("the collateral is not a JSON object")
    if unknown := sorted(map(str, set(collateral) - MEMBERS)):
        raise CollateralError(f"the collateral has unknown members {', '.join(unknown)}")
    if missing := sorted(MEMBERS - set(collateral)):
        raise CollateralError(f"the collateral lacks {', '.join(missing)}")
    at = as_utc(at)
    leaf, pck_ca, root = pck_chain[0], pck_chain[1], pck_chain[-1]
    root_crl = _crl(_text(collateral, "root_ca_crl"), "Intel root CA CRL")
    pck_crl = _crl(_text(collateral, "pck_crl"), "PCK CA CRL")
    _check_crl(pck_crl, pck_ca, at, "PCK CA CRL", [leaf])
    # The CRL is judged against the quote's own PCK CA and root; the issuer chain the
    # collateral names for it must be exactly those, or it is a member nothing checks.
    named = pki.load_pem_chain(
        _text(collateral, "pck_crl_issuer_chain").encode(), "pck_crl issuer chain"
    )
    if named != [pck_ca, root]:
        raise CollateralError(
            "the pck_crl issuer chain is not the quote's PCK CA and root "
            f"({pki.common_name(pck_ca)!r}, {pki.common_name(root)!r})"
        )
    _check_crl(root_crl, root, at, "Intel root CA CRL", [pck_ca])
    info, info_signer = _signed_json(collateral, "tcb_info", roots, at)
    identity, identity_signer = _signed_json(collateral, "qe_identity", roots, at)
    _check_crl(root_crl, root, at, "Intel root CA CRL", [info_signer, identity_signer])
    pck = pki.pck_info(leaf)
    if info.get("id") != "TDX" or info.get("version") != 3:
        raise CollateralError(
            f"the TCB info is {info.get('id')!r} v{info.get('version')}, not TDX v3"
        )
    if (
        _hexfield(info, "fmspc", 6, "tcb_info") != pck.fmspc
        or _hexfield(info, "pceId", 2, "tcb_info") != pck.pce_id
    ):
        raise CollateralError(
            f"the TCB info is for FMSPC {info.get('fmspc')} PCE {info.get('pceId')}, but the PCK "
            f"certificate's platform is FMSPC {pck.fmspc.hex()} PCE {pck.pce_id.hex()}"
        )
    level = _platform_level(quote, pck, info)
    statuses = {"platform": _status(level), "QE": _qe_status(quote, identity)}
    if (module := _module_status(quote, info)) is not None:
        statuses["TDX module"] = module
    worst = max((status for status, _ in statuses.values()), key=STATUSES.index)
    advisories = tuple(sorted({a for _, found in statuses.values() for a in found}))
    detail = ", ".join(f"{name} {status}" for name, (status, _) in statuses.items())
    return Appraisal(worst, advisories, f"{detail} (TCB level of {level.get('tcbDate', '?')})")
