"""The `nvidia-gpu-cc-v1` evidence JSON, what the collector writes and the verifier reads:

    {"report": base64 (SPDM GET_MEASUREMENTS request || response, as NVML returns it),
     "certificates": [base64 DER, ...] (the device chain, leaf first, as NVML returns it),
     "nvml": {"driver_version": str, "vbios_version": str,
              "cc_mode": "on" | "devtools" | "off"},
     "rims": {"driver": base64 XML, "vbios": base64 XML} (optional: stapled by the operator),
     "ocsp": [base64 DER OCSPResponse, ...] (optional: stapled responses)}

`nvml` is what NVML said: unsigned, so it holds only what the verifier judges: the versions,
which must be the ones the GPU signed (`gpu.versions`), and the CC mode (`gpu.debug`). What
nothing signed can confirm (NVML's index, name and UUID of the GPU) is not evidence: it
belongs in the claim's `device` description, and is refused here as an unknown member, so
every byte of the evidence counts in its verdict. Base64 is standard and padded,
canonically (one encoding per byte string, since the evidence is hashed into the claim).
Unknown members are refused, and so is an optional member that is present but empty. What
decodes is kept even when other members do not, so every check whose input is sound runs.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from cmcp_cli.attestation.toolkit import base64_list, canonical_base64, evidence_object

MEMBERS: Final = frozenset({"report", "certificates", "nvml", "rims", "ocsp"})
NVML_MEMBERS: Final = ("driver_version", "vbios_version", "cc_mode")
RIM_KINDS: Final = ("driver", "vbios")
CC_MODES: Final = ("on", "devtools", "off")
MAX_REPORT: Final = 16 << 10
MAX_CERT: Final = 8 << 10
MAX_CHAIN: Final = 8
MAX_RIM: Final = 256 << 10
MAX_OCSP_RESPONSE: Final = 16 << 10
MAX_OCSP: Final = 16
MAX_TEXT: Final = 256


@dataclass(frozen=True, slots=True)
class Nvml:
    driver_version: str
    vbios_version: str
    cc_mode: str


@dataclass(slots=True)
class DecodedEvidence:
    report: bytes | None = None
    certificates: list[bytes] | None = None  # None: absent or unusable
    nvml: Nvml | None = None
    rims: dict[str, bytes] = field(default_factory=dict)  # kind -> XML, those stapled
    ocsp: list[bytes] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def encode(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _blob(value: Any, member: str, limit: int, problems: list[str]) -> bytes | None:
    try:
        return canonical_base64(value, member, limit=limit)
    except ValueError as error:
        problems.append(str(error))
        return None


def _blobs(value: Any, member: str, limit: int, most: int, problems: list[str]) -> list[bytes]:
    try:
        return base64_list(value, member, limit=limit, most=most)
    except ValueError as error:
        problems.append(str(error))
        return []


def _text(value: Any, member: str, problems: list[str]) -> str | None:
    if (
        not isinstance(value, str)
        or not 0 < len(value) <= MAX_TEXT
        or not value.isprintable()
        or value != value.strip()
    ):
        problems.append(f"nvml.{member} must be printable text of 1 to {MAX_TEXT} characters")
        return None
    return value


def _nvml(value: Any, problems: list[str]) -> Nvml | None:
    if not isinstance(value, Mapping):
        problems.append("nvml must be an object of what NVML said about the GPU")
        return None
    before = len(problems)
    unknown = sorted(str(key) for key in value if key not in NVML_MEMBERS)
    missing = [key for key in NVML_MEMBERS if key not in value]
    if unknown:
        problems.append(f"nvml has unknown member(s) {', '.join(unknown)}")
    if missing:
        problems.append(f"nvml lacks {', '.join(missing)}")
        return None
    texts = {key: _text(value[key], key, problems) for key in NVML_MEMBERS}
    if value["cc_mode"] not in CC_MODES:
        problems.append(f"nvml.cc_mode must be one of {', '.join(CC_MODES)}")
    if len(problems) != before:
        return None
    return Nvml(*(str(texts[key]) for key in NVML_MEMBERS))


def decode(evidence: Any) -> DecodedEvidence:
    d = DecodedEvidence()
    evidence = evidence_object(evidence, MEMBERS, d.problems)
    if evidence is None:
        return d
    d.report = _blob(evidence.get("report"), "report", MAX_REPORT, d.problems)
    if "certificates" in evidence:
        chain = _blobs(evidence["certificates"], "certificates", MAX_CERT, MAX_CHAIN, d.problems)
        d.certificates = chain or None
    else:
        d.problems.append("certificates (the device chain NVML returned) is missing")
    if "nvml" in evidence:
        d.nvml = _nvml(evidence["nvml"], d.problems)
    else:
        d.problems.append("nvml (what NVML said about the GPU) is missing")
    if "rims" in evidence:
        rims = evidence["rims"]
        if not isinstance(rims, Mapping) or not rims or any(k not in RIM_KINDS for k in rims):
            d.problems.append("rims must be an object with driver and/or vbios, each base64 XML")
        else:
            for kind in RIM_KINDS:
                if kind in rims and (xml := _blob(rims[kind], f"rims.{kind}", MAX_RIM, d.problems)):
                    d.rims[kind] = xml
    if "ocsp" in evidence:
        d.ocsp = _blobs(evidence["ocsp"], "ocsp", MAX_OCSP_RESPONSE, MAX_OCSP, d.problems)
    return d
