"""The vTPM of an Azure CVM as the collector uses it, through tpm2-pytss (by way of
`cmcp_tpm.tpm_access`, so a host without libtss2 gets the install hint):

- the HCL report at NV index 0x01400001, read in chunks of the TPM's NV buffer;
- the user data at NV index 0x01400002, which the paravisor copies into the next report's
  runtime data: the guest defines that index itself (owner-written, 64 bytes) where it is
  missing, as Azure's own tools do;
- the attestation key the paravisor persists (0x81000003 on Azure), which must be an RSA
  restricted signing key whose scheme is RSASSA with SHA-256, the only quote a verifier
  accepts;
- a TPM2_Quote of the SHA-256 PCRs 0..23 by that key, with the PCR values it covers.

ESAPI contexts are not thread-safe: the caller holds one lock around every call here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from cryptography.hazmat.primitives.asymmetric import rsa

from cmcp_azure import hcl
from cmcp_azure.links import QUOTED_PCRS
from cmcp_cli.attestation.api import ProviderError
from cmcp_tpm import structures
from cmcp_tpm.settings import NV_INDEX_FIRST, PERSISTENT_FIRST
from cmcp_tpm.tpm_access import defined_handles, nv_buffer_max, read_nv, tpm_errors

INSTALL: Final = "install cmcp-azure[collector] (needs libtss2; Debian: libtss2-dev)"
try:
    from cmcp_tpm.collector import quote_pcrs
    from cmcp_tpm.tpm_access import ESAPI, ESYS_TR, tss
except ProviderError as error:  # tpm2-pytss, or the libtss2 it links, is missing
    raise ProviderError(error.message, hint=INSTALL) from None

# The collector takes the tpm2-pytss names from here, so that it imports them with the
# hint above.
__all__ = [
    "ESAPI",
    "ESYS_TR",
    "HCL_WHERE",
    "INSTALL",
    "USER_DATA_WHERE",
    "Quote",
    "hcl_report_defined",
    "load_ak",
    "quote",
    "read_hcl_report",
    "write_user_data",
]

HCL_WHERE: Final = f"NV index 0x{hcl.NV_INDEX:08X} (the HCL report)"
USER_DATA_WHERE: Final = f"NV index 0x{hcl.USER_DATA_NV_INDEX:08X} (the user data)"
# What an AK created in the vTPM for quoting with an empty password has (TPMA_OBJECT).
# The paravisor's AK is also usable without a policy session (userWithAuth).
_AK_BITS: Final = {**structures.SIGNING_KEY_ATTRIBUTES, "userWithAuth": structures.USER_WITH_AUTH}


@dataclass(frozen=True, slots=True)
class Quote:
    attest: bytes  # TPMS_ATTEST
    signature: bytes  # TPMT_SIGNATURE
    pcrs: dict[int, bytes]  # the sha256 values of QUOTED_PCRS


def hcl_report_defined(esapi: ESAPI) -> bool:
    with tpm_errors("listing the vTPM's NV indices", "check the TPM's health"):
        return hcl.NV_INDEX in defined_handles(esapi, NV_INDEX_FIRST)


def read_hcl_report(esapi: ESAPI) -> bytes:
    """The whole NV index 0x01400001, padding included."""
    with tpm_errors(f"reading {HCL_WHERE}", "this user must be able to read the vTPM's NV indices"):
        data = read_nv(esapi, hcl.NV_INDEX, nv_buffer_max(esapi), HCL_WHERE)
    if data is None:
        raise ProviderError(
            f"{HCL_WHERE} is defined but was never written: the paravisor wrote no report",
            hint="this is not an Azure confidential VM's vTPM",
        )
    return data


def write_user_data(esapi: ESAPI, data: bytes) -> None:
    """Write `data` (exactly 64 bytes) to NV 0x01400002 with owner authorization, defining
    the index, or redefining it at 64 bytes, first where needed."""
    if len(data) != hcl.USER_DATA_SIZE:
        raise ValueError(f"user data is {hcl.USER_DATA_SIZE} bytes, not {len(data)}")
    hint = (
        "the owner hierarchy needs an empty authorization value (as on Azure); or set "
        "user_data = false so that the AK quote alone binds the session"
    )
    with tpm_errors(f"writing {USER_DATA_WHERE}", hint):
        index = _user_data_index(esapi)
        try:
            esapi.nv_write(index, data, 0, ESYS_TR.OWNER)
        finally:
            esapi.tr_close(index)


def _user_data_index(esapi: ESAPI) -> ESYS_TR:
    if hcl.USER_DATA_NV_INDEX in defined_handles(esapi, NV_INDEX_FIRST):
        index = esapi.tr_from_tpmpublic(hcl.USER_DATA_NV_INDEX)
        public, _ = esapi.nv_read_public(index)
        attributes = int(public.nvPublic.attributes)
        if int(public.nvPublic.dataSize) == hcl.USER_DATA_SIZE and attributes & int(
            tss.TPMA_NV.OWNERWRITE
        ):
            return index
        # Another tool defined it for fewer bytes, or not owner-writable: the index is the
        # guest's request to the paravisor, so the guest redefines it as it needs it.
        esapi.nv_undefine_space(index, ESYS_TR.OWNER)
    attributes = tss.TPMA_NV.OWNERWRITE | tss.TPMA_NV.OWNERREAD
    public = tss.TPM2B_NV_PUBLIC(
        nvPublic=tss.TPMS_NV_PUBLIC(
            nvIndex=hcl.USER_DATA_NV_INDEX,
            nameAlg=tss.TPM2_ALG.SHA256,
            attributes=attributes,
            dataSize=hcl.USER_DATA_SIZE,
        )
    )
    return esapi.nv_define_space(None, public, ESYS_TR.OWNER)


def load_ak(esapi: ESAPI, handle: int, setting: str) -> tuple[ESYS_TR, rsa.RSAPublicKey]:
    """The key persisted at `handle` and its public key, refused unless it can sign the
    quote a verifier accepts (RSA, restricted, signing only, RSASSA with SHA-256)."""
    where = f"{setting} 0x{handle:08X}"
    hint = (
        f"set {setting} to the handle where the paravisor persists the vTPM's attestation "
        "key (0x81000003 on Azure); `tpm2_getcap handles-persistent` lists them"
    )
    with tpm_errors(f"reading the attestation key at {where}", hint):
        if handle not in defined_handles(esapi, PERSISTENT_FIRST):
            raise ProviderError(f"no key is persisted at {where}", hint=hint)
        ak = esapi.tr_from_tpmpublic(handle)
        public, _, _ = esapi.read_public(ak)
    try:
        area = structures.parse_public(bytes(public.publicArea.marshal()))
    except structures.TpmFormatError as error:
        raise ProviderError(f"the key at {where} is unusable: {error}", hint=hint) from None
    problem = _ak_problem(area)
    if problem is not None:
        raise ProviderError(f"the key at {where} cannot be the AK: {problem}", hint=hint)
    if not isinstance(area.public_key, rsa.RSAPublicKey):  # _ak_problem refused it
        raise ProviderError(f"the key at {where} is not an RSA key", hint=hint)
    return ak, area.public_key


def _ak_problem(area: structures.PublicArea) -> str | None:
    if area.type != structures.ALG_RSA:
        return "it is not an RSA key (the paravisor's AK is RSA-2048)"
    problems = structures.signing_key_problems(area.attributes, _AK_BITS)
    if problems:
        return f"its attributes are not the paravisor's AK's ({', '.join(problems)})"
    if area.scheme != structures.ALG_RSASSA or area.scheme_hash != structures.ALG_SHA256:
        return "its signing scheme is not RSASSA with SHA-256"
    return None


def quote(esapi: ESAPI, ak: ESYS_TR, qualifying_data: bytes) -> Quote:
    attest, signature, values, _ = quote_pcrs(esapi, ak, QUOTED_PCRS, qualifying_data)
    return Quote(attest, signature, values)
