"""The rule the provider contract holds every verifier to on tampered evidence
(`cmcp_cli.testing.tamper`), on hand-made verdicts: what counts as a change of each kind
of leaf, and which verdicts break the rule."""

from __future__ import annotations

import base64

from cmcp_cli.attestation.api import Check, EvidenceVerdict
from cmcp_cli.testing.tamper import REMOVED, same_outcome, tamper_problems, tamperings

GENUINE = EvidenceVerdict(
    (
        Check.passed("x.shape", "well formed"),
        Check.passed("x.chain", "reaches the root"),
        Check.passed("x.signature", "verifies"),
    ),
    hardware_attested=True,
)


def test_each_kind_of_leaf_is_changed_in_its_own_form() -> None:
    blob = base64.b64encode(b"\x00\x01\x02").decode()
    evidence = {"digest": "00ff", "blob": blob, "name": "abc", "count": 7, "items": ["q", "r"]}
    changes = {(t.path, t.change): t.evidence for t in tamperings(evidence)}
    assert changes[("digest",), "hex byte 0 flipped"]["digest"] == "01ff"
    assert changes[("digest",), "hex byte 1 flipped"]["digest"] == "00fe"
    flipped = changes[("blob",), "base64 byte 1 flipped"]["blob"]
    assert base64.b64decode(flipped) == b"\x00\x00\x02"
    assert changes[("name",), "character 0 changed"]["name"] == "bbc"
    assert changes[("count",), "incremented"]["count"] == 8
    assert changes[("items",), REMOVED]["items"] == ["q"]
    assert changes[("items", 1), "character 0 changed"]["items"] == ["q", "b"]
    assert evidence["items"] == ["q", "r"], "the evidence itself is left as it was"


def test_a_pass_that_turns_into_an_unexplained_skip_breaks_the_rule() -> None:
    tampered = EvidenceVerdict(
        (
            Check.passed("x.shape", "well formed"),
            Check.skipped("x.chain", "no pinned root for the issuer"),
            Check.failed("x.signature", "does not verify"),
        ),
        hardware_attested=False,
    )
    assert tamper_problems(GENUINE, tampered) == [
        "x.chain passed, now skips: no pinned root for the issuer"
    ]


def test_a_skip_that_names_a_failed_check_keeps_the_rule_even_through_another_skip() -> None:
    tampered = EvidenceVerdict(
        (
            Check.failed("x.shape", "malformed"),
            Check.skipped("x.chain", "no usable certificate (see x.shape)"),
            Check.skipped("x.signature", "no verified key (see x.chain)"),
        ),
        hardware_attested=False,
    )
    assert tamper_problems(GENUINE, tampered) == []


def test_a_verdict_that_does_not_fail_or_drops_a_check_breaks_the_rule() -> None:
    tampered = EvidenceVerdict(
        (Check.passed("x.shape", "well formed"), Check.passed("x.chain", "reaches the root")),
        hardware_attested=True,
    )
    assert tamper_problems(GENUINE, tampered) == [
        "no check failed",
        "still hardware-attested",
        "x.signature passed, now not reported",
    ]


def test_an_independent_list_may_lose_an_item_only_if_nothing_changes() -> None:
    assert same_outcome(GENUINE, GENUINE) == []
    weaker = EvidenceVerdict(
        (
            Check.passed("x.shape", "well formed"),
            Check.skipped("x.chain", "no certificate"),
            Check.passed("x.signature", "verifies"),
        ),
        hardware_attested=False,
    )
    assert same_outcome(GENUINE, weaker) == [
        "x.chain was pass, now skip",
        "the verdict's hardware attestation changed",
    ]
