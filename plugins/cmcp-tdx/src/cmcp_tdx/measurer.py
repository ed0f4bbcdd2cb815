"""`cmcp measure tdx`: the measurement a TD's quotes will carry, computed offline.

The tdx-quote-v1 measurement is `sha384:` + SHA-384(MRTD || RTMR0 || RTMR1 || RTMR2 ||
RTMR3) (see `cmcp_tdx.measurement`). MRTD comes from the TDVF/OVMF image (`--firmware`,
computed from its TDX metadata) or is given (`--mrtd`); RTMR0..3 come from a CCEL event
log (`--event-log`, replayed) or are given (`--rtmr0` .. `--rtmr3`). Inputs that overlap
or leave a register unknown are refused, naming the options.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Final

from cmcp_cli.attestation.api import (
    MeasureInputs,
    MeasureOption,
    Measurer,
    MeasureResult,
    ProviderError,
)
from cmcp_cli.attestation.toolkit import measure_value
from cmcp_tdx import ccel, tdvf
from cmcp_tdx.measurement import measurement_string

MAX_FIRMWARE: Final = 64 << 20
MAX_LOG: Final = 16 << 20
_HEX48 = re.compile(r"[0-9a-fA-F]{96}")
RTMR_OPTIONS: Final = ("rtmr0", "rtmr1", "rtmr2", "rtmr3")

OPTIONS: tuple[MeasureOption, ...] = (
    MeasureOption(
        "firmware",
        "The TDVF/OVMF image the VMM boots the TD with; MRTD is computed from its TDX metadata.",
        metavar="PATH",
    ),
    MeasureOption(
        "page-order",
        "How the VMM measured the firmware pages: single (add and extend page by page, Linux "
        "KVM; the default) or two-pass (all of a section's adds, then its extends).",
        metavar="ORDER",
    ),
    MeasureOption(
        "mrtd", "MRTD given directly (96 hex digits), instead of --firmware.", metavar="HEX"
    ),
    MeasureOption(
        "event-log",
        "The TD's CCEL event log (/sys/firmware/acpi/tables/data/CCEL); RTMR0..3 are replayed "
        "from it.",
        metavar="PATH",
    ),
    *(
        MeasureOption(
            name, f"{name.upper()} given directly (96 hex digits), not from --event-log.", "HEX"
        )
        for name in RTMR_OPTIONS
    ),
)


def _hex(value: str, name: str) -> bytes:
    if not _HEX48.fullmatch(value):
        raise ProviderError(
            f"--{name} {value!r} is not a 48-byte register in hex",
            hint="give 96 hex digits, as a quote or `cmcp verify` shows them",
        )
    return bytes.fromhex(value)


def _read(path_text: str, name: str, limit: int) -> bytes:
    path = Path(path_text)
    try:
        with path.open("rb") as stream:
            data = stream.read(limit + 1)
    except OSError as error:
        raise ProviderError(f"--{name} {path} cannot be read: {error.strerror or error}") from None
    if len(data) > limit:
        raise ProviderError(f"--{name} {path} is larger than {limit} bytes")
    return data


def _mrtd(inputs: MeasureInputs) -> tuple[bytes, str]:
    firmware, given, order = (
        measure_value(inputs.values, "firmware"),
        measure_value(inputs.values, "mrtd"),
        measure_value(inputs.values, "page-order"),
    )
    if firmware is not None and given is not None:
        raise ProviderError("--firmware and --mrtd both give MRTD", hint="give one of them")
    if given is not None:
        if order is not None:
            raise ProviderError("--page-order applies only to --firmware")
        return _hex(given, "mrtd"), "--mrtd"
    if firmware is None:
        raise ProviderError(
            "MRTD is unknown: give --firmware (the TDVF image) or --mrtd",
            hint="for a cloud TD, take MRTD from a quote of the same image and firmware",
        )
    if order is not None and order not in tdvf.PAGE_ORDERS:
        raise ProviderError(f"--page-order {order!r} is not single or two-pass")
    image = _read(firmware, "firmware", MAX_FIRMWARE)
    try:
        value = tdvf.mrtd(image, "two-pass" if order == "two-pass" else "single")
    except tdvf.TdvfError as error:
        raise ProviderError(f"--firmware {firmware}: {error}") from None
    return value, f"--firmware {firmware} ({order or 'single'} page order)"


def _rtmrs(inputs: MeasureInputs) -> tuple[list[bytes], str, int | None]:
    log_path = measure_value(inputs.values, "event-log")
    given = {name: measure_value(inputs.values, name) for name in RTMR_OPTIONS}
    named = [f"--{name}" for name, value in given.items() if value is not None]
    if log_path is not None:
        if named:
            raise ProviderError(
                f"--event-log and {', '.join(named)} both give RTMRs", hint="give one source"
            )
        try:
            events = ccel.parse(_read(log_path, "event-log", MAX_LOG))
            return list(ccel.replay(events)), f"--event-log {log_path}", len(events)
        except ccel.CcelError as error:
            raise ProviderError(f"--event-log {log_path}: {error}") from None
    missing = [f"--{name}" for name, value in given.items() if value is None]
    if missing:
        raise ProviderError(
            "RTMRs are unknown: give --event-log, or all of --rtmr0..--rtmr3 "
            f"(missing {', '.join(missing)})"
        )
    return [_hex(value or "", name) for name, value in given.items()], "--rtmr0..3", None


class TdxMeasurer(Measurer):
    """The Measurer of the tdx provider (see the module docstring)."""

    @property
    def options(self) -> Sequence[MeasureOption]:
        return OPTIONS

    def measure(self, inputs: MeasureInputs) -> MeasureResult:
        mrtd, mrtd_source = _mrtd(inputs)
        rtmrs, rtmr_source, events = _rtmrs(inputs)
        details: dict[str, object] = {
            "mrtd": mrtd.hex(),
            **{f"rtmr{n}": value.hex() for n, value in enumerate(rtmrs)},
            "mrtd_source": mrtd_source,
            "rtmr_source": rtmr_source,
        }
        if events is not None:
            details["events"] = events
        return MeasureResult(measurement_string(mrtd, rtmrs), details)
