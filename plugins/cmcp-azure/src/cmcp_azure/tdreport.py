"""The TDREPORT a TDX paravisor puts in the HCL report, and the TD body a DCAP quote made
from it must repeat.

    [0:256]    REPORTMACSTRUCT: REPORTTYPE (type 0x81 = TDX) [0:4], CPUSVN [16:32],
               TEE_TCB_INFO_HASH [32:80], TEE_INFO_HASH [80:128], REPORTDATA [128:192],
               MAC [224:256]
    [256:495]  TEE_TCB_INFO: VALID [0:8], TEE_TCB_SVN [8:24], MRSEAM [24:72],
               MRSIGNERSEAM [72:120], ATTRIBUTES [120:128]
    [512:1024] TDINFO: ATTRIBUTES [0:8], XFAM [8:16], MRTD, MRCONFIGID, MROWNER,
               MROWNERCONFIG (48 bytes each), RTMR0..3 (48 bytes each)

The MAC is keyed by the CPU and checkable only on that CPU: a TDREPORT proves nothing by
itself. What it proves here comes from the quote the host's Quoting Enclave made of it:
that quote is signed to Intel's root, so its TD body must equal the body below field by
field, and its REPORTDATA is then the runtime data's hash. The bytes the quote does not
repeat are signed by nothing offline, so `body_of` accepts them only as the TDX module
writes them: reserved fields zero, and TEE_TCB_INFO_HASH and TEE_INFO_HASH the SHA-384 of
TEE_TCB_INFO and TDINFO. CPUSVN and the MAC stay unchecked: nothing offline can judge them.
"""

from __future__ import annotations

import hashlib
from typing import Final

from cmcp_tdx.quote import TdBody

SIZE: Final = 1024
TYPE_TDX: Final = 0x81
_MR: Final = 48
_TCB_INFO: Final = 256
_TD_INFO: Final = 512
_TCB_INFO_SIZE: Final = 239
# Reserved fields of REPORTMACSTRUCT, and the bytes between TEE_TCB_INFO and TDINFO.
_RESERVED: Final = ((4, 16), (192, 224), (_TCB_INFO + _TCB_INFO_SIZE, _TD_INFO))
_TCB_INFO_HASH: Final = slice(32, 80)
_TD_INFO_HASH: Final = slice(80, 128)


class TdReportFormatError(ValueError):
    pass


def body_of(report: bytes) -> TdBody:
    """The quote body fields the TDREPORT states (v4 layout: no TEE_TCB_SVN2/MRSERVICETD)."""
    if len(report) != SIZE:
        raise TdReportFormatError(f"a TDREPORT is {SIZE} bytes, not {len(report)}")
    if report[0] != TYPE_TDX:
        raise TdReportFormatError(f"REPORTTYPE.TYPE is {report[0]:#x}, not {TYPE_TDX:#x} (TDX)")
    for start, end in _RESERVED:
        if any(report[start:end]):
            raise TdReportFormatError(f"its reserved bytes [{start}:{end}] are not zero")
    tcb, td = report[_TCB_INFO : _TCB_INFO + _TCB_INFO_SIZE], report[_TD_INFO:]
    if hashlib.sha384(tcb).digest() != report[_TCB_INFO_HASH]:
        raise TdReportFormatError("TEE_TCB_INFO_HASH is not the SHA-384 of its TEE_TCB_INFO")
    if hashlib.sha384(td).digest() != report[_TD_INFO_HASH]:
        raise TdReportFormatError("TEE_INFO_HASH is not the SHA-384 of its TDINFO")

    def mr(n: int) -> bytes:  # the n-th 48-byte register of TDINFO after XFAM
        return td[16 + n * _MR : 16 + (n + 1) * _MR]

    return TdBody(
        tee_tcb_svn=tcb[8:24], mrseam=tcb[24:72], mrsignerseam=tcb[72:120],
        seam_attributes=tcb[120:128], td_attributes=td[0:8], xfam=td[8:16], mrtd=mr(0),
        mrconfigid=mr(1), mrowner=mr(2), mrownerconfig=mr(3),
        rtmrs=(mr(4), mr(5), mr(6), mr(7)), report_data=report[128:192],
    )  # fmt: skip


def build(body: TdBody) -> bytes:
    """A TDREPORT stating `body`, with its two hashes and a zero MAC (no CPU made it): for
    test doubles."""
    report = bytearray(SIZE)
    report[0] = TYPE_TDX
    report[128:192] = body.report_data
    tcb = body.tee_tcb_svn + body.mrseam + body.mrsignerseam + body.seam_attributes
    report[_TCB_INFO + 8 : _TCB_INFO + 8 + len(tcb)] = tcb
    td = (
        body.td_attributes + body.xfam + body.mrtd + body.mrconfigid + body.mrowner
        + body.mrownerconfig + b"".join(body.rtmrs)
    )  # fmt: skip
    report[_TD_INFO : _TD_INFO + len(td)] = td
    report[_TCB_INFO_HASH] = hashlib.sha384(report[_TCB_INFO : _TCB_INFO + _TCB_INFO_SIZE]).digest()
    report[_TD_INFO_HASH] = hashlib.sha384(report[_TD_INFO:]).digest()
    return bytes(report)
