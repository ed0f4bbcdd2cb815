"""Prometheus metrics in the text exposition format (version 0.0.4), without a client
library: a few counters and one latency histogram, updated on the event loop only.

Every agent reads the aggregate view, which names no agent, session or tool; the per-agent
gauges (`AgentLoad`) are rendered only into the operator's view.
"""

from __future__ import annotations

import bisect
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

# Seconds: the gateway's own overhead is sub-millisecond; upstream tools take up to minutes.
LATENCY_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0, 120.0,
)  # fmt: skip
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


@dataclass
class Histogram:
    bounds: tuple[float, ...] = LATENCY_BUCKETS
    counts: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS) + 1))
    total: float = 0.0
    observations: int = 0

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, seconds)] += 1
        self.total += seconds
        self.observations += 1

    def lines(self, name: str) -> list[str]:
        lines, cumulative = [], 0
        for bound, count in zip(self.bounds, self.counts, strict=False):
            cumulative += count
            lines.append(f'{name}_bucket{{le="{bound:g}"}} {cumulative}')
        lines.append(f'{name}_bucket{{le="+Inf"}} {self.observations}')
        lines.append(f"{name}_sum {self.total:.6f}")
        lines.append(f"{name}_count {self.observations}")
        return lines


@dataclass(frozen=True)
class AgentLoad:
    """What each agent has open now: for the operator's view only."""

    open_sessions: Mapping[str, int]
    pending_approvals: Mapping[str, int]

    def lines(self) -> list[str]:
        lines = [
            "# HELP cmcp_agent_sessions_open Client sessions open now, by agent.",
            "# TYPE cmcp_agent_sessions_open gauge",
        ]
        lines += [
            f'cmcp_agent_sessions_open{{agent="{_label(agent, cut=False)}"}} {count}'
            for agent, count in sorted(self.open_sessions.items())
        ]
        lines += [
            "# HELP cmcp_agent_approvals_pending Escalated calls waiting, by agent.",
            "# TYPE cmcp_agent_approvals_pending gauge",
        ]
        lines += [
            f'cmcp_agent_approvals_pending{{agent="{_label(agent, cut=False)}"}} {count}'
            for agent, count in sorted(self.pending_approvals.items())
        ]
        return lines


@dataclass
class GatewayMetrics:
    calls: Counter[str] = field(default_factory=Counter)  # by decision, plus "fault"
    requests: Counter[str] = field(default_factory=Counter)  # by MCP method
    drift: int = 0
    sessions_opened: int = 0
    sessions_closed: int = 0
    call_latency: Histogram = field(default_factory=Histogram)
    policy_taken: int = 0  # bundles a reload made the running one
    policy_refused: Counter[str] = field(default_factory=Counter)  # by reason category
    policy_generation: int = 0  # bundles taken since start: 0 is the one it started with

    def call(self, outcome: str, seconds: float) -> None:
        self.calls[outcome] += 1
        self.call_latency.observe(seconds)

    def render(
        self,
        *,
        open_sessions: int,
        pending_approvals: int,
        agents: AgentLoad | None = None,
        anchoring: Sequence[str] = (),
    ) -> bytes:
        """The aggregate view; with `agents` (the operator's view), per-agent gauges too;
        `anchoring`: the anchoring's own lines, when it is on."""
        lines = [
            "# HELP cmcp_tool_calls_total Tool calls by decision (fault: the upstream failed).",
            "# TYPE cmcp_tool_calls_total counter",
        ]
        lines += [
            f'cmcp_tool_calls_total{{decision="{outcome}"}} {self.calls[outcome]}'
            for outcome in sorted({"allow", "deny", "redact", "escalate", "fault", *self.calls})
        ]
        lines += [
            "# HELP cmcp_tool_call_duration_seconds Time from request to answer of a tool call.",
            "# TYPE cmcp_tool_call_duration_seconds histogram",
            *self.call_latency.lines("cmcp_tool_call_duration_seconds"),
            "# HELP cmcp_requests_total MCP requests by method.",
            "# TYPE cmcp_requests_total counter",
        ]
        lines += [
            f'cmcp_requests_total{{method="{_label(method)}"}} {count}'
            for method, count in sorted(self.requests.items())
        ]
        lines += [
            "# HELP cmcp_drift_detected_total Tools whose advertised definition drifted.",
            "# TYPE cmcp_drift_detected_total counter",
            f"cmcp_drift_detected_total {self.drift}",
            "# HELP cmcp_sessions_opened_total Client sessions opened.",
            "# TYPE cmcp_sessions_opened_total counter",
            f"cmcp_sessions_opened_total {self.sessions_opened}",
            "# HELP cmcp_sessions_closed_total Client sessions closed (claim written).",
            "# TYPE cmcp_sessions_closed_total counter",
            f"cmcp_sessions_closed_total {self.sessions_closed}",
            "# HELP cmcp_sessions_open Client sessions open now.",
            "# TYPE cmcp_sessions_open gauge",
            f"cmcp_sessions_open {open_sessions}",
            "# HELP cmcp_approvals_pending Escalated calls waiting for an operator.",
            "# TYPE cmcp_approvals_pending gauge",
            f"cmcp_approvals_pending {pending_approvals}",
            "# HELP cmcp_policy_reloads_total Bundles a reload took as the running one.",
            "# TYPE cmcp_policy_reloads_total counter",
            f"cmcp_policy_reloads_total {self.policy_taken}",
            "# HELP cmcp_policy_reload_refusals_total Bundles a reload refused, by reason "
            "(unreadable, not_allowed, invalid, attestation).",
            "# TYPE cmcp_policy_reload_refusals_total counter",
        ]
        lines += [
            f'cmcp_policy_reload_refusals_total{{reason="{reason}"}} {self.policy_refused[reason]}'
            for reason in sorted(
                {"unreadable", "not_allowed", "invalid", "attestation", *self.policy_refused}
            )
        ]
        lines += [
            "# HELP cmcp_policy_generation Bundles taken since start (0: the starting bundle).",
            "# TYPE cmcp_policy_generation gauge",
            f"cmcp_policy_generation {self.policy_generation}",
            *anchoring,
        ]
        if agents is not None:
            lines += agents.lines()
        return ("\n".join(lines) + "\n").encode()


def _label(value: str, *, cut: bool = True) -> str:
    """A label value escaped as the exposition format requires; unbounded names are cut
    (an agent's id is not: cut, two agents could share one label)."""
    kept = value[:64] if cut else value
    return kept.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
