"""`cmcp measure gpu-cc --rim DRIVER.xml --rim VBIOS.xml`: the golden values of a GPU as a
pair of NVIDIA RIMs states them, for the auditor's `[gpu-cc]` platform policy.

Both RIMs are verified first, exactly as the verifier does (XML-DSig by signxml with the
signer chain walked to the pinned NVIDIA CoRIM signing root), judged at `--at` or, without
it, at the time the command runs: a RIM whose signer has expired is refused, so what is
pinned is what NVIDIA vouches for at that time. Which RIM is the driver's and which the
VBIOS's follows from its version (550.144.03 against 96.00.5E.00.01), in either order.

The measurement printed is `rim_set_measurement` of the pair: sha384 over the canonical JSON
of both RIMs' product, version and active indices with their alternatives, the string the
gpu-cc verifier states for a GPU whose stapled RIMs verify. `--json` adds the versions
(`minimum_driver_version`, `minimum_vbios_version` of the `[gpu-cc]` table), every active
index with its alternatives, and each signer chain's validity.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from cmcp_cli.attestation.api import (
    MeasureInputs,
    MeasureOption,
    Measurer,
    MeasureResult,
    ProviderError,
)
from cmcp_cli.attestation.toolkit import common_name, measure_value, measure_values
from cmcp_gpucc.rim import MAX_RIM_BYTES, Rim, RimError, rim_set_measurement, verify_rim
from cmcp_gpucc.roots import RootError, trust_set

OPTIONS: Final = (
    MeasureOption(
        "rim",
        "A RIM file: give the driver RIM and the VBIOS RIM of the GPU (NVIDIA's RIM service "
        "serves both), in either order.",
        "FILE",
        multiple=True,
        required=True,
    ),
    MeasureOption(
        "at",
        "Judge the RIM signatures at this time (ISO 8601, e.g. 2026-12-01T00:00:00Z) instead "
        "of now.",
        "TIME",
    ),
    MeasureOption(
        "trust-root",
        "A PEM file of the CoRIM signing root to trust instead of NVIDIA's vendored one "
        "(a test root).",
        "PEM",
        multiple=True,
    ),
)
HINT: Final = (
    "give the RIMs NVIDIA publishes for this driver and VBIOS (https://rim.attestation.nvidia.com"
    "/v1/rim/<RIM id>), unedited"
)


def _read(name: str, value: str, limit: int) -> bytes:
    path = Path(value)
    if not path.is_file():
        raise ProviderError(f"--{name} {value}: no such file")
    if path.stat().st_size > limit:
        raise ProviderError(f"--{name} {value} is larger than {limit} bytes: it is not a {name}")
    return path.read_bytes()


def _moment(value: str | None) -> datetime:
    if value is None:
        return datetime.now(UTC)
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise ProviderError(
            f"--at {value!r} is not an ISO 8601 time", hint="e.g. --at 2026-12-01T00:00:00Z"
        ) from None
    if moment.tzinfo is None:
        raise ProviderError(
            f"--at {value!r} has no time zone", hint="add Z for UTC: --at 2026-12-01T00:00:00Z"
        )
    return moment.astimezone(UTC)


def _pair(rims: Sequence[tuple[str, Rim]]) -> tuple[tuple[str, Rim], tuple[str, Rim]]:
    by_kind: dict[str, tuple[str, Rim]] = {}
    for path, rim in rims:
        if rim.kind is None:
            raise ProviderError(
                f"--rim {path} is a {rim.product or rim.name} {rim.edition} RIM version "
                f"{rim.version}, neither a GPU driver nor a GPU VBIOS RIM",
                hint=HINT,
            )
        if rim.kind in by_kind:
            raise ProviderError(
                f"--rim {by_kind[rim.kind][0]} and --rim {path} are both {rim.kind} RIMs",
                hint="give one driver RIM and one VBIOS RIM",
            )
        by_kind[rim.kind] = (path, rim)
    driver, vbios = by_kind["driver"], by_kind["vbios"]
    if driver[1].product != vbios[1].product:
        raise ProviderError(
            f"the driver RIM is for {driver[1].product} and the VBIOS RIM for "
            f"{vbios[1].product}: they describe different GPUs",
            hint="give the two RIMs of one GPU model",
        )
    both = sorted({m.index for m in driver[1].active} & {m.index for m in vbios[1].active})
    if both:
        raise ProviderError(
            f"RIM indices {', '.join(map(str, both))} are active in both the driver and the "
            "VBIOS RIM, so the verifier refuses this pair as ambiguous",
            hint="give the driver and VBIOS RIMs NVIDIA publishes for one GPU",
        )
    return driver, vbios


def _details(path: str, rim: Rim) -> dict[str, Any]:
    chain = rim.signer_chain
    return {
        "file": path,
        "product": rim.product,
        "version": rim.version,
        "tag_id": rim.tag_id,
        "signer": common_name(chain[0]),
        "signed_under": common_name(chain[-1]),
        "valid_from": max(cert.not_valid_before_utc for cert in chain).isoformat(),
        "valid_until": min(cert.not_valid_after_utc for cert in chain).isoformat(),
        "active": {str(m.index): [value.hex() for value in m.alternatives] for m in rim.active},
    }


class GpuMeasurer(Measurer):
    """The Measurer of the gpu-cc provider (see the module docstring)."""

    @property
    def options(self) -> Sequence[MeasureOption]:
        return OPTIONS

    def measure(self, inputs: MeasureInputs) -> MeasureResult:
        values = measure_values(inputs.values, OPTIONS)
        paths = values.get("rim", ())
        if len(paths) != 2:
            raise ProviderError(
                f"--rim is given {len(paths)} time(s): give it twice, the driver RIM and the "
                "VBIOS RIM",
                hint="cmcp measure gpu-cc --rim DRIVER.xml --rim VBIOS.xml",
            )
        at = _moment(measure_value(values, "at"))
        pems = [_read("trust-root", value, 1 << 20) for value in values.get("trust-root", ())]
        try:
            trust = trust_set(pems)
        except RootError as error:
            raise ProviderError(f"--trust-root: {error}") from None
        roots = [anchor.cert for anchor in trust.rim]
        verified = []
        for path in paths:
            try:
                verified.append((path, verify_rim(_read("rim", path, MAX_RIM_BYTES), roots, at)))
            except RimError as error:
                raise ProviderError(
                    f"--rim {path} does not verify at {at.isoformat()}: {error}", hint=HINT
                ) from None
        (driver_path, driver), (vbios_path, vbios) = _pair(verified)
        details = {
            "judged_at": at.isoformat(),
            "roots": trust.describe(trust.rim),
            "driver": _details(driver_path, driver),
            "vbios": _details(vbios_path, vbios),
            "platform_policy": {
                "minimum_driver_version": driver.version,
                "minimum_vbios_version": vbios.version,
            },
        }
        return MeasureResult(rim_set_measurement(driver, vbios), details)
