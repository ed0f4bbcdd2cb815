"""A verifier's challenge on real TPM evidence: `cmcp start` with the tpm provider against
a software TPM (swtpm), the official MCP SDK as the agent giving the `Cmcp-Challenge`
header, and `cmcp verify --expected-nonce --trust-root ...` as the auditor. The quote's
qualifyingData is the version-2 binding, so the TPM itself signed over the challenge; a
claim moved to another challenge fails, even re-signed by the session's own key."""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from cmcp_cli.attestation.api import GatewayFacts
from cmcp_cli.attestation.measurement import installation_digest
from cmcp_cli.claim.keys import ClaimKey
from cmcp_cli.claim.model import sign_claim
from cmcp_cli.evidence.attesting import Attestor
from cmcp_cli.policy.bundle import read_bundle
from cmcp_cli.policy.engine import compile_bundle
from cmcp_tpm import plugin
from cmcp_tpm.structures import parse_attest
from tests.gateway_support import (
    Served,
    start_gateway,
    statuses,
    verify,
    weather_session,
    write_config,
)
from tests.sessions import record_session
from tests.support import QUICKSTART, challenge, claim_binding
from tests.tpm_support import EnrolledTpm, enrolled_tpm

TRACE_TESTS = str(Path(sys.executable).with_name("trace-tests"))


@pytest.fixture(scope="module")
def enrolled(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EnrolledTpm]:
    with enrolled_tpm(tmp_path_factory.mktemp("tpm")) as tpm:
        yield tpm


def qualifying_data(claim: dict[str, Any]) -> str:
    """The extraData of the TPM quote the claim carries, hex: what the TPM signed over."""
    attest = claim["gateway"]["attestation"]["evidence"]["attest"]
    return parse_attest(base64.b64decode(attest)).extra_data.hex()


def test_a_tpm_quote_answers_the_auditors_challenge(
    tmp_path: Path, upstream: Served, enrolled: EnrolledTpm
) -> None:
    nonce = challenge()
    attestation = {"provider": "tpm", "providers": {"tpm": enrolled.settings}}
    gateway = start_gateway(write_config(tmp_path, upstream.url, attestation=attestation))
    try:
        assert asyncio.run(weather_session(gateway.url, nonce)) == "Sunny, 21 C in Paris"
    finally:
        assert gateway.stop() == 0, gateway.output()
    (path,) = sorted((tmp_path / "claims").glob("*.claim.json"))
    claim = json.loads(path.read_text())
    assert claim["trace"]["runtime"]["platform"] == "tpm2"
    assert claim["trace"]["runtime"]["nonce"] == nonce
    assert qualifying_data(claim) == claim_binding(claim, nonce) != claim_binding(claim, None)

    audit = ("--audit-log", tmp_path / "audit.db")
    code, report = verify(path, *enrolled.trust_args(), *audit, "--expected-nonce", nonce)
    assert code == 0, report
    assert report["hardware_attested"] is True
    checks = statuses(report)
    assert checks["nonce"] == checks["binding"] == checks["tpm.attest.extra_data"] == "pass"
    assert checks["audit log"] == "pass"
    other = challenge()
    code, report = verify(path, *enrolled.trust_args(), *audit, "--expected-nonce", other)
    assert code == 1 and statuses(report)["nonce"] == "fail"
    assert statuses(report)["tpm.attest.extra_data"] == "pass"  # the evidence is sound

    # the TRACE conformance suite's own comparison (TR-RTE-004), on claim and record
    record = path.with_name(path.name.replace(".claim.", ".record."))
    for document in (path, record):
        assert suite_nonce_line(document, nonce) == (
            "TR-RTE  PASS        runtime.nonce matches the verifier challenge"
        )
        assert suite_nonce_line(document, other) == (
            "TR-RTE  FAIL        TR-RTE-004: runtime.nonce does not match the verifier challenge"
        )


def suite_nonce_line(document: Path, nonce: str) -> str:
    """The runtime.nonce line of `trace-tests verify --level 1 --expected-nonce`."""
    command = [TRACE_TESTS, "verify", "--record", str(document), "--level", "1"]
    completed = subprocess.run(
        [*command, "--expected-nonce", nonce],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    (line,) = [row.strip() for row in completed.stdout.splitlines() if "runtime.nonce" in row]
    return line


def test_a_claim_moved_to_another_challenge_fails_on_the_quote(
    tmp_path: Path, enrolled: EnrolledTpm
) -> None:
    """A session recorded by the library on the swtpm with a key the test holds, so that
    the tampered claim can be re-signed and only the evidence gives it away."""
    nonce, other, key = challenge(), challenge(), ClaimKey.generate()
    bundle = compile_bundle(read_bundle(QUICKSTART / "policies"))
    attestor = Attestor.load(plugin.SPEC, "test", enrolled.settings)
    facts = GatewayFacts(bundle.hash, "sha256:" + "00" * 32, installation_digest())
    attestor.collector.prepare(facts, enrolled.settings)
    try:
        recorded = record_session(
            tmp_path, attestor=attestor, key=key, start=datetime.now(UTC), challenge=nonce
        )
    finally:
        attestor.collector.close()
    assert qualifying_data(recorded.claim) == claim_binding(recorded.claim, nonce)
    code, report = verify(recorded.claim_path, *enrolled.trust_args(), "--expected-nonce", nonce)
    assert code == 0, report

    moved = json.loads(json.dumps(recorded.claim))
    moved["trace"]["runtime"]["nonce"] = other
    path = tmp_path / "moved.claim.json"
    path.write_text(json.dumps(sign_claim(moved, key)))
    code, report = verify(path, *enrolled.trust_args(), "--expected-nonce", other)
    assert code == 1
    checks = statuses(report)
    assert checks["signature"] == checks["nonce"] == "pass"
    assert checks["binding"] == checks["tpm.attest.extra_data"] == "fail"

    # with the stated binding made to agree, the quote still names the original challenge
    moved["gateway"]["attestation"]["binding"] = claim_binding(moved, other)
    path.write_text(json.dumps(sign_claim(moved, key)))
    code, report = verify(path, *enrolled.trust_args(), "--expected-nonce", other)
    assert code == 1
    checks = statuses(report)
    assert checks["binding"] == "pass"
    assert checks["tpm.attest.extra_data"] == "fail"
    assert report["hardware_attested"] is False
