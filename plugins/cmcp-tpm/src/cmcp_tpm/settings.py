"""The `attestation.providers.tpm` settings: parsed once, validated fully, then frozen.

Pure stdlib, so the measurer and the verifier can read the same settings on a machine
without tpm2-pytss. Every problem is a `ProviderError` that names the setting by its full
config path and says how to fix it; unknown keys are refused rather than ignored, so a
misspelt setting never silently falls back to a default.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal, TypeVar

from cmcp_cli.attestation.api import ProviderError
from cmcp_cli.attestation.toolkit import settings_section

SECTION: Final = "attestation.providers.tpm"

DEFAULT_TCTI: Final = "device:/dev/tpmrm0"
DEFAULT_PCR: Final = 23
BOOT_PCRS: Final = (0, 1, 2, 3, 4, 5, 6, 7)  # firmware, option ROMs, boot loader, secure boot
DEFAULT_PCRS: Final = (*BOOT_PCRS, DEFAULT_PCR)
DEFAULT_AK_HANDLE: Final = 0x81010002
DEFAULT_AK_ALGORITHM: Final = "ecc"
AK_CERT_NV_INDEX: Final = 0x01C101D0  # Azure's AK certificate index
RSA_EK_CERT_NV_INDEX: Final = 0x01C00002  # TCG EK credential profile, RSA 2048 EK
ECC_EK_CERT_NV_INDEX: Final = 0x01C0000A  # TCG EK credential profile, ECC P-256 EK
# The profile's high range: RSA 2048, ECC P-256, ECC P-384 (swtpm's ECC EK), RSA 3072.
HIGH_RANGE_EK_CERT_NV_INDICES: Final = (0x01C00012, 0x01C00014, 0x01C00016, 0x01C0001C)
DEFAULT_EK_CERT_NV_INDICES: Final = (
    RSA_EK_CERT_NV_INDEX,
    ECC_EK_CERT_NV_INDEX,
    *HIGH_RANGE_EK_CERT_NV_INDICES,
)

# PCRs a PC-client TPM lets software reset at locality 0 (the debug PCR and the
# application PCR); any other PCR only changes by extend until the next reboot.
RESETTABLE_PCRS: Final = (16, 23)
PCR_COUNT: Final = 24
# EvictControl with owner authorization accepts persistent handles below the platform range.
PERSISTENT_FIRST: Final = 0x81000000
PERSISTENT_OWNER_LAST: Final = 0x817FFFFF
NV_INDEX_FIRST: Final = 0x01000000
NV_INDEX_LAST: Final = 0x01FFFFFF

SETTING_NAMES: Final = (
    "tcti",
    "pcr",
    "pcrs",
    "ak_handle",
    "ak_algorithm",
    "ak_cert_nv_index",
    "ek_cert_nv_indices",
)

_T = TypeVar("_T")
AkAlgorithm = Literal["ecc", "rsa"]
AK_ALGORITHMS: Final[tuple[AkAlgorithm, ...]] = ("ecc", "rsa")


@dataclass(frozen=True, slots=True)
class TpmSettings:
    """The validated settings; the defaults are those of a Linux host with a kernel RM."""

    tcti: str = DEFAULT_TCTI
    pcr: int = DEFAULT_PCR
    pcrs: tuple[int, ...] = DEFAULT_PCRS  # ascending, unique, includes `pcr`
    ak_handle: int = DEFAULT_AK_HANDLE
    ak_algorithm: AkAlgorithm = DEFAULT_AK_ALGORITHM
    ak_cert_nv_index: int = AK_CERT_NV_INDEX
    ek_cert_nv_indices: tuple[int, ...] = DEFAULT_EK_CERT_NV_INDICES

    @classmethod
    def parse(cls, settings: Mapping[str, Any] | None) -> TpmSettings:
        """Validate the provider's config section; `ProviderError` names the first problem."""
        settings = settings_section(
            settings, section=SECTION, accepted=SETTING_NAMES, provider="TPM"
        )
        defaults = cls()
        pcr = _read(settings, "pcr", _parse_pcr, defaults.pcr)
        # Without an explicit selection the quote covers the boot PCRs and the gateway's PCR.
        default_pcrs = (*BOOT_PCRS, pcr)
        parsed = cls(
            tcti=_read(settings, "tcti", _parse_tcti, defaults.tcti),
            pcr=pcr,
            pcrs=_read(settings, "pcrs", _parse_pcrs, default_pcrs),
            ak_handle=_read(settings, "ak_handle", _parse_ak_handle, defaults.ak_handle),
            ak_algorithm=_read(
                settings, "ak_algorithm", _parse_ak_algorithm, defaults.ak_algorithm
            ),
            ak_cert_nv_index=_read(
                settings, "ak_cert_nv_index", _parse_ak_cert_nv_index, defaults.ak_cert_nv_index
            ),
            ek_cert_nv_indices=_read(
                settings,
                "ek_cert_nv_indices",
                _parse_ek_cert_nv_indices,
                defaults.ek_cert_nv_indices,
            ),
        )
        if parsed.pcr not in parsed.pcrs:
            raise ProviderError(
                f"{SECTION}.pcrs does not include PCR {parsed.pcr}, the PCR that holds the "
                "policy bundle hash",
                hint=f"add {parsed.pcr} to {SECTION}.pcrs (a quote must cover it)",
            )
        return parsed


def _read(settings: Mapping[str, Any], key: str, parser: Callable[[object], _T], default: _T) -> _T:
    return parser(settings[key]) if key in settings else default


def _name(key: str) -> str:
    return f"{SECTION}.{key}"


def _parse_tcti(value: object) -> str:
    return tcti_setting(_name("tcti"), value)


def tcti_setting(name: str, value: object) -> str:
    """The TCTI string of the setting `name` (its full config path), checked."""
    if not isinstance(value, str) or not value.strip() or value != value.strip():
        raise ProviderError(
            f"{name} must be a TCTI string such as {DEFAULT_TCTI!r}, got {value!r}",
            hint='use "device:/dev/tpmrm0" for the kernel resource manager, '
            '"swtpm:host=127.0.0.1,port=2321" for a software TPM',
        )
    return value


def _pcr_index(key: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < PCR_COUNT:
        raise ProviderError(
            f"{_name(key)}: {value!r} is not a PCR index",
            hint=f"PCR indices are integers from 0 to {PCR_COUNT - 1}",
        )
    return value


def _parse_pcr(value: object) -> int:
    index = _pcr_index("pcr", value)
    if index not in RESETTABLE_PCRS:
        raise ProviderError(
            f"{_name('pcr')} is {index}, but the gateway must reset that PCR before extending "
            "the policy bundle hash, and only PCR 16 and PCR 23 can be reset at locality 0",
            hint=f"set {_name('pcr')} to 23 (the default) or 16",
        )
    return index


def _parse_pcrs(value: object) -> tuple[int, ...]:
    if isinstance(value, str) or not isinstance(value, list | tuple) or not value:
        raise ProviderError(
            f"{_name('pcrs')} must be a non-empty list of PCR indices, got {value!r}",
            hint=f"for example {list(DEFAULT_PCRS)}",
        )
    indices = [_pcr_index("pcrs", item) for item in value]
    duplicates = sorted({index for index in indices if indices.count(index) > 1})
    if duplicates:
        raise ProviderError(
            f"{_name('pcrs')} lists PCR {', '.join(map(str, duplicates))} more than once",
            hint="list each PCR once",
        )
    return tuple(sorted(indices))


def _handle(key: str, value: object, *, first: int, last: int, kind: str, example: str) -> int:
    return handle_setting(_name(key), value, first=first, last=last, kind=kind, example=example)


def handle_setting(
    name: str, value: object, *, first: int, last: int, kind: str, example: str
) -> int:
    """A TPM handle from `first` to `last`, given as an integer or a "0x..." string, of the
    setting `name` (its full config path)."""
    number: int | None = None
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, str) and value.lower().startswith("0x"):
        try:
            number = int(value, 16)
        except ValueError:
            number = None
    if number is None or not first <= number <= last:
        raise ProviderError(
            f"{name}: {value!r} is not a {kind} (0x{first:08X} to 0x{last:08X})",
            hint=f'give it as an integer or a hex string such as "{example}"',
        )
    return number


def _parse_ak_handle(value: object) -> int:
    return _handle(
        "ak_handle",
        value,
        first=PERSISTENT_FIRST,
        last=PERSISTENT_OWNER_LAST,
        kind="persistent handle the owner can evict a key to",
        example=f"0x{DEFAULT_AK_HANDLE:08X}",
    )


def _nv_index(key: str, value: object) -> int:
    return _handle(
        key,
        value,
        first=NV_INDEX_FIRST,
        last=NV_INDEX_LAST,
        kind="NV index handle",
        example=f"0x{AK_CERT_NV_INDEX:08X}",
    )


def _parse_ak_algorithm(value: object) -> AkAlgorithm:
    for algorithm in AK_ALGORITHMS:
        if value == algorithm:
            return algorithm
    raise ProviderError(
        f"{_name('ak_algorithm')}: {value!r} is not a supported AK algorithm",
        hint='use "ecc" (NIST P-256, ECDSA/SHA-256, the default) or "rsa" (2048, RSASSA/SHA-256)',
    )


def _parse_ak_cert_nv_index(value: object) -> int:
    return _nv_index("ak_cert_nv_index", value)


def _parse_ek_cert_nv_indices(value: object) -> tuple[int, ...]:
    if isinstance(value, str) or not isinstance(value, list | tuple):
        raise ProviderError(
            f"{_name('ek_cert_nv_indices')} must be a list of NV indices, got {value!r}",
            hint=f'for example ["0x{RSA_EK_CERT_NV_INDEX:08X}", "0x{ECC_EK_CERT_NV_INDEX:08X}"]'
            " (an empty list reads no EK certificate)",
        )
    indices = tuple(_nv_index("ek_cert_nv_indices", item) for item in value)
    if len(set(indices)) != len(indices):
        raise ProviderError(
            f"{_name('ek_cert_nv_indices')} lists an NV index more than once",
            hint="list each index once",
        )
    return indices
