"""Who signs a session's claim, as the session's log records it.

The issuer record (in session_start, or in session_end's `recovered_by` when a later
process closed the session after its own died) names the gateway process, its key, the
platform, measurement, evidence digest and appraisal of what attests them, and the
gateway build. Devices attested beside the platform (`devices`: provider, version,
evidence type, device and evidence digest of each) are recorded with the evidence they
were collected with, so the claim's `gateway.attestation.devices` is determined by the
same record as its CPU evidence.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cmcp_cli.audit.record_members import SessionRecordError, json_type, member
from cmcp_cli.claim.model import NO_APPRAISAL_VERIFIER, appraisal_item


@dataclass(frozen=True)
class DeviceRecord:
    """One device attested beside the platform, as the log keeps it: its evidence by digest."""

    provider: str
    provider_version: str
    evidence_type: str
    device: str
    evidence_digest: str

    def record(self) -> dict[str, str]:
        return dataclasses.asdict(self)


# The members of each item of a record's `devices`, all strings.
DEVICE_RECORD_FIELDS = tuple(field.name for field in dataclasses.fields(DeviceRecord))


@dataclass(frozen=True)
class Issuer:
    """Who signs a claim: the gateway process, its key and what attests them."""

    process: str  # a random id of the gateway process, fresh at every start
    key_thumbprint: str
    platform: str
    measurement: str
    evidence_digest: str
    gateway_version: str
    gateway_digest: str
    provider: str
    provider_version: str
    evidence_type: str
    generated_at: str
    slsa_level: int = 0
    appraisal_status: str = "none"
    appraisal_verifier: str = NO_APPRAISAL_VERIFIER
    # With the runtime's own appraisal: its policy's URI and when it was made.
    appraisal_policy_ref: str | None = None
    appraisal_timestamp: int | None = None
    # With the runtime's own appraisal: its checks that failed or were skipped, each
    # {name, status, reason} (why it is not `affirming`), kept beside `appraisal` as
    # `appraisal_checks`. A claim does not state them; the log says why.
    appraisal_checks: tuple[Mapping[str, str], ...] | None = None
    # The `attestation.expected_measurement` value the measurement matched (None when none
    # is configured), and `attestation.validity_seconds`: recorded (with the claim's
    # `stale_warnings`) when `validity_seconds` is given.
    measurement_pin: str | None = None
    validity_seconds: int | None = None
    devices: tuple[DeviceRecord, ...] = ()  # attested beside the platform, over its binding
    anchor_url: str | None = None  # `trace.anchor.url` of the issuing process, if any

    def appraisal(self) -> dict[str, Any]:
        """The record's `appraisal`: the claim's `trace.appraisal`."""
        return appraisal_item(
            status=self.appraisal_status,
            verifier=self.appraisal_verifier,
            policy_ref=self.appraisal_policy_ref,
            timestamp=self.appraisal_timestamp,
        )

    def appraisal_findings(self) -> dict[str, Any]:
        """`appraisal_checks`, when the runtime appraised its evidence."""
        if self.appraisal_checks is None:
            return {}
        return {"appraisal_checks": [dict(check) for check in self.appraisal_checks]}

    def record(self) -> dict[str, Any]:
        record: dict[str, Any] = {
            "process": self.process,
            "key_thumbprint": self.key_thumbprint,
            "platform": self.platform,
            "measurement": self.measurement,
            "evidence_digest": self.evidence_digest,
            "gateway_version": self.gateway_version,
            "gateway_digest": self.gateway_digest,
            "slsa_level": self.slsa_level,
            "appraisal": self.appraisal(),
            **self.appraisal_findings(),
            "attestation": {
                "provider": self.provider,
                "provider_version": self.provider_version,
                "evidence_type": self.evidence_type,
                "generated_at": self.generated_at,
            },
        }
        if self.validity_seconds is not None:
            record["attestation"] |= {
                "measurement_pin": self.measurement_pin,
                "validity_seconds": self.validity_seconds,
            }
        if self.devices:
            record["devices"] = [device.record() for device in self.devices]
        if self.anchor_url is not None:
            record["anchor_url"] = self.anchor_url
        return record


def issuer_of(start: Mapping[str, Any], end: Mapping[str, Any]) -> Mapping[str, Any]:
    """The issuer record of the session's claim: the recovering process's, when one closed
    it, else the session's own."""
    recovered = end.get("recovered_by")
    return recovered if isinstance(recovered, Mapping) else start


def issuer_member(start: Mapping[str, Any], end: Mapping[str, Any], name: str) -> str:
    """A string member of the claim's issuer record (`key_thumbprint`, `evidence_digest`),
    or `SessionRecordError` naming the record that lacks it."""
    issuer = issuer_of(start, end)
    who = "session_start" if issuer is start else "session_end.recovered_by"
    value: str = member(issuer, name, str, who)
    return value


def device_records(record: Mapping[str, Any], where: str) -> list[Mapping[str, Any]]:
    """The `devices` a record of evidence (an issuer record or an attestation entry)
    keeps, each with `DEVICE_RECORD_FIELDS` as strings; empty when it records none."""
    if "devices" not in record:
        return []
    devices = member(record, "devices", list, where)
    if not devices:
        raise SessionRecordError(f"{where} records an empty devices list")
    for index, device in enumerate(devices):
        at = f"{where}.devices[{index}]"
        if not isinstance(device, Mapping):
            raise SessionRecordError(f"{at} is {json_type(device)}, not an object")
        for name in DEVICE_RECORD_FIELDS:
            member(device, name, str, at)
    return list(devices)
