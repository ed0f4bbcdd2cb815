"""The pluggy hook through which plugins (entry point group `cmcp`) declare providers."""

from __future__ import annotations

from collections.abc import Sequence

import pluggy

from cmcp_cli.attestation.api import ProviderSpec

PROJECT = "cmcp"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


class ProviderHooks:
    @hookspec
    def cmcp_attestation_providers(self) -> Sequence[ProviderSpec]:  # type: ignore[empty-body]
        """Return the attestation providers this plugin offers."""
