"""The gateway as an MCP client of stdio upstreams: one child process per client session.

A client session that uses a stdio upstream gets its own child process, spawned on first
use (checked and started as `spawn` says), so no two agents ever share upstream state.
Messages are newline-delimited JSON-RPC on its stdin and stdout; its stderr is drained
into the debug log.

Where each message the child writes goes, in the order it wrote them:

- a response resolves the request it answers;
- a notifications/progress whose `progressToken` is the `_meta.progressToken` of a request
  in flight goes to that request's `relay`;
- any other notification, and any request of the child's own (sampling/createMessage,
  elicitation/create, roots/list, ping), goes to the relay of the request in flight when
  exactly one is, since a stdio message names no request it is about; otherwise, or when
  that request has no relay, to `on_notification`;
- a request that reaches no handler at all is answered at once (ping) or refused, so the
  child never waits on an answer that will not come.

Messages for one handler are delivered one after another; a request's response is handed
over only after every message delivered to its relay before it. Each message routed to a
request also restarts that request's timeout: a call that reports progress is alive.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import shlex
import signal
from collections.abc import Coroutine, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import orjson

from cmcp_cli.config import CmcpConfig
from cmcp_cli.config import StdioUpstream as StdioUpstreamConfig
from cmcp_cli.gateway.upstream.api import (
    CLOSE_TIMEOUT_SECONDS,
    UPSTREAM_PROTOCOL,
    MessageHandler,
    UpstreamError,
    cancel_reason,
    negotiate,
    unhandled,
)
from cmcp_cli.gateway.upstream.spawn import (
    SAFE_ENVIRONMENT,
    child_environment,
    drain_stderr,
    resolve_executable,
    spawn_verified,
)
from cmcp_cli.wire.jsonrpc import RequestId, encoding_problem

__all__ = ["SAFE_ENVIRONMENT", "StdioSession", "StdioUpstream", "resolve_executable"]

EXIT_WAIT_SECONDS = 1.0  # after its stdout ends, how long a child may take to exit
MAX_BACKGROUND_TASKS = 64  # answers and notification deliveries in flight, per child
_PIPE_END_SECONDS = 0.2
_DECODER = msgspec.json.Decoder()
_LOG = logging.getLogger(__name__)


@dataclass(eq=False)
class _InFlight:
    """A request of ours the child has not answered yet."""

    answer: asyncio.Future[dict[str, Any]]
    relay: MessageHandler | None
    progress_token: object  # the request's _meta.progressToken, if it set one
    deadline: asyncio.Timeout | None = None
    lane: asyncio.Task[None] | None = None  # the last delivery to its relay


def stdio_upstreams(
    config: CmcpConfig, *, base: Path, environ: Mapping[str, str]
) -> dict[str, StdioUpstream]:
    """The stdio upstreams of a checked config; `base` is the config file's folder."""
    return {
        name: StdioUpstream(
            name=name,
            command=upstream.command,
            base=base.absolute(),
            executable_sha256=upstream.executable_sha256,
            env=child_environment(upstream.env, environ),
            cwd=upstream.cwd,
            timeout_seconds=float(config.limits.upstream_timeout_seconds),
            max_response_bytes=config.max_response_size_bytes,
        )
        for name, upstream in config.upstreams.items()
        if isinstance(upstream, StdioUpstreamConfig)
    }


@dataclass(eq=False)
class StdioUpstream:
    name: str
    command: tuple[str, ...]
    base: Path  # a relative command is relative to it (the config file's folder)
    executable_sha256: str | None
    env: Mapping[str, str]  # the child's whole environment
    cwd: Path | None
    timeout_seconds: float
    max_response_bytes: int
    live_sessions: set[StdioSession] = field(default_factory=set, init=False, repr=False)

    def describe(self) -> str:
        pin = "executable pinned" if self.executable_sha256 else "executable not pinned"
        return f"stdio: {shlex.join(self.command)} ({pin})"

    async def open_session(self, *, capabilities: Mapping[str, Any] | None = None) -> StdioSession:
        """Spawn a child for one client session and initialize MCP with it."""
        process = await spawn_verified(self)
        session = StdioSession(self, process)
        self.live_sessions.add(session)
        try:
            session.protocol_version = await negotiate(
                session, self.name, capabilities=capabilities
            )
            await session.notify("notifications/initialized")
        except UpstreamError:
            await session.close()
            raise
        except BaseException:
            session.kill()
            raise
        return session

    def close(self) -> None:
        """Kill every child still running: at shutdown, after the sessions were closed."""
        for session in list(self.live_sessions):
            session.kill()


class StdioSession:
    """One child process: a client session's own MCP session with a stdio upstream."""

    session_id: str | None = None  # stdio has no session id: the process is the session

    def __init__(self, upstream: StdioUpstream, process: asyncio.subprocess.Process) -> None:
        self.upstream = upstream
        self.process = process
        self.protocol_version = UPSTREAM_PROTOCOL
        # Messages outside any request (see the module's routing rules) go here.
        self.on_notification: MessageHandler | None = None
        self.server_capabilities: Mapping[str, Any] = {}
        self._ids = itertools.count(1)
        self._pending: dict[int, _InFlight] = {}
        self._failure: str | None = None  # once set, every request fails with it
        self._closed = False
        self._write_lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()
        self._cancels: set[asyncio.Task[None]] = set()
        self._notice_lane: asyncio.Task[None] | None = None
        label = f"cmcp-stdio-{upstream.name}-{process.pid}"
        self._reader = asyncio.create_task(self._read_stdout(), name=label)
        self._stderr = asyncio.create_task(
            drain_stderr(process, f"upstream {upstream.name!r} (pid {process.pid})", _LOG),
            name=f"{label}-stderr",
        )

    @property
    def pid(self) -> int:
        return self.process.pid

    async def listen(self) -> None:
        """Nothing to start: the reader of the child's stdout has delivered notifications
        since the child started."""

    async def request(
        self,
        method: str,
        params: Mapping[str, Any] | None = None,
        *,
        relay: MessageHandler | None = None,
    ) -> dict[str, Any]:
        """Send a request; the JSON-RPC response object (with `result` or `error`)."""
        request_id = next(self._ids)
        message: dict[str, Any] = {"jsonrpc": "2.0", "id": request_id, "method": method}
        if params is not None:
            message["params"] = dict(params)
        flight = _InFlight(
            asyncio.get_running_loop().create_future(), relay, _progress_token(params)
        )
        self._pending[request_id] = flight
        timeout = self.upstream.timeout_seconds
        try:
            async with asyncio.timeout(timeout) as flight.deadline:
                await self._send(message)
                return await flight.answer
        except TimeoutError:
            self._cancel(request_id, "the gateway's upstream timeout expired")
            raise UpstreamError(
                self.upstream.name, f"did not answer {method} within {timeout:g} s", timed_out=True
            ) from None
        except asyncio.CancelledError as exc:
            if method != "initialize":  # the one request a client may not cancel
                self._cancel(request_id, cancel_reason(exc))
            raise
        finally:
            self._pending.pop(request_id, None)
            if flight.answer.done() and not flight.answer.cancelled():
                # a child that exits while the request is written fails it twice: the
                # write's error is raised, and this one is the same failure
                flight.answer.exception()

    async def respond(self, request_id: RequestId, answer: Mapping[str, Any]) -> None:
        """Answer a request the child sent: `answer` is {"result": ...} or {"error": ...}."""
        await self._send_bounded({"jsonrpc": "2.0", "id": request_id, **answer}, "an answer")

    async def notify(self, method: str, params: Mapping[str, Any] | None = None) -> None:
        message: dict[str, Any] = {"jsonrpc": "2.0", "method": method}
        if params is not None:
            message["params"] = dict(params)
        await self._send_bounded(message, method)

    async def _send_bounded(self, message: Mapping[str, Any], what: str) -> None:
        timeout = self.upstream.timeout_seconds
        try:
            async with asyncio.timeout(timeout):  # a child that stops reading holds no one
                await self._send(message)
        except TimeoutError:
            raise UpstreamError(
                self.upstream.name, f"did not take {what} within {timeout:g} s", timed_out=True
            ) from None

    async def close(self) -> None:
        """End the child: EOF on its stdin, then SIGTERM, then SIGKILL; bounded."""
        if self._closed:
            return
        self._closed = True
        if self._cancels:  # cancellations under way reach the child before its EOF
            await asyncio.wait(set(self._cancels), timeout=CLOSE_TIMEOUT_SECONDS)
        self._fail("its session was closed")
        try:
            await self._stop()
        finally:
            self.upstream.live_sessions.discard(self)
            await self._end_tasks()

    def kill(self) -> None:
        """Stop the child now, without waiting (shutdown, or a failed start)."""
        self._fail("its process was stopped")
        self._signal(signal.SIGKILL)
        for task in (self._reader, self._stderr, *self._tasks, *self._cancels):
            task.cancel()
        self.upstream.live_sessions.discard(self)

    async def _send(self, message: Mapping[str, Any]) -> None:
        try:
            data = orjson.dumps(message) + b"\n"  # orjson never writes a raw newline
        except orjson.JSONEncodeError as exc:
            raise UpstreamError(self.upstream.name, f"cannot encode the message: {exc}") from exc
        stdin = self.process.stdin
        assert stdin is not None  # noqa: S101 - spawned with stdin=PIPE
        async with self._write_lock:
            if self._failure is not None:
                raise UpstreamError(self.upstream.name, self._failure)
            try:
                stdin.write(data)
                await stdin.drain()
            except ConnectionError as exc:
                # The child is gone: give the reader a moment to learn its exit status.
                await asyncio.wait({self._reader}, timeout=EXIT_WAIT_SECONDS)
                reason = self._failure or f"cannot write to its process: {exc}"
                raise UpstreamError(self.upstream.name, reason) from exc

    def _fail(self, reason: str) -> None:
        if self._failure is None:
            self._failure = reason
        for flight in self._pending.values():
            if not flight.answer.done():
                flight.answer.set_exception(UpstreamError(self.upstream.name, self._failure))

    async def _read_stdout(self) -> None:
        stdout = self.process.stdout
        assert stdout is not None  # noqa: S101 - spawned with stdout=PIPE
        while True:
            try:
                line = await stdout.readline()
            except ValueError:  # a line longer than the reader's limit
                self._signal(signal.SIGKILL)  # the rest of the conversation cannot be trusted
                reason = (
                    "sent a message larger than max_response_size_bytes "
                    f"({self.upstream.max_response_bytes} bytes); its process was stopped"
                )
                break
            except OSError as exc:
                self._signal(signal.SIGKILL)
                reason = f"its stdout could not be read ({exc}); its process was stopped"
                break
            if not line:
                reason = await self._exit_reason()
                break
            self._route(line)
        if not self._closed:
            _LOG.warning("upstream %r (pid %d): %s", self.upstream.name, self.pid, reason)
        self._fail(reason)

    async def _exit_reason(self) -> str:
        try:
            async with asyncio.timeout(EXIT_WAIT_SECONDS):
                code = await self.process.wait()
        except TimeoutError:
            return "its process closed its stdout"
        if code < 0:
            try:
                return f"its process was killed by {signal.Signals(-code).name}"
            except ValueError:
                return f"its process was killed by signal {-code}"
        return f"its process exited with code {code}"

    def _route(self, line: bytes) -> None:
        if not line.strip():
            return
        name = self.upstream.name
        try:
            message = _DECODER.decode(line)
        except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
            _LOG.warning("upstream %r wrote a line that is not JSON, ignored: %.200r", name, line)
            return
        if not isinstance(message, dict):
            _LOG.warning(
                "upstream %r wrote JSON that is not a message, ignored: %.200r", name, line
            )
            return
        if isinstance(message.get("method"), str):
            if encoding_problem(message) is not None:
                _LOG.warning("upstream %r sent a message JSON cannot carry, ignored", name)
                return
            self._hand_on(message)
            return
        request_id = message.get("id")
        # `type(...) is int`: JSON true must not answer request 1
        flight = self._pending.get(request_id) if type(request_id) is int else None
        if (
            flight is None
            or flight.answer.done()
            or not ("result" in message or "error" in message)
        ):
            _LOG.debug("upstream %r: ignored a response to no waiting request: %.200r", name, line)
            return
        # An answer the gateway could not write back to its client fails the request as a
        # fault of the upstream, recorded as such, never an answer that fails on its way out.
        problem = encoding_problem(message)
        if problem is not None:
            flight.answer.set_exception(
                UpstreamError(name, f"sent an answer the gateway cannot pass on: {problem}")
            )
            return
        if flight.lane is None or flight.lane.done():
            flight.answer.set_result(message)
        else:  # after what its relay was handed before it
            flight.lane = self._background(
                _settle(flight.lane, flight.answer, message), essential=True
            )

    def _hand_on(self, message: dict[str, Any]) -> None:
        """Deliver a notification or request of the child's by the module's rules."""
        flight = self._flight_for(message)
        if flight is not None:
            if flight.deadline is not None and not flight.deadline.expired():
                flight.deadline.reschedule(
                    asyncio.get_running_loop().time() + self.upstream.timeout_seconds
                )
            if flight.relay is not None:
                flight.lane = self._background(self._deliver(flight.lane, flight.relay, message))
                return
        if self.on_notification is not None:
            handler = self.on_notification
            self._notice_lane = self._background(self._deliver(self._notice_lane, handler, message))
        elif "id" in message:
            self._background(self._deliver(None, self.respond_unhandled, message))

    def _flight_for(self, message: dict[str, Any]) -> _InFlight | None:
        if message["method"] == "notifications/progress":
            params = message.get("params")
            token = params.get("progressToken") if isinstance(params, dict) else None
            if token is not None:
                for flight in self._pending.values():
                    mine = flight.progress_token
                    if type(mine) is type(token) and mine == token:  # a token 1 is not true
                        return flight
        if len(self._pending) == 1:
            return next(iter(self._pending.values()))
        return None

    async def respond_unhandled(self, request: dict[str, Any]) -> None:
        with contextlib.suppress(UpstreamError):
            await self.respond(request["id"], unhandled(request))

    async def _deliver(
        self, after: asyncio.Task[None] | None, handler: MessageHandler, message: dict[str, Any]
    ) -> None:
        if after is not None:
            await asyncio.wait({after})
        try:
            await handler(message)
        except Exception:  # noqa: BLE001 - a failing handler is logged; the child goes on
            _LOG.exception("upstream %r: the message handler failed", self.upstream.name)

    def _cancel(self, request_id: int, reason: str) -> None:
        """Tell the child, in the background and bounded, that the gateway gave up on a
        request (it may stop working on it)."""
        params = {"requestId": request_id, "reason": reason}
        task = asyncio.create_task(self._cancelled(params))
        self._cancels.add(task)
        task.add_done_callback(self._cancels.discard)

    async def _cancelled(self, params: dict[str, Any]) -> None:
        with contextlib.suppress(UpstreamError, TimeoutError):
            async with asyncio.timeout(CLOSE_TIMEOUT_SECONDS):
                await self._send(
                    {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": params}
                )

    async def _stop(self) -> None:
        stdin = self.process.stdin
        if stdin is not None:
            stdin.close()  # EOF: how MCP asks a stdio server to leave
        for signum, share in ((None, 0.5), (signal.SIGTERM, 0.4), (signal.SIGKILL, 0.1)):
            if signum is not None:
                self._signal(signum)
            try:
                async with asyncio.timeout(CLOSE_TIMEOUT_SECONDS * share):
                    await self.process.wait()
            except TimeoutError:
                continue
            return
        _LOG.warning(
            "upstream %r: process %d has not exited yet after SIGKILL", self.upstream.name, self.pid
        )

    def _signal(self, signum: int) -> None:
        """Signal the child's process group: the child and whatever it started. Only while
        the child is not reaped: until then its pid, the group's id, cannot be reused."""
        if self.process.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signum)
        with contextlib.suppress(ProcessLookupError):
            self.process.send_signal(signum)  # in case it left its group

    def _background(
        self, work: Coroutine[Any, Any, None], *, essential: bool = False
    ) -> asyncio.Task[None] | None:
        if len(self._tasks) >= MAX_BACKGROUND_TASKS and not essential:  # a child flooding us
            work.close()
            _LOG.warning(
                "upstream %r (pid %d): too much in flight, a message was dropped",
                self.upstream.name,
                self.pid,
            )
            return None
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _end_tasks(self) -> None:
        # The child is gone, so its pipes end: let the readers take what is left (the last
        # stderr lines above all), but not wait on a grandchild that holds them open.
        await asyncio.wait({self._reader, self._stderr}, timeout=_PIPE_END_SECONDS)
        tasks = [self._reader, self._stderr, *self._tasks, *self._cancels]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _progress_token(params: Mapping[str, Any] | None) -> object:
    meta = params.get("_meta") if params is not None else None
    return meta.get("progressToken") if isinstance(meta, dict) else None


async def _settle(
    after: asyncio.Task[None], answer: asyncio.Future[dict[str, Any]], message: dict[str, Any]
) -> None:
    await asyncio.wait({after})
    if not answer.done():
        answer.set_result(message)
