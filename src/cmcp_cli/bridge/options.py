"""The options of `cmcp bridge`, checked before anything is sent: a URL the bridge can use
without leaking credentials, a timeout, where the bearer token comes from, and the
verifier's challenge to open sessions with."""

from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from cmcp_cli.claim.challenge import challenge_problem
from cmcp_cli.config import ENV_BEARER_TOKEN, LimitsConfig
from cmcp_cli.errors import UsageError
from cmcp_cli.wire.http1 import Endpoint

# The gateway's own default limits.request_timeout_seconds: the bridge never gives up first.
DEFAULT_TIMEOUT_SECONDS = float(LimitsConfig.model_fields["request_timeout_seconds"].default)
VISIBLE_ASCII = re.compile(r"[\x21-\x7e]+")  # RFC 9110 token68 and MCP session ids
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclass(frozen=True, slots=True)
class BridgeOptions:
    url: str
    token: str | None = field(default=None, repr=False)
    token_env: str = ENV_BEARER_TOKEN
    timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS
    challenge: str | None = None  # sent as Cmcp-Challenge with every message


def bridge_options(
    url: str,
    *,
    token_env: str | None,
    timeout_seconds: float,
    environ: Mapping[str, str],
    challenge: str | None = None,
) -> BridgeOptions:
    """Checked options; `UsageError` names what cannot be used (never the token itself)."""
    endpoint = _endpoint(url)
    if not (math.isfinite(timeout_seconds) and timeout_seconds > 0):
        raise UsageError(f"--timeout must be a positive number of seconds, not {timeout_seconds}")
    problem = None if challenge is None else challenge_problem(challenge)
    if problem is not None:
        raise UsageError(f"--challenge {challenge!r} is refused: {problem}")
    name = ENV_BEARER_TOKEN if token_env is None else token_env
    if _ENV_NAME.fullmatch(name) is None:
        raise UsageError(f"--token-env {name!r} is not an environment variable name")
    token = environ.get(name) or None
    if token is None and token_env is not None:
        raise UsageError(
            f"--token-env names {name}, which is not set or empty",
            hint=f"export {name}=<the agent's bearer token>, or leave out --token-env",
        )
    if token is not None and VISIBLE_ASCII.fullmatch(token) is None:
        raise UsageError(
            f"{name} cannot be a bearer token: it holds spaces or characters outside visible ASCII",
        )
    if endpoint.scheme == "http" and not _is_loopback(endpoint.host):
        raise UsageError(
            f"{url} is plain http to a host that is not loopback: tool calls, their results "
            "and the bearer token would cross the network in clear text",
            hint="use the gateway's https:// URL (off loopback the gateway serves TLS)",
        )
    return BridgeOptions(url, token, name, float(timeout_seconds), challenge)


def _endpoint(url: str) -> Endpoint:
    try:
        parts = urlsplit(url)
        credentials = parts.username is not None or parts.password is not None
    except ValueError:
        credentials = False
    if credentials:  # and the URL is never echoed: that would put them in a log
        raise UsageError(
            "the --url carries credentials (user:password@), which cMCP never sends",
            hint=f"drop them from the URL and put the bearer token in {ENV_BEARER_TOKEN}",
        )
    try:
        return Endpoint.parse(url)
    except ValueError as exc:
        raise UsageError(
            f"{url!r} is not an http:// or https:// URL with a host and a valid port",
            hint="give the gateway's MCP endpoint, e.g. --url http://127.0.0.1:8443/mcp",
        ) from exc


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name other than localhost may resolve anywhere
