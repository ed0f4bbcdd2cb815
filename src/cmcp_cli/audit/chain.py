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


@dataclass
class CallSummary:
    total: int = 0
    allowed: int = 0
    denied: int = 0
    redacted: int = 0
    escalated: int = 0
    faulted: int = 0
    tools_invoked: set[str] = field(default_factory=set)

    def absorb(self, later: CallSummary) -> None:
        """Add the counts of a later stretch of the same chain."""
        self.total += later.total
        self.allowed += later.allowed
        self.denied += later.denied
        self.redacted += later.redacted
        self.escalated += later.escalated
        self.faulted += later.faulted
        self.tools_invoked |= later.tools_invoked

    def to_json(self) -> dict[str, object]:
        return {
            "total": self.total,
            "allowed": self.allowed,
            "denied": self.denied,
            "redacted": self.redacted,
            "escalated": self.escalated,
            "faulted": self.faulted,
            "tools_invoked": sorted(self.tools_invoked),
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
        elif kind == EntryType.SESSION_START:
            order = fields.get("data_class_order")
            if isinstance(order, list):
                self.data_class_order = tuple(str(item) for item in order)
        elif kind == EntryType.DRIFT:
            self.drift_detected = True
        elif kind == EntryType.SESSION_END:
            self.ended = True

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
        if fields.get("forwarded") is True:  # only a forwarded call touches the tool's data
            calls.tools_invoked.add(str(fields.get("tool")))
            data_class = fields.get("data_class")
            if isinstance(data_class, str):
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

    def audit_chain_json(self) -> dict[str, object]:
        return {"root": self.root or GENESIS_PREV, "tip": self.tip, "length": self.length}
