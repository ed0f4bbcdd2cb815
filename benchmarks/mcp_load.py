"""The gateway benchmark's MCP load client and its measuring phases, on raw asyncio.

A client is one MCP session over one keep-alive HTTP/1.1 connection, its tools/call request
head built once; every answer is checked (HTTP 200, its request id, not isError, the
upstream's text) and counted as right or wrong, never as a call when wrong. `drive` runs
clients concurrently; the phases measure latency, throughput and RSS with it. The servers
measured are started elsewhere (benchmarks/gateway.py): here they are a port and the
figures of their process.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Any, Protocol

import orjson

EXPECTED_TEXT = "Sunny, 21 C in Paris"
CALL = b'{"jsonrpc":"2.0","id":%d,"method":"tools/call","params":{"name":"get_weather","arguments":{"city":"Paris"}}}'  # noqa: E501
CHECKPOINTS = (0.10, 0.25, 0.50, 0.75, 1.0)


class BenchError(Exception):
    """The benchmark cannot run, or cannot trust what it measured."""


class Server(Protocol):
    """A measured server process: where it listens and what it has used so far."""

    @property
    def port(self) -> int: ...

    @property
    def pid(self) -> int: ...

    def rss_kib(self) -> int: ...

    def cpu_seconds(self, *, main_thread: bool = False) -> float: ...


# ------------------------------------------------------------------ load client


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes


class _Http(asyncio.Protocol):
    """A keep-alive HTTP/1.1 client connection, one exchange at a time. The servers measured
    here frame every answer with Content-Length; anything else is refused."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.waiter: asyncio.Future[Answer] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if self.waiter is not None and not self.waiter.done():
            self._deliver(self.waiter)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError(f"the server closed the connection ({exc})"))

    def _deliver(self, waiter: asyncio.Future[Answer]) -> None:
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            return
        lines = self.buffer[:end].decode("latin-1").split("\r\n")
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        if "content-length" not in headers:
            waiter.set_exception(BenchError(f"an answer without Content-Length: {lines[0]}"))
            return
        total = end + 4 + int(headers["content-length"])
        if len(self.buffer) < total:
            return
        body = bytes(self.buffer[end + 4 : total])
        del self.buffer[:total]
        if headers.get("connection", "").lower() == "close" and self.transport is not None:
            self.transport.close()  # hypercorn ends a connection after 1,000 requests
        waiter.set_result(Answer(int(lines[0].split(" ", 2)[1]), headers, body))

    async def exchange(self, raw: bytes) -> Answer:
        assert self.transport is not None
        waiter: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()
        self.waiter = waiter
        self.transport.write(raw)
        try:
            return await waiter
        finally:
            self.waiter = None


class McpClient:
    """One MCP session, reconnecting when the server ends a keep-alive connection, counting
    answers that are right and those that are not. A stateless client (the reference
    gateway, which has no sessions) sends no Mcp-Session-Id."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.http = _Http()
        self.session_id: str | None = None
        self.prefix = b""
        self.next_id = 1
        self.ok = 0
        self.failed = 0
        self.first_failure: str | None = None

    @classmethod
    async def open(cls, port: int, *, stateless: bool = False) -> McpClient:
        client = cls(port)
        params = {"protocolVersion": "2025-11-25", "capabilities": {}}
        params["clientInfo"] = {"name": "cmcp-bench", "version": "1"}
        message = {"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": params}
        answer = await client._post(orjson.dumps(message))
        if answer.status != 200 or b'"result"' not in answer.body:
            raise BenchError(f"initialize failed: HTTP {answer.status} {answer.body[:300]!r}")
        if not stateless:
            client.session_id = answer.headers.get("mcp-session-id")
            if client.session_id is None:
                raise BenchError("initialize answered without an Mcp-Session-Id")
            note = await client._post(b'{"jsonrpc":"2.0","method":"notifications/initialized"}')
            if note.status != 202:
                raise BenchError(f"notifications/initialized answered HTTP {note.status}")
        client.prefix = client._head(b"POST")
        return client

    def _head(self, method: bytes) -> bytes:
        head = (
            b"%s /mcp HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nContent-Type: application/json\r\n"
            b"Accept: application/json, text/event-stream\r\nMCP-Protocol-Version: 2025-11-25\r\n"
        ) % (method, self.port)
        if self.session_id is not None:
            head += b"Mcp-Session-Id: %s\r\n" % self.session_id.encode()
        return head + b"Content-Length: "

    async def _exchange(self, raw: bytes) -> Answer:
        if self.http.transport is None or self.http.transport.is_closing():
            loop = asyncio.get_running_loop()
            _, self.http = await loop.create_connection(_Http, "127.0.0.1", self.port)
        return await self.http.exchange(raw)

    async def _post(self, body: bytes) -> Answer:
        return await self._exchange(b"%s%d\r\n\r\n%s" % (self._head(b"POST"), len(body), body))

    async def call(self) -> bool:
        request_id = self.next_id
        self.next_id += 1
        body = CALL % request_id
        answer = await self._exchange(b"%s%d\r\n\r\n%s" % (self.prefix, len(body), body))
        if _answered(answer, request_id):
            self.ok += 1
            return True
        self.failed += 1
        if self.first_failure is None:
            self.first_failure = f"HTTP {answer.status}: {answer.body[:300]!r}"
        return False

    async def close(self) -> None:
        """End the session (DELETE), which makes the gateway write its claim."""
        if self.session_id is not None:
            answer = await self._exchange(b"%s0\r\n\r\n" % self._head(b"DELETE"))
            if answer.status != 200:
                raise BenchError(f"DELETE of a session answered HTTP {answer.status}")
        if self.http.transport is not None:
            self.http.transport.close()


def _answered(answer: Answer, request_id: int) -> bool:
    """Whether the call was allowed and the upstream's own answer came back for it."""
    if answer.status != 200:
        return False
    try:
        message = orjson.loads(answer.body)
        result = message["result"]
        return bool(
            message["id"] == request_id
            and not result.get("isError")
            and result["content"][0]["text"] == EXPECTED_TEXT
        )
    except (orjson.JSONDecodeError, KeyError, IndexError, TypeError, AttributeError):
        return False


# ------------------------------------------------------------------ phases


@dataclass
class Target:
    name: str
    process: Server
    stateless: bool = False
    errors: int = 0
    first_failure: str | None = None


BASELINE = "gateway-before"  # an earlier gateway measured beside this one (--baseline-src)


class Run:
    """The targets, and every gateway session closed so far with the calls made in it."""

    def __init__(self, targets: list[Target]) -> None:
        self.targets = targets
        self.gateway = targets[1]
        self.closed: list[tuple[str, int, int]] = []  # session id, calls, allowed calls

    async def open(self, target: Target, count: int) -> list[McpClient]:
        port, stateless = target.process.port, target.stateless
        return list(
            await asyncio.gather(*(McpClient.open(port, stateless=stateless) for _ in range(count)))
        )

    async def close(self, target: Target, clients: list[McpClient]) -> None:
        for client in clients:
            target.errors += client.failed
            target.first_failure = target.first_failure or client.first_failure
            if target is self.gateway and client.session_id is not None:
                self.closed.append((client.session_id, client.ok + client.failed, client.ok))
            await client.close()


async def drive(clients: list[McpClient], *, calls: int = 0, seconds: float = 0.0) -> float:
    """All clients call concurrently until `calls` calls in all (or `seconds`); seconds taken."""
    remaining = calls
    started = time.perf_counter()
    deadline = started + seconds

    async def loop(client: McpClient) -> None:
        nonlocal remaining
        while (remaining > 0) if calls else (time.perf_counter() < deadline):
            remaining -= 1
            await client.call()

    await asyncio.gather(*(loop(client) for client in clients))
    return time.perf_counter() - started


def ms(nanoseconds: float) -> float:
    return round(nanoseconds / 1e6, 3)


async def measure_latency(run: Run, calls: int, block: int = 100) -> dict[str, Any]:
    """Sequential calls, the targets taking turns in blocks, in alternating order."""
    clients = {target.name: (await run.open(target, 1))[0] for target in run.targets}
    for client in clients.values():
        await drive([client], calls=max(50, calls // 10))  # warm-up: upstream session opened
    samples: dict[str, list[int]] = {name: [] for name in clients}
    order = list(clients)
    for done in range(0, calls, block):
        for name in order:
            client, times = clients[name], samples[name]
            for _ in range(min(block, calls - done)):
                started = time.perf_counter_ns()
                if await client.call():
                    times.append(time.perf_counter_ns() - started)
        order.reverse()
    for target in run.targets:
        await run.close(target, [clients[target.name]])
    report: dict[str, Any] = {}
    for name, times in samples.items():
        if len(times) < 2:
            raise BenchError(f"{name}: too few calls succeeded to measure latency")
        cuts = statistics.quantiles(times, n=100, method="inclusive")
        report[name] = {"calls": len(times), "p50_ms": ms(cuts[49])}
        report[name] |= {"p95_ms": ms(cuts[94]), "p99_ms": ms(cuts[98])}
    direct = report["direct"]["p50_ms"]
    report["added_p50_ms"] = round(report["gateway"]["p50_ms"] - direct, 3)
    report["added_p50_ms_floors"] = {
        name: round(figures["p50_ms"] - direct, 3)
        for name, figures in report.items()
        if name.startswith("floor")
    }
    if BASELINE in report:
        report["added_p50_ms_baseline"] = round(report[BASELINE]["p50_ms"] - direct, 3)
    return report


async def measure_throughput(
    run: Run, *, concurrency: int, seconds: float, rounds: int
) -> dict[str, Any]:
    """Every target for `seconds` per round with fresh sessions, the order alternating; CPU
    per call is the user + system time of the gateway and upstream processes."""
    rates: dict[str, list[float]] = {target.name: [] for target in run.targets}
    cpu: dict[str, list[float]] = {}
    order = list(run.targets)
    for _ in range(rounds):
        for target in order:
            clients = await run.open(target, concurrency)
            await drive(clients, calls=concurrency * 20)  # warm-up: upstream sessions opened
            before = sum(client.ok for client in clients)
            processes = {"upstream": (run.targets[0].process, False)}
            if target is not run.targets[0]:
                processes[target.name] = (target.process, False)
                processes[f"{target.name} main thread"] = (target.process, True)
            used = {name: p.cpu_seconds(main_thread=main) for name, (p, main) in processes.items()}
            elapsed = await drive(clients, seconds=seconds)
            calls = sum(client.ok for client in clients) - before
            rates[target.name].append(calls / elapsed)
            for name, (process, main) in processes.items():
                spent = process.cpu_seconds(main_thread=main) - used[name]
                cpu.setdefault(f"{name}, {target.name} load", []).append(
                    spent / max(calls, 1) * 1e6
                )
            await run.close(target, clients)
        order.reverse()
    return {
        "concurrency": concurrency,
        "seconds_per_round": seconds,
        "calls_per_s_median": {name: round(statistics.median(v)) for name, v in rates.items()},
        "calls_per_s_rounds": {name: [round(r) for r in v] for name, v in rates.items()},
        "cpu_us_per_call_median": {name: round(statistics.median(v)) for name, v in cpu.items()},
    }


async def measure_rss(run: Run, *, calls: int, concurrency: int) -> dict[str, Any]:
    gateway = run.gateway.process
    clients = await run.open(run.gateway, concurrency)
    await drive(clients, calls=concurrency * 20)
    samples = [{"calls": 0, "rss_kib": gateway.rss_kib()}]
    made, elapsed = 0, 0.0
    for fraction in CHECKPOINTS:
        goal = round(calls * fraction)
        elapsed += await drive(clients, calls=goal - made)
        made = goal
        samples.append({"calls": made, "rss_kib": gateway.rss_kib()})
        print(f"  rss after {made:>7} calls: {samples[-1]['rss_kib']} KiB", file=sys.stderr)
    await run.close(run.gateway, clients)
    quarter, last = samples[2]["rss_kib"], samples[-1]["rss_kib"]
    return {
        "calls": calls,
        "concurrency": concurrency,
        "calls_per_s": round(calls / elapsed),
        "samples": samples,
        "growth_25_to_100_percent": round((last - quarter) / quarter, 4),
    }
