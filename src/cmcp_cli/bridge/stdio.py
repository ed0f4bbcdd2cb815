"""`cmcp bridge`: a running gateway served as a stdio MCP server, for stdio-only clients.

Every newline-delimited JSON-RPC message read from stdin is POSTed to the gateway's MCP
endpoint (streamable HTTP); every JSON-RPC message of the answer, a JSON body or each event
of an SSE body, becomes one line on stdout. Messages are relayed concurrently, so a slow
tool call never holds up a ping. The bridge keeps the session id and protocol revision
that initialize negotiated, sends them on every later message, and ends the session with
DELETE when stdin ends (so the gateway writes the session's claim).

Only JSON-RPC reaches stdout: every request gets exactly one response line, failures
included (the gateway unreachable, slow, refusing the token, no longer knowing the
session); failures of notifications are reported on stderr. The bearer token is read from
the environment and never written anywhere.

With `--challenge`, every message carries it as the `Cmcp-Challenge` header: the request
that opens a session (initialize, or the first request of a stateless client) binds it,
and the gateway takes the same value on every later one. A client that gives a challenge
in `_meta` itself needs no option: its messages are relayed as they are.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import signal
import sys
import threading
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass
from typing import Any, BinaryIO

import msgspec
import orjson

from cmcp_cli.bridge.options import (
    DEFAULT_TIMEOUT_SECONDS,
    VISIBLE_ASCII,
    BridgeOptions,
    bridge_options,
)
from cmcp_cli.wire.http1 import ConnectionPool, Endpoint, HttpError, HttpTimeoutError, Response
from cmcp_cli.wire.jsonrpc import Code, Message, ProtocolError, RequestId, error, parse_message
from cmcp_cli.wire.sse import sse_data

# An SDK stdio client waits 2 s for its server to exit after closing stdin, then kills it.
CLOSE_TIMEOUT_SECONDS = 1.5
# Far above the gateway's own (configurable) limits, which decide; these only bound memory.
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
MAX_IN_FLIGHT = 64

Diagnose = Callable[[str], None]

_DECODER = msgspec.json.Decoder()
_READ_CHUNK = 64 * 1024
_MAX_JSON_DEPTH = 100_000  # the gateway applies its own limits.max_json_depth
_STDIN_FD = 0


_EOF, _TOO_LONG = object(), object()  # what the stdin reader queues besides lines


def serve_stdio(
    url: str,
    *,
    token_env: str | None = None,
    timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS,
    diagnose: Diagnose,
    environ: Mapping[str, str] | None = None,
    challenge: str | None = None,
) -> None:
    """Relay this process's stdin and stdout to the gateway at `url` until stdin ends or
    SIGTERM/SIGINT arrives, then end the session; diagnostics go to `diagnose`.

    The process's stdout becomes the bridge's alone: file descriptor 1 is pointed at stderr
    for the duration, so nothing but JSON-RPC can reach the client, whoever prints.
    """
    options = bridge_options(
        url,
        token_env=token_env,
        timeout_seconds=timeout_seconds,
        environ=os.environ if environ is None else environ,
        challenge=challenge,
    )
    sys.stdout.flush()
    out_fd = os.dup(1)
    os.dup2(2, 1)
    try:
        with open(out_fd, "wb", closefd=False) as out:
            asyncio.run(_Bridge(options, out, diagnose).run(_STDIN_FD))
    finally:
        sys.stdout.flush()
        os.dup2(out_fd, 1)
        os.close(out_fd)


@dataclass(frozen=True, slots=True)
class _Failure:
    code: int
    message: str
    http_status: int | None = None  # reported in the error's data


class _Bridge:
    def __init__(self, options: BridgeOptions, out: BinaryIO, diagnose: Diagnose) -> None:
        self.options = options
        self.endpoint = Endpoint.parse(options.url)
        self.pool = ConnectionPool(self.endpoint)
        self.diagnose = diagnose
        self.session_id: str | None = None
        self.protocol_version: str | None = None
        self._out = out
        self._stop = asyncio.Event()
        self._out_gone = False
        self._pending_initialize = 0
        self._no_initialize = asyncio.Event()  # set while no initialize is in flight
        self._no_initialize.set()
        self._slots = asyncio.Semaphore(MAX_IN_FLIGHT)
        self._tasks: set[asyncio.Task[None]] = set()
        self._crash: BaseException | None = None

    async def run(self, stdin_fd: int) -> None:
        loop = asyncio.get_running_loop()
        lines: asyncio.Queue[bytes | object] = asyncio.Queue(maxsize=MAX_IN_FLIGHT)
        # A daemon thread, not the loop's executor: a read blocked on a silent client must
        # never hold up the exit after a signal.
        threading.Thread(
            target=_read_lines, args=(stdin_fd, loop, lines), name="stdin", daemon=True
        ).start()
        signals = _on_signals(loop, self._stop.set)
        token = self.options.token and f" with the bearer token from {self.options.token_env}"
        self.diagnose(f"relaying stdio to {self.options.url}{token or ''}")
        try:
            reading = asyncio.create_task(self._read_all(lines))
            reading.add_done_callback(self._finished)
            if await self._until_stopped(reading):
                # stdin ended: answer what is in flight (each bounded by --timeout) first
                draining = asyncio.create_task(self._drain())
                await self._until_stopped(draining)
                draining.cancel()
            reading.cancel()
            for task in self._tasks:
                task.cancel()
            await asyncio.gather(reading, *self._tasks, return_exceptions=True)
            if self.session_id is not None:
                await self._delete(self.session_id, self.protocol_version)
        finally:
            for number in signals:
                loop.remove_signal_handler(number)
            self.pool.close()
        if self._crash is not None:
            raise self._crash  # a bug: the session is closed, the traceback is kept

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None and self._crash is None:
            self._crash = task.exception()
            self._stop.set()

    async def _until_stopped(self, work: asyncio.Task[None]) -> bool:
        """Wait for `work`; False when a signal (or a vanished stdout) came first."""
        stopping: asyncio.Task[Any] = asyncio.create_task(self._stop.wait())
        done, _ = await asyncio.wait({work, stopping}, return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        return work in done and not self._stop.is_set()

    async def _drain(self) -> None:
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _read_all(self, lines: asyncio.Queue[bytes | object]) -> None:
        while (item := await lines.get()) is not _EOF:
            if item is _TOO_LONG:
                dropped = f"a stdin line exceeds {MAX_MESSAGE_BYTES} bytes: it was dropped"
                self._write(error(None, Code.INVALID_REQUEST, dropped))
            elif isinstance(item, bytes) and (line := item.strip()):
                await self._accept(line)

    async def _accept(self, line: bytes) -> None:
        try:
            # The gateway's own parser: only well-formed JSON-RPC is sent, and a line that
            # is not gets its error here, in order, as the client's transport expects.
            message = parse_message(line, max_depth=_MAX_JSON_DEPTH)
        except ProtocolError as exc:
            not_json = exc.code == Code.PARSE_ERROR
            text = f"a stdin line is not JSON: {exc.__cause__}" if not_json else exc.message
            self._write(error(exc.request_id, exc.code, text))
            return
        await self._slots.acquire()
        initialize = message.method == "initialize"
        if initialize:
            self._pending_initialize += 1
            self._no_initialize.clear()
        self._spawn(self._relay(line, message, initialize=initialize))

    async def _relay(self, body: bytes, message: Message, *, initialize: bool) -> None:
        request_id = message.id if message.method is not None else None
        try:
            if not initialize:
                # What follows an initialize needs the session it opens.
                await self._no_initialize.wait()
            failure = await self._exchange(body, request_id, initialize=initialize)
            if failure is None:
                return
            if request_id is not None:
                data = {"http_status": failure.http_status} if failure.http_status else None
                self._write(error(request_id, failure.code, failure.message, data))
            else:
                what = message.method or f"the response to {message.id!r}"
                self.diagnose(f"{what} was not delivered: {failure.message}")
        except Exception:
            if request_id is not None:
                failed = "cmcp bridge failed on this request: its stderr has the traceback"
                self._write(error(request_id, Code.INTERNAL_ERROR, failed))
            raise
        finally:
            if initialize:
                self._pending_initialize -= 1
                if self._pending_initialize == 0:
                    self._no_initialize.set()
            self._slots.release()

    async def _exchange(
        self, body: bytes, request_id: RequestId | None, *, initialize: bool
    ) -> _Failure | None:
        try:
            headers = self._headers(session=not initialize)
            if self.options.challenge is not None:
                headers.append(("cmcp-challenge", self.options.challenge))
            timeout = self.options.timeout_seconds
            response = await self.pool.request(
                "POST", headers, body, timeout=timeout, max_body=MAX_MESSAGE_BYTES
            )
        except HttpTimeoutError:
            return _Failure(
                Code.UPSTREAM_TIMEOUT,
                f"the gateway at {self.options.url} did not answer within "
                f"{self.options.timeout_seconds:g} s (cmcp bridge --timeout)",
            )
        except HttpError as exc:
            return self._unreachable(exc)
        if response.status not in (200, 202):
            return self._refusal(response, initialize=initialize)
        return self._deliver(response, request_id, initialize=initialize)

    def _deliver(
        self, response: Response, request_id: RequestId | None, *, initialize: bool
    ) -> _Failure | None:
        content_type = response.headers.get("content-type", "").split(";")[0].strip().lower()
        if not response.body.strip():
            raw_messages = []  # 202 Accepted, for a notification or a response
        elif content_type == "application/json":
            raw_messages = [response.body]
        elif content_type == "text/event-stream":
            raw_messages = [data for data in sse_data(response.body) if data.strip()]
        else:
            return _Failure(
                Code.UPSTREAM_FAILED,
                f"the gateway at {self.options.url} answered with content type "
                f"{content_type or 'none'!r}, which is not MCP",
            )
        answered = False
        for raw in raw_messages:
            try:
                message = _DECODER.decode(raw)
            except (msgspec.DecodeError, UnicodeDecodeError, RecursionError) as exc:
                self.diagnose(f"the gateway sent a message that is not JSON, dropped: {exc}")
                continue
            is_answer = (
                request_id is not None
                and isinstance(message, dict)
                and _same_id(message.get("id"), request_id)
                and ("result" in message or "error" in message)
            )
            if is_answer and answered:
                continue  # a request gets exactly one answer
            if is_answer and initialize and isinstance(message.get("result"), dict):
                failure = self._adopt_session(response, message["result"])
                if failure is not None:
                    return failure
            # Valid JSON holds CR and LF only as whitespace (never inside a string), so
            # blanking them keeps the message exact and makes it one line.
            self._write_line(raw.replace(b"\r", b" ").replace(b"\n", b" "))
            answered = answered or is_answer
        if request_id is not None and not answered:
            return _Failure(
                Code.UPSTREAM_FAILED,
                f"the gateway at {self.options.url} answered without a response to this request",
            )
        return None

    def _adopt_session(self, response: Response, result: dict[str, Any]) -> _Failure | None:
        session_id = response.headers.get("mcp-session-id", "")
        version = result.get("protocolVersion")
        if not (
            VISIBLE_ASCII.fullmatch(session_id)
            and isinstance(version, str)
            and VISIBLE_ASCII.fullmatch(version)
        ):
            return _Failure(
                Code.UPSTREAM_FAILED,
                f"the gateway at {self.options.url} opened no usable session: its answer to "
                "initialize lacks a well-formed Mcp-Session-Id or protocolVersion",
            )
        previous = (self.session_id, self.protocol_version)
        self.session_id, self.protocol_version = session_id, version
        if previous[0] is not None and previous[0] != session_id:
            # A client that initializes again leaves its old session behind: end it now
            # rather than at the gateway's idle timeout, so its claim is written.
            self._spawn(self._delete(previous[0], previous[1]))
        return None

    def _refusal(self, response: Response, *, initialize: bool) -> _Failure:
        status, url, env = response.status, self.options.url, self.options.token_env
        gateway = _gateway_error(response.body)
        if status == 401 and self.options.token is None:
            return _Failure(
                Code.INVALID_REQUEST,
                f"the gateway at {url} requires a bearer token (HTTP 401): set {env} in the "
                "bridge's environment, or name another variable with --token-env",
                status,
            )
        if status == 401:
            return _Failure(
                Code.INVALID_REQUEST,
                f"the gateway at {url} rejected the bearer token in {env} (HTTP 401): set "
                f"{env} to a token the gateway accepts",
                status,
            )
        if status == 404 and self.session_id is not None and not initialize:
            return _Failure(
                Code.SESSION_NOT_FOUND,
                f"the gateway at {url} no longer knows session {self.session_id} (HTTP 404: "
                "closed, idle too long, or the gateway restarted): reconnect the MCP client "
                "to start a new session",
                status,
            )
        if status == 404:
            return _Failure(
                Code.UPSTREAM_FAILED,
                f"nothing serves MCP at {url} (HTTP 404): the gateway's endpoint is its "
                "listen_addr with the path /mcp",
                status,
            )
        if status == 413:
            detail = gateway[1] if gateway else "too large"
            return _Failure(Code.INVALID_REQUEST, f"the gateway refused the message: {detail}", 413)
        if gateway is not None:
            return _Failure(gateway[0], gateway[1], status)
        return _Failure(
            Code.UPSTREAM_FAILED,
            f"the gateway at {url} answered HTTP {status}: {_excerpt(response.body)}",
            status,
        )

    def _unreachable(self, exc: HttpError) -> _Failure:
        if isinstance(exc.__cause__, OSError):
            refused = isinstance(exc.__cause__, ConnectionRefusedError)
            hint = " (is `cmcp start` running and listening there?)" if refused else ""
            text = f"the gateway at {self.options.url} is not reachable: {exc}{hint}"
        else:
            text = f"the exchange with the gateway at {self.options.url} failed: {exc}"
        return _Failure(Code.UPSTREAM_FAILED, text)

    async def _delete(self, session_id: str, version: str | None) -> None:
        headers = self._headers(session=False)
        headers.append(("mcp-session-id", session_id))
        if version is not None:
            headers.append(("mcp-protocol-version", version))
        try:
            response = await self.pool.request(
                "DELETE", headers, timeout=CLOSE_TIMEOUT_SECONDS, max_body=MAX_MESSAGE_BYTES
            )
        except HttpError as exc:
            self.diagnose(
                f"session {session_id} was not closed ({exc}): the gateway closes it at its "
                "idle timeout or shutdown, and writes its claim then"
            )
            return
        if response.status not in (200, 202, 204, 404):  # 404: the gateway already closed it
            self.diagnose(
                f"closing session {session_id} was answered HTTP {response.status}: "
                f"{_excerpt(response.body)}"
            )

    def _headers(self, *, session: bool) -> list[tuple[str, str]]:
        headers = [
            ("content-type", "application/json"),
            ("accept", "application/json, text/event-stream"),
        ]
        if self.options.token is not None:
            headers.append(("authorization", f"Bearer {self.options.token}"))
        if session and self.session_id is not None:
            headers.append(("mcp-session-id", self.session_id))
        if session and self.protocol_version is not None:
            headers.append(("mcp-protocol-version", self.protocol_version))
        return headers

    def _write(self, message: dict[str, Any]) -> None:
        self._write_line(orjson.dumps(message))

    def _write_line(self, line: bytes) -> None:
        # Only the event loop's thread writes, one whole line per call: lines never
        # interleave. A client that stops reading blocks the bridge (backpressure).
        if self._out_gone:
            return
        try:
            self._out.write(line + b"\n")
            self._out.flush()
        except OSError as exc:  # the client closed its end: nothing more can be answered
            self._out_gone = True
            self.diagnose(f"stdout is closed ({exc.strerror or exc}): stopping")
            self._stop.set()


def _same_id(value: object, request_id: RequestId) -> bool:
    return type(value) is type(request_id) and value == request_id


def _gateway_error(body: bytes) -> tuple[int, str] | None:
    """The code and message of the JSON-RPC error in an HTTP error body, if it has one."""
    try:
        document = _DECODER.decode(body)
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
        return None
    detail = document.get("error") if isinstance(document, dict) else None
    if not isinstance(detail, dict):
        return None
    code, message = detail.get("code"), detail.get("message")
    if type(code) is not int or not isinstance(message, str):
        return None
    return code, message


def _excerpt(body: bytes) -> str:
    text = body[:200].decode("utf-8", "replace")
    return "".join(ch if ch.isprintable() else " " for ch in text).strip() or "(empty body)"


def _on_signals(loop: asyncio.AbstractEventLoop, stop: Callable[[], None]) -> list[int]:
    installed: list[int] = []
    for number in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):  # not on every platform
            loop.add_signal_handler(number, stop)
            installed.append(number)
    return installed


def _read_lines(
    fd: int, loop: asyncio.AbstractEventLoop, lines: asyncio.Queue[bytes | object]
) -> None:
    """Read `fd` to its end in a thread, putting each line (newline removed) on `lines`;
    a line longer than MAX_MESSAGE_BYTES is skipped and marked. Blocks while the queue
    is full, so a flooding client waits on its own pipe."""

    def put(item: bytes | object) -> None:
        asyncio.run_coroutine_threadsafe(lines.put(item), loop).result()

    buffer = bytearray()
    skipping = False  # inside a line that was too long, until its newline
    try:
        try:
            while chunk := os.read(fd, _READ_CHUNK):
                buffer += chunk
                while (end := buffer.find(b"\n")) >= 0:
                    line = bytes(buffer[:end])
                    del buffer[: end + 1]
                    if not skipping:
                        put(_TOO_LONG if len(line) > MAX_MESSAGE_BYTES else line)
                    skipping = False
                if len(buffer) > MAX_MESSAGE_BYTES:
                    buffer.clear()
                    if not skipping:
                        put(_TOO_LONG)
                    skipping = True
            if buffer and not skipping:
                put(bytes(buffer))  # a last line without its newline
        except OSError:
            pass  # an unreadable stdin ends the input as EOF does
        put(_EOF)
    except (RuntimeError, concurrent.futures.CancelledError):
        return  # the loop is gone: nobody reads what follows
