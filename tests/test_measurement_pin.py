"""`attestation.expected_measurement` through the real CLI, software provider in dev mode:
a wrong pin keeps the gateway from serving at all; the right one (`cmcp measure
software`) serves, `/readyz` reports the pin it matched, and the claim names that pin
and verifies with `--expected-measurement`. The SEV-SNP and TDX measurement strings are
held to the pins the same way, through their collectors' test doubles."""

from __future__ import annotations

import asyncio
import json
import socket
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import yaml

from cmcp_cli.evidence.attesting import Attestor, MeasurementMismatchError
from cmcp_cli.gateway.runtime import StartupError, check_measurement
from cmcp_sev.plugin import SPEC as SEV_SPEC
from cmcp_tdx.plugin import SPEC as TDX_SPEC
from tests.gateway_support import Served, request, start_gateway, weather_session, write_config
from tests.sessions import record_session
from tests.support import run_cmcp
from tests.test_confidential_vm_claims import RecordedEvidence, milan_evidence, tdx_evidence

WRONG = "sha256:" + "ab" * 32
DEV = {"CMCP_DEV_MODE": "1"}


def _port(config: Path) -> int:
    return int(yaml.safe_load(config.read_text())["listen_addr"].rsplit(":", 1)[1])


def _listening(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(1)
        return probe.connect_ex(("127.0.0.1", port)) == 0


def _software(pins: list[str]) -> dict[str, Any]:
    return {"provider": "software-only", "expected_measurement": pins}


def test_a_wrong_pin_refuses_to_start_and_nothing_listens(tmp_path: Path, upstream: Served) -> None:
    config = write_config(tmp_path, upstream.url, attestation=_software([WRONG]))
    started = run_cmcp("start", "--config", config, env=DEV)
    assert started.returncode != 0
    measured = run_cmcp("measure", "software").stdout.strip()
    # the message names the stated measurement, the pinned one and the way to the right one
    text = " ".join(started.stderr.split())
    assert measured in text and WRONG in text and "cmcp measure software" in text, text
    assert not _listening(_port(config))
    assert not list((tmp_path / "claims").glob("*.claim.json"))


def test_the_measured_pin_serves_and_its_claim_names_the_pin(
    tmp_path: Path, upstream: Served
) -> None:
    measured = run_cmcp("measure", "software")
    assert measured.returncode == 0, measured.stderr
    measurement = measured.stdout.strip()
    config = write_config(tmp_path, upstream.url, attestation=_software([WRONG, measurement]))
    gateway = start_gateway(config)
    try:
        status, _, body = request(gateway.port, "GET", "/readyz")
        assert status == 200
        assert json.loads(body)["measurement"] == {
            "pinned": True,
            "pins": [WRONG, measurement],
            "measurement": measurement,
            "matched_pin": measurement,
        }
        assert "Paris" in asyncio.run(weather_session(gateway.url))
    finally:
        assert gateway.stop() == 0, gateway.output()
    (claim_path,) = sorted((tmp_path / "claims").glob("*.claim.json"))
    attestation = json.loads(claim_path.read_text())["gateway"]["attestation"]
    assert attestation["measurement_pin"] == measurement
    assert attestation["validity_seconds"] == 86_400 and attestation["stale_warnings"] == 0
    verified = run_cmcp(
        "verify",
        claim_path,
        "--expected-measurement",
        measurement,
        "--allow-software",
        "--audit-log",
        tmp_path / "audit.db",
        "--json",
    )
    assert verified.returncode == 0, verified.stdout


def test_without_a_pin_readyz_says_so_and_the_claim_names_none(
    tmp_path: Path, upstream: Served
) -> None:
    config = write_config(tmp_path, upstream.url, attestation={"provider": "software-only"})
    gateway = start_gateway(config)
    try:
        status, _, body = request(gateway.port, "GET", "/readyz")
        assert status == 200 and json.loads(body)["measurement"]["pinned"] is False
        asyncio.run(weather_session(gateway.url))
    finally:
        assert gateway.stop() == 0, gateway.output()
    (claim_path,) = sorted((tmp_path / "claims").glob("*.claim.json"))
    assert json.loads(claim_path.read_text())["gateway"]["attestation"]["measurement_pin"] is None


@pytest.mark.parametrize("vector", ["tdx", "sev-snp"])
def test_tee_measurements_are_held_to_the_pins(tmp_path: Path, vector: str) -> None:
    """The SEV-SNP and TDX measurement strings (genuine vendor evidence, handed out by a
    collector double) are compared with the pins as `cmcp start` compares them, and as
    each session compares its own: outside the set nothing starts and no session opens."""
    if vector == "tdx":
        spec, evidence = TDX_SPEC, tdx_evidence("gotdx-cos113-quote-v4.dat")
    else:
        spec, evidence = SEV_SPEC, milan_evidence()
    pinned = Attestor(spec, "0.1.0", RecordedEvidence(evidence), pins=(evidence.measurement,))
    check = check_measurement(pinned, "sha256:" + "00" * 32, "sha256:" + "00" * 32)
    assert check.matched == evidence.measurement
    wrong = replace(pinned, pins=("sha384:" + "ab" * 48,))
    with pytest.raises(StartupError) as refused:
        check_measurement(wrong, "sha256:" + "00" * 32, "sha256:" + "00" * 32)
    assert evidence.measurement in refused.value.message and "cmcp measure" in str(
        refused.value.hint
    )
    with pytest.raises(MeasurementMismatchError):
        record_session(tmp_path / "refused", attestor=wrong)
    assert not (tmp_path / "refused" / "sess-1.claim.json").exists()
    claim = record_session(tmp_path, attestor=replace(pinned, validity_seconds=600)).claim
    assert claim["gateway"]["attestation"]["measurement_pin"] == evidence.measurement
