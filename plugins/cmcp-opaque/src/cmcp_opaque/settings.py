"""The `attestation.providers.opaque` settings: parsed once, validated fully, then frozen.

OPAQUE's API is not public, so the request is configurable with documented defaults
(docs/opaque.md): an HTTPS POST to `url` of the JSON object `request_fields` plus
`{nonce_field: <the 32-byte binding in nonce_encoding>}`; the answer is the token itself
(`application/jwt` or `text/plain`) or a JSON object holding it under `token_field`.
Every problem is a `ProviderError` naming the setting by its full config path; unknown keys
are refused, so a misspelt setting never falls back to a default.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

from cmcp_cli.attestation.api import ProviderError
from cmcp_cli.attestation.toolkit import settings_section
from cmcp_opaque.token import ClaimNames, nonce_encoding, status_values

SECTION: Final = "attestation.providers.opaque"
ENV_URL: Final = "OPAQUE_ATTESTATION_URL"
SETTING_NAMES: Final = (
    "url", "ca_file", "timeout", "nonce_field", "nonce_encoding", "request_fields",
    "token_field", "claim_names", "status_values",
)  # fmt: skip
DEFAULT_TIMEOUT: Final = 10
MAX_TIMEOUT: Final = 120


def https_url_problem(url: Any) -> str | None:
    """Why `url` is not an https URL the gateway may ask, or None."""
    if not isinstance(url, str) or not url:
        return "is not a URL"
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a port out of range
    except ValueError:
        return f"{url!r} is not a URL"
    if parts.scheme != "https":
        return f"{url!r} is not https: the token would travel unprotected"
    if not parts.hostname:
        return f"{url!r} names no host"
    if parts.username is not None or parts.password is not None:
        return f"{url!r} carries credentials in the URL"
    if parts.fragment:
        return f"{url!r} has a fragment"
    return None


@dataclass(frozen=True, slots=True)
class OpaqueSettings:
    url: str
    ca_file: Path | None = None  # a PEM bundle trusted instead of the system's CAs
    timeout: float = DEFAULT_TIMEOUT  # seconds, for connecting and for each answer
    nonce_field: str = "nonce"
    nonce_encoding: str = "base64url"
    request_fields: Mapping[str, Any] = field(default_factory=dict)
    token_field: str = "token"  # noqa: S105 - the JSON member holding the token
    claim_names: ClaimNames = field(default_factory=ClaimNames)
    status_values: Mapping[str, str] = field(default_factory=lambda: status_values(None, ""))

    @classmethod
    def parse(cls, settings: Mapping[str, Any] | None) -> OpaqueSettings:
        settings = settings_section(
            settings, section=SECTION, accepted=SETTING_NAMES, provider="opaque"
        )
        if "url" not in settings:
            raise ProviderError(
                f"{SECTION}.url is not set: the OPAQUE provider does not know whom to ask",
                hint=f"set {SECTION}.url (or {ENV_URL}) to the https URL of the token service",
            )
        problem = https_url_problem(settings["url"])
        if problem is not None:
            raise ProviderError(
                f"{SECTION}.url {problem}",
                hint="give the https URL of the OPAQUE token service",
            )
        values: dict[str, Any] = {"url": settings["url"]}
        if "ca_file" in settings:
            values["ca_file"] = _ca_file(settings["ca_file"])
        if "timeout" in settings:
            values["timeout"] = _timeout(settings["timeout"])
        for key in ("nonce_field", "token_field"):
            if key in settings:
                if not isinstance(settings[key], str) or not settings[key]:
                    raise ProviderError(f"{SECTION}.{key} must be a non-empty JSON member name")
                values[key] = settings[key]
        values["nonce_encoding"] = nonce_encoding(
            settings.get("nonce_encoding"), f"{SECTION}.nonce_encoding"
        )
        if "request_fields" in settings:
            values["request_fields"] = _request_fields(
                settings["request_fields"], values.get("nonce_field", "nonce")
            )
        values["claim_names"] = ClaimNames.parse(
            settings.get("claim_names"), f"{SECTION}.claim_names"
        )
        values["status_values"] = status_values(
            settings.get("status_values"), f"{SECTION}.status_values"
        )
        return cls(**values)


def _ca_file(value: Any) -> Path:
    if not isinstance(value, str) or not value:
        raise ProviderError(f"{SECTION}.ca_file must be the path of a PEM file")
    path = Path(value)
    if not path.is_file():
        raise ProviderError(
            f"{SECTION}.ca_file {value} is not a file",
            hint="give the PEM bundle of the CA(s) that issued the token service's certificate",
        )
    return path


def _timeout(value: Any) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not 0 < value <= MAX_TIMEOUT
    ):
        raise ProviderError(
            f"{SECTION}.timeout: {value!r} is not a number of seconds in (0, {MAX_TIMEOUT}]"
        )
    return float(value)


def _request_fields(value: Any, nonce_field: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ProviderError(f"{SECTION}.request_fields must be a table of JSON members")
    if nonce_field in value:
        raise ProviderError(
            f"{SECTION}.request_fields sets {nonce_field!r}, the member that carries the nonce",
            hint="the gateway writes the nonce itself; remove it from request_fields",
        )
    return dict(value)
