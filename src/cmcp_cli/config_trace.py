"""The `trace` section: what the gateway adds to its TRACE records beyond the session.

`trace.appraisal` is how the gateway appraises its own evidence when it collects it (the
inputs `cmcp verify` takes as `--trust-root`, `--collateral`, `--platform-policy` and
`--allow-debug`; the pinned measurements are `attestation.expected_measurement`).
`trace.anchor` names the transparency service every claim is anchored in and the log key
its receipts must verify under (docs/anchoring.md).
"""

from __future__ import annotations

import ipaddress
import re
from typing import Literal

from pydantic import PositiveInt, StrictBool, field_validator, model_validator

from cmcp_cli.config_types import ConfigPath, Section

AnchorProtocol = Literal["scrapi", "registry-anchor-v1"]
# The least appraisal status a session may open with: `any` records whatever the runtime's
# own appraisal finds; `warning` refuses contraindicated evidence; `affirming` refuses both.
RequiredStatus = Literal["any", "warning", "affirming"]
# https://host[:port][/path]: no user, query or fragment; each part judged by _url_problem
_HTTPS_BASE = re.compile(
    r"https://(?P<host>\[[0-9A-Fa-f:.]+\]|[^/:?#@\[\]]+)"
    r"(?::(?P<port>[1-9][0-9]{0,4}))?(?P<path>/[^?#]*)?"
)
_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")  # RFC 1123
_IPV4_LIKE = re.compile(r"[0-9.]+")
# a path segment: RFC 3986 pchar without percent-escapes and `@`, never `.` or `..`
_PATH_SEGMENT = re.compile(r"(?!\.\.?\Z)[A-Za-z0-9._~!$&'()*+,;=:-]+")


class AppraisalConfig(Section):
    trust_roots: tuple[ConfigPath, ...] = ()  # PEM files, as `cmcp verify --trust-root`
    collateral: tuple[ConfigPath, ...] = ()  # as `cmcp verify --collateral`
    platform_policy: ConfigPath | None = None  # a TOML file, as `cmcp verify --platform-policy`
    allow_debug: StrictBool = False
    required_status: RequiredStatus = "any"


class AnchorConfig(Section):
    # The transparency service's base URL. https only: the record's `transparency` URI is
    # made from it, and TRACE Level 2 requires an https URI a verifier can resolve.
    url: str
    protocol: AnchorProtocol = "scrapi"
    log_key: ConfigPath  # the log's PEM public key: a receipt that does not verify is refused
    ca_file: ConfigPath | None = None  # CA bundle for the service's TLS certificate
    timeout_seconds: PositiveInt = 10
    retry_initial_seconds: PositiveInt = 1
    retry_max_seconds: PositiveInt = 300

    @field_validator("url")
    @classmethod
    def _https_base(cls, value: str) -> str:
        problem = _url_problem(value)
        if problem is not None:
            raise ValueError(
                f"{value!r} is not an https base URL: {problem} (https://host[:port][/path]: "
                "the host a DNS name, an IPv4 address or a bracketed IPv6 address, the port "
                "1-65535, path segments without percent-escapes, `.` or `..`; no user, query "
                "or fragment)"
            )
        return value.rstrip("/")

    @model_validator(mode="after")
    def _backoff(self) -> AnchorConfig:
        if self.retry_max_seconds < self.retry_initial_seconds:
            raise ValueError("retry_max_seconds must be at least retry_initial_seconds")
        return self


def _url_problem(value: str) -> str | None:
    """None when `value` is an https base URL every client reads alike; else what is wrong."""
    match = _HTTPS_BASE.fullmatch(value)
    if match is None:
        return "not https://host[:port][/path]"
    host, port, path = match["host"], match["port"], (match["path"] or "").rstrip("/")
    if host.startswith("["):
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            return f"{host} is not an IPv6 address"
    elif _IPV4_LIKE.fullmatch(host):
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            return f"{host} is not an IPv4 address"
    elif (
        len(host) > 253
        or not all(_LABEL.fullmatch(label) for label in host.split("."))
        or host.rsplit(".", 1)[-1].isdigit()  # read as an IPv4 address by URL parsers
    ):
        return (
            f"{host!r} is not a DNS name (letters, digits and inner hyphens, dot-separated, "
            "the last label not all digits)"
        )
    if port is not None and int(port) > 65535:
        return f"port {port} is not 1-65535"
    segments = path.split("/")[1:]
    if not all(_PATH_SEGMENT.fullmatch(segment) for segment in segments):
        return f"the path {path!r} has an empty, `.`, `..` or percent-escaped segment"
    return None


class TraceConfig(Section):
    appraisal: AppraisalConfig = AppraisalConfig()
    anchor: AnchorConfig | None = None
