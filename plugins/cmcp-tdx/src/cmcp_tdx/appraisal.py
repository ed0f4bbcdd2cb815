"""The auditor's TDX requirements: the `[tdx]` table of `cmcp verify --platform-policy`.

    accepted_tcb_statuses = ["UpToDate"]   # default: UpToDate and the three statuses that
                                           # need only software hardening or configuration
    require_collateral = true              # no collateral fails tdx.tcb.status, not skips it

`Revoked` can never be accepted: its PCK key may be in an attacker's hands.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from cmcp_cli.attestation.api import ProviderError
from cmcp_cli.attestation.toolkit import platform_policy_table, policy_flag
from cmcp_tdx.collateral import ACCEPTED, STATUSES
from cmcp_tdx.plugin import PLATFORM_POLICY_KEYS

TABLE: Final = "[tdx]"
NEVER_ACCEPTED: Final = "Revoked"


@dataclass(frozen=True, slots=True)
class Requirements:
    accepted_tcb_statuses: frozenset[str] = ACCEPTED
    require_collateral: bool = False

    @classmethod
    def parse(cls, table: Mapping[str, Any], *, name: str = TABLE) -> Requirements:
        """`ProviderError` names the first unusable key of the table `name` (another
        provider's table, such as "[azure-tdx]", when it holds these keys too)."""
        table = platform_policy_table(
            table, name=name, accepted=PLATFORM_POLICY_KEYS, provider="TDX"
        )
        required = policy_flag(table, name, "require_collateral")
        accepted = table.get("accepted_tcb_statuses")
        return cls(
            accepted_tcb_statuses=ACCEPTED if accepted is None else _statuses(name, accepted),
            require_collateral=required,
        )


def _statuses(name: str, value: object) -> frozenset[str]:
    if not isinstance(value, list) or not value or not all(isinstance(s, str) for s in value):
        raise ProviderError(
            f"{name} accepted_tcb_statuses must be a non-empty list of TCB statuses, got {value!r}",
            hint=f"the statuses are {', '.join(STATUSES)}",
        )
    unknown = [status for status in value if status not in STATUSES]
    if unknown:
        raise ProviderError(
            f"{name} accepted_tcb_statuses names {', '.join(unknown)}, not an Intel TCB status",
            hint=f"the statuses are {', '.join(STATUSES)}",
        )
    if NEVER_ACCEPTED in value:
        raise ProviderError(
            f"{name} accepted_tcb_statuses may not include {NEVER_ACCEPTED}: a revoked "
            "platform's keys may be in an attacker's hands",
            hint=f"remove {NEVER_ACCEPTED}",
        )
    return frozenset(value)
