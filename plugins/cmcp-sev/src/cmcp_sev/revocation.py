"""AMD's certificate revocation lists, as the auditor supplies them (`cmcp verify
--collateral`, the DER or PEM file AMD KDS serves at /vcek/v1/<product>/crl).

AMD's ARK signs one CRL per product (RSA-PSS, SHA-384) listing the intermediates it has
revoked: ASKs and ASVKs. VCEKs are not revoked by CRL; a VCEK is bound to a chip and a TCB,
and a TCB recovery is what retires it (judged by `sev.tcb.minimum`).

A CRL is judged as of the claim's time: it must be signed by the pinned root that issued
the chain, and must not have expired before the claim was made. A CRL issued after the
claim is newer knowledge and is used; an intermediate it lists is refused whatever the
revocation date, since a compromise may precede its discovery.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Final

from cryptography import x509

from cmcp_cli.attestation.toolkit import as_utc
from cmcp_sev.certificates import describe, signed_by_problem

_PEM_MARKER: Final = b"-----BEGIN X509 CRL-----"


class RevocationError(ValueError):
    """The CRL cannot be relied on, or it revokes the chain; the message says which."""


def crls_in(collateral: Sequence[bytes]) -> list[x509.CertificateRevocationList]:
    """Every X.509 CRL among the auditor's collateral files; other files (another verifier's
    collateral) are passed over. A PEM CRL that does not parse is `RevocationError`: it is
    unmistakably a CRL the auditor meant, so passing it over would leave revocation unchecked
    in silence."""
    found: list[x509.CertificateRevocationList] = []
    for position, blob in enumerate(collateral, 1):
        if _PEM_MARKER in blob:
            try:
                found.append(x509.load_pem_x509_crl(blob))
            except ValueError as error:
                raise RevocationError(
                    f"Collateral file {position} is a PEM CRL that does not parse "
                    f"({str(error).rstrip('.')}): fetch it again from AMD KDS."
                ) from None
        elif blob[:1] == b"\x30":
            try:
                found.append(x509.load_der_x509_crl(blob))
            except ValueError:
                continue
    return found


def check_intermediate(
    crls: Sequence[x509.CertificateRevocationList],
    ark: x509.Certificate,
    intermediate: x509.Certificate,
    at: datetime,
) -> str | None:
    """Why the CRLs `ark` issued revoke `intermediate` or cannot be trusted (raised as
    `RevocationError`); the reason it is not revoked; None when `ark` issued none of them."""
    own = [crl for crl in crls if crl.issuer == ark.subject]
    if not own:
        return None
    moment = as_utc(at)
    for crl in own:
        label = f"The CRL of {describe(ark)} (issued {crl.last_update_utc.isoformat()})"
        problem = signed_by_problem(crl, crl.tbs_certlist_bytes, ark, label)
        if problem is not None:
            raise RevocationError(problem)
        expires = crl.next_update_utc
        if expires is None or expires < moment:
            expiry = (
                "has no next update" if expires is None else f"expired at {expires.isoformat()}"
            )
            raise RevocationError(
                f"{label} {expiry}, before the claim's time {moment.isoformat()}: fetch a "
                "current one from AMD KDS."
            )
        revoked = crl.get_revoked_certificate_by_serial_number(intermediate.serial_number)
        if revoked is not None:
            raise RevocationError(
                f"{describe(intermediate)} (serial {intermediate.serial_number:x}) is revoked by "
                f"the CRL of {describe(ark)}, since {revoked.revocation_date_utc.isoformat()}."
            )
    newest = max(own, key=lambda crl: crl.last_update_utc)
    return (
        f"{describe(intermediate)} is not on the CRL of {describe(ark)} issued "
        f"{newest.last_update_utc.isoformat()} (signature and validity checked)."
    )
