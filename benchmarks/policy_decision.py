"""Cost of one policy decision: cMCP's parsed PolicySet against re-parsing every time.

Runs every variant in the same process, interleaved round by round, so that machine noise
hits them alike, and reports the median per-decision time of each:

  cmcp (parsed once)        Authorizer.decide: what the gateway does on every call
  cedarpy, PolicySet handle the floor: cedarpy alone with a pre-parsed PolicySet
  cedarpy, text re-parsed   the baseline: cedarpy given the policy text on every call

Target: the cmcp median under 150 microseconds for a 12-policy bundle on a 2-core machine.
    .venv/bin/python benchmarks/policy_decision.py [--rounds 15] [--calls 400] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import cedarpy

from cmcp_cli.policy.bundle import read_bundle
from cmcp_cli.policy.engine import compile_bundle
from cmcp_cli.policy.request import ToolResource, tool_call_request

TARGET_MICROSECONDS = 150.0
AGENT = "spiffe://trust.example.org/agent/credit-risk"

TWELVE_POLICIES = {
    "finance.cedar": """
permit(principal == Agent::"spiffe://trust.example.org/agent/credit-risk", action ==
Action::"call_tool", resource in Tools::"financial") when { context.data_class != "secret" };
@id("transfer-limit") @escalate("large transfer")
forbid(principal, action == Action::"call_tool", resource == Tool::"transfer_funds")
  when { context.arguments has amount && context.arguments.amount > 10000 };
@id("no-secret-sessions")
forbid(principal, action, resource in Tools::"financial")
  when { context.session_max_sensitivity == "secret" };
@id("statements-by-account")
permit(principal, action == Action::"call_tool", resource == Tool::"get_statement")
  when { context.arguments has account_id && context.arguments.account_id like "ACME-*" };
""",
    "platform.cedar": """
@id("public-tools") permit(principal, action == Action::"call_tool", resource in Tools::"public");
@id("no-destructive") forbid(principal, action, resource in Tools::"destructive");
@id("tpm-only-restricted")
forbid(principal, action, resource)
  when { resource.data_class == "restricted" && context.platform == "software-only" };
@id("crm-redacted") @redact("email, phone, /customer/ssn")
permit(principal, action == Action::"call_tool", resource in Tools::"crm");
@id("workflow-bound")
permit(principal, action == Action::"call_tool", resource in Tools::"batch")
  when { context.workflow_id != "" };
@id("bank-server-only")
forbid(principal, action, resource in Tools::"financial") unless { resource.server == "bank" };
@id("listing") permit(principal, action == Action::"list_tools", resource);
@id("no-anonymous-finance")
forbid(principal == Agent::"anonymous", action, resource in Tools::"financial");
""",
}
TOOLS = [
    ToolResource("get_balance", "bank", ("financial",), "confidential"),
    ToolResource("transfer_funds", "bank", ("financial",), "restricted"),
    ToolResource("get_statement", "bank", ("financial",), "confidential"),
    ToolResource("get_weather", "web", ("public",), "public"),
    ToolResource("lookup_customer", "crm", ("crm",), "confidential"),
    ToolResource("delete_records", "db", ("destructive",), "restricted"),
]
MANIFEST = '{"version": "1", "authored_at": "2026-11-21T00:00:00Z", "author": "bench"}'


def _measure(function: Callable[[], object], calls: int) -> float:
    start = time.perf_counter_ns()
    for _ in range(calls):
        function()
    return (time.perf_counter_ns() - start) / calls / 1000.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=21)
    parser.add_argument("--calls", type=int, default=400)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        (root / "manifest.json").write_text(MANIFEST)
        for name, text in TWELVE_POLICIES.items():
            (root / name).write_text(text)
        bundle = compile_bundle(read_bundle(root))
    assert len(bundle.policies) == 12, len(bundle.policies)
    authorizer = bundle.authorizer(TOOLS)
    request = tool_call_request(
        agent_id=AGENT,
        tool="transfer_funds",
        arguments={"account_id": "ACME-1", "amount": 500, "memo": "rent"},
        data_class="restricted",
        session_max_sensitivity="confidential",
        workflow_id="wf-7",
        platform="tpm2",
    )
    text = "\n".join(TWELVE_POLICIES.values())
    entities = json.dumps([t.entity_json() for t in TOOLS])
    entities_handle = cedarpy.Entities.from_json_str(entities)
    request_json = request.to_json()
    expected = authorizer.decide(request).effect
    assert cedarpy.is_authorized(request_json, text, entities).decision.value == "Allow"

    variants: dict[str, Callable[[], object]] = {
        "cmcp (parsed once)": lambda: authorizer.decide(request),
        "cedarpy, PolicySet handle": lambda: cedarpy.is_authorized(
            request_json, bundle.policy_set, entities_handle
        ),
        "cedarpy, text re-parsed": lambda: cedarpy.is_authorized(request_json, text, entities),
    }
    samples: dict[str, list[float]] = {name: [] for name in variants}
    for function in variants.values():  # warm-up
        _measure(function, max(1, args.calls // 10))
    for _ in range(args.rounds):
        for name, function in variants.items():
            samples[name].append(_measure(function, args.calls))

    medians = {name: statistics.median(values) for name, values in samples.items()}
    best = {name: min(values) for name, values in samples.items()}
    ours = medians["cmcp (parsed once)"]
    report = {
        "policies": len(bundle.policies),
        "decision": expected.value,
        "rounds": args.rounds,
        "calls_per_round": args.calls,
        "median_microseconds": {name: round(value, 1) for name, value in medians.items()},
        "best_round_microseconds": {name: round(value, 1) for name, value in best.items()},
        "overhead_over_cedarpy_microseconds": round(ours - medians["cedarpy, PolicySet handle"], 1),
        "speedup_vs_reparse": round(medians["cedarpy, text re-parsed"] / ours, 1),
        "target_microseconds": TARGET_MICROSECONDS,
        "meets_target": ours < TARGET_MICROSECONDS,
    }
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(
            f"one decision, {len(bundle.policies)}-policy bundle, "
            f"median of {args.rounds} rounds x {args.calls} calls"
        )
        print(f"  {'variant':<28} {'median':>8} {'best':>8}")
        for name, value in medians.items():
            print(f"  {name:<28} {value:6.1f} us {best[name]:6.1f} us")
        verdict = "meets" if report["meets_target"] else "MISSES"
        print(
            f"  cmcp is {report['speedup_vs_reparse']}x faster than re-parsing; "
            f"{verdict} the {TARGET_MICROSECONDS:.0f} us target"
        )
    return 0 if report["meets_target"] else 1


if __name__ == "__main__":
    sys.exit(main())
