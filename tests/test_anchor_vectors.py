"""The TRACE conformance suite's anchor inclusion vectors (tests/vectors/trace-anchor-inclusion,
vendored from agentrust-io/trace-tests): cMCP's inclusion check agrees with every expected
TR-ANC-002 result, its leaf bytes are every positive vector's preimage, and the tree the
transparency double answers with reproduces each positive vector's root and audit path."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)
from scitt_cose import verify_receipt

from cmcp_cli.claim.anchor import anchor_leaf_bytes
from cmcp_cli.claim.receipt import inclusion_holds
from cmcp_cli.testing.transparency_log import LogSigner, issue_over

VECTORS = Path(__file__).parent / "vectors" / "trace-anchor-inclusion"
FILES = sorted(VECTORS.glob("*.json"))
POSITIVE = [f for f in FILES if json.loads(f.read_text())["expected"]["tr_anc_002"] == "pass"]


def load(path: Path) -> dict[str, Any]:
    return dict(json.loads(path.read_text(encoding="utf-8")))


def test_the_whole_set_is_here() -> None:
    assert len(FILES) == 27
    assert len(POSITIVE) == 9
    names = {load(f)["name"] for f in FILES}
    # every negative vector's accepted twin is one of the positive vectors
    twins = {load(f).get("positive_twin") for f in FILES} - {None}
    assert twins <= {load(f)["name"] for f in POSITIVE} and twins <= names


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_inclusion_holds_agrees_with_the_suite(path: Path) -> None:
    vector = load(path)
    receipt = vector["receipt"] or {}
    holds = inclusion_holds(
        anchor_leaf_bytes(vector["claim"]).hex(),
        receipt.get("leaf_index"),
        receipt.get("leaf_count"),
        receipt.get("audit_path"),
        receipt.get("merkle_root"),
    )
    assert holds is (vector["expected"]["tr_anc_002"] == "pass"), vector.get("reason")


def _batch_claims(vector: dict[str, Any]) -> list[dict[str, Any]]:
    """The claims the suite's generator batches: `agent-<i>` (iat 1000 + i, signature
    `fixture-signature-<i>`) beside the vector's own claim."""
    transparency = vector["claim"]["transparency"]
    family = [
        {
            "transparency": transparency,
            "subject": f"agent-{i}",
            "iat": 1000 + i,
            "signature": f"fixture-signature-{i}",
        }
        for i in range(16)
    ]
    return [vector["claim"], *family]


def _hash(entry: bytes) -> str:
    return "sha256:" + hashlib.sha256(b"\x00" + entry).hexdigest()


@pytest.mark.parametrize("path", POSITIVE, ids=lambda p: p.stem)
def test_the_doubles_tree_reproduces_each_positive_vector(path: Path) -> None:
    vector = load(path)
    construction, receipt = vector["construction"], vector["receipt"]
    leaf = anchor_leaf_bytes(vector["claim"])
    assert leaf == construction["canonical_ascii"].encode("ascii")
    assert _hash(leaf) == construction["leaf_hash"]
    # the batch's leaf entries, found by their hashes among the generator's claims
    known = {_hash(anchor_leaf_bytes(c)): anchor_leaf_bytes(c).hex() for c in _batch_claims(vector)}
    entries = [known[h] for h in construction["ordered_leaf_hashes"]]
    assert entries[receipt["leaf_index"]] == leaf.hex()

    key = Ed25519PrivateKey.generate()
    signer = LogSigner(
        key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()),
        b"vector-log", "https://127.0.0.1:1", "cmcp-gateway/test",
    )  # fmt: skip
    issued = issue_over(entries, receipt["leaf_index"], signer, subject="agent")
    entry, proof = issued.registry["entry"], issued.registry["proof"]
    assert entry["merkle_root"] == receipt["merkle_root"]
    assert entry["leaf_count"] == receipt["leaf_count"]
    assert proof == {"leaf_index": receipt["leaf_index"], "audit_path": receipt["audit_path"]}
    public = key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    result = verify_receipt(issued.cose, leaf_entry_hex=leaf.hex(), log_public_key_pem=public)
    assert result.ok, result.errors
    assert f"sha256:{result.root}" == receipt["merkle_root"]
    assert (result.leaf_index, result.tree_size) == (receipt["leaf_index"], receipt["leaf_count"])
