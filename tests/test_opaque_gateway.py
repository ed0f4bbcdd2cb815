"""The opaque provider end to end: `cmcp start` asking the token service double (a real
HTTPS process on 127.0.0.1 with its own test CA) for each session's token, an agent's
session through the official MCP SDK, and `cmcp verify` through the real CLI.

Nothing ever verifies: a session the service fails for (refused connection, timeout, HTTP
500, a malformed answer, a token of unknown shape or for another nonce, a redirect to
another host) is not opened, and says why; a token signed by another key opens a session
whose claim fails; a good token's claim is valid but not hardware-attested (exit 3), its
platform software-only and its appraisal the issuer's.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cmcp_opaque.testing import AUDIENCE, MEASUREMENTS
from cmcp_opaque.token_service import RunningService
from cmcp_opaque.verifier import HARDWARE
from cmcp_opaque.verifier import MEASUREMENTS as MEASUREMENTS_CHECK
from tests.gateway_support import (
    INIT,
    Served,
    request,
    start_gateway,
    weather_session,
    write_config,
)
from tests.support import run_cmcp

OPAQUE_CHECKS = (
    "opaque.format", "opaque.url", "opaque.algorithm", "opaque.key", "opaque.signature",
    "opaque.issuer", "opaque.audience", "opaque.time", "opaque.nonce", "opaque.status",
    MEASUREMENTS_CHECK,
)  # fmt: skip
# Each way the service fails, and what the refusal of the session says.
FAILURES = {
    "refuse": "cannot connect",
    "timeout": "timed out",
    "error": "answered HTTP 500",
    "malformed": "1 dot-separated part",
    "unknown-shape": "no 'nonce' claim",
    "other-nonce": "not the binding the gateway asked for",
    "redirect-other-host": "another host",
}


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningService]:
    running = RunningService.start(tmp_path_factory.mktemp("token-service"))
    yield running
    running.stop()


def opaque_settings(service: RunningService) -> dict[str, Any]:
    return {"ca_file": str(service.ca_file), "timeout": 1}


def platform_policy(folder: Path, service: RunningService) -> Path:
    path = folder / "platform-policy.toml"
    path.write_text(
        "[opaque]\n"
        f"keys = [{json.dumps(str(service.jwks_file))}]\n"
        f"issuer = {json.dumps(service.issuer)}\n"
        f"audience = {json.dumps(AUDIENCE)}\n"
        f"urls = [{json.dumps(service.url())}]\n"
        f"measurements = {{ platform = [{json.dumps(MEASUREMENTS['platform'])}] }}\n"
    )
    return path


def refused_session(gateway: Served) -> str:
    """A raw initialize that the gateway must refuse; the reason it gives."""
    status, _, body = request(gateway.port, "POST", "/mcp", INIT)
    assert status == 503, body
    answer = json.loads(body)
    assert answer["error"]["code"] == -32061  # attestation failed
    message: str = answer["error"]["message"]
    assert message.startswith("the opaque provider could not attest the session")
    return message


def verify(claim: Path, *args: str | Path) -> tuple[int, dict[str, Any]]:
    result = run_cmcp("verify", claim, *args, "--json")
    return result.returncode, result.json()


def statuses(report: dict[str, Any]) -> dict[str, str]:
    return {check["name"]: check["status"] for check in report["checks"]}


def test_nothing_the_opaque_provider_attests_ever_verifies(
    tmp_path: Path, upstream: Served, service: RunningService
) -> None:
    service.set_mode("succeed")
    attestation = {
        "provider": "opaque",
        "providers": {"opaque": {"url": service.url(), **opaque_settings(service)}},
    }
    gateway = start_gateway(write_config(tmp_path, upstream.url, attestation=attestation))
    try:
        assert "Paris" in asyncio.run(weather_session(gateway.url))
        status, _, body = request(gateway.port, "GET", "/readyz")
        assert status == 200 and json.loads(body)["appraisal"] == {
            "appraised": False,
            "reason": "the opaque provider's evidence is software-only: it states its "
            "issuer's appraisal, which the gateway keeps and never appraises itself",
        }
        for mode, reason in FAILURES.items():
            service.set_mode(mode)
            assert reason in refused_session(gateway), mode
        service.set_mode("wrong-key")  # the gateway holds no keys: this session opens
        assert "Paris" in asyncio.run(weather_session(gateway.url))
    finally:
        service.set_mode("succeed")
        assert gateway.stop() == 0, gateway.output()
    claims = [json.loads(p.read_text()) for p in sorted((tmp_path / "claims").glob("*.claim.json"))]
    assert len(claims) == 2, "only the two sessions that got a token have claims"
    pins = platform_policy(tmp_path, service)
    outcomes = {}
    for index, claim in enumerate(claims):
        path = tmp_path / f"claim-{index}.json"
        path.write_text(json.dumps(claim))
        assert claim["trace"]["runtime"]["platform"] == "software-only"
        assert claim["gateway"]["attestation"]["evidence_type"] == "opaque-token-v1"
        assert claim["trace"]["appraisal"] == {"status": "affirming", "verifier": service.issuer}
        code, report = verify(path, "--platform-policy", pins, "--audit-log", tmp_path / "audit.db")
        assert code != 0 and report["hardware_attested"] is False
        outcomes[statuses(report)["opaque.signature"]] = (code, report, path)

    code, report, good = outcomes["pass"]
    assert code == 3, report
    checked = statuses(report)
    assert {name: checked[name] for name in OPAQUE_CHECKS} == dict.fromkeys(OPAQUE_CHECKS, "pass")
    assert checked[HARDWARE] == "skip" and checked["appraisal"] == "pass"
    assert checked["audit log"] == "pass"
    assert report["verdict"].startswith("VALID, NOT HARDWARE-ATTESTED")

    code, report, _ = outcomes["fail"]  # signed by another key under the pinned kid
    assert code == 1 and statuses(report)["appraisal"] == "fail", report

    # without the auditor's pins nothing is trusted: no key selects the token's signer
    code, report = verify(good)
    assert code == 1 and statuses(report)["opaque.key"] == "fail"


def test_the_environment_url_selects_the_provider(
    tmp_path: Path, upstream: Served, service: RunningService
) -> None:
    service.set_mode("succeed")
    attestation = {"providers": {"opaque": opaque_settings(service)}}  # provider: auto
    config = write_config(tmp_path, upstream.url, attestation=attestation)
    gateway = start_gateway(config, env={"OPAQUE_ATTESTATION_URL": service.url()})
    try:
        assert "Paris" in asyncio.run(weather_session(gateway.url))
    finally:
        assert gateway.stop() == 0, gateway.output()
    (path,) = sorted((tmp_path / "claims").glob("*.claim.json"))
    claim = json.loads(path.read_text())
    assert claim["gateway"]["attestation"]["provider"] == "opaque"
    assert claim["gateway"]["attestation"]["evidence"]["url"] == service.url()
