"""`cmcp measure tpm`: the measurement a TPM gateway's quotes will carry, computed offline.

A tpm2-quote-v1 measurement is the quote's pcrDigest: the hash of the selected PCR values
in ascending index order. The measurer rebuilds each selected value from what is known to
be extended into it:

- the gateway's PCR (`--pcr`, default 23) is reset by the gateway and then extended with
  the 32 bytes of the policy bundle hash (`--bundle-hash`), or with the extends recorded in
  a cMCP JSON event log (the `event_log` of earlier evidence);
- firmware PCRs come from the TCG event log (binary_bios_measurements);
- `--file PCR=PATH` extends the hash of a file's bytes, after any log events of that PCR;
- a selected PCR that nothing measures keeps its reset value, which the details report as
  "unmeasured" (zeros; 0xFF..FF for PCRs 17-22, which only a dynamic launch resets).

With `--config` the host passes that gateway's bundle hash and `attestation.providers.tpm`
settings, which then stand in for --bundle-hash, --pcr and --pcrs.

Inputs that contradict each other are refused with a `ProviderError` naming the options,
because a measurement computed from them could never match a real quote.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cmcp_cli.attestation.api import (
    GatewayFacts,
    MeasureInputs,
    MeasureOption,
    Measurer,
    MeasureResult,
    ProviderError,
)
from cmcp_cli.attestation.toolkit import measure_value
from cmcp_tpm import eventlog, pcr
from cmcp_tpm.settings import BOOT_PCRS, DEFAULT_PCR, RESETTABLE_PCRS, SECTION, TpmSettings

DYNAMIC_LAUNCH_PCRS = range(17, 23)
BANKS = ("sha256", "sha384")
BUNDLE_BANK = "sha256"  # the gateway extends the bundle hash into the sha256 bank only
_BUNDLE_HASH = re.compile(r"sha256:([0-9a-fA-F]{64})")
_FILE_CHUNK = 1 << 20
MAX_LOG_BYTES = 64 << 20  # firmware logs are kilobytes; this bounds a wrong path's cost

OPTIONS: tuple[MeasureOption, ...] = (
    MeasureOption(
        "pcrs",
        "PCRs the gateway quotes, as in its `pcrs` setting, e.g. 0-7,23 (default: 0-7 and "
        "--pcr; with --config, that gateway's).",
        metavar="SELECTION",
    ),
    MeasureOption(
        "pcr",
        "The PCR the gateway resets and extends with the policy bundle hash, as in its "
        f"`pcr` setting: 16 or 23 (default {DEFAULT_PCR}; with --config, that gateway's).",
        metavar="N",
    ),
    MeasureOption(
        "bundle-hash",
        "The policy bundle hash the gateway extends into --pcr, as `cmcp validate-bundle` "
        "prints it. Needed unless --config or an --event-log from the gateway's evidence "
        "gives it.",
        metavar="sha256:HEX",
    ),
    MeasureOption(
        "event-log",
        "An event log to replay: a TCG crypto-agile log (binary_bios_measurements) or a cMCP "
        "JSON log (evidence, claim, or its event_log list), told apart by content. Repeatable.",
        metavar="PATH",
        multiple=True,
    ),
    MeasureOption(
        "file",
        "Extend the hash of the file's bytes into PCR, after that PCR's log events and in "
        "the order given (files measured into a PCR). Repeatable.",
        metavar="PCR=PATH",
        multiple=True,
    ),
    MeasureOption(
        "bank",
        "The quoted PCR bank: sha256 (default, the bank the gateway quotes) or sha384.",
        metavar="ALG",
    ),
)


@dataclass
class _Pcr:
    """What is known about one PCR's value: where it starts, what extended it."""

    value: bytes
    events: int = 0
    sources: list[str] = field(default_factory=list)
    log: str | None = None  # the event log that feeds it, at most one
    bundle_hash: str | None = None  # the gateway PCR's bundle hash, as a log records it


@dataclass(frozen=True, slots=True)
class _Settings:
    selection: tuple[int, ...]
    gateway_pcr: int
    bank: str
    bundle_hash: str | None
    event_logs: tuple[str, ...]
    files: tuple[str, ...]


class TpmMeasurer(Measurer):
    """The Measurer of the tpm provider (see the module docstring)."""

    @property
    def options(self) -> Sequence[MeasureOption]:
        return OPTIONS

    def measure(self, inputs: MeasureInputs) -> MeasureResult:
        settings = _settings(inputs)
        pcrs: dict[int, _Pcr] = {}
        sources = [_apply_log(path, settings, pcrs) for path in settings.event_logs]
        sources.append(_apply_gateway(settings, pcrs))
        sources.extend(_apply_file(spec, settings, pcrs) for spec in settings.files)
        ordered = [
            pcrs.get(index) or _unmeasured(settings.bank, index) for index in settings.selection
        ]
        digest = pcr.composite(settings.bank, (state.value for state in ordered))
        details = {
            "bank": settings.bank,
            "selection": list(settings.selection),
            "gateway_pcr": settings.gateway_pcr,
            "pcrs": {
                str(index): {
                    "value": state.value.hex(),
                    "events": state.events,
                    "state": "measured" if state.sources else "unmeasured",
                    "sources": state.sources,
                }
                for index, state in zip(settings.selection, ordered, strict=True)
            },
            "sources": sources,
        }
        return MeasureResult(pcr.measurement_string(settings.bank, digest), details)


# ---------------------------------------------------------------- options


def _settings(inputs: MeasureInputs) -> _Settings:
    """The options, with a `--config` gateway's settings and bundle hash as defaults; an
    option that contradicts that config is refused, since the result would describe
    another gateway."""
    values = inputs.values
    configured = TpmSettings.parse(inputs.settings) if inputs.facts is not None else None
    gateway_pcr = _gateway_pcr(measure_value(values, "pcr"), configured)
    selection_text = measure_value(values, "pcrs")
    if selection_text is None:
        selection = configured.pcrs if configured else (*BOOT_PCRS, gateway_pcr)
        selection_text = _selection_text(selection)
    else:
        try:
            selection = pcr.parse_selection(selection_text)
        except ValueError as exc:
            raise ProviderError(
                f"--pcrs {selection_text}: {exc}", hint="give PCR indices and ranges, e.g. 0-7,23"
            ) from None
        if configured is not None and selection != configured.pcrs:
            raise ProviderError(
                f"--pcrs {selection_text} differs from {SECTION}.pcrs "
                f"({_selection_text(configured.pcrs)}) of the --config gateway",
                hint="drop --pcrs to measure that gateway, or drop --config",
            )
    if gateway_pcr not in selection:
        raise ProviderError(
            f"--pcr {gateway_pcr} is not in --pcrs {selection_text}: the quote would not "
            "cover the policy bundle hash",
            hint=f"add {gateway_pcr} to --pcrs (the gateway's `pcrs` setting must include "
            "its `pcr`)",
        )
    bank = measure_value(values, "bank") or "sha256"
    if bank not in BANKS:
        raise ProviderError(f"--bank {bank}: not a quoted bank", hint="use sha256 or sha384")
    bundle_hash = _bundle_hash(measure_value(values, "bundle-hash"), inputs.facts)
    if bundle_hash is not None and bank != BUNDLE_BANK:
        raise ProviderError(
            f"the gateway extends the policy bundle hash into the {BUNDLE_BANK} bank only, "
            f"so a --bank {bank} quote does not cover it",
            hint=f"measure the gateway's quote with --bank {BUNDLE_BANK}",
        )
    return _Settings(
        selection=selection,
        gateway_pcr=gateway_pcr,
        bank=bank,
        bundle_hash=bundle_hash,
        event_logs=values.get("event-log", ()),
        files=values.get("file", ()),
    )


def _gateway_pcr(text: str | None, configured: TpmSettings | None) -> int:
    if text is None:
        return configured.pcr if configured else DEFAULT_PCR
    if not text.strip().isdecimal() or int(text) not in RESETTABLE_PCRS:
        raise ProviderError(
            f"--pcr {text}: the gateway's PCR must be 16 or 23",
            hint="only PCRs 16 and 23 can be reset at locality 0; use the gateway's `pcr` setting",
        )
    if configured is not None and int(text) != configured.pcr:
        raise ProviderError(
            f"--pcr {text} differs from {SECTION}.pcr ({configured.pcr}) of the --config gateway",
            hint="drop --pcr to measure that gateway, or drop --config",
        )
    return int(text)


def _bundle_hash(text: str | None, facts: GatewayFacts | None) -> str | None:
    if text is None:
        return facts.bundle_hash if facts else None
    match = _BUNDLE_HASH.fullmatch(text.strip())
    if match is None:
        raise ProviderError(
            f"--bundle-hash {text}: not sha256:<64 hex digits>",
            hint="copy the bundle hash that `cmcp validate-bundle --bundle-path DIR` prints",
        )
    bundle_hash = "sha256:" + match.group(1).lower()
    if facts is not None and bundle_hash != facts.bundle_hash:
        raise ProviderError(
            f"--bundle-hash {bundle_hash} differs from the --config gateway's policy bundle "
            f"hash {facts.bundle_hash}",
            hint="drop --bundle-hash to measure that gateway's bundle, or drop --config",
        )
    return bundle_hash


def _selection_text(selection: Sequence[int]) -> str:
    return ",".join(map(str, selection))


def _unmeasured(bank: str, index: int) -> _Pcr:
    size = pcr.DIGEST_SIZES[bank]
    return _Pcr(b"\xff" * size if index in DYNAMIC_LAUNCH_PCRS else pcr.initial_value(bank))


# ---------------------------------------------------------------- sources


def _apply_log(path: str, settings: _Settings, pcrs: dict[int, _Pcr]) -> dict[str, Any]:
    try:
        with Path(path).open("rb") as stream:
            data = stream.read(MAX_LOG_BYTES + 1)
    except OSError as exc:
        raise ProviderError(
            f"--event-log {path}: cannot read it ({exc.strerror or exc})",
            hint="reading /sys/kernel/security/tpm0/binary_bios_measurements needs root; "
            "copy it to a file first",
        ) from None
    if len(data) > MAX_LOG_BYTES:
        raise ProviderError(
            f"--event-log {path} is larger than {MAX_LOG_BYTES >> 20} MiB: not an event log",
            hint="give binary_bios_measurements or the gateway's evidence JSON",
        )
    try:
        log = eventlog.load_event_log(data)
    except eventlog.EventLogError as exc:
        raise ProviderError(
            f"--event-log {path}: not a usable event log: {exc}",
            hint="give a TCG crypto-agile binary log or a cMCP evidence/claim JSON file",
        ) from None
    bank = settings.bank
    if not any(event.extended for event in log.events):
        raise ProviderError(
            f"--event-log {path} records no extends", hint="give the log of the quoted boot"
        )
    if bank not in log.banks:
        raise ProviderError(
            f"--event-log {path} records no {bank} digests "
            f"(it has {', '.join(log.algorithms) or 'none'})",
            hint="choose a --bank the log records, or the log of the quoted TPM",
        )
    values = eventlog.replay(log)[bank]
    counts = eventlog.extend_counts(log, bank)
    label = f"event-log:{path}"
    _check_bundle_pcr(path, log, settings)
    logged_bundle = None
    if settings.gateway_pcr in values:
        logged_bundle = _check_gateway_log(path, log, settings)
    for index, value in values.items():
        earlier = pcrs.get(index)
        if earlier is not None:
            raise ProviderError(
                f"PCR {index} is fed by both --event-log {earlier.log} and --event-log {path}",
                hint="one boot has one log: give each PCR's log once",
            )
        pcrs[index] = _Pcr(value, counts.get(index, 0), [label], log=path)
    if logged_bundle is not None:
        pcrs[settings.gateway_pcr].bundle_hash = logged_bundle
    source: dict[str, Any] = {
        "kind": "tcg-event-log" if log.format == "tcg" else "cmcp-event-log",
        "path": path,
        "events": sum(counts.values()),
        "pcrs": sorted(values),
        "banks": list(log.algorithms),
    }
    if log.startup_locality is not None:
        source["startup_locality"] = log.startup_locality
    if log.padding:
        source["padding_bytes"] = log.padding
    return source


def _check_gateway_log(path: str, log: eventlog.EventLog, settings: _Settings) -> str | None:
    """A log that feeds the gateway's PCR must be the gateway's own and agree with
    --bundle-hash (the gateway resets that PCR, so firmware events in it cannot count).
    Returns the bundle hash the log records."""
    index = settings.gateway_pcr
    if log.format == "tcg":
        raise ProviderError(
            f"--event-log {path} is a firmware log with events for PCR {index}, the "
            "gateway's --pcr; the gateway resets that PCR and extends the policy bundle "
            "hash into it",
            hint="set the gateway's `pcr` (and --pcr) to the one of 16 and 23 the firmware "
            "does not use",
        )
    recorded = [e for e in _bundle_events(log) if e.pcr == index]
    logged_hash = recorded[0].description if len(recorded) == 1 else None
    if settings.bundle_hash is None:
        return logged_hash
    expected = bytes.fromhex(settings.bundle_hash.removeprefix("sha256:"))
    if not (
        logged_hash == settings.bundle_hash and recorded[0].digests.get(BUNDLE_BANK) == expected
    ):
        found = ", ".join(str(e.description) for e in recorded) or "no policy bundle event"
        raise ProviderError(
            f"--event-log {path} disagrees with --bundle-hash {settings.bundle_hash}: "
            f"for PCR {index} it records {found}",
            hint="drop --bundle-hash to measure what the log records, or leave out this log "
            "when the gateway now loads a different bundle",
        )
    return logged_hash


def _bundle_events(log: eventlog.EventLog) -> list[eventlog.LogEvent]:
    return [e for e in log.events if e.event_type == eventlog.CMCP_POLICY_BUNDLE_EVENT]


def _check_bundle_pcr(path: str, log: eventlog.EventLog, settings: _Settings) -> None:
    elsewhere = sorted({e.pcr for e in _bundle_events(log) if e.pcr != settings.gateway_pcr})
    if elsewhere:
        raise ProviderError(
            f"--event-log {path} records the policy bundle extended into PCR "
            f"{', '.join(map(str, elsewhere))}, but --pcr is {settings.gateway_pcr}",
            hint=f"pass --pcr {elsewhere[0]}, the gateway's `pcr` setting",
        )


def _apply_gateway(settings: _Settings, pcrs: dict[int, _Pcr]) -> dict[str, Any]:
    index = settings.gateway_pcr
    fed = pcrs.get(index)
    if fed is not None:  # a cMCP log records the gateway's extends, checked to agree
        return {
            "kind": "bundle-hash",
            "pcr": index,
            "value": fed.bundle_hash,
            "recorded_in": fed.log,
        }
    if settings.bundle_hash is None:
        raise ProviderError(
            f"nothing says what the gateway extends into PCR {index}",
            hint="pass --config with the gateway's config, --bundle-hash sha256:... "
            "(`cmcp validate-bundle --bundle-path DIR` prints it), or --event-log with "
            "evidence from the gateway",
        )
    digest = bytes.fromhex(settings.bundle_hash.removeprefix("sha256:"))
    label = f"bundle-hash:{settings.bundle_hash}"
    pcrs[index] = _Pcr(pcr.replay(settings.bank, [digest]), 1, [label])
    return {"kind": "bundle-hash", "pcr": index, "value": settings.bundle_hash}


def _apply_file(spec: str, settings: _Settings, pcrs: dict[int, _Pcr]) -> dict[str, Any]:
    index_text, separator, path = spec.partition("=")
    index_text = index_text.strip()
    if not separator or not path or not index_text.isdecimal():
        raise ProviderError(f"--file {spec}: not PCR=PATH", hint="e.g. --file 8=/boot/vmlinuz")
    index = int(index_text)
    if index not in settings.selection:
        raise ProviderError(
            f"--file {spec}: PCR {index} is not in the quoted selection, so the file would "
            "not change the measurement",
            hint=f"add {index} to --pcrs, or drop this --file",
        )
    if index == settings.gateway_pcr:
        raise ProviderError(
            f"--file {spec}: PCR {index} is the gateway's --pcr, which holds only the "
            "policy bundle hash",
            hint="measure files into another PCR",
        )
    digest = _file_digest(settings.bank, spec, path)
    state = pcrs.setdefault(index, _unmeasured(settings.bank, index))
    state.value = pcr.extend(settings.bank, state.value, digest)
    state.events += 1
    state.sources.append(f"file:{path}")
    return {"kind": "file", "pcr": index, "path": path, "digest": digest.hex()}


def _file_digest(bank: str, spec: str, path: str) -> bytes:
    hasher = hashlib.new(bank)
    try:
        with Path(path).open("rb") as stream:
            while chunk := stream.read(_FILE_CHUNK):
                hasher.update(chunk)
    except OSError as exc:
        raise ProviderError(
            f"--file {spec}: cannot read {path} ({exc.strerror or exc})",
            hint="give a readable file",
        ) from None
    return hasher.digest()
