"""`trace.appraisal` before start: the files the gateway's own appraisal trusts are read as
`cmcp start` reads them, and a setting that would do nothing (any of them in software mode)
is refused."""

from __future__ import annotations

from cmcp_cli.attestation import software
from cmcp_cli.attestation.manager import ProviderRegistry
from cmcp_cli.config import CmcpConfig
from cmcp_cli.errors import Problem
from cmcp_cli.evidence.appraisal_config import (
    SECTION,
    AppraisalSettingError,
    read_appraisal,
    software_problem,
)
from cmcp_cli.gateway.preflight.checks import Locator


def check_appraisal(config: CmcpConfig, registry: ProviderRegistry, at: Locator) -> list[Problem]:
    settings = config.trace.appraisal
    problem: AppraisalSettingError | None
    if config.attestation.provider == software.NAME:
        problem = software_problem(settings)
    else:
        try:
            read_appraisal(settings, registry)
        except AppraisalSettingError as exc:
            problem = exc
        else:
            problem = None
    if problem is None:
        return []
    return [at.error((*SECTION, *problem.key), problem.message, problem.hint)]
