"""The `trace` section: what the gateway adds to its TRACE records beyond the session.

`trace.appraisal` is how the gateway appraises its own evidence when it collects it (the
inputs `cmcp verify` takes as `--trust-root`, `--collateral`, `--platform-policy` and
`--allow-debug`; the pinned measurements are `attestation.expected_measurement`).
`trace.anchor` names the transparency service every claim is anchored in and the log key
its receipts must verify under (docs/anchoring.md).
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import PositiveInt, StrictBool, field_validator, model_validator

from cmcp_cli.config_types import ConfigPath, Section

AnchorProtocol = Literal["scrapi", "registry-anchor-v1"]
# The least appraisal status a session may open with: `any` records whatever the runtime's
# own appraisal finds; `warning` refuses contraindicated evidence; `affirming` refuses both.
RequiredStatus = Literal["any", "warning", "affirming"]
# https://host[:port][/path]: no user, query or fragment (the host a name, IPv4 or [IPv6])
_HTTPS_BASE = re.compile(r"https://(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+)(:[0-9]{1,5})?(/[^?#@\s]*)?")


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
        if not _HTTPS_BASE.fullmatch(value):
            raise ValueError(
                f"{value!r} is not an https base URL (https://host[:port][/path], "
                "with no user, query or fragment)"
            )
        return value.rstrip("/")

    @model_validator(mode="after")
    def _backoff(self) -> AnchorConfig:
        if self.retry_max_seconds < self.retry_initial_seconds:
            raise ValueError("retry_max_seconds must be at least retry_initial_seconds")
        return self


class TraceConfig(Section):
    appraisal: AppraisalConfig = AppraisalConfig()
    anchor: AnchorConfig | None = None
