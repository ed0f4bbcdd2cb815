"""Asking the token service for a token: one HTTPS POST, redirects followed by hand.

httpx never follows a redirect by itself here. A 307 or 308 (which keep the method and the
body) to another path of the same https origin is followed, at most `MAX_REDIRECTS` times;
any other redirect, and one to another scheme, host or port, is refused: the nonce and the
token never go to a host the operator did not name. Every failure is a `FetchError` whose
message says what happened, for the "not attested" reason.
"""

from __future__ import annotations

import json
import ssl
import time
from collections.abc import Mapping
from typing import Any, Final
from urllib.parse import urljoin, urlsplit

import httpx

from cmcp_opaque.settings import OpaqueSettings, https_url_problem

MAX_REDIRECTS: Final = 3
MAX_RESPONSE_BYTES: Final = 256 * 1024
_FOLLOWED: Final = (307, 308)
_JWT_TYPES: Final = ("application/jwt", "text/plain")


class FetchError(Exception):
    """No token came back; the message says why."""


def _origin(url: str) -> tuple[str, str, int]:
    parts = urlsplit(url)
    return parts.scheme, (parts.hostname or "").lower(), parts.port or 443


def tls_context(settings: OpaqueSettings) -> ssl.SSLContext:
    """The system's CAs, or only those of `ca_file` when it is set."""
    if settings.ca_file is None:
        return ssl.create_default_context()
    try:
        return ssl.create_default_context(cafile=str(settings.ca_file))
    except (OSError, ssl.SSLError) as error:
        raise FetchError(f"the CA file {settings.ca_file} is unusable: {error}") from None


def request_token(settings: OpaqueSettings, body: Mapping[str, Any]) -> str:
    """POST `body` to the token service and return the token text it answers with."""
    url = settings.url
    with httpx.Client(
        verify=tls_context(settings),
        timeout=httpx.Timeout(settings.timeout),
        follow_redirects=False,
        trust_env=False,  # no proxy or netrc from the environment sees the request
    ) as client:
        for _ in range(MAX_REDIRECTS + 1):
            status, headers, content = _post(client, url, body)
            if status not in range(300, 400):
                return _token_from(url, status, headers, content, settings.token_field)
            url = _redirect_target(url, status, headers)
    raise FetchError(f"{settings.url} redirected more than {MAX_REDIRECTS} times")


def _post(
    client: httpx.Client, url: str, body: Mapping[str, Any]
) -> tuple[int, httpx.Headers, bytes]:
    headers = {"accept": "application/jwt, application/json"}
    limit = client.timeout.read or 0.0
    # httpx bounds each read; this bounds the whole answer, which a slow drip never ends
    deadline = time.monotonic() + limit
    try:
        with client.stream("POST", url, json=dict(body), headers=headers) as response:
            content = b""
            for chunk in response.iter_bytes():
                content += chunk
                if len(content) > MAX_RESPONSE_BYTES:
                    raise FetchError(f"{url} answered with more than {MAX_RESPONSE_BYTES} bytes")
                if time.monotonic() > deadline:
                    raise FetchError(f"{url} did not finish its answer within {limit} s")
            return response.status_code, response.headers, content
    except httpx.TimeoutException:
        raise FetchError(f"{url} did not answer within {limit} s (timed out)") from None
    except httpx.ConnectError as error:
        raise FetchError(f"cannot connect to {url}: {error}") from None
    except httpx.HTTPError as error:
        raise FetchError(f"the request to {url} failed: {type(error).__name__}: {error}") from None


def _redirect_target(url: str, status: int, headers: httpx.Headers) -> str:
    location = headers.get("location")
    if status not in _FOLLOWED:
        raise FetchError(
            f"{url} answered {status} (a redirect that does not keep the POST); refused"
        )
    if not location:
        raise FetchError(f"{url} answered {status} without a Location")
    target: str = urljoin(url, str(location))
    problem = https_url_problem(target)
    if problem is not None:
        raise FetchError(f"{url} redirected to a URL that {problem}; refused")
    if _origin(target) != _origin(url):
        raise FetchError(
            f"{url} redirected to {target}, another host: refused (the nonce and the token "
            "go only to the host the operator named)"
        )
    return target


def _token_from(
    url: str, status: int, headers: httpx.Headers, content: bytes, token_field: str
) -> str:
    if status != 200:
        shown = content[:200].decode("utf-8", "replace")
        raise FetchError(f"{url} answered HTTP {status}: {shown!r}")
    media = headers.get("content-type", "").split(";")[0].strip().lower()
    if media in _JWT_TYPES:
        try:
            return content.decode("ascii").strip()
        except UnicodeDecodeError:
            raise FetchError(f"{url} answered {media} that is not ASCII text") from None
    if media == "application/json":
        try:
            document = json.loads(content)
        except (ValueError, RecursionError):
            raise FetchError(f"{url} answered application/json that is not JSON") from None
        token = document.get(token_field) if isinstance(document, dict) else None
        if not isinstance(token, str):
            raise FetchError(f"{url} answered JSON without a {token_field!r} string")
        return token
    raise FetchError(
        f"{url} answered {media or 'no content type'}, not application/jwt or application/json"
    )
