"""The tpm2-pytss boundary shared by the collector and the test harness: the optional
import (a verifier host has no libtss2), TSS errors turned into `ProviderError`s that say
what to do, handle listing, NV reads and the certificates stored in NV.

The verifier, the measurer and the structures never import this module.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Final, NoReturn

from cryptography import x509

from cmcp_cli.attestation.api import ProviderError
from cmcp_tpm.settings import NV_INDEX_FIRST, SECTION

INSTALL: Final = "install cmcp-tpm[collector] (needs libtss2)"
_TSS_NAMES: Final = frozenset({"ESAPI", "ESYS_TR", "TPM2B_PUBLIC", "TPMT_PUBLIC", "TSS2_Exception"})

TSS_PROBLEM: str | None
try:
    import tpm2_pytss as tss  # type: ignore[import-untyped]  # ships no type information
    from tpm2_pytss import ESAPI, ESYS_TR, TPM2B_PUBLIC, TPMT_PUBLIC, TSS2_Exception
except ImportError as error:  # the package, or the libtss2 it links, is missing
    tss = None
    TSS_PROBLEM = str(error)

    def __getattr__(name: str) -> NoReturn:
        """Importing a tpm2-pytss name from here (as the collector module does) raises the
        install hint, so the host reports the provider unavailable and says what to do;
        the rest of this module stays importable for the test harness."""
        if name in _TSS_NAMES:
            require_tss()
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

else:
    TSS_PROBLEM = None

_NV_OWNERREAD: Final = 0x00020000
_NV_AUTHREAD: Final = 0x00040000
_NV_WRITTEN: Final = 0x20000000
_RC_INITIALIZE: Final = 0x100  # the TPM was never sent TPM2_Startup

__all__ = [
    "ESAPI",
    "ESYS_TR",
    "INSTALL",
    "TPM2B_PUBLIC",
    "TPMT_PUBLIC",
    "TSS_PROBLEM",
    "TSS2_Exception",
    "defined_handles",
    "der_certificate",
    "nv_buffer_max",
    "open_tpm",
    "read_certificates",
    "read_nv",
    "require_tss",
    "tpm_errors",
    "tss",
]


def require_tss() -> None:
    if TSS_PROBLEM is not None:
        raise ProviderError(f"tpm2-pytss is not usable: {TSS_PROBLEM}", hint=INSTALL)


@contextmanager
def tpm_errors(action: str, hint: str) -> Iterator[None]:
    """Turn a TSS error into a `ProviderError` that says what failed and what to do."""
    try:
        yield
    except TSS2_Exception as error:
        if int(error.rc) & 0xFFF == _RC_INITIALIZE:
            hint = (
                "the TPM was never started (TPM2_Startup): firmware starts a hardware TPM; "
                "start swtpm with --flags not-need-init,startup-clear"
            )
        raise ProviderError(f"{action} ({error})", hint=hint) from None


def open_tpm(tcti: str, *, setting: str = f"{SECTION}.tcti") -> ESAPI:
    """An ESAPI context on `tcti`, the value of the config setting `setting`."""
    with tpm_errors(
        f"cannot open the TPM at {setting} = {tcti!r}",
        "check that the TPM (or swtpm) is running and reachable and that this user may open "
        "it (for /dev/tpmrm0: a member of group tss)",
    ):
        return ESAPI(tcti)


def defined_handles(esapi: ESAPI, first: int) -> set[int]:
    """The handles of `first`'s type that exist (persistent objects or NV indices)."""
    found: set[int] = set()
    more, start = True, first
    while more:
        more, data = esapi.get_capability(tss.TPM2_CAP.HANDLES, start, 64)
        batch = [int(handle) for handle in data.data.handles]
        if not batch:
            break
        found.update(batch)
        start = max(batch) + 1
    return {handle for handle in found if handle >> 24 == first >> 24}


def nv_buffer_max(esapi: ESAPI) -> int:
    """The most bytes one NV_Read or NV_Write moves."""
    _, data = esapi.get_capability(tss.TPM2_CAP.TPM_PROPERTIES, tss.TPM2_PT_NV.BUFFER_MAX, 1)
    return int(data.data.tpmProperties[0].value)


def read_certificates(esapi: ESAPI, indices: tuple[int, ...]) -> tuple[bytes, ...]:
    """The DER certificates held at those of `indices` that are defined and written."""
    if not indices:
        return ()
    with tpm_errors("listing NV indices", "check the TPM's health"):
        defined = defined_handles(esapi, NV_INDEX_FIRST)
        chunk = nv_buffer_max(esapi)
    certificates: list[bytes] = []
    for index in (i for i in indices if i in defined):
        where = f"NV index 0x{index:08X}"
        with tpm_errors(f"reading {where}", f"remove it from {SECTION} if it is not readable"):
            data = read_nv(esapi, index, chunk, where)
        if data is not None:
            certificates.append(der_certificate(data, where))
    return tuple(certificates)


def read_nv(esapi: ESAPI, index: int, chunk: int, where: str) -> bytes | None:
    """The contents of a defined NV index (None if never written), read `chunk` bytes at a
    time with the index's own (empty) auth, or the owner's when only the owner may read."""
    handle = esapi.tr_from_tpmpublic(index)
    try:
        public, _ = esapi.nv_read_public(handle)
        size, attributes = int(public.nvPublic.dataSize), int(public.nvPublic.attributes)
        if not attributes & _NV_WRITTEN:
            return None
        if not attributes & (_NV_AUTHREAD | _NV_OWNERREAD):
            raise ProviderError(f"{where} is readable by neither its auth nor the owner")
        auth = handle if attributes & _NV_AUTHREAD else ESYS_TR.OWNER
        return b"".join(
            bytes(esapi.nv_read(handle, min(chunk, size - offset), offset, auth))
            for offset in range(0, size, chunk)
        )
    finally:
        esapi.tr_close(handle)


def der_certificate(data: bytes, where: str) -> bytes:
    """The DER certificate at the start of `data` (NV areas may be padded after it)."""
    length = 0
    if len(data) >= 2 and data[0] == 0x30:
        if data[1] < 0x80:
            length = 2 + data[1]
        elif 1 <= data[1] & 0x7F <= 3:
            octets = data[1] & 0x7F
            length = 2 + octets + int.from_bytes(data[2 : 2 + octets], "big")
    der = data[:length]
    try:
        x509.load_der_x509_certificate(der)
    except ValueError as error:
        raise ProviderError(
            f"{where} does not hold a DER X.509 certificate ({error})",
            hint=f"correct {SECTION}.ak_cert_nv_index / ek_cert_nv_indices",
        ) from None
    return der
