"""The HTTP rules every request meets before the gateway reads its body.

On every route: a header the gateway reads one value of appears at most once (a proxy in
front and the gateway must never see two different values), `Host` names the gateway as
configured (DNS rebinding: a page of `evil.example` whose name resolves to the gateway's
address is refused, 421), and an `Origin`, when present, is the gateway's own or a
loopback one (a browser page elsewhere is refused, 403). On /mcp, as the streamable HTTP
transport says: a POST is `application/json` (415 otherwise) and accepts both
`application/json` and `text/event-stream` (406 otherwise); a GET accepts
`text/event-stream` (406 otherwise). Wildcards (`*/*`, `application/*`, `text/*`) count,
as they do for the official SDK's server.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson

from cmcp_cli.config import CmcpConfig, ListenAddress
from cmcp_cli.wire.asgi import ClientGoneError, Receive, Scope, Send
from cmcp_cli.wire.jsonrpc import Code, error

# Read as one value: a second copy is refused. Mcp-Param-* headers are singletons too.
SINGLETON_HEADERS = frozenset(
    {
        b"host",
        b"origin",
        b"authorization",
        b"content-type",
        b"mcp-method",
        b"mcp-name",
        b"mcp-protocol-version",
        b"mcp-session-id",
        b"last-event-id",
        b"cmcp-workflow-id",
        b"cmcp-challenge",
    }
)
# Verdicts on header values are remembered (bounded): the same few values arrive on every
# request of a client, and these checks are on every request's path.
_VERDICTS_KEPT = 256
_ROUTING_HEADERS = frozenset({b"mcp-method", b"mcp-name", b"mcp-protocol-version"})
_PARAM_PREFIX = b"mcp-param-"
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "[::1]")
_HOST = re.compile(r"(?P<name>\[[0-9a-f:.]+\]|[a-z0-9._-]+)(?::(?P<port>\d{1,5}))?")
_REFUSED = re.compile(r"\s*q\s*=\s*0(\.0{0,3})?\s*", re.IGNORECASE)
_ORIGIN = re.compile(r"(?P<scheme>https?)://(?P<host>[^/?#]+)")


@dataclass(frozen=True)
class Refusal:
    """An HTTP answer that ends a request before the gateway reads it."""

    status: int
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class HostRule:
    """The `Host` values the gateway answers to: its listen address (and, on a loopback
    or wildcard bind, the loopback names) at its port, plus `allowed_hosts` (an entry
    without a port matches any port). A listen port of 0 accepts any port."""

    port: int
    exact: frozenset[str]  # "name:port"
    any_port: frozenset[str]  # "name"

    @classmethod
    def of(cls, listen: ListenAddress, allowed_hosts: Iterable[str]) -> HostRule:
        names: set[str] = set()
        host = listen.host.lower()
        bracketed = f"[{host}]" if ":" in host else host
        if _is_wildcard(host) or listen.is_loopback:
            names.update(LOOPBACK_NAMES)
        if not _is_wildcard(host):
            names.add(bracketed)
        exact = {f"{name}:{listen.port}" for name in names}
        any_port: set[str] = set()
        for entry in allowed_hosts:
            match = _HOST.fullmatch(entry.lower())
            if match is not None:  # the config validated every entry
                (exact if match["port"] else any_port).add(entry.lower())
        return cls(listen.port, frozenset(exact), frozenset(any_port))

    def allows(self, value: str, *, default_port: int) -> bool:
        match = _HOST.fullmatch(value.strip().lower())
        if match is None:
            return False
        name, port = match["name"], match["port"]
        if name in self.any_port:
            return True
        number = int(port) if port else default_port
        if self.port == 0:
            return any(allowed.rsplit(":", 1)[0] == name for allowed in self.exact)
        return f"{name}:{number}" in self.exact


class TransportRules:
    def __init__(self, config: CmcpConfig) -> None:
        self.hosts = HostRule.of(config.listen_addr, config.allowed_hosts)
        self.default_port = 443 if config.tls.enabled else 80
        self.body_seconds = float(config.limits.request_timeout_seconds)
        self._host_allowed = functools.lru_cache(_VERDICTS_KEPT)(self._host_allows)
        self._origin_ok = functools.lru_cache(_VERDICTS_KEPT)(self._origin_allowed)

    def _host_allows(self, host: str) -> bool:
        return self.hosts.allows(host, default_port=self.default_port)

    def check(self, scope: Scope) -> Refusal | None:
        """The rules of every route: no repeated singleton header, our Host, no foreign Origin."""
        repeated = repeated_header(scope["headers"])
        if repeated is not None:
            code = Code.HEADER_MISMATCH if repeated in _ROUTING_HEADERS else Code.INVALID_REQUEST
            name = repeated.decode("latin-1")
            return _refusal(400, code, f"the {name} header appears more than once: send it once")
        host = _single(scope, b"host")
        if host is None:
            return _refusal(
                421,
                Code.INVALID_REQUEST,
                "the Host header is missing: send the gateway's listen address in it",
            )
        if not self._host_allowed(host):
            return _refusal(
                421,
                Code.INVALID_REQUEST,
                f"Host {host!r} does not name this gateway (DNS rebinding protection): "
                "use its listen address, or add the name to allowed_hosts",
            )
        origin = _single(scope, b"origin")
        if origin is not None and not self._origin_ok(origin):
            return _refusal(
                403,
                Code.INVALID_REQUEST,
                f"origin {origin!r} is not allowed: only this gateway's own origin, a "
                "loopback one, or one in allowed_hosts",
            )
        return None

    def check_mcp(self, scope: Scope, method: str) -> Refusal | None:
        """The streamable HTTP transport's media types for POST and GET on /mcp."""
        json_ok, sse_ok = accepts(_joined(scope, b"accept"))
        if method == "POST":
            if not (json_ok and sse_ok):
                return _refusal(
                    406,
                    Code.INVALID_REQUEST,
                    "Not Acceptable: a POST must accept both application/json and "
                    "text/event-stream (Accept: application/json, text/event-stream)",
                )
            if not is_json(_single(scope, b"content-type")):
                return _refusal(
                    415,
                    Code.INVALID_REQUEST,
                    "Unsupported Media Type: a POST carries Content-Type: application/json",
                )
        elif method == "GET" and not sse_ok:
            return _refusal(
                406,
                Code.INVALID_REQUEST,
                "Not Acceptable: the stream is text/event-stream (Accept: text/event-stream)",
            )
        return None

    def bounded(self, receive: Receive, send: Send) -> Receive:
        """`receive`, with the request body due within limits.request_timeout_seconds of
        its first read: a client that sends it slower is answered 408 with
        `Connection: close` (the connection cannot carry another request), and the
        handler ends as if the client had left. Reads after the body are not bounded."""
        seconds = self.body_seconds
        deadline: float | None = None
        complete = False

        async def bounded_receive() -> dict[str, Any]:
            nonlocal deadline, complete
            if complete:
                return await receive()
            loop = asyncio.get_running_loop()
            deadline = deadline if deadline is not None else loop.time() + seconds
            try:
                async with asyncio.timeout_at(deadline):
                    message = await receive()
            except TimeoutError:
                refusal = _refusal(
                    408,
                    Code.INVALID_REQUEST,
                    f"the request body did not arrive within {seconds:g} s "
                    "(limits.request_timeout_seconds)",
                )
                body = orjson.dumps(refusal.body)
                await send(
                    {
                        "type": "http.response.start",
                        "status": 408,
                        "headers": [
                            (b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close"),
                        ],
                    }
                )
                await send({"type": "http.response.body", "body": body})
                raise ClientGoneError from None
            if message["type"] != "http.request" or not message.get("more_body", False):
                complete = True
            return message

        return bounded_receive

    def _origin_allowed(self, origin: str) -> bool:
        match = _ORIGIN.fullmatch(origin.strip().lower())
        if match is None:
            return False  # "null" (a sandboxed or file: page) among others
        host = match["host"]
        parsed = _HOST.fullmatch(host)
        if parsed is not None and parsed["name"] in LOOPBACK_NAMES:
            return True
        default = 443 if match["scheme"] == "https" else 80
        return self.hosts.allows(host, default_port=default)


def repeated_header(headers: Iterable[tuple[bytes, bytes]]) -> bytes | None:
    """The first singleton header (lower-case name) that appears more than once, or None."""
    seen: set[bytes] = set()
    for raw, _ in headers:
        name = raw.lower()
        if name in SINGLETON_HEADERS or name.startswith(_PARAM_PREFIX):
            if name in seen:
                return name
            seen.add(name)
    return None


@functools.lru_cache(_VERDICTS_KEPT)
def accepts(accept: str | None) -> tuple[bool, bool]:
    """Whether an Accept header admits application/json, and text/event-stream. A type
    given `q=0` is one the client refuses (RFC 9110, 12.4.2), whatever wildcard it sends."""
    admitted: set[str] = set()
    refused: set[str] = set()
    for part in (accept or "").split(","):
        kind, *parameters = part.split(";")
        zero = any(_REFUSED.fullmatch(parameter) for parameter in parameters)
        (refused if zero else admitted).add(kind.strip().lower())
    return _admits(admitted, refused, "application/json"), _admits(
        admitted, refused, "text/event-stream"
    )


def _admits(admitted: set[str], refused: set[str], media_type: str) -> bool:
    family = media_type.partition("/")[0] + "/*"
    if media_type in refused:
        return False
    if media_type in admitted:
        return True
    if family in refused:
        return False
    return family in admitted or ("*/*" in admitted and "*/*" not in refused)


def is_json(content_type: str | None) -> bool:
    """`application/json`, with parameters (charset) or not."""
    if content_type is None:
        return False
    return content_type.split(";")[0].strip().lower() == "application/json"


def _single(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key.lower() == name:
            return str(value.decode("latin-1"))
    return None


def _joined(scope: Scope, name: bytes) -> str | None:
    values = [value.decode("latin-1") for key, value in scope["headers"] if key.lower() == name]
    return ", ".join(values) if values else None


def _is_wildcard(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_unspecified
    except ValueError:
        return False


def _refusal(status: int, code: Code, message: str) -> Refusal:
    return Refusal(status, error(None, code, message))
