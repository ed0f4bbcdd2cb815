"""The plugin each provider's install hints name (`plugin_of`) is the distribution that
ships it, for every provider installed here."""

from __future__ import annotations

from cmcp_cli.attestation.manager import load_providers
from cmcp_cli.gateway.preflight.attestation import AUTO_ORDER, PLUGINS, plugin_of


def test_every_installed_provider_is_shipped_by_the_plugin_its_hints_name() -> None:
    registry = load_providers(include_builtin=False)
    shipped = {name: provider.distribution for name, provider in registry.providers.items()}
    assert set(AUTO_ORDER) <= set(shipped), "every provider auto tries is installed in tests"
    assert {name: plugin_of(name) for name in shipped} == shipped
    assert set(PLUGINS) == set(shipped)  # the table names exactly the providers there are
