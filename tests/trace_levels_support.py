"""A gateway session opened with a verifier's challenge, as the TRACE conformance tests
need one: `cmcp start` serving, the official MCP SDK client handing the challenge in the
`Cmcp-Challenge` header of `initialize`, an allowed and a denied call, the session closed
and its claim and record files written (and, with anchoring, its receipt stored)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cmcp_cli.testing.transparency import RunningTransparency
from tests.gateway_support import Served, agent_calls, request, write_config
from tests.support import challenge
from tests.tpm_support import EnrolledTpm

FILES_SECONDS = 30.0
ANCHOR_SECONDS = 60.0
POLL_SECONDS = 0.2


@dataclass(frozen=True)
class ChallengedSession:
    nonce: str
    session_id: str
    claim: Path
    record: Path
    receipt: Path | None  # the stored receipt, when the gateway anchors

    def claim_json(self) -> dict[str, Any]:
        return dict(json.loads(self.claim.read_text()))

    def record_json(self) -> dict[str, Any]:
        return dict(json.loads(self.record.read_text()))


def _one_claim(claims: Path, gateway: Served) -> Path:
    """The one claim the session's close writes, waited for (bounded)."""
    deadline = time.monotonic() + FILES_SECONDS
    while time.monotonic() < deadline:
        found = sorted(claims.glob("*.claim.json")) if claims.is_dir() else []
        if found:
            (claim,) = found
            return claim
        time.sleep(POLL_SECONDS)
    raise AssertionError(f"no claim in {claims} after {FILES_SECONDS} s:\n{gateway.output()}")


def _served_receipt(gateway: Served, session_id: str) -> dict[str, Any]:
    """`GET /trace/{id}?receipt` until the session's record is anchored (bounded)."""
    deadline = time.monotonic() + ANCHOR_SECONDS
    answer: tuple[int, bytes] = (0, b"")
    while time.monotonic() < deadline:
        status, _, body = request(gateway.port, "GET", f"/trace/{session_id}?receipt")
        answer = (status, body)
        if status == 200:
            return dict(json.loads(body))
        assert status == 409, answer  # pending: anything else is an error
        time.sleep(POLL_SECONDS)
    raise AssertionError(f"not anchored after {ANCHOR_SECONDS} s: {answer}\n{gateway.output()}")


def run_challenged_session(gateway: Served, claims: Path, *, anchored: bool) -> ChallengedSession:
    """One challenged session through `gateway`, its files under `claims`; the gateway is
    stopped (and must exit cleanly) before this returns."""
    nonce = challenge()
    try:
        allowed, denied = asyncio.run(agent_calls(gateway.url, nonce))
        assert "Paris" in allowed and denied["code"] == -32040, denied
        claim = _one_claim(claims, gateway)
        session_id = claim.name.removesuffix(".claim.json")
        receipt = None
        if anchored:
            served = _served_receipt(gateway, session_id)
            receipt = claims / f"{session_id}.receipt.json"
            assert json.loads(receipt.read_text()) == served  # the stored one is served
    finally:
        assert gateway.stop() == 0, gateway.output()
    record = claims / f"{session_id}.record.json"
    assert record.is_file(), sorted(claims.iterdir())
    return ChallengedSession(nonce, session_id, claim, record, receipt)


def tpm_gateway_config(
    folder: Path,
    upstream: Served,
    enrolled: EnrolledTpm,
    anchor: Mapping[str, Any],
    measurement: str | None = None,
) -> Path:
    """A gateway on the enrolled swtpm that appraises its own evidence under the TPM's
    roots (refusing anything below `affirming`) and anchors every claim with `anchor`; with
    `measurement`, that pinned as the expected one."""
    attestation: dict[str, Any] = {"provider": "tpm", "providers": {"tpm": enrolled.settings}}
    if measurement is not None:
        attestation["expected_measurement"] = [measurement]
    trace = {
        "appraisal": {
            "trust_roots": [str(root) for root in enrolled.roots],
            "required_status": "affirming",
        },
        "anchor": dict(anchor),
    }
    return write_config(folder, upstream.url, attestation=attestation, trace=trace)


def anchor_settings(double: RunningTransparency, protocol: str) -> dict[str, Any]:
    """`trace.anchor` for a gateway anchoring in the transparency double with `protocol`."""
    return {
        "url": double.url,
        "protocol": protocol,
        "log_key": str(double.log_key),
        "ca_file": str(double.ca_file),
        "retry_initial_seconds": 1,
        "retry_max_seconds": 2,
    }
