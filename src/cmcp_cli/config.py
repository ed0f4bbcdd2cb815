"""The one validated model of `cmcp-config.yaml`, with its environment overrides.

Reading is strict: unknown keys are errors with a did-you-mean, duplicate YAML keys are
errors, every problem is reported at its line, and relative paths resolve against the
folder of the config file (not the working directory of whoever started the process).
Secrets never live in this file: bearer tokens are named by SHA-256 digest or by the
environment variable that holds them.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PositiveInt,
    SecretStr,
    StrictBool,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from cmcp_cli.config_document import ConfigDocument, read_config_document
from cmcp_cli.config_trace import TraceConfig
from cmcp_cli.config_types import ConfigPath, NonEmpty, Section
from cmcp_cli.errors import ConfigError, Problem
from cmcp_cli.model_errors import problems_from_validation

ENV_DEV_MODE = "CMCP_DEV_MODE"
ENV_BEARER_TOKEN = "CMCP_BEARER_TOKEN"  # noqa: S105 - the variable's name, not a secret
ENV_OPERATOR_TOKEN = "CMCP_OPERATOR_TOKEN"  # noqa: S105
ENV_OPAQUE_URL = "OPAQUE_ATTESTATION_URL"
OPAQUE_FROM_ENV = "opaque_url_from_environment"  # validation context: the variable is set
# The start from the environment (config_environment): with no config file, these build
# the config a file would hold.
ENV_POLICY_PATH = "CEDAR_POLICY_PATH"
ENV_UPSTREAM_URL = "UPSTREAM_MCP_URL"
ENV_UPSTREAM_NAME = "CMCP_UPSTREAM_NAME"
ENV_UPSTREAM_AUTHORIZATION_ENV = "CMCP_UPSTREAM_AUTHORIZATION_ENV"
ENV_LISTEN_ADDR = "CMCP_LISTEN_ADDR"
ENV_ALLOWED_HOSTS = "CMCP_ALLOWED_HOSTS"
ENV_CATALOG_PATH = "CMCP_CATALOG_PATH"
ENV_FIRST_CONTACT_DATA_CLASS = "CMCP_FIRST_CONTACT_DATA_CLASS"
ENV_STATE_DIR = "CMCP_STATE_DIR"
ENV_ATTESTATION_PROVIDER = "CMCP_ATTESTATION_PROVIDER"
ENV_TRUST_DOMAIN = "CMCP_TRUST_DOMAIN"
ENV_START = (
    ENV_POLICY_PATH,
    ENV_UPSTREAM_URL,
    ENV_UPSTREAM_NAME,
    ENV_UPSTREAM_AUTHORIZATION_ENV,
    ENV_LISTEN_ADDR,
    ENV_ALLOWED_HOSTS,
    ENV_CATALOG_PATH,
    ENV_FIRST_CONTACT_DATA_CLASS,
    ENV_STATE_DIR,
    ENV_ATTESTATION_PROVIDER,
    ENV_TRUST_DOMAIN,
)
KNOWN_ENV = (ENV_DEV_MODE, ENV_BEARER_TOKEN, ENV_OPERATOR_TOKEN, *ENV_START)

# How the catalog at catalog_path came to be: the operator's own file ("explicit"), or
# written at the first start from every tool the upstreams advertised ("first-contact").
CatalogPinning = Literal["explicit", "first-contact"]
DEFAULT_DATA_CLASS_ORDER = ("public", "internal", "confidential", "restricted", "secret")
DEFAULT_FIRST_CONTACT_DATA_CLASS = "internal"
_DIGEST = re.compile(r"(sha256:[0-9a-f]{64}|sha384:[0-9a-f]{96})")
_SHA256 = re.compile(r"sha256:[0-9a-f]{64}")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_DNS_NAME = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*")


def _sha256_digest(value: str) -> str:
    if _SHA256.fullmatch(value) is None:
        raise ValueError("must be 'sha256:' followed by 64 lowercase hex digits")
    return value


def _env_name(value: str) -> str:
    if _ENV_NAME.fullmatch(value) is None:
        raise ValueError(f"{value!r} is not an environment variable name")
    return value


Sha256Digest = Annotated[str, AfterValidator(_sha256_digest)]
EnvName = Annotated[str, AfterValidator(_env_name)]


DEVICE_PROVIDER = "gpu-cc"  # the device provider cMCP documents


class AttestationConfig(Section):
    # The CPU platform's provider. Devices beside it (confidential GPUs) are attested by
    # every installed device provider that detects one, never instead of it.
    provider: Literal[
        "auto", "tpm", "sev-snp", "tdx", "azure-sev-snp", "azure-tdx", "opaque", "software-only"
    ] = "auto"
    # Refuse to start unless a device provider (gpu-cc) is installed, detects its devices
    # and prepares them: every session's claim then carries their evidence.
    gpu_required: bool = False
    enforcement_mode: Literal["enforcing", "advisory", "silent"] = "enforcing"
    validity_seconds: PositiveInt = 86_400
    staleness_policy: Literal["fail_closed", "warn_only"] = "fail_closed"
    expected_measurement: tuple[str, ...] = ()
    # Settings of one provider plugin each (`tpm: {tcti: ..., pcr: 23}`, `opaque: {url: ...}`),
    # validated by that plugin, which the host does not know in advance.
    providers: dict[str, dict[str, Any]] = Field(default_factory=dict)

    @field_validator("provider", mode="before")
    @classmethod
    def _not_a_device(cls, value: Any) -> Any:
        if value == DEVICE_PROVIDER:
            raise ValueError(
                "gpu-cc attests GPUs beside the CPU platform, not instead of it: set "
                "attestation.provider to the CPU's provider (auto, sev-snp, tdx, azure-sev-snp, "
                "azure-tdx, tpm) and attestation.gpu_required: true to require the GPUs"
            )
        return value

    @model_validator(mode="after")
    def _opaque_from_environment(self, info: ValidationInfo) -> AttestationConfig:
        if (info.context or {}).get(OPAQUE_FROM_ENV) and self.provider != "opaque":
            raise ValueError(
                f"{ENV_OPAQUE_URL} selects the opaque provider, but attestation.provider is "
                f"{self.provider!r}: unset {ENV_OPAQUE_URL} or set provider to opaque"
            )
        return self

    @field_validator("expected_measurement", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return (value,) if isinstance(value, str) else value

    @field_validator("expected_measurement")
    @classmethod
    def _digests(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for item in value:
            if _DIGEST.fullmatch(item) is None:
                raise ValueError(
                    f"{item!r} is not 'sha256:<64 hex>' or 'sha384:<96 hex>' (lowercase); "
                    "paste the output of `cmcp measure`"
                )
        return value


class HttpUpstream(Section):
    transport: Literal["streamable-http"]
    url: NonEmpty
    headers: dict[str, str] = Field(default_factory=dict)
    headers_from_env: dict[str, EnvName] = Field(default_factory=dict)
    timeout_seconds: PositiveInt = 30

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if re.fullmatch(r"https?://[^/\s?#]+(/[^\s]*)?", value) is None:
            raise ValueError(f"{value!r} is not an http:// or https:// URL")
        return value


class StdioUpstream(Section):
    transport: Literal["stdio"]
    command: Annotated[tuple[NonEmpty, ...], Field(min_length=1)]
    executable_sha256: Sha256Digest | None = None
    env: dict[str, str] = Field(default_factory=dict)
    cwd: ConfigPath | None = None


Upstream = Annotated[HttpUpstream | StdioUpstream, Field(discriminator="transport")]


class AuditConfig(Section):
    store: Literal["sqlite"] = "sqlite"
    path: ConfigPath = Path("cmcp-audit.db")
    durability: Literal["fsync", "os"] = "fsync"
    record_inputs: Literal["full", "hashes"] = "full"


class ModelIdentity(Section):
    provider: NonEmpty = "unknown"
    model_id: NonEmpty = "unknown"


class ClaimsConfig(Section):
    dir: ConfigPath = Path("claims")
    # Also sign a claim after each tool call's outcome, over the chain up to it, besides
    # the session's last claim at its end (docs/configuration.md).
    per_call: StrictBool = False
    trust_domain: NonEmpty = "cmcp.local"
    model: ModelIdentity = ModelIdentity()

    @field_validator("trust_domain")
    @classmethod
    def _trust_domain(cls, value: str) -> str:
        if _DNS_NAME.fullmatch(value) is None:
            raise ValueError(
                f"{value!r} is not a SPIFFE trust domain (lowercase DNS name, e.g. example.org)"
            )
        return value


class BearerToken(Section):
    agent: NonEmpty
    token_sha256: Sha256Digest | None = None
    token_env: EnvName | None = None

    @model_validator(mode="after")
    def _exactly_one_source(self) -> BearerToken:
        if (self.token_sha256 is None) == (self.token_env is None):
            raise ValueError("give exactly one of token_sha256 or token_env")
        return self


class AuthConfig(Section):
    bearer_tokens: tuple[BearerToken, ...] = ()
    # the agent that CMCP_BEARER_TOKEN authenticates
    env_token_agent: NonEmpty = "default"  # noqa: S105 - an agent id, not a secret
    operator_token_sha256: Sha256Digest | None = None
    operator_token_env: EnvName | None = None


class TLSConfig(Section):
    cert_file: ConfigPath | None = None
    key_file: ConfigPath | None = None
    client_ca_file: ConfigPath | None = None  # enables mTLS; agents are the clients' SPIFFE IDs

    @model_validator(mode="after")
    def _pairs(self) -> TLSConfig:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together")
        if self.client_ca_file is not None and self.cert_file is None:
            raise ValueError("client_ca_file (mTLS) needs cert_file and key_file")
        return self

    @property
    def enabled(self) -> bool:
        return self.cert_file is not None


MAX_JSON_DEPTH = 200


class LimitsConfig(Section):
    max_request_body_bytes: PositiveInt = 1024 * 1024
    # Below orjson's 254 levels, so that whatever is parsed can be forwarded and answered.
    max_json_depth: Annotated[int, Field(ge=1, le=MAX_JSON_DEPTH)] = 64
    upstream_timeout_seconds: PositiveInt = 30
    request_timeout_seconds: PositiveInt = 120
    session_idle_timeout_seconds: PositiveInt = 900
    max_sessions: PositiveInt = 1024
    approval_ttl_seconds: PositiveInt = 900


class PolicyReloadConfig(Section):
    """Which bundle may replace the running one: one whose hash is pinned here, or one
    signed (Ed25519, over its hash) by one of `signing_keys` with a higher manifest version.
    Never both rules at once (validate-config): either alone is the whole rule."""

    accept_hashes: tuple[Sha256Digest, ...] = ()
    signing_keys: tuple[ConfigPath, ...] = ()  # PEM Ed25519 public keys
    # Seconds sessions opened under a replaced bundle may still run; None: until they end.
    grace_seconds: Annotated[int, Field(ge=0)] | None = None

    @field_validator("accept_hashes", "signing_keys", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return (value,) if isinstance(value, str) else value

    @property
    def configured(self) -> bool:
        return bool(self.accept_hashes or self.signing_keys)


class PolicyConfig(Section):
    deny_response: Literal["jsonrpc-error", "tool-error", "http-403"] = "jsonrpc-error"
    data_class_order: Annotated[tuple[NonEmpty, ...], Field(min_length=1)] = (
        DEFAULT_DATA_CLASS_ORDER
    )
    reload: PolicyReloadConfig = PolicyReloadConfig()

    @field_validator("data_class_order")
    @classmethod
    def _unique(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        duplicates = sorted({v for v in value if value.count(v) > 1})
        if duplicates:
            raise ValueError(f"lists {', '.join(duplicates)} more than once")
        return value


class ListenAddress(BaseModel):
    model_config = ConfigDict(frozen=True)
    host: str
    port: int

    @property
    def is_loopback(self) -> bool:
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False  # a host name other than localhost may resolve anywhere

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


_ALLOWED_HOST = re.compile(
    r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?)(:\d{1,5})?"
)


def parse_listen_addr(value: str) -> ListenAddress:
    match = re.fullmatch(
        r"\[(?P<v6>[0-9A-Fa-f:.]+)\]:(?P<p6>\d+)|(?P<host>[^:\[\]\s]+):(?P<port>\d+)", value
    )
    if match is None:
        raise ValueError(f"{value!r} is not HOST:PORT (write IPv6 as [::1]:8443)")
    host = match.group("v6") or match.group("host")
    port = int(match.group("p6") or match.group("port"))
    if match.group("v6"):
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{host!r} is not an IPv6 address") from None
    if not 0 <= port <= 65535:
        raise ValueError(f"port {port} is outside 0-65535")
    return ListenAddress(host=host, port=port)


class CmcpConfig(Section):
    attestation: AttestationConfig = AttestationConfig()
    policy_bundle_path: ConfigPath
    catalog_path: ConfigPath
    catalog_pinning: CatalogPinning = "explicit"
    # The data class every tool gets when the catalog is pinned at first contact (only
    # with catalog_pinning: first-contact; one of policy.data_class_order).
    first_contact_data_class: NonEmpty | None = None
    listen_addr: ListenAddress = ListenAddress(host="127.0.0.1", port=8443)
    # Host names (NAME or NAME:PORT) clients may use besides the listen address.
    allowed_hosts: tuple[str, ...] = ()
    max_response_size_bytes: PositiveInt = 2 * 1024 * 1024
    policy_reload_interval_seconds: Annotated[int, Field(ge=0)] = 0
    upstreams: dict[NonEmpty, Upstream] = Field(default_factory=dict)
    policy: PolicyConfig = PolicyConfig()
    audit: AuditConfig = AuditConfig()
    claims: ClaimsConfig = ClaimsConfig()
    auth: AuthConfig = AuthConfig()
    tls: TLSConfig = TLSConfig()
    limits: LimitsConfig = LimitsConfig()
    trace: TraceConfig = TraceConfig()

    @property
    def pinned_data_class(self) -> str:
        """The data class a tool pinned at first contact gets."""
        return self.first_contact_data_class or DEFAULT_FIRST_CONTACT_DATA_CLASS

    @field_validator("listen_addr", mode="before")
    @classmethod
    def _listen(cls, value: Any) -> Any:
        return parse_listen_addr(value) if isinstance(value, str) else value

    @field_validator("allowed_hosts")
    @classmethod
    def _hosts(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        normalised = []
        for entry in value:
            if not _ALLOWED_HOST.fullmatch(entry):
                raise ValueError(
                    f"{entry!r} is not a host name, NAME:PORT or [IPv6]:PORT "
                    "(no scheme, path or wildcard)"
                )
            normalised.append(entry.lower())
        return tuple(normalised)


@dataclass(frozen=True)
class Environment:
    """What the process environment adds to the file. Secrets are `SecretStr`."""

    dev_mode: bool = False
    bearer_token: SecretStr | None = None
    operator_token: SecretStr | None = None
    unknown: tuple[str, ...] = ()  # CMCP_* variables that cMCP does not read


@dataclass(frozen=True)
class LoadedConfig:
    path: Path
    model: CmcpConfig
    env: Environment


def read_environment(environ: Mapping[str, str]) -> tuple[Environment, list[Problem]]:
    problems: list[Problem] = []
    raw_dev = environ.get(ENV_DEV_MODE, "").strip().lower()
    if raw_dev in ("", "0", "false", "no", "off"):
        dev_mode = False
    elif raw_dev in ("1", "true", "yes", "on"):
        dev_mode = True
    else:
        dev_mode = False
        problems.append(
            Problem(
                f"{ENV_DEV_MODE}={environ[ENV_DEV_MODE]!r} is neither 1 nor 0",
                hint="set it to 1 or unset it",
            )
        )
    token = environ.get(ENV_BEARER_TOKEN)
    operator = environ.get(ENV_OPERATOR_TOKEN)
    unknown = tuple(sorted(k for k in environ if k.startswith("CMCP_") and k not in KNOWN_ENV))
    env = Environment(
        dev_mode=dev_mode,
        bearer_token=SecretStr(token) if token else None,
        operator_token=SecretStr(operator) if operator else None,
        unknown=unknown,
    )
    return env, problems


def apply_environment(data: dict[str, Any], environ: Mapping[str, str]) -> dict[str, Any]:
    """The document with environment overrides that target file settings applied."""
    url = environ.get(ENV_OPAQUE_URL)
    if not url:
        return data
    merged = dict(data)
    attestation = dict(merged.get("attestation") or {})
    providers = dict(attestation.get("providers") or {})
    providers["opaque"] = {**dict(providers.get("opaque") or {}), "url": url}
    attestation["providers"] = providers
    # The URL is the operator's explicit choice of OPAQUE (never made by `auto`); a config
    # naming another provider conflicts with it and is refused by AttestationConfig.
    if attestation.get("provider", "auto") == "auto":
        attestation["provider"] = "opaque"
    merged["attestation"] = attestation
    return merged


def validate_data(
    data: Mapping[str, Any], base_dir: Path, environ: Mapping[str, str]
) -> CmcpConfig:
    """Validate config data whose relative paths are relative to `base_dir`; raises
    pydantic's `ValidationError`."""
    merged = apply_environment(dict(data), environ)
    context = {"base_dir": base_dir, OPAQUE_FROM_ENV: bool(environ.get(ENV_OPAQUE_URL))}
    return CmcpConfig.model_validate(merged, context=context)


def validate_document(document: ConfigDocument, environ: Mapping[str, str]) -> CmcpConfig:
    """Validate the document; `ConfigError` lists every schema problem where it is."""
    try:
        return validate_data(document.data, document.base_dir, environ)
    except ValidationError as exc:
        problems = problems_from_validation(
            exc, CmcpConfig, file=None, line_of=document.line_of, file_of=document.where
        )
        what = (
            f"config file {document.path}" if document.path else "the config from the environment"
        )
        raise ConfigError(f"{what} is invalid", problems=problems) from None


def load_config(path: Path, environ: Mapping[str, str] | None = None) -> LoadedConfig:
    """Read, validate and resolve a config file with its environment overrides."""
    environ = os.environ if environ is None else environ
    document = read_config_document(path)
    env, env_problems = read_environment(environ)
    if env_problems:
        raise ConfigError("the environment holds invalid cMCP settings", problems=env_problems)
    return LoadedConfig(path=path, model=validate_document(document, environ), env=env)
