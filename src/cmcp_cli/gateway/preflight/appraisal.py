"""`trace.appraisal` before start: the files the gateway's own appraisal trusts are read as
`cmcp start` reads them, and a setting that would do nothing (an input for a provider whose
evidence is never appraised: software-only, or OPAQUE's token) is refused. The values of a
platform-policy table are judged by the provider's verifier on the first evidence at start,
which this check does not collect."""

from __future__ import annotations

from cmcp_cli.attestation import software
from cmcp_cli.attestation.api import ProviderSpec
from cmcp_cli.attestation.manager import ProviderRegistry
from cmcp_cli.config import CmcpConfig
from cmcp_cli.errors import Problem
from cmcp_cli.evidence.appraisal_config import (
    SECTION,
    AppraisalSettingError,
    read_appraisal,
    unappraised_problem,
)
from cmcp_cli.gateway.preflight.checks import Locator


def check_appraisal(config: CmcpConfig, registry: ProviderRegistry, at: Locator) -> list[Problem]:
    settings = config.trace.appraisal
    spec = _provider(config.attestation.provider, registry)
    problem = None if spec is None else unappraised_problem(settings, spec)
    if problem is None:
        try:
            read_appraisal(settings, registry)
        except AppraisalSettingError as exc:
            problem = exc
    if problem is None:
        return []
    return [at.error((*SECTION, *problem.key), problem.message, problem.hint)]


def _provider(name: str, registry: ProviderRegistry) -> ProviderSpec | None:
    """The provider `attestation.provider` names, if installed (`auto` tries only hardware
    providers; a missing plugin is reported by the attestation checks)."""
    if name == software.NAME:
        return software.SPEC
    registered = registry.providers.get(name)
    return None if registered is None else registered.spec
