"""The gateway as an MCP client of stdio upstreams: one child process per client session.

A client session that uses a stdio upstream gets its own child process, spawned on first
use, so no two agents ever share upstream state. Before every spawn the executable is
resolved exactly as `cmcp validate-config` resolves it and, when `executable_sha256` pins
it, hashed: a mismatch refuses the spawn. The child gets a minimal environment (PATH, HOME
and LANG from the gateway's, then the configured `env`), never the gateway's own secrets.
Messages are newline-delimited JSON-RPC on its stdin and stdout; its stderr is drained
into the debug log.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import logging
import os
import shlex
import shutil
import signal
import stat
from collections.abc import Awaitable, Callable, Coroutine, Mapping
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
    UpstreamError,
    negotiate,
)
from cmcp_cli.wire.jsonrpc import Code

SAFE_ENVIRONMENT = ("PATH", "HOME", "LANG")
EXIT_WAIT_SECONDS = 1.0  # after its stdout ends, how long a child may take to exit
STDERR_LOG_BYTES = 64 * 1024  # of each child's stderr, logged at debug; the rest is drained
MAX_BACKGROUND_TASKS = 64  # answers and notification deliveries in flight, per child
_STDERR_LINE_BYTES = 1000
_PIPE_END_SECONDS = 0.2
_ELF_MAGIC = b"\x7fELF"
_DECODER = msgspec.json.Decoder()
_LOG = logging.getLogger(__name__)

NotificationHandler = Callable[[dict[str, Any]], Awaitable[None]]
_Stamp = tuple[int, int, int, int, int]


def resolve_executable(command: str, base: Path) -> Path | None:
    """The file a stdio upstream's command runs: a path relative to the config, or from PATH."""
    if os.sep in command or (os.altsep and os.altsep in command):
        candidate = Path(command).expanduser()
        return candidate if candidate.is_absolute() else base / candidate
    found = shutil.which(command)
    return Path(found) if found else None


def child_environment(configured: Mapping[str, str], environ: Mapping[str, str]) -> dict[str, str]:
    """The configured variables over PATH, HOME and LANG from `environ`: nothing else of
    the gateway's environment (its CMCP_* tokens above all) reaches a child."""
    return {**{k: environ[k] for k in SAFE_ENVIRONMENT if k in environ}, **configured}


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

    async def open_session(self) -> StdioSession:
        """Spawn a child for one client session and initialize MCP with it."""
        process = await self._spawn_verified()
        session = StdioSession(self, process)
        self.live_sessions.add(session)
        try:
            await self._initialize(session)
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

    async def _initialize(self, session: StdioSession) -> None:
        session.protocol_version = await negotiate(session, self.name)
        await session.notify("notifications/initialized")

    async def _spawn_verified(self) -> asyncio.subprocess.Process:
        path = resolve_executable(self.command[0], self.base)
        if path is None:
            raise UpstreamError(self.name, f"command {self.command[0]!r} is not found on PATH")
        path = path.absolute()  # the child changes to `cwd` before it runs the program
        if self.cwd is not None and not self.cwd.is_dir():
            raise UpstreamError(self.name, f"its cwd {self.cwd} is not a directory")
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise UpstreamError(self.name, f"cannot open {path}: {exc.strerror or exc}") from exc
        try:
            before = os.fstat(fd)
            if not stat.S_ISREG(before.st_mode):
                raise UpstreamError(self.name, f"{path} is not a regular file")
            if self.executable_sha256 is not None:
                # The thread owns (and closes) a duplicate, so a cancelled wait never
                # leaves it reading a descriptor number that was closed and reused.
                actual = await asyncio.to_thread(_sha256_and_close, os.dup(fd))
                if actual != self.executable_sha256:
                    raise UpstreamError(
                        self.name,
                        f"refusing to run {_named(path)}: it hashes to {actual}, not the "
                        f"pinned executable_sha256 {self.executable_sha256}; review the file, "
                        "then update the pin",
                    )
            native = os.pread(fd, len(_ELF_MAGIC), 0) == _ELF_MAGIC
            process = await self._spawn(path, fd, native=native)
            if _stamp(os.fstat(fd)) != _stamp(before):
                await _kill_and_reap(process)
                raise UpstreamError(
                    self.name, f"{path} changed while it was checked and started; not run"
                )
            return process
        finally:
            os.close(fd)

    async def _spawn(self, path: Path, fd: int, *, native: bool) -> asyncio.subprocess.Process:
        # A native executable runs from the descriptor that was hashed, so a file put at
        # the path afterwards is not the one run; a write into the hashed file before the
        # exec shows in its ctime, checked once the child runs. argv[0] still names the
        # path, where programs such as a virtualenv's python find their surroundings. A
        # script runs by path, because its interpreter reopens it by name and finds its
        # folder from it: a file swapped in at that path, or written into it, between that
        # check and the interpreter's read would run instead, a window open only to
        # whoever can write to the file or its folder.
        try:
            return await asyncio.create_subprocess_exec(
                str(path),
                *self.command[1:],
                executable=f"/proc/self/fd/{fd}" if native else str(path),
                pass_fds=(fd,) if native else (),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=dict(self.env),
                cwd=self.cwd,
                limit=self.max_response_bytes,  # one message per line: bounds a response
                start_new_session=True,  # its own process group, stopped as a whole
            )
        except OSError as exc:
            raise UpstreamError(self.name, f"cannot start {path}: {exc.strerror or exc}") from exc


class StdioSession:
    """One child process: a client session's own MCP session with a stdio upstream."""

    session_id: str | None = None  # stdio has no session id: the process is the session

    def __init__(self, upstream: StdioUpstream, process: asyncio.subprocess.Process) -> None:
        self.upstream = upstream
        self.process = process
        self.protocol_version = UPSTREAM_PROTOCOL
        # Server-to-client notifications (list_changed, progress, log messages) go here.
        self.on_notification: NotificationHandler | None = None
        self.server_capabilities: Mapping[str, Any] = {}
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._failure: str | None = None  # once set, every request fails with it
        self._closed = False
        self._write_lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()
        label = f"cmcp-stdio-{upstream.name}-{process.pid}"
        self._reader = asyncio.create_task(self._read_stdout(), name=label)
        self._stderr = asyncio.create_task(self._drain_stderr(), name=f"{label}-stderr")

    @property
    def pid(self) -> int:
        return self.process.pid

    async def listen(self) -> None:
        """Nothing to start: the reader of the child's stdout has delivered notifications
        since the child started."""

    async def request(self, method: str, params: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Send a request; the JSON-RPC response object (with `result` or `error`)."""
        request_id = next(self._ids)
        message: dict[str, Any] = {"jsonrpc": "2.0", "id": request_id, "method": method}
        if params is not None:
            message["params"] = dict(params)
        answer: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = answer
        timeout = self.upstream.timeout_seconds
        try:
            async with asyncio.timeout(timeout):
                await self._send(message)
                return await answer
        except TimeoutError:
            self._background(self._cancel(request_id))
            raise UpstreamError(
                self.upstream.name, f"did not answer {method} within {timeout:g} s", timed_out=True
            ) from None
        finally:
            self._pending.pop(request_id, None)

    async def notify(self, method: str, params: Mapping[str, Any] | None = None) -> None:
        message: dict[str, Any] = {"jsonrpc": "2.0", "method": method}
        if params is not None:
            message["params"] = dict(params)
        timeout = self.upstream.timeout_seconds
        try:
            async with asyncio.timeout(timeout):  # a child that stops reading holds no one
                await self._send(message)
        except TimeoutError:
            raise UpstreamError(
                self.upstream.name, f"did not take {method} within {timeout:g} s", timed_out=True
            ) from None

    async def close(self) -> None:
        """End the child: EOF on its stdin, then SIGTERM, then SIGKILL; bounded."""
        if self._closed:
            return
        self._closed = True
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
        for task in (self._reader, self._stderr, *self._tasks):
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
        for answer in self._pending.values():
            if not answer.done():
                answer.set_exception(UpstreamError(self.upstream.name, self._failure))

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
        method = message.get("method")
        if isinstance(method, str):
            if "id" in message:
                self._background(self._answer(message))
            elif self.on_notification is not None:
                self._background(self._deliver(self.on_notification, message))
            return
        request_id = message.get("id")
        # `type(...) is int`: JSON true must not answer request 1
        waiting = self._pending.get(request_id) if type(request_id) is int else None
        if waiting is None or waiting.done() or not ("result" in message or "error" in message):
            _LOG.debug("upstream %r: ignored a response to no waiting request: %.200r", name, line)
            return
        waiting.set_result(message)

    async def _answer(self, request: dict[str, Any]) -> None:
        """Answer a server-to-client request: ping, and nothing else, is served."""
        reply: dict[str, Any] = {"jsonrpc": "2.0", "id": request["id"]}
        if request["method"] == "ping":
            reply["result"] = {}
        else:
            reply["error"] = {
                "code": int(Code.METHOD_NOT_FOUND),
                "message": f"the cMCP gateway does not serve {request['method']} to upstreams",
            }
        with contextlib.suppress(UpstreamError):
            await self._send(reply)

    async def _deliver(self, handler: NotificationHandler, message: dict[str, Any]) -> None:
        try:
            await handler(message)
        except Exception:  # noqa: BLE001 - a failing handler is logged; the child goes on
            _LOG.exception("upstream %r: the notification handler failed", self.upstream.name)

    async def _cancel(self, request_id: int) -> None:
        """Tell the child that the gateway gave up on a request (it may stop working on it)."""
        params = {"requestId": request_id, "reason": "the gateway's upstream timeout expired"}
        with contextlib.suppress(UpstreamError, TimeoutError):
            async with asyncio.timeout(CLOSE_TIMEOUT_SECONDS):
                await self._send(
                    {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": params}
                )

    async def _drain_stderr(self) -> None:
        """Read the child's stderr to its end, so that it never blocks on a full pipe, and
        log its first STDERR_LOG_BYTES line by line at debug."""
        stderr = self.process.stderr
        assert stderr is not None  # noqa: S101 - spawned with stderr=PIPE
        budget = STDERR_LOG_BYTES
        partial = b""
        while chunk := await stderr.read(1 << 14):
            if budget <= 0 or not _LOG.isEnabledFor(logging.DEBUG):
                continue
            *lines, partial = (partial + chunk).split(b"\n")
            if len(partial) > _STDERR_LINE_BYTES:
                lines.append(partial)
                partial = b""
            budget = self._log_stderr(lines, budget)
        if partial and budget > 0:
            self._log_stderr([partial], budget)

    def _log_stderr(self, lines: list[bytes], budget: int) -> int:
        for line in lines:
            if budget <= 0:
                _LOG.debug(
                    "upstream %r (pid %d): stderr no longer logged", self.upstream.name, self.pid
                )
                break
            budget -= len(line) + 1
            text = line[:_STDERR_LINE_BYTES].decode("utf-8", "replace").rstrip()
            _LOG.debug("upstream %r (pid %d) stderr: %s", self.upstream.name, self.pid, text)
        return budget

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

    def _background(self, work: Coroutine[Any, Any, None]) -> None:
        if len(self._tasks) >= MAX_BACKGROUND_TASKS:  # a child flooding the gateway
            work.close()
            _LOG.warning(
                "upstream %r (pid %d): too much in flight, a message was dropped",
                self.upstream.name,
                self.pid,
            )
            return
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _end_tasks(self) -> None:
        # The child is gone, so its pipes end: let the readers take what is left (the last
        # stderr lines above all), but not wait on a grandchild that holds them open.
        await asyncio.wait({self._reader, self._stderr}, timeout=_PIPE_END_SECONDS)
        tasks = [self._reader, self._stderr, *self._tasks]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _sha256_and_close(fd: int) -> str:
    """The sha256 of the file open on `fd`, from its start; closes `fd`."""
    with os.fdopen(fd, "rb") as handle:
        handle.seek(0)
        return "sha256:" + hashlib.file_digest(handle, "sha256").hexdigest()


def _named(path: Path) -> str:
    """The path, and the file it leads to when that is another (a symlink's target)."""
    real = os.path.realpath(path)
    return str(path) if real == str(path) else f"{path} (-> {real})"


def _stamp(status: os.stat_result) -> _Stamp:
    return (status.st_dev, status.st_ino, status.st_size, status.st_mtime_ns, status.st_ctime_ns)


async def _kill_and_reap(process: asyncio.subprocess.Process) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(CLOSE_TIMEOUT_SECONDS):
            await process.wait()
