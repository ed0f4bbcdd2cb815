"""A transparency service double for tests, never used by the gateway: a real process
serving HTTPS with hypercorn on 127.0.0.1, speaking SCRAPI and TRACE registry-anchor-v1
over one RFC 9162 log (`transparency_log`), and that a test tells how to fail.

    python -m cmcp_cli.testing.transparency --state-dir DIR [--port N] [--mode MODE]
                                            [--slow-seconds S] [--producer NAME]

At its first start in DIR it makes a test CA and a server certificate for 127.0.0.1 and
localhost (`ca.pem`: what a client trusts), and the log's Ed25519 key (`log-key.pem`: the
public key a verifier pins); a restart on the same DIR keeps them and the log
(`entries.jsonl`), and with the same `--port` the same base URL, which every anchored
record's `transparency` URI names. It prints the base URL (`https://127.0.0.1:<port>`) and
writes `DIR/transparency.json` = {"url", "port", "control"}.

- SCRAPI: `POST /entries` (`Content-Type: application/cose`, or RFC 9943's
  `application/scitt-statement+cose`, a Signed Statement) → 201 with the COSE receipt
  (`application/cose`) and `Location: <base>/entries/<anchor id>`; in mode `async`, 202
  with `Location: <base>/operations/<id>` and `GET` of that is `{"status": "running"}` at
  the first poll, then `{"status": "succeeded", "entryID"}` (or `{"status": "failed",
  "error": {"type", "detail"}}` for a registration refused); in modes `draft09` and
  `draft09-relative` (draft-ietf-scitt-scrapi-09), 303 See Other with `Location:
  <base>/entries/<anchor id>` (`/entries/<anchor id>` in `draft09-relative`, as
  scitt-ccf-ledger answers), whose `GET` answers 302 Found (`Location` the same entry) for
  the first `DRAFT09_PENDING_POLLS` polls after each registration, then 200 with the
  receipt as `application/scitt-receipt+cose`; in mode `own-ids`, as a service that
  assigns its own entry ids (scitt-ccf-ledger's `2.34`), 303 See Other with `Location:
  /entries/2.<n>`, whose `GET` answers 200 with the receipt (in every mode after), and
  while in that mode an anchor id is no entry id (404). `GET /entries/<anchor id>` → the
  COSE receipt.
- registry-anchor-v1: `POST /records` (`Content-Type: application/json`, the signed record)
  → 201 `{"entry", "proof", "receipt"}`; `GET /records/<anchor id>` → the same document.
- A refused registration is 400 (or 409, 415) with `{"type", "detail"}` naming why
  (`transparency_log` states the policy); an unknown id 404; a request body over 1 MiB 413.

Each request is appended to `DIR/requests.jsonl` (method, path, content type, status,
mode). `POST /mode` on the control port (plain HTTP) switches how it answers:

- up: as above; async: SCRAPI registrations answer 202 and an operation to poll
- draft09, draft09-relative: SCRAPI registrations answer 303, their entry 302 then 200
- own-ids: SCRAPI registrations answer 303 to an entry id of the service's own making
- down: 503 to everything; error: 500 to everything
- slow: every answer waits `--slow-seconds` first (longer than the client's timeout); a
  registration is made before the wait, as a service that is slow to answer would
- wrong-key: receipts signed by another key than `log-key.pem`'s
- tamper: receipts with one bit of their signature flipped
- other-leaf: receipts, genuinely signed, for another leaf of the log than the record's
- disagree: registry-anchor-v1 answers whose entry and proof hold on their own but in a
  tree the log did not sign (their receipt is genuine)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import ipaddress
import json
import signal
import socket
import threading
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
    load_pem_private_key,
)
from cryptography.x509.oid import NameOID
from hypercorn.asyncio import serve
from hypercorn.config import Config

from cmcp_cli import __version__
from cmcp_cli.claim.keys import ClaimKey
from cmcp_cli.testing.service import (
    RequestLog,
    RunningDouble,
    ServiceProcess,
    mode_control,
    write_ready,
)
from cmcp_cli.testing.transparency_log import RegistrationError, TransparencyLog

MODES: Final = (
    "up", "async", "draft09", "draft09-relative", "own-ids", "down", "error", "slow",
    "wrong-key", "tamper", "other-leaf", "disagree",
)  # fmt: skip
READY: Final = "transparency.json"
MAX_REQUEST: Final = 1024 * 1024
DEFAULT_SLOW_SECONDS: Final = 5.0
COSE: Final = "application/cose"
SCITT_STATEMENT: Final = "application/scitt-statement+cose"  # RFC 9943's media types
SCITT_RECEIPT: Final = "application/scitt-receipt+cose"
DRAFT09_PENDING_POLLS: Final = 2  # 302 answers to an entry's polls after its 303
JSON: Final = "application/json"
ERROR_TYPE: Final = "urn:ietf:params:scitt:error:"
_Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
_Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]


# -- key material --------------------------------------------------------------------------


def _private_key(path: Path, make: Callable[[], Any]) -> Any:
    if path.exists():
        return load_pem_private_key(path.read_bytes(), password=None)
    key = make()
    path.write_bytes(key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()))
    path.chmod(0o600)
    return key


def _certificate(
    subject: str,
    public_key: Any,
    issuer: x509.Name | None,
    signer: Any,
    *,
    ca: bool,
) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer or name)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ca:
        usage = x509.KeyUsage(False, False, False, False, False, True, True, False, False)
        builder = builder.add_extension(usage, critical=True)
    else:
        names = [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
    return builder.sign(signer, hashes.SHA256())


def tls_material(folder: Path) -> tuple[Path, Path]:
    """The server's certificate and key files, made (with `ca.pem`) at the first start."""
    cert, key_file = folder / "server.pem", folder / "server-key.pem"
    if cert.exists() and key_file.exists():
        return cert, key_file
    ca_key = _private_key(folder / "ca-key.pem", lambda: ec.generate_private_key(ec.SECP256R1()))
    ca = _certificate("cmcp transparency double CA", ca_key.public_key(), None, ca_key, ca=True)
    (folder / "ca.pem").write_bytes(ca.public_bytes(Encoding.PEM))
    server_key = _private_key(key_file, lambda: ec.generate_private_key(ec.SECP256R1()))
    server = _certificate("127.0.0.1", server_key.public_key(), ca.subject, ca_key, ca=False)
    cert.write_bytes(server.public_bytes(Encoding.PEM))
    return cert, key_file


@dataclass(frozen=True)
class LogKeys:
    private_pem: bytes
    kid: bytes  # the RFC 7638 thumbprint of the public key, as ASCII
    wrong_private_pem: bytes  # a key no verifier pins, for mode wrong-key


def log_keys(folder: Path) -> LogKeys:
    key: Ed25519PrivateKey = _private_key(
        folder / "log-signing-key.pem", Ed25519PrivateKey.generate
    )
    (folder / "log-key.pem").write_bytes(
        key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    )
    wrong = Ed25519PrivateKey.generate()
    return LogKeys(
        key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()),
        ClaimKey(key).thumbprint.encode("ascii"),
        wrong.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()),
    )


# -- the HTTP service ----------------------------------------------------------------------


@dataclass
class Answer:
    status: int
    body: bytes = b""
    content_type: str = JSON
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def document(cls, status: int, document: Any, **headers: str) -> Answer:
        return cls(status, json.dumps(document).encode(), JSON, headers)

    @classmethod
    def problem(cls, status: int, kind: str, detail: str) -> Answer:
        return cls.document(status, {"type": ERROR_TYPE + kind, "detail": detail})


@dataclass
class _Operation:
    anchor_id: str | None
    error: str | None
    polls: int = 0


class Service:
    def __init__(self, log: TransparencyLog, folder: Path, mode: str, slow: float) -> None:
        self.log, self.mode, self.slow = log, mode, slow
        self.requests = RequestLog(folder)
        self.operations: dict[str, _Operation] = {}
        self.pending: dict[str, int] = {}  # entry id -> 302 answers still to give
        self.own_ids: dict[str, str] = {}  # mode own-ids: the service's entry id -> anchor id
        self.lock = threading.Lock()

    def set_mode(self, mode: str) -> None:
        self.mode = mode

    async def __call__(
        self, scope: MutableMapping[str, Any], receive: _Receive, send: _Send
    ) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        if scope["type"] != "http":
            return
        mode = self.mode
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        content_type = headers.get("content-type", "").split(";")[0].strip().lower()
        body = await _body(receive)
        answer = self.answer(mode, scope["method"], scope["path"], content_type, body)
        if mode == "slow":
            await asyncio.sleep(self.slow)
        self.requests.record(
            {
                "method": scope["method"], "path": scope["path"], "content_type": content_type,
                "status": answer.status, "mode": mode,
            }
        )  # fmt: skip
        raw = [(b"content-type", answer.content_type.encode())]
        raw += [(k.encode(), v.encode()) for k, v in answer.headers.items()]
        raw.append((b"content-length", str(len(answer.body)).encode()))
        await send({"type": "http.response.start", "status": answer.status, "headers": raw})
        await send({"type": "http.response.body", "body": answer.body})

    def answer(
        self, mode: str, method: str, path: str, content_type: str, body: bytes | None
    ) -> Answer:
        if mode == "down":
            return Answer.problem(503, "unavailable", "the service is down (mode down)")
        if mode == "error":
            return Answer.problem(500, "internal", "the service failed (mode error)")
        if body is None:
            return Answer.problem(413, "too-large", f"the body is over {MAX_REQUEST} bytes")
        parts = path.strip("/").split("/")
        if method == "POST" and parts == ["entries"]:
            return self.register_statement(mode, content_type, body)
        if method == "POST" and parts == ["records"]:
            return self.register_record(mode, content_type, body)
        if method == "GET" and len(parts) == 2 and parts[0] == "entries":
            return self.receipt(mode, parts[1])
        if method == "GET" and len(parts) == 2 and parts[0] == "records":
            return self.registry(mode, parts[1])
        if method == "GET" and len(parts) == 2 and parts[0] == "operations":
            return self.operation(parts[1])
        return Answer.problem(404, "not-found", f"no route {method} {path}")

    def register_statement(self, mode: str, content_type: str, body: bytes) -> Answer:
        if content_type not in (COSE, SCITT_STATEMENT):
            return Answer.problem(
                415, "media-type", f"a Signed Statement is {COSE} or {SCITT_STATEMENT}"
            )
        try:
            identifier = self.log.register_statement(body)
        except RegistrationError as refused:
            if mode != "async":
                return Answer.problem(refused.status, "registration", refused.reason)
            return self.accepted(_Operation(None, refused.reason))
        if mode == "async":
            return self.accepted(_Operation(identifier, None))
        if mode == "own-ids":
            with self.lock:
                known = [own for own, anchor in self.own_ids.items() if anchor == identifier]
                own = known[0] if known else f"2.{len(self.own_ids) + 1}"
                self.own_ids[own] = identifier
            return Answer(303, b"", COSE, {"location": f"/entries/{own}"})
        location = f"{self.log.base_url}/entries/{identifier}"
        if mode.startswith("draft09"):
            with self.lock:
                self.pending[identifier] = DRAFT09_PENDING_POLLS
            if mode == "draft09-relative":
                location = f"/entries/{identifier}"
            return Answer(303, b"", COSE, {"location": location})
        return Answer(201, self.log.issue(identifier, mode).cose, COSE, {"location": location})

    def accepted(self, operation: _Operation) -> Answer:
        with self.lock:
            number = f"op-{len(self.operations) + 1}"
            self.operations[number] = operation
        location = f"{self.log.base_url}/operations/{number}"
        return Answer.document(202, {"operationID": number, "status": "running"}, location=location)

    def operation(self, number: str) -> Answer:
        with self.lock:
            operation = self.operations.get(number)
            if operation is not None:
                operation.polls += 1
        if operation is None:
            return Answer.problem(404, "not-found", f"no operation {number}")
        if operation.polls == 1:
            return Answer.document(200, {"operationID": number, "status": "running"})
        if operation.anchor_id is None:
            error = {"type": ERROR_TYPE + "registration", "detail": operation.error}
            return Answer.document(200, {"operationID": number, "status": "failed", "error": error})
        return Answer.document(
            200, {"operationID": number, "status": "succeeded", "entryID": operation.anchor_id}
        )

    def register_record(self, mode: str, content_type: str, body: bytes) -> Answer:
        if content_type != JSON:
            return Answer.problem(415, "media-type", f"a record is {JSON}")
        try:
            record = json.loads(body)
        except ValueError:
            return Answer.problem(400, "registration", "the body is not JSON")
        try:
            identifier = self.log.register_record(record)
        except RegistrationError as refused:
            return Answer.problem(refused.status, "registration", refused.reason)
        location = f"{self.log.base_url}/records/{identifier}"
        return Answer.document(201, self.log.issue(identifier, mode).registry, location=location)

    def receipt(self, mode: str, identifier: str) -> Answer:
        with self.lock:
            anchored = self.own_ids.get(identifier)
        if anchored is not None:  # an id of mode own-ids, served in every mode
            return Answer(200, self.log.issue(anchored, mode).cose, SCITT_RECEIPT)
        if mode == "own-ids" or not self.log.known(identifier):
            return Answer.problem(404, "not-found", f"no entry {identifier}")
        if not mode.startswith("draft09"):
            return Answer(200, self.log.issue(identifier, mode).cose, COSE)
        location = {"location": f"{self.log.base_url}/entries/{identifier}"}
        with self.lock:
            left = self.pending.get(identifier, 0)
            if left > 0:
                self.pending[identifier] = left - 1
        if left > 0:
            return Answer(302, b"", COSE, location)
        return Answer(200, self.log.issue(identifier, mode).cose, SCITT_RECEIPT, location)

    def registry(self, mode: str, identifier: str) -> Answer:
        if not self.log.known(identifier):
            return Answer.problem(404, "not-found", f"no record {identifier}")
        return Answer.document(200, self.log.issue(identifier, mode).registry)


async def _body(receive: _Receive) -> bytes | None:
    """The request body; None past `MAX_REQUEST` (the rest is not read)."""
    body = b""
    while True:
        message = await receive()
        body += bytes(message.get("body", b""))
        if len(body) > MAX_REQUEST:
            return None
        if not message.get("more_body", False):
            return body


# -- the process ---------------------------------------------------------------------------


def _listener(port: int) -> socket.socket:
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", port))
    listener.listen(64)
    listener.set_inheritable(True)
    return listener


async def _serve(service: Service, listener: socket.socket, cert: Path, key: Path) -> None:
    config = Config()
    config.bind = [f"fd://{listener.fileno()}"]
    config.certfile, config.keyfile = str(cert), str(key)
    config.accesslog = None
    config.errorlog = "-"
    config.graceful_timeout = 1.0
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await serve(service, config, shutdown_trigger=stop.wait)  # type: ignore[arg-type]


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--state-dir", type=Path, required=True)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--mode", choices=MODES, default="up")
    parser.add_argument("--slow-seconds", type=float, default=DEFAULT_SLOW_SECONDS)
    parser.add_argument("--producer", default=f"cmcp-gateway/{__version__}")
    arguments = parser.parse_args()
    folder: Path = arguments.state_dir
    folder.mkdir(parents=True, exist_ok=True)
    cert, key = tls_material(folder)
    keys = log_keys(folder)
    listener = _listener(arguments.port)
    port = listener.getsockname()[1]
    url = f"https://127.0.0.1:{port}"
    log = TransparencyLog(
        folder,
        url,
        log_key_pem=keys.private_pem,
        log_kid=keys.kid,
        wrong_key_pem=keys.wrong_private_pem,
        producer=arguments.producer,
    )
    service = Service(log, folder, arguments.mode, arguments.slow_seconds)
    control = mode_control(MODES, service.set_mode)
    threading.Thread(target=control.serve_forever, daemon=True).start()
    write_ready(folder, READY, {"url": url, "port": port, "control": control.server_address[1]})
    print(url, flush=True)  # noqa: T201 - the base URL is what this command prints
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(service, listener, cert, key))
    control.shutdown()


class RunningTransparency(RunningDouble):
    """The double as a test runs it: its process, and what it wrote into its folder."""

    @classmethod
    def start(
        cls,
        folder: Path,
        *,
        mode: str = "up",
        port: int = 0,
        slow_seconds: float = DEFAULT_SLOW_SECONDS,
    ) -> RunningTransparency:
        arguments = ["--state-dir", str(folder), "--port", str(port), "--mode", mode]
        arguments += ["--slow-seconds", str(slow_seconds)]
        module = "cmcp_cli.testing.transparency"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / READY).unlink(missing_ok=True)  # a previous run's, on the same folder
        return cls(ServiceProcess.start(module, arguments, folder, ready=READY))

    @property
    def url(self) -> str:
        """The base URL: `trace.anchor.url`, and the prefix of every `transparency` URI."""
        return str(self.service.facts["url"])

    @property
    def port(self) -> int:
        return int(self.service.facts["port"])

    @property
    def ca_file(self) -> Path:
        """The test CA that issued the server's certificate (`trace.anchor.ca_file`)."""
        return self.folder / "ca.pem"

    @property
    def log_key(self) -> Path:
        """The log's public key, PEM (`trace.anchor.log_key`, `cmcp verify --log-key`)."""
        return self.folder / "log-key.pem"

    def set_mode(self, mode: str) -> None:
        self.service.set_mode(mode)

    def requests(self) -> list[dict[str, Any]]:
        return self.service.requests()


if __name__ == "__main__":
    main()
