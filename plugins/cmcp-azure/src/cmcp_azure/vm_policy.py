"""The auditor's Azure requirements: the keys every Azure table of `cmcp verify
--platform-policy` takes besides the hardware's own (`[azure-sev-snp]`, `[azure-tdx]`):

    require_secure_boot = true   # default true: vm-configuration secure-boot must be true
    require_tpm_enabled = true   # default true: vm-configuration tpm-enabled must be true
    allow_console = false        # default true: Azure's images enable the serial console
    pcrs = { "7" = "<64 hex>" }  # SHA-256 PCR values the vTPM quote must hold

The rest of the table goes to the hardware's verifier (cmcp-sev's or cmcp-tdx's).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from cmcp_azure.plugin import AZURE_POLICY_KEYS
from cmcp_azure.runtime_data import VmConfiguration
from cmcp_cli.attestation.api import ProviderError
from cmcp_cli.attestation.toolkit import CheckFailed, platform_policy_table, policy_flag
from cmcp_tpm import pcr

_INDEX = re.compile(r"0|[1-9][0-9]?")
_VALUE = re.compile(r"[0-9a-fA-F]{64}")
_PCRS_HINT: Final = 'for example pcrs = { "7" = "<the 64 hex digits of SHA-256 PCR 7>" }'


@dataclass(frozen=True, slots=True)
class VmPolicy:
    require_secure_boot: bool = True
    require_tpm_enabled: bool = True
    allow_console: bool = True
    pcrs: Mapping[int, bytes] = field(default_factory=dict)

    @classmethod
    def parse(
        cls, table: Mapping[str, Any], *, name: str, hardware_keys: tuple[str, ...]
    ) -> tuple[VmPolicy, dict[str, Any]]:
        """The Azure keys of the table `name` (such as "[azure-sev-snp]"), and the rest,
        for the hardware's verifier. `ProviderError` names the first unusable key."""
        table = platform_policy_table(
            table, name=name, accepted=hardware_keys + AZURE_POLICY_KEYS, provider=name.strip("[]")
        )
        policy = cls(
            require_secure_boot=policy_flag(table, name, "require_secure_boot", default=True),
            require_tpm_enabled=policy_flag(table, name, "require_tpm_enabled", default=True),
            allow_console=policy_flag(table, name, "allow_console", default=True),
            pcrs=_pcrs(table["pcrs"], name) if "pcrs" in table else {},
        )
        return policy, {key: value for key, value in table.items() if key in hardware_keys}

    def judge(self, configuration: VmConfiguration) -> str:
        """The passing reason for the runtime data's vm-configuration, else `CheckFailed`."""
        problems = []
        if self.require_secure_boot and configuration.secure_boot is not True:
            problems.append(f"secure-boot is {_said(configuration.secure_boot)}")
        if self.require_tpm_enabled and configuration.tpm_enabled is not True:
            problems.append(f"tpm-enabled is {_said(configuration.tpm_enabled)}")
        if not self.allow_console and configuration.console_enabled is not False:
            problems.append(
                f"console-enabled is {_said(configuration.console_enabled)}: the serial "
                "console lets whoever holds the VM's Azure access log in"
            )
        if problems:
            raise CheckFailed(
                "The VM's configuration does not meet the auditor's platform policy: "
                + "; ".join(problems)
                + "."
            )
        said = ", ".join(
            f"{member} {_said(value)}"
            for member, value in (
                ("secure-boot", configuration.secure_boot),
                ("tpm-enabled", configuration.tpm_enabled),
                ("console-enabled", configuration.console_enabled),
            )
        )
        console = (
            " The serial console is enabled, which the policy allows (allow_console defaults "
            "to true because Azure's images enable it; set it to false to refuse)."
            if configuration.console_enabled is True
            else ""
        )
        return f"The runtime data's vm-configuration says {said}.{console}"


def _said(value: bool | None) -> str:
    return "not stated" if value is None else str(value).lower()


def _pcrs(value: Any, name: str) -> dict[int, bytes]:
    if not isinstance(value, Mapping) or not value:
        raise ProviderError(
            f"{name} pcrs must be a table of PCR index to SHA-256 value, got {value!r}",
            hint=_PCRS_HINT,
        )
    pins: dict[int, bytes] = {}
    for index, digest in value.items():
        if not isinstance(index, str) or not _INDEX.fullmatch(index) or int(index) >= pcr.PCR_COUNT:
            raise ProviderError(
                f"{name} pcrs has key {index!r}, not a PCR index from 0 to {pcr.PCR_COUNT - 1}",
                hint=_PCRS_HINT,
            )
        if not isinstance(digest, str) or not _VALUE.fullmatch(digest):
            raise ProviderError(
                f"{name} pcrs.{index} must be 64 hex digits (a SHA-256 PCR value), got {digest!r}",
                hint=_PCRS_HINT,
            )
        pins[int(index)] = bytes.fromhex(digest)
    return pins
