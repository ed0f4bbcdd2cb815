"""A test double run as a real process (`python -m MODULE ...`) that, once it serves, writes
a JSON document of what a test needs to reach it (its ports and such) into its folder.
`ServiceProcess.start` waits a bounded time for that document, with the process's output in
the error when it dies or never gets there; `stop` ends it (terminate, then kill).

The HTTP doubles share the rest of their shape: a control listener where `POST /mode`
with a mode name switches how the double answers (`mode_control`, `ServiceProcess.set_mode`),
a log of the requests it received (`RequestLog`, `ServiceProcess.requests`), and an answer
that trickles in (`drip`)."""

from __future__ import annotations

import http.client
import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Self

STARTUP_SECONDS: Final = 30.0
STOP_SECONDS: Final = 10.0
CONTROL_SECONDS: Final = 10.0  # for an answer of the control port
REQUESTS: Final = "requests.jsonl"
MAX_MODE: Final = 64


def write_ready(folder: Path, name: str, facts: Mapping[str, Any]) -> None:
    """Write the ready document whole (a reader never sees half of it)."""
    partial = folder / f"{name}.partial"
    partial.write_text(json.dumps(dict(facts)))
    partial.replace(folder / name)


@dataclass
class ServiceProcess:
    process: subprocess.Popen[bytes]
    folder: Path
    facts: dict[str, Any]
    log: Path

    @classmethod
    def start(
        cls,
        module: str,
        arguments: Sequence[str],
        folder: Path,
        *,
        ready: str = "service.json",
        startup_seconds: float = STARTUP_SECONDS,
    ) -> ServiceProcess:
        log = folder / f"{module.rsplit('.', 1)[-1]}.log"
        with log.open("wb") as output:
            # this interpreter and a module of the test's choosing: no input from outside
            process = subprocess.Popen(  # noqa: S603
                [sys.executable, "-m", module, *arguments], stdout=output, stderr=output
            )
        document = folder / ready
        deadline = time.monotonic() + startup_seconds
        while not document.exists():
            if process.poll() is not None or time.monotonic() > deadline:
                _end(process)
                shown = log.read_text(errors="replace")
                raise RuntimeError(f"{module} did not start (no {document}):\n{shown}")
            time.sleep(0.05)
        return cls(process, folder, json.loads(document.read_text()), log)

    def set_mode(self, mode: str, *, control: str = "control") -> None:
        """Switch the double's mode through its control port (the fact named `control`)."""
        port = self.facts[control]
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=CONTROL_SECONDS)
        try:
            connection.request("POST", "/mode", body=mode.encode())
            status = connection.getresponse().status
        finally:
            connection.close()
        if status != 204:
            raise ValueError(f"the test double refused mode {mode!r} (HTTP {status})")

    def requests(self) -> list[dict[str, Any]]:
        """The requests the double logged (`RequestLog`), oldest first."""
        log = self.folder / REQUESTS
        if not log.exists():
            return []
        return [json.loads(line) for line in log.read_text().splitlines()]

    def stop(self) -> None:
        _end(self.process)

    def __enter__(self) -> ServiceProcess:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.stop()


def _end(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=STOP_SECONDS)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=STOP_SECONDS)


@dataclass
class RunningDouble:
    """A double's process as a test holds it (subclasses add what it serves); a context
    manager that stops it."""

    service: ServiceProcess

    @property
    def folder(self) -> Path:
        return self.service.folder

    def stop(self) -> None:
        self.service.stop()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


class RequestLog:
    """The double's side of `ServiceProcess.requests`: one JSON line a request, appended
    whole under a lock (handlers run on threads)."""

    def __init__(self, folder: Path) -> None:
        self.path = folder / REQUESTS
        self.lock = threading.Lock()

    def record(self, entry: Mapping[str, Any]) -> None:
        line = json.dumps(dict(entry))
        with self.lock, self.path.open("a") as log:
            log.write(line + "\n")


def quiet(handler: BaseHTTPRequestHandler, format: str, *args: Any) -> None:  # noqa: A002
    """A handler's `log_message` that writes nothing to stderr: the doubles log requests
    with `RequestLog`."""


def mode_control(modes: Collection[str], apply: Callable[[str], None]) -> ThreadingHTTPServer:
    """The control listener on 127.0.0.1: `POST /mode` with one of `modes` as the body calls
    `apply` with it and answers 204; anything else is 400."""

    class Handler(BaseHTTPRequestHandler):
        log_message = quiet

        def do_POST(self) -> None:
            length = min(int(self.headers.get("content-length") or 0), MAX_MODE)
            mode = self.rfile.read(length).decode(errors="replace").strip()
            if mode not in modes:
                self.send_response(400)
                self.end_headers()
                return
            apply(mode)
            self.send_response(204)
            self.end_headers()

    return ThreadingHTTPServer(("127.0.0.1", 0), Handler)


def json_body(handler: BaseHTTPRequestHandler, limit: int) -> Any:
    """The request's JSON body, read up to `limit` bytes; None when it is not JSON (the
    double answers that as the service would)."""
    length = min(int(handler.headers.get("content-length") or 0), limit)
    try:
        return json.loads(handler.rfile.read(length) or b"null")
    except ValueError:
        return None


def recv_exactly(connection: socket.socket, size: int) -> bytes:
    """`size` bytes from a stream socket; `ConnectionError` when it ends before them."""
    data = b""
    while len(data) < size:
        chunk = connection.recv(size - len(data))
        if not chunk:
            raise ConnectionError(f"the peer closed after {len(data)} of {size} bytes")
        data += chunk
    return data


def drip(handler: BaseHTTPRequestHandler, content_type: str, count: int, every: float) -> None:
    """A 200 announcing `count` bytes that come one every `every` seconds: an answer that
    starts at once and never finishes in a client's time."""
    handler.send_response(200)
    handler.send_header("content-type", content_type)
    handler.send_header("content-length", str(count))
    handler.end_headers()
    try:
        for _ in range(count):
            handler.wfile.write(b" ")
            handler.wfile.flush()
            time.sleep(every)
    except OSError:
        return  # the client gave up, as it should
