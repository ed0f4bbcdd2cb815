"""Receipts from the transparency double, judged by verifiers that share no code with cMCP:
scitt-cose (its library and its CLI) on the COSE receipt and the Signed Statement,
`trace-verify` on the receipt document as a registry-anchor-v1 entry and proof, and the
conformance suite (`trace-tests`, TR-ANC-001/002) on the record and on the claim. Each is
also shown to refuse what cMCP refuses."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from scitt_cose import verify_receipt

from cmcp_cli.claim.keys import b64url_encode, jwk_thumbprint, public_key_from_jwk
from cmcp_cli.claim.model import sign_claim
from cmcp_cli.testing.transparency import RunningTransparency
from tests.transparency_support import PRODUCER, Anchored, anchor, leaf, statement

BIN = Path(sys.executable).parent
TIMEOUT = 60


def tool(
    name: str, *arguments: str | Path, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / name), *map(str, arguments)],
        capture_output=True, text=True, timeout=TIMEOUT, check=False, cwd=cwd,
    )  # fmt: skip


@pytest.fixture(scope="module")
def anchored(double: RunningTransparency, tmp_path_factory: pytest.TempPathFactory) -> Anchored:
    return anchor(double, tmp_path_factory.mktemp("anchored"), "sess-x")


@pytest.fixture(scope="module")
def other(double: RunningTransparency, tmp_path_factory: pytest.TempPathFactory) -> Anchored:
    return anchor(double, tmp_path_factory.mktemp("other"), "sess-y")


def changed_after_anchoring(anchored: Anchored, folder: Path) -> Path:
    """The anchored claim's record changed and signed again by its own key."""
    claim = json.loads(json.dumps(anchored.claim.claim))
    claim["trace"]["data_class"] = "public"
    path = folder / "changed.trace.json"
    path.write_text(json.dumps(sign_claim(claim, anchored.claim.key)["trace"]))
    return path


# -- scitt-cose ----------------------------------------------------------------------------


def test_scitt_cose_verifies_the_receipt_and_the_statement(
    anchored: Anchored, other: Anchored, tmp_path: Path
) -> None:
    receipt = tmp_path / "receipt.cose"
    receipt.write_bytes(anchored.cose)
    record = anchored.claim.record

    def cli(entry: str, key: Path) -> dict[str, Any]:
        result = tool(
            "scitt-cose", "--receipt", receipt, "--receipt-log-pubkey", key,
            "--leaf-entry-hex", entry, "--json",
        )  # fmt: skip
        report = json.loads(result.stdout)["receipt"]
        assert result.returncode == (0 if report["ok"] else 1), result.stderr
        return dict(report)

    good = cli(leaf(record), anchored.log_key)
    assert good["ok"] and good["tree_size"] == anchored.receipt["leaf_count"]
    assert f"sha256:{good['root']}" == anchored.receipt["merkle_root"]
    assert good["leaf_index"] == anchored.receipt["leaf_index"]
    library = verify_receipt(
        anchored.cose, leaf_entry_hex=leaf(record), log_public_key_pem=anchored.log_key.read_bytes()
    )
    assert library.ok and library.root == good["root"]
    # another record's leaf, and another key, are refused
    assert not cli(leaf(other.claim.record), anchored.log_key)["ok"]
    stranger = tmp_path / "stranger.pem"
    stranger.write_bytes(
        Ed25519PrivateKey.generate()
        .public_key()
        .public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    )
    refused = cli(leaf(record), stranger)
    assert not refused["ok"] and refused["failed_at"] == "signature"

    # the SCRAPI statement the double accepted, checked under the record's own key
    signed = tmp_path / "statement.cose"
    signed.write_bytes(
        statement(record, anchored.claim.private_pem, kid=jwk_thumbprint(record["cnf"]["jwk"]))
    )
    key = tmp_path / "record-key.pem"
    key.write_bytes(
        public_key_from_jwk(record["cnf"]["jwk"]).public_bytes(
            Encoding.PEM, PublicFormat.SubjectPublicKeyInfo
        )
    )
    result = tool("scitt-cose", "--statement", signed, "--statement-pubkey", key, "--json")
    assert result.returncode == 0, result.stderr
    parsed = json.loads(result.stdout)["statement"]
    assert parsed["signature_verified"] is True and parsed["subject"] == record["subject"]
    assert parsed["payload_len"] == len(bytes.fromhex(leaf(record)))
    assert tool("scitt-cose", "--statement", signed, "--statement-pubkey", stranger).returncode == 1


# -- trace-verify --------------------------------------------------------------------------


def producers(folder: Path, jwk: dict[str, str]) -> Path:
    """A trace-verify producers directory holding the record's key as cmcp-gateway's."""
    folder.mkdir(parents=True, exist_ok=True)
    document = {"producer_id": PRODUCER, "key_type": "Ed25519", "public_key_jwk": jwk}
    (folder / f"{PRODUCER.replace('/', '-')}.json").write_text(json.dumps(document))
    return folder


def trace_verify(
    record: Path, receipt: Path, producers_dir: Path
) -> subprocess.CompletedProcess[str]:
    return tool(
        "trace-verify", "--claim", record, "--proof", receipt, "--entry", receipt,
        "--producers-dir", producers_dir, "--json",
    )  # fmt: skip


def test_trace_verify_replays_the_receipt_document(
    anchored: Anchored, other: Anchored, tmp_path: Path
) -> None:
    jwk = anchored.claim.record["cnf"]["jwk"]
    keys = producers(tmp_path / "producers", jwk)
    result = trace_verify(anchored.record_path, anchored.receipt_path, keys)
    assert result.returncode == 0, (result.stdout, result.stderr)
    report = json.loads(result.stdout)
    assert report["verified"] is True, report
    # the record changed after anchoring, another claim's receipt, another producer key
    assert (
        trace_verify(
            changed_after_anchoring(anchored, tmp_path), anchored.receipt_path, keys
        ).returncode
        == 1
    )
    assert trace_verify(anchored.record_path, other.receipt_path, keys).returncode == 1
    raw = Ed25519PrivateKey.generate().public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    stranger = producers(
        tmp_path / "stranger", {"kty": "OKP", "crv": "Ed25519", "x": b64url_encode(raw)}
    )
    assert trace_verify(anchored.record_path, anchored.receipt_path, stranger).returncode == 1


# -- trace-tests ---------------------------------------------------------------------------


def anchoring_findings(document: Path, receipt: Path, folder: Path) -> dict[str, str]:
    """TR-ANC-* of `trace-tests report --max-level 2`, from its JSON report."""
    out = folder / f"{document.stem}-{receipt.stem}.report.json"
    result = tool(
        "trace-tests", "report", "--record", document, "--receipt", receipt, "--json", out
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(out.read_text())
    anchors = {
        f["code"]: f["status"]
        for f in report["findings"]
        if f["level"] == 2 and f["code"].startswith("TR-ANC")
    }
    assert set(anchors) == {"TR-ANC-001", "TR-ANC-002"}, report["findings"]
    return anchors


def test_trace_tests_proves_the_record_and_the_claim_anchored(
    anchored: Anchored, other: Anchored, tmp_path: Path
) -> None:
    for document in (anchored.record_path, anchored.claim_path):
        assert anchoring_findings(document, anchored.receipt_path, tmp_path) == {
            "TR-ANC-001": "pass", "TR-ANC-002": "pass",
        }  # fmt: skip
    # the level-2 command itself, on the record: both TR-ANC lines pass
    result = tool(
        "trace-tests",
        "verify",
        "--record",
        anchored.record_path,
        "--level",
        "2",
        "--receipt",
        anchored.receipt_path,
    )
    lines = [
        line
        for line in result.stdout.splitlines()
        if "TR-ANC" in line or "inclusion proven" in line
    ]
    assert any("inclusion proven" in line and "PASS" in line for line in lines), result.stdout
    assert not any("FAIL" in line for line in lines), result.stdout
    # what it refuses: the record changed, another claim's receipt, a tampered path
    changed = changed_after_anchoring(anchored, tmp_path)
    assert anchoring_findings(changed, anchored.receipt_path, tmp_path)["TR-ANC-002"] == "fail"
    assert (
        anchoring_findings(anchored.record_path, other.receipt_path, tmp_path)["TR-ANC-002"]
        == "fail"
    )
    path_nodes = anchored.receipt["audit_path"]
    assert path_nodes[0] != path_nodes[1]
    tampered = dict(anchored.receipt, audit_path=[path_nodes[1], path_nodes[0], *path_nodes[2:]])
    path = tmp_path / "swapped.json"
    path.write_text(json.dumps(tampered))
    assert anchoring_findings(anchored.record_path, path, tmp_path)["TR-ANC-002"] == "fail"
