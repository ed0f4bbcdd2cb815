"""An anchored claim against its audit log: the log keeps the anchor URL and the key's
thumbprint, not the key, yet determines the record's `transparency` URI (a digest over the
record, key included) exactly; a claim naming another entry or another service, even
re-signed by the session's own key, does not match its log."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from cmcp_cli.attestation import software
from cmcp_cli.claim.anchor import transparency_uri
from cmcp_cli.claim.keys import ClaimKey
from cmcp_cli.claim.model import sign_claim
from cmcp_cli.evidence.attesting import Attestor
from tests.gateway_support import statuses, verify
from tests.sessions import RecordedSession, record_session

ANCHOR_URL = "https://transparency.example/log"


@pytest.fixture(scope="module")
def anchored(tmp_path_factory: pytest.TempPathFactory) -> tuple[RecordedSession, ClaimKey]:
    key = ClaimKey.generate()
    attestor = replace(Attestor.load(software.SPEC, "0.1.0"), anchor_url=ANCHOR_URL)
    folder = tmp_path_factory.mktemp("anchored")
    return record_session(folder, attestor=attestor, key=key), key


def _log_session(path: Path, db: Path) -> dict[str, Any]:
    _, report = verify(path, "--audit-log", db, "--allow-software")
    (check,) = (c for c in report["checks"] if c["name"] == "log: session")
    return dict(check)


def test_the_log_determines_the_transparency_uri_of_the_claim_and_the_record(
    anchored: tuple[RecordedSession, ClaimKey],
) -> None:
    recorded, _ = anchored
    assert recorded.record["transparency"] == transparency_uri(ANCHOR_URL, recorded.record)
    for path in (recorded.claim_path, recorded.record_path):
        code, report = verify(path, "--audit-log", recorded.db, "--allow-software")
        log_checks = {k: v for k, v in statuses(report).items() if k.startswith("log: ")}
        assert log_checks and set(log_checks.values()) == {"pass"}, report
        assert statuses(report)["receipt"] == "skip", report  # no --receipt given
        assert code == 0, report


@pytest.mark.parametrize(
    "transparency",
    [f"{ANCHOR_URL}/entries/{'0' * 64}", "another service"],
)
def test_a_claim_naming_another_anchor_does_not_match_its_log(
    tmp_path: Path, anchored: tuple[RecordedSession, ClaimKey], transparency: str
) -> None:
    recorded, key = anchored
    claim = json.loads(json.dumps(recorded.claim))
    if transparency == "another service":
        transparency = transparency_uri("https://other.example", recorded.record)
    claim["trace"]["transparency"] = transparency
    path = tmp_path / "changed.claim.json"
    path.write_text(json.dumps(sign_claim(claim, key)))  # the session's own key
    check = _log_session(path, recorded.db)
    assert check["status"] == "fail", check
    assert "trace.transparency" in check["reason"], check
