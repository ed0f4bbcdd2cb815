"""Gateway load benchmark: tools/call straight to the upstream against through `cmcp start`.

Starts benchmarks/fast_upstream.py (an MCP server fast enough not to be the bottleneck) and
the real gateway in front of it (CMCP_DEV_MODE=1, audit durability fsync, the audit store
on a disk, never tmpfs), and measures both in one run, interleaved, so that machine noise
hits them alike:

  latency     sequential tools/call get_weather {"city": "Paris"}: p50, p95, p99
              target: gateway p50 - direct p50 under 0.5 ms
  throughput  16 concurrent clients, each with its own MCP session and connection, with
              the CPU each process spends per call; target: 2,000 calls/s via the gateway
  ready       process spawn until GET /readyz answers 200 (the upstream: /healthz)
  rss         gateway RSS after 10, 25, 50, 75 and 100% of --calls (default 100,000)
              target: growth under 10% from the 25% sample to the 100% sample
  disk_sync   append + fsync (and fdatasync) of 128 bytes beside the audit store
  floors      benchmarks/hypercorn_floor.py in the same phases: hypercorn answering itself,
              and hypercorn relaying to the upstream with the gateway's HTTP client (no
              policy, no audit); with one Cedar decision (`decision`, in this process) and
              two fdatasyncs they give the added p50 no gateway under DESIGN can go below

Every answer is checked (HTTP 200, its request id, not isError, the upstream's text); one
that fails is an error, never a call. At the end each gateway session's claim must count
exactly the calls made in it. `--reference` adds PyPI cmcp-runtime 0.7.1 (dev mode, in its
own venv under ~/.cache/cmcp-bench) as a third target. `--profile FILE` samples the thread
holding the gateway's GIL with py-spy under load: the serial Python work of one call.

  .venv/bin/python benchmarks/gateway.py [--calls 100000] [--json] [--reference]
                                         [--profile gateway.pyspy]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from floors import FLOORS, decision_time, floor_command, latency_floor

# siblings: benchmarks/ is sys.path[0] when a benchmark runs as a script
from mcp_load import (
    BASELINE,
    BenchError,
    McpClient,
    Run,
    Target,
    measure_latency,
    measure_rss,
    measure_throughput,
    ms,
)
from pyspy_summary import profile_gateway
from reference_gateway import install_reference, write_reference_files

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from tests.gateway_support import free_port, write_config  # noqa: E402 - shared config writer
from tests.support import CMCP  # noqa: E402

UPSTREAM = Path(__file__).resolve().parent / "fast_upstream.py"
ADDED_P50_TARGET_MS = 0.5
THROUGHPUT_TARGET = 2_000
RSS_GROWTH_LIMIT = 0.10
READY_SECONDS = 60.0
REFERENCE = "cmcp-runtime==0.7.1"
PROBE_CALLS = 50
TICKS = os.sysconf("SC_CLK_TCK")


# ------------------------------------------------------------------ processes


@dataclass
class Process:
    name: str
    popen: subprocess.Popen[bytes]
    port: int
    ready_seconds: float

    @property
    def pid(self) -> int:
        return self.popen.pid

    def rss_kib(self) -> int:
        status = Path(f"/proc/{self.popen.pid}/status").read_text()
        return int(status.split("VmRSS:", 1)[1].split()[0])

    def cpu_seconds(self, *, main_thread: bool = False) -> float:
        """User + system time so far, of every thread or of the main one only."""
        pid = self.popen.pid
        stat = Path(f"/proc/{pid}/task/{pid}/stat" if main_thread else f"/proc/{pid}/stat")
        fields = stat.read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / TICKS

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=60)  # the gateway writes a claim per open session
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout=10)


def spawn(
    name: str,
    command: list[str],
    *,
    port: int,
    ready: str,
    log: Path,
    cwd: Path | None = None,
    python_path: Path | None = None,
) -> Process:
    """Start a server (CMCP_DEV_MODE=1) and poll every 5 ms until `ready` answers 200;
    `python_path` puts another source tree of cmcp_cli in front of the installed one."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CMCP_")}
    env["CMCP_DEV_MODE"] = "1"
    if python_path is not None:
        env["PYTHONPATH"] = str(python_path.resolve())
    with log.open("wb") as out:  # the child keeps its own descriptor
        started = time.perf_counter()
        popen = subprocess.Popen(  # noqa: S603 - our own commands, no shell
            command, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=cwd
        )
    while time.perf_counter() - started < READY_SECONDS:
        if popen.poll() is not None:
            raise BenchError(
                f"{name} exited ({popen.returncode}) before it was ready:\n{_tail(log)}"
            )
        if _get(port, ready)[0] == 200:
            return Process(name, popen, port, time.perf_counter() - started)
        time.sleep(0.005)
    popen.kill()
    popen.wait(timeout=10)
    raise BenchError(f"{name} was not ready within {READY_SECONDS:g} s:\n{_tail(log)}")


def _get(port: int, path: str) -> tuple[int, bytes]:
    """Status and body of a GET, (0, b"") when nothing answers."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read()
    except OSError:
        return 0, b""
    finally:
        connection.close()


def _tail(log: Path) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-20:])


def start_upstream(folder: Path) -> Process:
    port = free_port()
    command = [sys.executable, str(UPSTREAM), "--port", str(port)]
    return spawn("upstream", command, port=port, ready="/healthz", log=folder / f"up-{port}.log")


def start_gateway(
    folder: Path, upstream: Process, *, name: str = "gateway", source: Path | None = None
) -> Process:
    folder.mkdir(parents=True, exist_ok=True)
    url = f"http://127.0.0.1:{upstream.port}/mcp"
    config = write_config(folder, url, audit={"durability": "fsync"})
    port = int(yaml.safe_load(config.read_text())["listen_addr"].rsplit(":", 1)[1])
    command = [str(CMCP), "start", "--config", str(config)]
    log = folder / f"{name}.log"
    return spawn(name, command, port=port, ready="/readyz", log=log, python_path=source)


def start_floor(folder: Path, upstream: Process, name: str) -> Process:
    port = free_port()
    log = folder / f"floor-{FLOORS[name]}-{port}.log"
    return spawn(
        name, floor_command(name, port, upstream.port), port=port, ready="/healthz", log=log
    )


def check_claims(run: Run) -> dict[str, Any]:
    """Each closed gateway session's claim must count exactly the calls made in it."""
    mismatches = []
    for session_id, calls, allowed in run.closed:
        status, body = _get(run.gateway.process.port, f"/trace/{session_id}")
        if status != 200:
            raise BenchError(f"GET /trace/{session_id} answered HTTP {status}: {body[:200]!r}")
        summary = json.loads(body)["gateway"]["call_summary"]
        if summary["total"] != calls or summary["allowed"] != allowed:
            mismatches.append({"session": session_id, "made": calls, "claimed": summary})
    return {"sessions": len(run.closed), "mismatches": mismatches}


# ------------------------------------------------------------------ disk, startup


def filesystem_of(path: Path) -> dict[str, str]:
    """The mount holding `path`: the longest mount point that contains it."""
    resolved, best = str(path.resolve()), ("", "?", "?")
    for line in Path("/proc/self/mounts").read_text().splitlines():
        device, mount, kind = line.split()[:3]
        mount = mount.replace("\\040", " ")
        inside = resolved == mount or resolved.startswith(mount.rstrip("/") + "/")
        if inside and len(mount) >= len(best[0]):
            best = (mount, kind, device)
    return {"path": resolved, "mount": best[0], "filesystem": best[1], "device": best[2]}


def sync_latency(folder: Path, count: int = 200) -> dict[str, Any]:
    """Append 128 bytes and sync, `count` times each with fsync and fdatasync (SQLite's)."""
    report: dict[str, Any] = {"samples": count}
    for name, sync in (("fsync", os.fsync), ("fdatasync", os.fdatasync)):
        probe = folder / "sync-probe"
        handle = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        times = []
        try:
            for _ in range(count):
                started = time.perf_counter_ns()
                os.write(handle, b"x" * 128)
                sync(handle)
                times.append(time.perf_counter_ns() - started)
        finally:
            os.close(handle)
            probe.unlink()
        cuts = statistics.quantiles(times, n=100, method="inclusive")
        report |= {f"{name}_p50_ms": ms(cuts[49]), f"{name}_p99_ms": ms(cuts[98])}
    return report


def ready_times(folder: Path, *, upstream: Process, gateway: Process, runs: int) -> dict[str, Any]:
    """Fresh spawns of each, taking turns, each stopped once ready; the first gateway figure
    is the spawn the other phases used (`gateway`)."""
    gateways, upstreams = [gateway.ready_seconds], [upstream.ready_seconds]
    for index in range(runs):
        started = start_gateway(folder / f"ready-{index}", upstream)
        started.stop()
        gateways.append(started.ready_seconds)
        started = start_upstream(folder)
        started.stop()
        upstreams.append(started.ready_seconds)
    return {
        "gateway_s": [round(s, 3) for s in gateways],
        "gateway_median_s": round(statistics.median(gateways), 3),
        "upstream_median_s": round(statistics.median(upstreams), 3),
    }


# ------------------------------------------------------------------ the reference gateway


def start_reference(folder: Path, upstream: Process) -> Process:
    """cmcp-runtime in dev mode before the same upstream, get_weather allowed, in its own
    bundle and catalog formats; it stores its audit chain (SQLite, FULL sync) in `folder`."""
    venv = install_reference(REFERENCE)
    port = free_port()
    write_reference_files(folder, port=port, upstream_port=upstream.port, root=ROOT)
    command = [str(venv / "bin" / "cmcp"), "start", "--config", "cmcp-config.yaml"]
    log = folder / "reference.log"
    return spawn("reference", command, port=port, ready="/readyz", log=log, cwd=folder)


async def probe_reference(reference: Process) -> dict[str, Any]:
    """cmcp-runtime 0.7.1 counts every call of the process against one session, which may
    make 10 (its GovernancePolicy.max_tool_calls, not configurable), then denies: it joins
    the load phases only if all of PROBE_CALLS sequential calls are allowed."""
    client = await McpClient.open(reference.port, stateless=True)
    times = []
    for _ in range(PROBE_CALLS):
        started = time.perf_counter_ns()
        if await client.call():
            times.append(time.perf_counter_ns() - started)
    await client.close()
    report: dict[str, Any] = {"ready_s": round(reference.ready_seconds, 3), "allowed": client.ok}
    report["of_calls"] = PROBE_CALLS
    if len(times) > 1:
        report["median_ms_after_first"] = ms(statistics.median(times[1:]))
    if client.ok < PROBE_CALLS:
        report["load_phases"] = (
            f"skipped: it denied calls after {client.ok}: {client.first_failure}"
        )
    return report


# ------------------------------------------------------------------ report


def run_benchmark(args: argparse.Namespace) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="cmcp-bench-", dir=args.workdir))
    report: dict[str, Any] = {"audit_disk": filesystem_of(workdir), "cpus": os.cpu_count()}
    try:
        if report["audit_disk"]["filesystem"] in ("tmpfs", "ramfs"):
            raise BenchError(
                f"{workdir} is on {report['audit_disk']['filesystem']}: a durable audit store "
                "would never touch a disk; pass --workdir on a disk-backed filesystem"
            )
        with contextlib.ExitStack() as stack:
            upstream = start_upstream(workdir)
            stack.callback(upstream.stop)
            gateway = start_gateway(workdir / "gateway", upstream)
            stack.callback(gateway.stop)
            run = Run([Target("direct", upstream), Target("gateway", gateway)])
            if args.baseline_src is not None:
                before = start_gateway(
                    workdir / BASELINE, upstream, name=BASELINE, source=args.baseline_src
                )
                stack.callback(before.stop)
                run.targets.append(Target(BASELINE, before))
            for name in FLOORS:
                floor = start_floor(workdir, upstream, name)
                stack.callback(floor.stop)
                run.targets.append(Target(name, floor))
            if args.reference:
                try:
                    reference = start_reference(workdir / "reference", upstream)
                except (BenchError, OSError, subprocess.SubprocessError) as exc:
                    report["reference"] = f"skipped: {exc}"
                else:
                    stack.callback(reference.stop)
                    report["reference"] = asyncio.run(probe_reference(reference))
                    if report["reference"]["allowed"] == PROBE_CALLS:
                        run.targets.append(Target("reference", reference, stateless=True))
            report["disk_sync"] = sync_latency(workdir / "gateway")
            report["decision"] = decision_time()
            asyncio.run(measure(args, run, report))
            report["latency_floor"] = latency_floor(report)
            report["claims"] = check_claims(run)
            report["errors"] = {t.name: t.errors for t in run.targets}
            report["first_failures"] = {t.name: t.first_failure for t in run.targets}
            report["ready"] = ready_times(
                workdir, upstream=upstream, gateway=gateway, runs=args.ready_runs
            )
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    report["targets"] = verdicts(report)
    return report


async def measure(args: argparse.Namespace, run: Run, report: dict[str, Any]) -> None:
    print(f"latency: {args.latency_calls} sequential calls per target", file=sys.stderr)
    report["latency"] = await measure_latency(run, args.latency_calls)
    print(f"throughput: {args.rounds} rounds of {args.seconds:g} s per target", file=sys.stderr)
    report["throughput"] = await measure_throughput(
        run, concurrency=args.concurrency, seconds=args.seconds, rounds=args.rounds
    )
    print(f"rss: {args.calls} calls through the gateway", file=sys.stderr)
    report["rss"] = await measure_rss(run, calls=args.calls, concurrency=args.concurrency)
    if args.profile is not None:
        print(f"profile: py-spy for {args.profile_seconds:g} s", file=sys.stderr)
        report["profile"] = await profile_gateway(run, args.profile, seconds=args.profile_seconds)


def verdicts(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    added = report["latency"]["added_p50_ms"]
    rate = report["throughput"]["calls_per_s_median"]["gateway"]
    growth = report["rss"]["growth_25_to_100_percent"]
    errors = sum(report["errors"].values())
    floor = report["latency_floor"]["added_p50_floor_ms"]
    claims = len(report["claims"]["mismatches"])
    checks = {
        "added p50 latency, ms": (added, f"< {ADDED_P50_TARGET_MS}", added < ADDED_P50_TARGET_MS),
        "gateway calls/s, 16 sessions": (
            rate,
            f">= {THROUGHPUT_TARGET}",
            rate >= THROUGHPUT_TARGET,
        ),
        "RSS growth, 25% to 100%": (growth, f"< {RSS_GROWTH_LIMIT}", growth < RSS_GROWTH_LIMIT),
        "added p50 floor (hop+decision+2 syncs)": (
            floor,
            f"< {ADDED_P50_TARGET_MS} for the target to be reachable",
            floor < ADDED_P50_TARGET_MS,
        ),
        "failed calls, every target": (errors, "0", errors == 0),
        "claims miscounting their calls": (claims, "0", claims == 0),
    }
    return {name: {"value": v, "target": t, "pass": p} for name, (v, t, p) in checks.items()}


def print_table(report: dict[str, Any]) -> None:
    """Every figure as `section  key  value`, then the targets, to stderr."""
    for section, figures in report.items():
        if section in ("targets", "profile"):
            continue
        if not isinstance(figures, dict):
            print(f"{section:<12} {figures}", file=sys.stderr)
            continue
        print(section, file=sys.stderr)
        for key, value in figures.items():
            shown = json.dumps(value) if isinstance(value, dict | list) else value
            print(f"  {key:<44} {shown}", file=sys.stderr)
    if "profile" in report:
        profile = report["profile"]
        print(
            f"profile: {profile['gil_us_per_call']} us of GIL-held work per call at "
            f"{profile['calls_per_s']} calls/s",
            file=sys.stderr,
        )
        for title in ("own_us_per_call_by_module", "inclusive_us_per_call"):
            print(f"  {title}", file=sys.stderr)
            for frame, micros in profile[title].items():
                print(f"    {micros:8.1f}  {frame}", file=sys.stderr)
    print("targets", file=sys.stderr)
    for name, verdict in report["targets"].items():
        mark = "pass" if verdict["pass"] else "FAIL"
        print(
            f"  {mark}  {name:<40} {verdict['value']} (target {verdict['target']})", file=sys.stderr
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--calls", type=int, default=100_000, help="calls of the RSS phase")
    parser.add_argument("--latency-calls", type=int, default=2_000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=5.0, help="per throughput round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--ready-runs", type=int, default=3, help="extra spawns of each")
    parser.add_argument("--workdir", type=Path, help="where the audit store goes (not tmpfs)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument("--reference", action="store_true", help=f"also measure {REFERENCE}")
    parser.add_argument(
        "--baseline-src",
        type=Path,
        help=f"also measure, as {BASELINE!r}, the gateway of another cmcp_cli source tree "
        "(the src/ of a checkout of an earlier commit): before/after in one run",
    )
    parser.add_argument("--profile", type=Path, help="write py-spy samples of the gateway here")
    parser.add_argument("--profile-seconds", type=float, default=10.0)
    parser.add_argument("--json", action="store_true", help="the report as JSON on stdout")
    args = parser.parse_args(argv)
    if args.calls < 100 or args.latency_calls < 100:
        parser.error("--calls and --latency-calls must be at least 100")
    try:
        report = run_benchmark(args)
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print_table(report)
    if args.json:
        print(json.dumps(report, indent=2))
    return 0 if all(v["pass"] for v in report["targets"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
