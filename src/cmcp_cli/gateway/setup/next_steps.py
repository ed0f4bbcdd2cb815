"""What `cmcp init` tells its user: what the starter policy decides for each tool, and
the command that serves the folder on this host."""

from __future__ import annotations

import os
import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from cmcp_cli.attestation import software
from cmcp_cli.attestation.inventory import inventory
from cmcp_cli.config import ENV_BEARER_TOKEN, ENV_DEV_MODE, ENV_OPERATOR_TOKEN
from cmcp_cli.errors import CmcpError
from cmcp_cli.gateway.enforcement.wiring import authorizer_for
from cmcp_cli.gateway.preflight.attestation import candidates
from cmcp_cli.gateway.preflight.report import ConfigReport
from cmcp_cli.policy.decision import Decision
from cmcp_cli.policy.request import ANONYMOUS_AGENT, tool_call_request


@dataclass(frozen=True)
class NextSteps:
    command: str  # exactly what to type next
    dev_mode: bool  # whether the command runs a development gateway (no hardware here)
    note: str  # one line: why, and what else the user must know to be served
    approve: str  # how the operator approves a held call

    def to_json(self) -> dict[str, object]:
        return {
            "command": self.command,
            "dev_mode": self.dev_mode,
            "note": self.note,
            "approve": self.approve,
        }


def next_steps(
    config_path: Path, token_path: Path, listen: str, cwd: Path, environ: Mapping[str, str]
) -> NextSteps:
    """The command that serves `config_path` here. `attestation.provider: auto` serves on
    the first provider it finds in its order, and without one only in dev mode: so when none
    is found here, the command sets CMCP_DEV_MODE=1. The operator's token is the one in
    `token_path`, unless CMCP_OPERATOR_TOKEN is set: the gateway prefers that one."""
    shown = _relative(config_path, cwd)
    detected = {row.name for row in inventory().providers if row.detected}
    found = [name for name in candidates("auto") if name in detected]  # the one auto takes first
    start = f"cmcp start --config {shlex.quote(shown)}"
    if environ.get(ENV_OPERATOR_TOKEN):
        token = f"${ENV_OPERATOR_TOKEN}"
    else:
        token = f"$(cat {shlex.quote(_relative(token_path, cwd))})"
    approve = (
        f"curl -X POST http://{listen}/approvals/<approval_id> "
        f'-H "Authorization: Bearer {token}" '
        "-H 'Content-Type: application/json' -d '{\"decision\": \"approve\"}'"
    )
    if found:
        return NextSteps(
            command=start,
            dev_mode=False,
            note=f"attested by {found[0]} on this host; outside dev mode every agent needs a "
            f"token: set {ENV_BEARER_TOKEN} (32+ characters) for cmcp start and send it as "
            "'Authorization: Bearer <token>' (docs/configuration.md)",
            approve=approve,
        )
    return NextSteps(
        command=f"{ENV_DEV_MODE}=1 {start}",
        dev_mode=True,
        note=f"no SEV-SNP, TDX, Azure CVM or TPM here (cmcp plugins says why), so "
        f"{ENV_DEV_MODE}=1 runs a development gateway: software attestation, claims that "
        "prove nothing about the host, agents without a token on loopback",
        approve=approve,
    )


def preview_decisions(report: ConfigReport) -> dict[str, Decision]:
    """What the bundle decides for a call of each catalog tool without arguments, by an
    agent without a token (dev mode's) on the software platform, asked of Cedar as the
    gateway asks it. Empty when the bundle or the catalog did not load (the report says
    why)."""
    if report.bundle is None or report.catalog is None:
        return {}
    try:
        authorizer = authorizer_for(report.bundle, report.catalog)
    except CmcpError:  # check_config reported it
        return {}
    decisions = {}
    for tool in report.catalog.tools.values():
        request = tool_call_request(
            agent_id=ANONYMOUS_AGENT,
            tool=tool.name,
            arguments={},
            data_class=tool.data_class,
            session_max_sensitivity=tool.data_class,
            platform=software.PLATFORM,
        )
        decisions[tool.name] = authorizer.decide(request)
    return decisions


def _relative(path: Path, cwd: Path) -> str:
    """`path` as the user would type it from `cwd`: relative when it is below it."""
    try:
        return os.path.relpath(path, cwd) if path.is_relative_to(cwd) else str(path)
    except ValueError:
        return str(path)
