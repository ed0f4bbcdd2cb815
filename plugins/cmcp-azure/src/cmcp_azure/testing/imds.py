"""A double of Azure's instance metadata service for tests, never used by the collector: a
real HTTP server on 127.0.0.1 answering the two requests an Azure confidential VM's guest
makes of it (`cmcp_azure.imds`), and that a test tells how to fail.

    python -m cmcp_azure.testing.imds --dir DIR [--vcek FILE --cert-chain FILE]
                                      [--tcbm HEX] [--mode MODE]

- `GET /metadata/THIM/amd/certification`: THIM's JSON, made of the VCEK and chain files
  given (PEM or DER; the chain ASK then ARK); without them, 404 as on a VM that is not SEV-SNP.
- `POST /acc/tdquote` with `{"report": base64url(TDREPORT)}`: `{"quote": base64url}`, a DCAP
  quote v4 of the TDREPORT's body under a test Intel-like root made at start
  (`cmcp_tdx.synthetic.IntelPki`), whose certificate it writes to `DIR/intel-root.pem`.

As the real service does, a request without the header `Metadata: true` is answered 400,
and so is a TD quote request that does not carry a TDREPORT. Each request is appended to
`DIR/requests.jsonl` (method, path, Metadata header, JSON body); once both listeners are up
it writes `DIR/imds.json` = {"port", "control"}. `POST /mode` with a mode name as the body,
on the control port, changes how it answers from then on:

- succeed; padded: the quote followed by zero bytes (as Azure's genuine one is), in
  base64url with its padding
- not-found: 404; error: 500; redirect: 307 to the same request on this service
- oversize: 200 announcing a body larger than any answer; oversize-unannounced: the same
  body without a length, ended by closing the connection
- stall: no answer for `STALL_SECONDS`; drip: a 200 whose body comes a byte every 0.2 s
- malformed-json: 200 with a body that is not JSON; missing: 200 with `{}`
- malformed-pem: the VCEK is not PEM, the quote not base64url
- short-chain: the chain holds only the ASK; bad-tcbm: tcbm is not hex
- other-report: the quote is of another TDREPORT (its REPORTDATA changed)
"""

from __future__ import annotations

import argparse
import base64
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Final

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from cmcp_azure import imds, tdreport
from cmcp_azure.testing.synthetic import td_quote
from cmcp_cli.testing.service import (
    RequestLog,
    RunningDouble,
    ServiceProcess,
    drip,
    json_body,
    mode_control,
    quiet,
    write_ready,
)
from cmcp_tdx.synthetic import IntelPki

MODES: Final = (
    "succeed", "padded", "not-found", "error", "redirect", "oversize", "oversize-unannounced",
    "stall", "drip", "malformed-json", "missing", "malformed-pem", "short-chain", "bad-tcbm",
    "other-report",
)  # fmt: skip
STALL_SECONDS: Final = 5.0
DRIP_BYTES: Final = 25
MAX_REQUEST: Final = 64 * 1024
DEFAULT_TCBM: Final = "DB18000000000004"
READY: Final = "imds.json"
AZURE_TRAILING: Final = 70  # zero bytes after the genuine Azure TD quote's signature data


# The double decodes and encodes base64url with the standard library, not with the client's
# functions, so that a mistake in the client's encoding is not mirrored here and cancelled out.
def _base64url(text: str) -> bytes:
    if "+" in text or "/" in text:  # `altchars` would let standard base64 through
        raise ValueError("standard base64, not base64url")
    return base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_", validate=True)


def _pem(path: Path) -> bytes:
    """The certificates of a PEM or DER file, as PEM."""
    data = path.read_bytes()
    if b"-----BEGIN" in data:
        certs = x509.load_pem_x509_certificates(data)
    else:
        certs = [x509.load_der_x509_certificate(data)]
    return b"".join(cert.public_bytes(Encoding.PEM) for cert in certs)


class Service:
    def __init__(
        self, folder: Path, mode: str, certificates: tuple[Path, Path] | None, tcbm: str
    ) -> None:
        self.folder, self.mode, self.tcbm = folder, mode, tcbm
        self.pem = None if certificates is None else tuple(_pem(p) for p in certificates)
        self.intel = IntelPki.create()
        (folder / "intel-root.pem").write_bytes(self.intel.root_pem())
        self.log = RequestLog(folder)
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.control = mode_control(MODES, self.set_mode)

    def set_mode(self, mode: str) -> None:
        self.mode = mode

    def thim(self, mode: str) -> tuple[int, Any]:
        if self.pem is None:
            return 404, {"error": "Not found"}
        vcek, chain = (part.decode() for part in self.pem)
        if mode == "malformed-pem":
            vcek = "-----BEGIN CERTIFICATE-----\nnot a certificate\n-----END CERTIFICATE-----\n"
        if mode == "short-chain":
            chain = (
                x509.load_pem_x509_certificates(chain.encode())[0]
                .public_bytes(Encoding.PEM)
                .decode()
            )
        tcbm = "not hex at all!!" if mode == "bad-tcbm" else self.tcbm
        return 200, {
            "vcekCert": vcek, "tcbm": tcbm, "certificateChain": chain, "cacheControl": "86400",
        }  # fmt: skip

    def quote(self, mode: str, body: Any) -> tuple[int, Any]:
        text = body.get("report") if isinstance(body, dict) else None
        try:
            report = _base64url(text) if isinstance(text, str) else b""
            tdreport.body_of(report)
        except (ValueError, tdreport.TdReportFormatError):
            return 400, {"error": "Bad request. The report is not a base64url TDREPORT"}
        if mode == "other-report":
            report = report[:128] + bytes([report[128] ^ 1]) + report[129:]
        quote = td_quote(self.intel, report)
        if mode == "malformed-pem":
            return 200, {"quote": "this is not base64url!"}
        if mode == "padded":  # as the genuine Azure quote: zero bytes after it, which pad
            quote += bytes(AZURE_TRAILING if (len(quote) + AZURE_TRAILING) % 3 else 71)
        encoded = base64.urlsafe_b64encode(quote).decode()
        return 200, {"quote": encoded if mode == "padded" else encoded.rstrip("=")}

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        service = self

        class Handler(BaseHTTPRequestHandler):
            log_message = quiet

            def do_GET(self) -> None:
                self.answer(None)

            def do_POST(self) -> None:
                self.answer(json_body(self, MAX_REQUEST))

            def answer(self, body: Any) -> None:
                mode, metadata = service.mode, self.headers.get("metadata")
                entry = {"method": self.command, "path": self.path, "metadata": metadata}
                service.log.record({**entry, "body": body})
                route = (self.command, self.path)
                if route not in (("GET", imds.THIM_PATH), ("POST", imds.TD_QUOTE_PATH)):
                    return self.send(404, {"error": "Not found"})
                if metadata != "true":
                    return self.send(
                        400, {"error": "Bad request. Required metadata header not specified"}
                    )
                if mode == "stall":
                    time.sleep(STALL_SECONDS)
                    return self.send(500, {"error": "stalled"})
                special = _FAILURES.get(mode)
                if special is not None:
                    return self.send(*special)
                if mode == "redirect":
                    return self.send(307, {}, {"location": self.path})
                if mode in ("oversize", "oversize-unannounced"):
                    return self.oversize(announced=mode == "oversize")
                if mode == "drip":
                    return drip(self, "application/json", DRIP_BYTES, every=0.2)
                if self.command == "GET":
                    return self.send(*service.thim(mode))
                return self.send(*service.quote(mode, body))

            def send(
                self, status: int, document: Any, headers: dict[str, str] | None = None
            ) -> None:
                content = document if isinstance(document, bytes) else json.dumps(document).encode()
                self.send_response(status)
                for name, value in {"content-type": "application/json", **(headers or {})}.items():
                    self.send_header(name, value)
                self.send_header("content-length", str(len(content)))
                self.end_headers()
                self.wfile.write(content)

            def oversize(self, *, announced: bool) -> None:
                content = b'{"padding": "' + b"x" * (imds.MAX_ANSWER + 1024) + b'"}'
                self.send_response(200)
                self.send_header("content-type", "application/json")
                if announced:
                    self.send_header("content-length", str(len(content)))
                self.end_headers()
                try:
                    self.wfile.write(content)
                except OSError:
                    return  # the client stopped reading, as it should
                self.close_connection = True

        return Handler

    def serve(self) -> None:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        port, control = self.server.server_address[1], self.control.server_address[1]
        write_ready(self.folder, READY, {"port": port, "control": control})
        self.control.serve_forever()


_FAILURES: Final[dict[str, tuple[int, Any]]] = {
    "not-found": (404, {"error": "Not found"}),
    "error": (500, {"error": "Internal server error"}),
    "malformed-json": (200, b"this is not JSON"),
    "missing": (200, {}),
}


class RunningImds(RunningDouble):
    """The double as a test runs it: its process, and what it wrote into its folder."""

    @classmethod
    def start(
        cls,
        folder: Path,
        *,
        vcek: Path | None = None,
        cert_chain: Path | None = None,
        mode: str = "succeed",
    ) -> RunningImds:
        arguments = ["--dir", str(folder), "--mode", mode]
        if vcek is not None and cert_chain is not None:
            arguments += ["--vcek", str(vcek), "--cert-chain", str(cert_chain)]
        module = "cmcp_azure.testing.imds"
        return cls(ServiceProcess.start(module, arguments, folder, ready=READY))

    @property
    def url(self) -> str:
        """The base URL, as `imds_url` takes it."""
        return f"http://127.0.0.1:{self.service.facts['port']}"

    @property
    def intel_root(self) -> Path:
        return self.folder / "intel-root.pem"

    def set_mode(self, mode: str) -> None:
        self.service.set_mode(mode)

    def requests(self) -> list[dict[str, Any]]:
        return self.service.requests()


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--dir", type=Path, required=True)
    parser.add_argument("--vcek", type=Path)
    parser.add_argument("--cert-chain", type=Path)
    parser.add_argument("--tcbm", default=DEFAULT_TCBM)
    parser.add_argument("--mode", choices=MODES, default="succeed")
    arguments = parser.parse_args()
    if (arguments.vcek is None) != (arguments.cert_chain is None):
        parser.error("give both --vcek and --cert-chain, or neither")
    given = None if arguments.vcek is None else (arguments.vcek, arguments.cert_chain)
    Service(arguments.dir, arguments.mode, given, arguments.tcbm).serve()


if __name__ == "__main__":
    main()
