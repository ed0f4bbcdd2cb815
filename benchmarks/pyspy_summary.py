"""py-spy profile of the gateway under load, summarised per call.

py-spy samples the thread holding the gateway's GIL while 16 sessions drive it: the serial
Python work of one call, which bounds throughput. The raw samples are summarised as
GIL-held microseconds per call, own time by module and time inside each function of the
gateway and its HTTP, policy and thread-pool libraries.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from mcp_load import BenchError, Run, drive

PROFILE_RATE = 250


async def profile_gateway(run: Run, output: Path, *, seconds: float) -> dict[str, Any]:
    """py-spy samples the thread holding the GIL (idle detection does not work in every
    container; the GIL holder is the serial part that bounds throughput)."""
    py_spy = shutil.which("py-spy", path=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    if py_spy is None:
        raise BenchError("--profile needs py-spy: .venv/bin/pip install py-spy")
    clients = await run.open(run.gateway, 16)
    await drive(clients, calls=320)
    command = [py_spy, "record", "--pid", str(run.gateway.process.pid), "--gil"]
    command += ["--nonblocking", "--rate", str(PROFILE_RATE), "--format", "raw", "-o", str(output)]
    sampler = subprocess.Popen(  # noqa: S603 - py-spy from the venv or PATH, no shell
        command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        await asyncio.sleep(1.0)  # py-spy attaches
        before = sum(client.ok for client in clients)
        elapsed = await drive(clients, seconds=seconds)
        calls = sum(client.ok for client in clients) - before
        sampler.send_signal(signal.SIGINT)  # py-spy writes its samples on SIGINT
        _, errors = await asyncio.to_thread(sampler.communicate, None, 60)
    finally:
        if sampler.poll() is None:
            sampler.kill()
            sampler.wait(timeout=10)
    await run.close(run.gateway, clients)
    if not output.is_file():
        raise BenchError(f"py-spy wrote no samples: {errors.decode(errors='replace')[-500:]}")
    return {"calls": calls, "calls_per_s": round(calls / elapsed), **summarize(output, calls)}


_FRAME = re.compile(r"^(?P<function>.*) \((?P<file>[^()]*?)(?::\d+)?\)$")
_SHOWN = ("cmcp_cli/", "hypercorn/", "h11/", "cedarpy/", "rfc8785/", "concurrent/", "asyncio/")
_SKELETON = re.compile(r"(^|\.)(run|_run|_run_once|run_forever|run_until_complete|run_gateway)$")


def summarize(output: Path, calls: int, top: int = 30) -> dict[str, Any]:
    """GIL-held microseconds per call: own time by module, and time inside each function of
    the gateway and its HTTP, policy and thread-pool libraries."""
    own: Counter[str] = Counter()
    inside: Counter[str] = Counter()
    total = 0
    for line in output.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not count_text.isdigit():
            continue
        frames = [_FRAME.match(frame) for frame in stack.split(";")]
        named = [(m["function"], _short(m["file"])) for m in frames if m is not None]
        if not named:
            continue
        count = int(count_text)
        total += count
        own[named[-1][1]] += count
        for function, file in set(named):
            shown = file.startswith(_SHOWN) and not file.startswith("cmcp_cli/cli/")
            if shown and not _SKELETON.search(function):  # the loop itself: on every stack
                inside[f"{function} ({file})"] += count
    scale = 1e6 / PROFILE_RATE / max(calls, 1)

    def table(counter: Counter[str]) -> dict[str, float]:
        return {name: round(n * scale, 1) for name, n in counter.most_common(top)}

    return {
        "samples": total,
        "gil_us_per_call": round(total * scale, 1),
        "own_us_per_call_by_module": table(own),
        "inclusive_us_per_call": table(inside),
    }


def _short(path: str) -> str:
    """A frame's file relative to its package root: `cmcp_cli/...`, `h11/...`, `asyncio/...`."""
    return re.sub(r"^.*(site-packages/|/src/|/lib/python3\.\d+/)", "", path)
