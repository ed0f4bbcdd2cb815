"""The tdx-quote-v1 measurement: the one string `attestation.expected_measurement` takes.

    sha384:<hex of SHA-384(MRTD || RTMR0 || RTMR1 || RTMR2 || RTMR3)>

MRTD covers the TD's initial memory (the firmware image as the VMM loaded it); RTMR0..3 are
what firmware, boot loader and OS extended at run time (RTMR0 firmware configuration,
RTMR1 boot loader and kernel, RTMR2 kernel command line and initrd, RTMR3 free for the
OS). Pinning the digest pins all five registers at once; the verifier's reasons show each
register in hex so an auditor can see which one differs.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from typing import Final

MR_SIZE: Final = 48
PATTERN: Final = re.compile(r"sha384:[0-9a-f]{96}")


def measurement_string(mrtd: bytes, rtmrs: Sequence[bytes]) -> str:
    registers = [mrtd, *rtmrs]
    if len(registers) != 5 or any(len(r) != MR_SIZE for r in registers):
        raise ValueError("a TDX measurement is MRTD and RTMR0..3, 48 bytes each")
    return "sha384:" + hashlib.sha384(b"".join(registers)).hexdigest()


def describe(mrtd: bytes, rtmrs: Sequence[bytes]) -> str:
    """The registers in hex, for an auditor."""
    named = [("MRTD", mrtd)] + [(f"RTMR{n}", value) for n, value in enumerate(rtmrs)]
    return ", ".join(f"{name} {value.hex()}" for name, value in named)
