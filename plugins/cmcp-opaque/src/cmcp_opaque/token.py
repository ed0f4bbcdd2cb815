"""What is assumed about an OPAQUE attestation token, shared by the collector (which refuses a
token of another shape before it is used) and the verifier (which judges it offline).

OPAQUE's token schema is not public. The assumptions, each configurable (docs/opaque.md):
the token is a JWS in compact serialization whose protected header names its `alg` and the
`kid` of the signing key; its payload is a JSON object with `iss` (an absolute URI), `exp`
and `iat` (integer seconds, `nbf` optional), optionally `aud`, and three claims whose names
are `ClaimNames`: the request's nonce (encoded as `nonce_encoding` says), an appraisal status
mapped to an EAR status by `status_values`, and the measurements the service appraised (a
JSON object of names to strings).
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from cmcp_cli.attestation.api import ProviderError
from cmcp_cli.claim.canonical import canonical_sha256

MAX_TOKEN_CHARS: Final = 64 * 1024
EAR_STATUSES: Final = ("affirming", "warning", "contraindicated", "none")
NONCE_ENCODINGS: Final = ("base64url", "base64", "hex")
DEFAULT_NONCE_ENCODING: Final = "base64url"
# Header members that change what is signed or how (RFC 7515 crit, RFC 7797 b64): a token
# carrying one is refused rather than verified under rules it did not ask for.
REFUSED_HEADERS: Final = ("crit", "b64")
_SEGMENT = re.compile(r"[A-Za-z0-9_-]+")
_URI = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*:\S+")


class TokenError(ValueError):
    """The token is not of the assumed shape; the message says what is wrong."""


@dataclass(frozen=True, slots=True)
class ClaimNames:
    """The payload members that carry the nonce, the appraisal status and the measurements."""

    nonce: str = "nonce"
    status: str = "status"
    measurements: str = "measurements"

    @classmethod
    def parse(cls, value: Any, where: str) -> ClaimNames:
        if value is None:
            return cls()
        if not isinstance(value, Mapping):
            raise ProviderError(
                f"{where} must be a table of claim names",
                hint='for example { nonce = "nonce", status = "status" }',
            )
        known = ("nonce", "status", "measurements")
        unknown = sorted(str(key) for key in value if key not in known)
        if unknown:
            raise ProviderError(
                f"{where}: unknown claim(s) {', '.join(unknown)}",
                hint=f"name only {', '.join(known)}",
            )
        for key, name in value.items():
            if not isinstance(name, str) or not name:
                raise ProviderError(f"{where}.{key} must be a non-empty claim name")
        names = cls(**dict(value))
        if len({names.nonce, names.status, names.measurements}) != 3:
            raise ProviderError(f"{where} names one claim for two purposes")
        return names


def nonce_encoding(value: Any, where: str) -> str:
    if value is None:
        return DEFAULT_NONCE_ENCODING
    if value not in NONCE_ENCODINGS:
        raise ProviderError(
            f"{where}: {value!r} is not a nonce encoding",
            hint=f"use one of {', '.join(NONCE_ENCODINGS)}",
        )
    return str(value)


def encode_nonce(binding: bytes, encoding: str) -> str:
    if encoding == "hex":
        return binding.hex()
    if encoding == "base64":
        return base64.b64encode(binding).decode()
    return base64.urlsafe_b64encode(binding).rstrip(b"=").decode()


def decode_nonce(value: Any, encoding: str) -> bytes | None:
    """The bytes of a nonce in its one canonical spelling under `encoding`, else None."""
    if not isinstance(value, str) or not value:
        return None
    try:
        if encoding == "hex":
            raw = bytes.fromhex(value)
        elif encoding == "base64":
            raw = base64.b64decode(value, validate=True)
        else:
            raw = _b64url(value)
    except (ValueError, binascii.Error):
        return None
    return raw if encode_nonce(raw, encoding) == value else None


def status_values(value: Any, where: str) -> Mapping[str, str]:
    """The token's status values mapped to EAR statuses (default: the EAR names themselves)."""
    if value is None:
        return {status: status for status in EAR_STATUSES}
    if not isinstance(value, Mapping) or not value:
        raise ProviderError(
            f"{where} must be a table of the token's status values to EAR statuses",
            hint='for example { ok = "affirming", degraded = "warning" }',
        )
    for key, status in value.items():
        if status not in EAR_STATUSES:
            raise ProviderError(
                f"{where}.{key}: {status!r} is not an EAR status",
                hint=f"map each value to one of {', '.join(EAR_STATUSES)}",
            )
    return {str(key): str(status) for key, status in value.items()}


def _b64url(segment: str) -> bytes:
    """Unpadded base64url in its one canonical spelling (ValueError otherwise), so that a
    token's text names exactly one content: no padding, no unused bits set."""
    if _SEGMENT.fullmatch(segment) is None:
        raise ValueError("not unpadded base64url")
    raw = base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    if base64.urlsafe_b64encode(raw).rstrip(b"=").decode() != segment:
        raise ValueError("not canonical base64url (unused bits set)")
    return raw


def _object(data: bytes, what: str) -> dict[str, Any]:
    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        result: dict[str, Any] = {}
        for key, value in items:
            if key in result:
                raise TokenError(f"the {what} repeats the member {key!r}")
            result[key] = value
        return result

    try:
        value = json.loads(data.decode("utf-8"), object_pairs_hook=pairs)
    except (UnicodeDecodeError, ValueError, RecursionError) as error:
        if isinstance(error, TokenError):
            raise
        raise TokenError(f"the {what} is not JSON") from None
    if not isinstance(value, dict):
        raise TokenError(f"the {what} is not a JSON object")
    return value


@dataclass(frozen=True, slots=True)
class Token:
    """A token of the assumed shape; nothing in it is verified yet."""

    compact: str
    header: Mapping[str, Any]
    payload: Mapping[str, Any]
    signature: bytes = field(repr=False)

    @property
    def alg(self) -> str:
        return str(self.header["alg"])

    @property
    def kid(self) -> str:
        return str(self.header["kid"])

    @property
    def issuer(self) -> str:
        return str(self.payload["iss"])


def parse_token(value: Any) -> Token:
    """A JWS compact serialization of the assumed shape; `TokenError` says how it is not."""
    if not isinstance(value, str):
        raise TokenError(
            f"the token is a JSON {type(value).__name__}, not a JWS compact serialization "
            "(a JWS JSON serialization is not accepted)"
        )
    if len(value) > MAX_TOKEN_CHARS:
        raise TokenError(f"the token is longer than {MAX_TOKEN_CHARS} characters")
    segments = value.split(".")
    if len(segments) != 3:
        raise TokenError(
            f"the token has {len(segments)} dot-separated part(s), not the 3 of a JWS compact "
            "serialization (header.payload.signature)"
        )
    decoded = []
    for name, segment in zip(("header", "payload", "signature"), segments, strict=True):
        try:
            decoded.append(_b64url(segment))
        except ValueError as error:
            raise TokenError(f"the token's {name} is {error}") from None
    header = _object(decoded[0], "protected header")
    payload = _object(decoded[1], "payload")
    if not isinstance(header.get("alg"), str) or not header["alg"]:
        raise TokenError("the protected header names no alg")
    if not isinstance(header.get("kid"), str) or not header["kid"]:
        raise TokenError("the protected header names no kid of the signing key")
    refused = [name for name in REFUSED_HEADERS if name in header]
    if refused:
        raise TokenError(f"the protected header carries {', '.join(refused)}, which is refused")
    issuer = payload.get("iss")
    if not isinstance(issuer, str) or _URI.fullmatch(issuer) is None:
        raise TokenError("the payload's iss is not an absolute URI")
    for claim in ("exp", "iat"):
        if not _seconds(payload.get(claim)):
            raise TokenError(f"the payload's {claim} is not integer seconds")
    if "nbf" in payload and not _seconds(payload["nbf"]):
        raise TokenError("the payload's nbf is not integer seconds")
    return Token(value, header, payload, decoded[2])


def _seconds(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**53


def audiences(token: Token) -> tuple[str, ...] | None:
    """The token's `aud` as a tuple (None when absent); `TokenError` when malformed."""
    aud = token.payload.get("aud")
    if aud is None:
        return None
    if isinstance(aud, str):
        return (aud,)
    if isinstance(aud, list) and aud and all(isinstance(item, str) for item in aud):
        return tuple(aud)
    raise TokenError("the payload's aud is neither a string nor a list of strings")


def nonce_of(token: Token, names: ClaimNames, encoding: str) -> bytes:
    """The nonce the token states, decoded; `TokenError` when it states none usable."""
    if names.nonce not in token.payload:
        raise TokenError(f"the payload has no {names.nonce!r} claim (the nonce)")
    raw = decode_nonce(token.payload[names.nonce], encoding)
    if raw is None:
        raise TokenError(f"the payload's {names.nonce!r} claim is not {encoding} (canonical)")
    return raw


def appraisal_status(token: Token, names: ClaimNames, values: Mapping[str, str]) -> str:
    """The EAR status of the token's status claim; `none` when it states none."""
    if names.status not in token.payload:
        return "none"
    stated = token.payload[names.status]
    if not isinstance(stated, str) or stated not in values:
        known = ", ".join(sorted(values))
        raise TokenError(
            f"the payload's {names.status!r} claim is {stated!r}, which maps to no EAR status "
            f"(mapped: {known})"
        )
    return values[stated]


def measurements_of(token: Token, names: ClaimNames) -> Mapping[str, str]:
    """The measurements the token states (empty when it states none)."""
    stated = token.payload.get(names.measurements, {})
    if not isinstance(stated, dict) or not all(
        isinstance(key, str) and isinstance(value, str) for key, value in stated.items()
    ):
        raise TokenError(f"the payload's {names.measurements!r} claim is not names to strings")
    return stated


def measurement_digest(measurements: Mapping[str, str]) -> str:
    """The claim's runtime.measurement: SHA-256 of the RFC 8785 form of the measurements."""
    return canonical_sha256(dict(measurements))
