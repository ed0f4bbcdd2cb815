"""The floors the gateway benchmark measures beside the gateway, and what they imply.

benchmarks/hypercorn_floor.py is served as two targets in the same phases as the gateway:
hypercorn alone, and hypercorn relaying to the upstream with the gateway's HTTP client. With
one Cedar decision (timed here, in-process) and DESIGN section 4's two durable points, they
give the added latency no gateway served by hypercorn can go below on the machine measured.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path
from typing import Any

from mcp_load import BenchError

ROOT = Path(__file__).resolve().parent.parent
FLOOR = Path(__file__).resolve().parent / "hypercorn_floor.py"
FLOORS = {"floor: hypercorn": "echo", "floor: hypercorn + hop": "forward"}
QUICKSTART = ROOT / "examples" / "quickstart"


def floor_command(name: str, port: int, upstream_port: int) -> list[str]:
    """The command line serving floor `name` on `port` before the upstream on `upstream_port`."""
    command = [sys.executable, str(FLOOR), "--mode", FLOORS[name], "--port", str(port)]
    return [*command, "--upstream", f"http://127.0.0.1:{upstream_port}/mcp"]


def decision_time(calls: int = 2_000) -> dict[str, Any]:
    """The gateway's own Cedar decision for the benchmark's call (quickstart bundle and
    catalog, get_weather {"city": "Paris"}), in this process: best and median of 5 rounds."""
    from cmcp_cli.catalog.model import load_catalog  # noqa: PLC0415 - only for this phase
    from cmcp_cli.gateway.enforcement.wiring import authorizer_for  # noqa: PLC0415
    from cmcp_cli.policy.bundle import read_bundle  # noqa: PLC0415
    from cmcp_cli.policy.engine import compile_bundle  # noqa: PLC0415
    from cmcp_cli.policy.request import tool_call_request  # noqa: PLC0415

    catalog = load_catalog(QUICKSTART / "catalog.json")
    authorizer = authorizer_for(compile_bundle(read_bundle(QUICKSTART / "policies")), catalog)
    tool = catalog.tools["get_weather"]
    request = tool_call_request(
        agent_id="anonymous",
        tool=tool.name,
        arguments={"city": "Paris"},
        data_class=tool.data_class,
        session_max_sensitivity=tool.data_class,
        platform="software",
    )
    if not authorizer.decide(request).forwards:
        raise BenchError("the quickstart policies do not allow the benchmark's call")
    rounds = []
    for _ in range(5):
        started = time.perf_counter_ns()
        for _ in range(calls):
            authorizer.decide(request)
        rounds.append((time.perf_counter_ns() - started) / calls / 1000)
    return {"median_us": round(statistics.median(rounds), 1), "best_us": round(min(rounds), 1)}


def latency_floor(report: dict[str, Any]) -> dict[str, Any]:
    """What the added p50 cannot go below on this machine while DESIGN holds: hypercorn and
    one upstream hop (measured, no gateway code), one Cedar decision, and the two durable
    points of DESIGN section 4 (decision before forwarding, outcome before answering)."""
    hop = report["latency"]["added_p50_ms_floors"]["floor: hypercorn + hop"]
    decision = report["decision"]["best_us"] / 1000
    sync = report["disk_sync"]["fdatasync_p50_ms"]
    parts = {"hypercorn + hop": hop, "one decision": round(decision, 3), "2 x fdatasync": sync * 2}
    return {"parts_ms": parts, "added_p50_floor_ms": round(sum(parts.values()), 3)}
