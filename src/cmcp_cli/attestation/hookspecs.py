"""The pluggy hook through which plugins (entry point group `cmcp`) declare providers.

A plugin module declares its providers in one line, `cmcp_attestation_providers =
provide(SPEC)`: the hook implementation that returns exactly those specs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pluggy

from cmcp_cli.attestation.api import ProviderSpec

PROJECT = "cmcp"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


class ProviderHooks:
    @hookspec
    def cmcp_attestation_providers(self) -> Sequence[ProviderSpec]:  # type: ignore[empty-body]
        """Return the attestation providers this plugin offers."""


def provide(*specs: ProviderSpec) -> Callable[[], Sequence[ProviderSpec]]:
    """The `cmcp_attestation_providers` hook implementation of a plugin offering `specs`
    (assign it to that name in the plugin module, or as a class attribute)."""
    if not specs or not all(isinstance(spec, ProviderSpec) for spec in specs):
        raise TypeError("provide() takes one or more ProviderSpec")
    declared = list(specs)

    def cmcp_attestation_providers() -> Sequence[ProviderSpec]:
        return list(declared)

    return hookimpl(cmcp_attestation_providers)
