"""Which attestation providers a config can use on this host, as far as can be known before
start: installed, and its collector loads (whether its hardware is here, only start finds
out). `choose_attestor` walks the same candidates in the same order."""

from __future__ import annotations

from typing import Final

from cmcp_cli.attestation import software
from cmcp_cli.attestation.manager import (
    ProviderRegistry,
    ProviderUnavailableError,
    load_collector,
)
from cmcp_cli.config import CmcpConfig
from cmcp_cli.errors import Problem
from cmcp_cli.gateway.preflight.checks import Locator

# Hardware reports first. Bare-metal SEV-SNP and TDX guests have their own device and no
# paravisor; an Azure confidential VM has neither device, and its vTPM carries the
# paravisor's SNP or TD report: so the Azure providers follow the bare-metal ones and come
# before plain tpm, which would take that vTPM's quote without the hardware root.
AUTO_ORDER = ("sev-snp", "tdx", "azure-sev-snp", "azure-tdx", "tpm")
_PROVIDER = ("attestation", "provider")


def candidates(wanted: str) -> tuple[str, ...]:
    """The providers `attestation.provider` names, in the order they are tried."""
    return AUTO_ORDER if wanted == "auto" else (wanted,)


# The wheel that ships each provider cMCP documents (a plugin may ship several).
PLUGINS: Final = {
    "sev-snp": "cmcp-sev", "tdx": "cmcp-tdx", "tpm": "cmcp-tpm", "gpu-cc": "cmcp-gpucc",
    "opaque": "cmcp-opaque", "azure-sev-snp": "cmcp-azure", "azure-tdx": "cmcp-azure",
}  # fmt: skip


def plugin_of(provider: str) -> str:
    """The wheel that ships a provider (`PLUGINS`); for another name, the plugin named
    after it, which is how cMCP's plugins are named."""
    return PLUGINS.get(provider, "cmcp-" + provider.replace("-", ""))


def check_attestation(
    config: CmcpConfig, registry: ProviderRegistry, at: Locator
) -> tuple[list[Problem], list[str]]:
    """Problems and notes: a provider chosen by name that is not installed or cannot load
    here is an error with the fix; one that `auto` will pass over for that is a note."""
    wanted = config.attestation.provider
    problems: list[Problem] = []
    notes: list[str] = []
    if wanted == software.NAME:
        return problems, notes
    for name in candidates(wanted):
        registered = registry.providers.get(name)
        if registered is None:
            if wanted != "auto":
                problems.append(
                    at.error(
                        _PROVIDER,
                        f"no installed plugin provides {name!r}",
                        hint=f"pip install {plugin_of(name)}, or choose an installed provider "
                        "(cmcp plugins lists them)",
                    )
                )
            continue
        try:
            load_collector(registered)  # loaded, not prepared: it holds nothing to release
        except ProviderUnavailableError as exc:
            if wanted == "auto":
                why = f"{exc.reason}; {exc.hint}"
                notes.append(f"auto passes over {name}, unavailable here: {why}")
            else:
                problems.append(
                    at.error(_PROVIDER, f"{name} is unavailable here: {exc.reason}", exc.hint)
                )
    return problems, notes
