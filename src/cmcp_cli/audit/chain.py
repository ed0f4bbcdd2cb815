"""What a session's chain adds up to: root, tip, length and the call summary.

`ChainState.apply` is the only place that turns entries into counters. The recorder uses
it while writing and replay uses it while reading, so the numbers in a claim are, by
construction, the numbers the entries themselves give.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from cmcp_cli.audit.entry import GENESIS_PREV, EntryType, SealedEntry

DECISION_PHASE = "decision"
OUTCOME_PHASE = "outcome"
# A decision or fault entry without `kind` is a tool call's, so chains written before
# other messages were governed keep their bytes and hashes.
DEFAULT_KIND = "call_tool"
# The kinds whose forwarding brings an upstream's data into the session, and so raise the
# session's data class: tool results, resource contents, prompts, sampling requests.
DATA_READING_KINDS = frozenset({"call_tool", "read_resource", "get_prompt", "create_message"})
STALE_STATUS = "stale"  # an attestation entry's status when the evidence went stale
DECISION_COUNTS = ("allowed", "denied", "redacted", "escalated")
_COUNTED = {"allow": "allowed", "deny": "denied", "redact": "redacted", "escalate": "escalated"}


@dataclass
class KindCounts:
    """The decisions and faults of one message kind."""

    total: int = 0
    allowed: int = 0
    denied: int = 0
    redacted: int = 0
    escalated: int = 0
    faulted: int = 0

    def count(self, decision: object) -> None:
        self.total += 1
        counter = _COUNTED.get(decision) if isinstance(decision, str) else None
        if counter is not None:
            setattr(self, counter, getattr(self, counter) + 1)

    def absorb(self, later: KindCounts) -> None:
        for name in _KIND_FIELDS:
            setattr(self, name, getattr(self, name) + getattr(later, name))

    def to_json(self) -> dict[str, object]:
        return {name: getattr(self, name) for name in _KIND_FIELDS}


_KIND_FIELDS = ("total", *DECISION_COUNTS, "faulted")


@dataclass
class CallSummary(KindCounts):
    """Totals across every governed message, and per kind (`by_kind`). A fault counts in
    its kind when it names the call it ends (`call_id`); a fault of no call (a failed
    listing, say) counts in `faulted` only."""

    tools_invoked: set[str] = field(default_factory=set)  # forwarded tool calls only
    by_kind: dict[str, KindCounts] = field(default_factory=dict)

    def kind(self, name: str) -> KindCounts:
        counts = self.by_kind.get(name)
        if counts is None:
            counts = self.by_kind[name] = KindCounts()
        return counts

    def absorb(self, later: KindCounts) -> None:
        """Add the counts of a later stretch of the same chain."""
        super().absorb(later)
        if isinstance(later, CallSummary):
            self.tools_invoked |= later.tools_invoked
            for name, counts in later.by_kind.items():
                self.kind(name).absorb(counts)

    def to_json(self) -> dict[str, object]:
        return {
            **super().to_json(),
            "tools_invoked": sorted(self.tools_invoked),
            "by_kind": {name: self.by_kind[name].to_json() for name in sorted(self.by_kind)},
        }


@dataclass
class ChainState:
    """Bounded per-session state: counters and the last hash, never the history."""

    session_id: str
    data_class_order: Sequence[str] = ()
    root: str | None = None
    tip: str = GENESIS_PREV
    length: int = 0
    calls: CallSummary = field(default_factory=CallSummary)
    data_classes: set[str] = field(default_factory=set)  # of forwarded calls
    drift_detected: bool = False
    ended: bool = False
    # The newest `attestation` entry that carries evidence (its fields), and how many
    # attestation entries say the session's evidence went stale.
    attestation: Mapping[str, Any] | None = None
    stale_attestations: int = 0

    @property
    def next_seq(self) -> int:
        return self.length

    def apply(self, entry: SealedEntry) -> None:
        if self.root is None:
            self.root = entry.hash
        self.tip = entry.hash
        self.length += 1
        kind = entry.type
        fields = entry.fields
        if kind == EntryType.CALL:  # by far the most common: test it first
            if fields.get("phase") == DECISION_PHASE:
                self._count_decision(fields)
        elif kind == EntryType.FAULT:
            self.calls.faulted += 1
            if "call_id" in fields:
                self.calls.kind(_kind_of(fields)).faulted += 1
        elif kind == EntryType.SESSION_START:
            order = fields.get("data_class_order")
            if isinstance(order, list):
                self.data_class_order = tuple(str(item) for item in order)
        elif kind == EntryType.DRIFT:
            self.drift_detected = True
        elif kind == EntryType.SESSION_END:
            self.ended = True
        elif kind == EntryType.ATTESTATION:
            if "evidence_digest" in fields:
                self.attestation = fields
            if fields.get("status") == STALE_STATUS:
                self.stale_attestations += 1

    def _count_decision(self, fields: Mapping[str, Any]) -> None:
        calls = self.calls
        calls.total += 1
        decision = fields.get("decision")
        if decision == "allow":
            calls.allowed += 1
        elif decision == "deny":
            calls.denied += 1
        elif decision == "redact":
            calls.redacted += 1
        elif decision == "escalate":
            calls.escalated += 1
        kind = _kind_of(fields)
        calls.kind(kind).count(decision)
        if fields.get("forwarded") is True:  # only a forwarded message moves data
            if kind == DEFAULT_KIND:
                calls.tools_invoked.add(str(fields.get("tool")))
            data_class = fields.get("data_class")
            if kind in DATA_READING_KINDS and isinstance(data_class, str):
                self.data_classes.add(data_class)

    @property
    def max_data_class(self) -> str | None:
        """The most sensitive class touched, by `data_class_order`; a class the order does
        not know ranks above all, since unknown sensitivity is not low sensitivity."""
        order = self.data_class_order
        ranked = sorted(
            self.data_classes, key=lambda c: (order.index(c) if c in order else len(order), c)
        )
        return ranked[-1] if ranked else None

    def absorb(self, later: ChainState) -> None:
        """Continue this state with a later stretch of the same chain."""
        self.tip = later.tip
        self.length = later.length
        self.calls.absorb(later.calls)
        self.data_classes |= later.data_classes
        self.data_class_order = self.data_class_order or later.data_class_order
        self.drift_detected |= later.drift_detected
        self.ended |= later.ended
        if later.attestation is not None:
            self.attestation = later.attestation
        self.stale_attestations += later.stale_attestations

    def audit_chain_json(self) -> dict[str, object]:
        return {"root": self.root or GENESIS_PREV, "tip": self.tip, "length": self.length}


def _kind_of(fields: Mapping[str, Any]) -> str:
    """The message kind of a decision or fault entry. A `kind` that is not a string is
    counted under its JSON text, so a verifier sees it rather than a default."""
    kind = fields.get("kind", DEFAULT_KIND)
    return kind if isinstance(kind, str) else repr(kind)
