"""Collecting `opaque-token-v1` evidence: a token from the OPAQUE token service whose nonce
is the session binding.

Detection only says whether a URL is configured: nothing is asked of the network until a
session needs its token, and nothing in this host is detected, because the provider is an
explicit choice (`attestation.provider: opaque`, or `OPAQUE_ATTESTATION_URL`) and never one
that `auto` makes. Each token is checked before it is used: of the assumed shape
(`cmcp_opaque.token`), carrying the requested nonce, stating a status that maps to an EAR
status, and not yet expired. Any failure is a `ProviderError` with the reason, so the
session is not opened; the signature is the auditor's to judge against keys they pin.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from cmcp_cli.attestation.api import (
    Appraisal,
    Collector,
    Detection,
    Evidence,
    GatewayFacts,
    ProviderError,
)
from cmcp_opaque.fetch import FetchError, request_token, tls_context
from cmcp_opaque.plugin import EVIDENCE_TYPE, PLATFORM
from cmcp_opaque.settings import SECTION, OpaqueSettings
from cmcp_opaque.token import (
    TokenError,
    appraisal_status,
    encode_nonce,
    measurement_digest,
    measurements_of,
    nonce_of,
    parse_token,
)

_HINT = (
    "check that the OPAQUE token service at {url} is up and answers as docs/opaque.md "
    "describes (the request shape, nonce encoding and claim names are settings of "
    f"{SECTION})"
)


class OpaqueCollector(Collector):
    """The Collector of the opaque provider (see the module docstring)."""

    def detect(self, settings: Mapping[str, Any]) -> Detection:
        try:
            parsed = OpaqueSettings.parse(settings)
        except ProviderError as error:
            return Detection(False, f"{error.message} (the opaque provider is never detected)")
        return Detection(True, f"an OPAQUE token service is configured at {parsed.url}")

    def prepare(self, facts: GatewayFacts, settings: Mapping[str, Any]) -> None:  # noqa: ARG002
        # Nothing is measured: the token appraises the platform, the binding carries the
        # policy. The settings and the CA file are checked before the gateway serves.
        parsed = OpaqueSettings.parse(settings)
        try:
            tls_context(parsed)
        except FetchError as error:
            raise ProviderError(
                str(error), hint=f"give {SECTION}.ca_file a PEM bundle of CA certificates"
            ) from None

    def collect(self, binding: bytes, settings: Mapping[str, Any]) -> Evidence:
        parsed = OpaqueSettings.parse(settings)
        if len(binding) != 32:
            raise ProviderError(f"the binding is {len(binding)} bytes, not 32")
        body = {
            **parsed.request_fields,
            parsed.nonce_field: encode_nonce(binding, parsed.nonce_encoding),
        }
        hint = _HINT.format(url=parsed.url)
        try:
            text = request_token(parsed, body)
        except FetchError as error:
            raise ProviderError(f"no OPAQUE token: {error}", hint=hint) from None
        refused = f"the OPAQUE token from {parsed.url} is refused"
        try:
            token = parse_token(text)
            nonce = nonce_of(token, parsed.claim_names, parsed.nonce_encoding)
            status = appraisal_status(token, parsed.claim_names, parsed.status_values)
            measurement = measurement_digest(measurements_of(token, parsed.claim_names))
        except TokenError as error:
            raise ProviderError(f"{refused}: {error}", hint=hint) from None
        if nonce != binding:
            raise ProviderError(
                f"{refused}: its nonce is not the binding the gateway asked for", hint=hint
            )
        if token.payload["exp"] <= time.time():
            raise ProviderError(
                f"the OPAQUE token from {parsed.url} expired at {token.payload['exp']} (Unix "
                "seconds) before it was used",
                hint="check the token service's clock and this host's",
            )
        return Evidence(
            evidence_type=EVIDENCE_TYPE,
            evidence={"token": token.compact, "url": parsed.url},
            platform=PLATFORM,
            measurement=measurement,
            appraisal=Appraisal(status, token.issuer),
        )

    def close(self) -> None:
        """Nothing is held between collections."""
