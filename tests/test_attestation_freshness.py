"""The attestation lifecycle on a real software TPM (swtpm) through the real CLI: a
wrong `expected_measurement` refuses to start, the one `cmcp measure tpm` prints serves;
a session kept open past a short `validity_seconds` is attested again (more quotes, the
chain's `attestation` entries, the claim carrying the newest and verifying); and a PCR
the test extends behind the gateway's back makes the evidence stale, which
`staleness_policy` turns into refused calls (`fail_closed`) or counted warnings
(`warn_only`)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mcp.client.session import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

from cmcp_cli.claim.canonical import canonical_sha256
from tests.gateway_support import Served, start_gateway, write_config
from tests.sessions import entries_of
from tests.support import run_cmcp

testing = pytest.importorskip("cmcp_tpm.testing", reason="the cmcp-tpm plugin is absent")

AK_HANDLE = 0x81010002
GATEWAY_PCR = 23  # the tpm provider's default `pcr`: where it measures the bundle hash
BOOT_PCR = 7  # one of the boot PCRs the measurement covers too
VALIDITY = 5  # seconds: renewed from 4 s on, so a session open 7 s is attested again
WRONG = "sha256:" + "ab" * 32


@pytest.fixture(scope="module")
def tpm() -> Iterator[Any]:
    if testing.tss is None:
        pytest.skip("tpm2-pytss is not installed: the TPM collector cannot run here")
    with testing.SoftwareTpm() as software_tpm:
        yield software_tpm


def _config(folder: Path, upstream: Served, tpm: Any, **attestation: Any) -> Path:
    settings = {"tcti": tpm.tcti, "ak_handle": AK_HANDLE}
    section = {"provider": "tpm", "providers": {"tpm": settings}, **attestation}
    return write_config(folder, upstream.url, attestation=section)


def _measure(config: Path) -> str:
    measured = run_cmcp("measure", "tpm", "--config", config)
    assert measured.returncode == 0, measured.stderr
    return measured.stdout.strip()


def _extend_pcr(tpm: Any, pcr: int) -> None:
    """What an attacker (or an update) does behind the gateway: a measured PCR moves."""
    tss = testing.tss
    esapi = tss.ESAPI(tpm.tcti)
    try:
        digest = tss.TPMT_HA(hashAlg=tss.TPM2_ALG.SHA256, digest=tss.TPMU_HA(sha256=b"\x42" * 32))
        esapi.pcr_extend(tss.ESYS_TR(pcr), tss.TPML_DIGEST_VALUES([digest]))
    finally:
        esapi.close()


async def _calls_across(url: str, seconds: float, between: Any = None) -> list[Any]:
    """One session: a call, `between()` (if any), a wait of `seconds`, then a call; the
    second call's result, or the MCPError it raised."""
    async with (
        streamable_http_client(url) as (read, write),
        ClientSession(read, write) as session,
    ):
        await session.initialize()
        first = await session.call_tool("get_weather", {"city": "Paris"})
        if between is not None:
            between()
        await asyncio.sleep(seconds)
        try:
            second: Any = await session.call_tool("get_weather", {"city": "Oslo"})
        except MCPError as exc:
            second = exc.error
        return [first, second]


def test_a_wrong_pin_on_a_tpm_refuses_to_start(tmp_path: Path, upstream: Served, tpm: Any) -> None:
    config = _config(tmp_path, upstream, tpm, expected_measurement=[WRONG])
    started = run_cmcp("start", "--config", config)
    assert started.returncode != 0
    text = " ".join(started.stderr.split())
    measurement = _measure(config)
    assert measurement in text and WRONG in text and "cmcp measure tpm" in text, text


def test_a_session_outliving_its_evidence_is_attested_again(
    tmp_path: Path, upstream: Served, tpm: Any
) -> None:
    probe = _config(tmp_path, upstream, tpm)
    measurement = _measure(probe)
    config = _config(
        tmp_path, upstream, tpm, expected_measurement=[measurement], validity_seconds=VALIDITY
    )
    gateway = start_gateway(config)
    try:
        first, second = asyncio.run(_calls_across(gateway.url, VALIDITY + 2))
    finally:
        assert gateway.stop() == 0, gateway.output()
    assert "Paris" in first.content[0].text and "Oslo" in second.content[0].text
    db = tmp_path / "audit.db"
    (start,) = entries_of(db, "session_start")
    renewed = entries_of(db, "attestation")
    # quotes beyond the session's first: one per renewal, each fresh and of the same platform
    assert len(renewed) >= 1
    assert {entry["status"] for entry in renewed} == {"fresh"}
    assert {entry["measurement"] for entry in renewed} == {measurement}
    digests = [start["evidence_digest"], *(entry["evidence_digest"] for entry in renewed)]
    assert len(set(digests)) == len(digests)  # every quote is a new one
    (claim_path,) = sorted((tmp_path / "claims").glob("*.claim.json"))
    claim = json.loads(claim_path.read_text())
    attestation = claim["gateway"]["attestation"]
    assert canonical_sha256(attestation["evidence"]) == renewed[-1]["evidence_digest"]
    assert attestation["generated_at"] == renewed[-1]["generated_at"]
    assert attestation["generated_at"] > start["attestation"]["generated_at"]
    assert attestation["measurement_pin"] == measurement
    assert attestation["validity_seconds"] == VALIDITY and attestation["stale_warnings"] == 0
    verified = run_cmcp(
        "verify",
        claim_path,
        "--expected-measurement",
        measurement,
        "--audit-log",
        db,
        "--json",
    )
    report = verified.json()
    statuses = {check["name"]: check["status"] for check in report["checks"]}
    assert verified.returncode in (0, 3), report  # 3: no trust roots for the AK given here
    assert statuses["freshness"] == "pass" and statuses["measurement"] == "pass"
    assert statuses["binding"] == "pass" and statuses["log: issuer"] == "pass"
    # the verifier's freshness and the gateway's validity agree: checked an hour later, with
    # a maximum age that still admits the claim, the evidence was fresh when it was issued
    late = run_cmcp(
        "verify", claim_path, "--max-age", "7200", "--at", _later(claim, 3600), "--json"
    )
    assert {c["name"]: c["status"] for c in late.json()["checks"]}["freshness"] == "pass"


def _later(claim: dict[str, Any], seconds: int) -> str:
    moment = time.gmtime(claim["trace"]["iat"] + seconds)
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", moment)


# The gateway's PCR moved: the provider itself refuses to quote (its bundle measurement is
# gone), so no fresh evidence exists. A boot PCR moved: the quote states a measurement
# outside the pinned one. Either way the session's evidence is stale.
STALE_CASES = {
    "fail_closed": (GATEWAY_PCR, "fresh evidence could not be collected"),
    "warn_only": (BOOT_PCR, "the measurement changed"),
}


@pytest.mark.parametrize("policy", sorted(STALE_CASES))
def test_a_changed_pcr_makes_the_evidence_stale(
    tmp_path: Path, upstream: Served, tpm: Any, policy: str
) -> None:
    pcr, why = STALE_CASES[policy]
    measurement = _measure(_config(tmp_path, upstream, tpm))
    config = _config(
        tmp_path,
        upstream,
        tpm,
        expected_measurement=[measurement],
        validity_seconds=VALIDITY,
        staleness_policy=policy,
    )
    gateway = start_gateway(config)
    try:
        first, second = asyncio.run(
            _calls_across(gateway.url, VALIDITY, between=lambda: _extend_pcr(tpm, pcr))
        )
        # a new session's own evidence is not the pinned platform's: it is not opened
        with pytest.raises((MCPError, ExceptionGroup)) as refused:
            asyncio.run(_calls_across(gateway.url, 0))
    finally:
        assert gateway.stop() == 0, gateway.output()
    assert "Paris" in first.content[0].text
    assert _codes(refused.value) == [-32061]
    stale = [e for e in entries_of(tmp_path / "audit.db", "attestation") if e["status"] == "stale"]
    assert stale and {e["policy"] for e in stale} == {policy}
    assert all(why in entry["reason"] for entry in stale), stale
    (claim_path,) = sorted((tmp_path / "claims").glob("*.claim.json"))
    claim = json.loads(claim_path.read_text())
    assert claim["gateway"]["attestation"]["stale_warnings"] == len(stale)
    if policy == "fail_closed":
        # one stale entry, after which the session takes no call: the second is refused
        assert len(stale) == 1 and "measurement" not in stale[0]  # no evidence to record
        assert second.code == -32062 and "stale" in second.message
        assert claim["gateway"]["call_summary"]["by_kind"]["call_tool"]["total"] == 1
        assert claim["trace"]["runtime"]["measurement"] == measurement
    else:
        # the session goes on; the claim carries the newest evidence, of the new measurement
        assert "Oslo" in second.content[0].text
        assert claim["gateway"]["call_summary"]["by_kind"]["call_tool"]["total"] == 2
        assert stale[-1]["measurement"] != measurement and stale[-1]["measurement_pin"] is None
        assert claim["trace"]["runtime"]["measurement"] == stale[-1]["measurement"]
        assert claim["gateway"]["attestation"]["measurement_pin"] is None
    verified = run_cmcp("verify", claim_path, "--audit-log", tmp_path / "audit.db", "--json")
    statuses = {check["name"]: check["status"] for check in verified.json()["checks"]}
    assert statuses["log: issuer"] == "pass", verified.stdout
    pinned = run_cmcp("verify", claim_path, "--expected-measurement", measurement, "--json")
    pinned_statuses = {check["name"]: check["status"] for check in pinned.json()["checks"]}
    if policy == "warn_only":  # what the claim carries is not the pinned platform
        assert pinned.returncode == 1 and pinned_statuses["measurement"] == "fail"


def _codes(error: BaseException) -> list[int]:
    """The JSON-RPC codes of an MCPError and of those it groups (the SDK raises groups)."""
    if isinstance(error, MCPError):
        return [error.error.code]
    nested: tuple[BaseException, ...] = getattr(error, "exceptions", ())
    return [code for inner in nested for code in _codes(inner)]
