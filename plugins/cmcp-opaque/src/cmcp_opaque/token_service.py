"""A token service double for tests, never used by the gateway: a real HTTPS server on
127.0.0.1 (a certificate of its own test CA) that answers the default request shape of
docs/opaque.md, and that a test tells how to fail.

    python -m cmcp_opaque.token_service --dir DIR [--mode MODE]

It writes into DIR the test CA (`ca.pem`), its signing keys (`jwks.json`), and, once both
listeners are up, `service.json` = {"port", "control", "issuer", "kid"}; each token request
is appended to `requests.jsonl` (path, Host header, body). `POST /mode` with a mode name as
the body, on the plain-HTTP control port, changes how it answers from then on:

- succeed: a good token for the request's nonce (`application/jwt`); `json`: the same
  token as {"token": ...}; `warning`: a good token whose status is warning
- refuse: the HTTPS listener is closed, so connections are refused
- timeout: no answer for `STALL_SECONDS`
- drip: an answer whose body comes a byte every 0.2 s, for `STALL_SECONDS`
- error: HTTP 500
- malformed: 200 with a body that is not a JWS
- unknown-shape: a JWS signed by the right key without the nonce claim
- wrong-key: a good token signed by another key under the same kid
- other-nonce: a token signed by the right key for another nonce than the request's
- redirect-other-host: 307 to the same service under another host name (localhost)
- redirect-same-host: 307 to another path of the same origin (then a good token)
- redirect-loop: 307 to itself, forever
"""

from __future__ import annotations

import argparse
import base64
import json
import ssl
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Final

from cmcp_cli.testing.service import (
    RequestLog,
    ServiceProcess,
    drip,
    json_body,
    mode_control,
    quiet,
    write_ready,
)
from cmcp_opaque.testing import TestCa, TokenIssuer

MODES: Final = (
    "succeed", "json", "warning", "refuse", "timeout", "drip", "error", "malformed",
    "unknown-shape", "wrong-key", "other-nonce", "redirect-other-host", "redirect-same-host",
    "redirect-loop",
)  # fmt: skip
STALL_SECONDS: Final = 5.0
MAX_BODY: Final = 64 * 1024


class Service:
    def __init__(self, folder: Path, mode: str) -> None:
        self.folder, self.mode = folder, mode
        self.issuer = TokenIssuer.create()
        self.impostor = TokenIssuer.create(self.issuer.kid)  # same kid, another key
        ca = TestCa.create()
        _, cert_path, key_path = ca.write(folder)
        (folder / "jwks.json").write_text(json.dumps(self.issuer.jwks()))
        self.tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.tls.load_cert_chain(cert_path, key_path)
        self.lock = threading.Lock()
        self.port = 0
        self.https: ThreadingHTTPServer | None = None
        self.log = RequestLog(folder)
        self.control = mode_control(MODES, self.set_mode)

    def start_https(self) -> None:
        server = ThreadingHTTPServer(("127.0.0.1", self.port), self._token_handler())
        server.daemon_threads = True
        server.socket = self.tls.wrap_socket(server.socket, server_side=True)
        self.port = server.server_address[1]
        self.https = server
        threading.Thread(target=server.serve_forever, daemon=True).start()

    def stop_https(self) -> None:
        if self.https is not None:
            self.https.shutdown()
            self.https.server_close()
            self.https = None

    def set_mode(self, mode: str) -> None:
        with self.lock:
            if mode == "refuse":
                self.stop_https()
            elif self.https is None:
                self.start_https()
            self.mode = mode

    def record(self, path: str, host: str, body: Any) -> None:
        self.log.record({"path": path, "host": host, "body": body, "mode": self.mode})

    def answer(self, path: str, body: Any) -> tuple[int, dict[str, str], bytes]:
        mode = self.mode
        origin = f"https://127.0.0.1:{self.port}"
        if mode == "error":
            return 500, {"content-type": "text/plain"}, b"internal error"
        if mode == "malformed":
            return 200, {"content-type": "application/jwt"}, b"this is not a JWS"
        if mode == "redirect-other-host":
            return 307, {"location": f"https://localhost:{self.port}/token"}, b""
        if mode == "redirect-loop":
            return 307, {"location": f"{origin}{path}"}, b""
        if mode == "redirect-same-host" and path != "/moved":
            return 307, {"location": "/moved"}, b""
        nonce = body.get("nonce") if isinstance(body, dict) else None
        try:
            binding = base64.urlsafe_b64decode(str(nonce) + "==")
        except ValueError:
            return 400, {"content-type": "text/plain"}, b"no nonce"
        if mode == "unknown-shape":
            token = self.issuer.sign(self.issuer.payload(binding, nonce=None))
        elif mode == "wrong-key":
            token = self.impostor.token(binding)
        elif mode == "warning":
            token = self.issuer.token(binding, status="warning")
        elif mode == "other-nonce":
            token = self.issuer.token(bytes(byte ^ 0xFF for byte in binding))
        else:
            token = self.issuer.token(binding)
        if mode == "json":
            return 200, {"content-type": "application/json"}, json.dumps({"token": token}).encode()
        return 200, {"content-type": "application/jwt"}, token.encode()

    def _token_handler(self) -> type[BaseHTTPRequestHandler]:
        service = self

        class Handler(BaseHTTPRequestHandler):
            log_message = quiet

            def do_POST(self) -> None:
                body = json_body(self, MAX_BODY)
                service.record(self.path, self.headers.get("host", ""), body)
                if service.mode == "timeout":
                    time.sleep(STALL_SECONDS)
                if service.mode == "drip":
                    drip(self, "application/jwt", int(STALL_SECONDS / 0.2), every=0.2)
                    return
                status, headers, content = service.answer(self.path, body)
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("content-length", str(len(content)))
                self.end_headers()
                self.wfile.write(content)

        return Handler

    def serve(self) -> None:
        with self.lock:
            self.start_https()
            if self.mode == "refuse":
                self.stop_https()
        ready = {
            "port": self.port,
            "control": self.control.server_address[1],
            "issuer": self.issuer.issuer,
            "kid": self.issuer.kid,
        }
        write_ready(self.folder, "service.json", ready)
        self.control.serve_forever()


@dataclass
class RunningService:
    """The service as a test runs it: a subprocess, and what it wrote into its folder."""

    process: ServiceProcess
    folder: Path
    port: int
    control: int
    issuer: str
    kid: str

    @classmethod
    def start(cls, folder: Path, mode: str = "succeed") -> RunningService:
        arguments = ["--dir", str(folder), "--mode", mode]
        running = ServiceProcess.start("cmcp_opaque.token_service", arguments, folder)
        facts = running.facts
        return cls(running, folder, facts["port"], facts["control"], facts["issuer"], facts["kid"])

    def url(self, path: str = "/token") -> str:
        return f"https://127.0.0.1:{self.port}{path}"

    @property
    def ca_file(self) -> Path:
        return self.folder / "ca.pem"

    @property
    def jwks_file(self) -> Path:
        return self.folder / "jwks.json"

    def set_mode(self, mode: str) -> None:
        self.process.set_mode(mode)

    def requests(self) -> list[dict[str, Any]]:
        return self.process.requests()

    def stop(self) -> None:
        self.process.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, required=True)
    parser.add_argument("--mode", choices=MODES, default="succeed")
    arguments = parser.parse_args()
    Service(arguments.dir, arguments.mode).serve()


if __name__ == "__main__":
    main()
