"""The auditor's SEV-SNP requirements (the `[sev-snp]` table of `cmcp verify
--platform-policy`) and the two checks that apply them.

    minimum_tcb = { bootloader = 3, tee = 0, snp = 8, microcode = 115 }  # fmc too on Turin
    minimum_firmware = "1.55"          # or "1.55.21": the SEV firmware that produced the report
    minimum_abi = "1.51"               # the guest policy must require at least this ABI
    minimum_guest_svn = 2
    forbidden_policy_flags = ["MIGRATE_MA", "SMT"]
    require_crl = true                 # without AMD's CRL, sev.ask.revocation fails
    id_key_digests = ["<96 hex>", ...] # the ID_KEY_DIGEST must be one of these

The TCB minimum applies to REPORTED_TCB, the TCB the VCEK is derived from (firmware older
than it cannot derive that key, so no older firmware can have signed the report), and to
CURRENT_TCB, the firmware actually running. COMMITTED_TCB only bounds future rollbacks.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from cmcp_cli.attestation.api import ProviderError
from cmcp_cli.attestation.toolkit import (
    CheckFailed,
    CheckSkipped,
    platform_policy_table,
    policy_flag,
)
from cmcp_sev import structures as snp
from cmcp_sev.plugin import PLATFORM_POLICY_KEYS

TABLE: Final = "[sev-snp]"
TCB_COMPONENTS: Final = ("bootloader", "tee", "snp", "microcode", "fmc")
FLAG_NAMES: Final = tuple(snp.POLICY_FLAG_NAMES.values())
_VERSION = re.compile(r"(\d{1,3})\.(\d{1,3})(?:\.(\d{1,3}))?")
_NOT_SET: Final = "No {what} in the auditor's platform policy ({table} {keys} of --platform-policy)"


@dataclass(frozen=True, slots=True)
class Requirements:
    """The validated `[sev-snp]` table; None where the auditor set nothing."""

    minimum_tcb: Mapping[str, int] | None = None
    minimum_firmware: tuple[int, int, int] | None = None
    minimum_abi: tuple[int, int] | None = None
    minimum_guest_svn: int | None = None
    forbidden_policy_flags: tuple[str, ...] = ()
    # The digests of the keys whose signed ID block the firmware checked at launch: pinning
    # one accepts every launch digest that key's owner signs (a paravisor vendor's builds).
    id_key_digests: tuple[bytes, ...] = ()
    require_crl: bool = False
    table: str = TABLE  # the platform-policy table the auditor wrote them in

    @classmethod
    def parse(cls, table: Mapping[str, Any], *, name: str = TABLE) -> Requirements:
        """`ProviderError` names the first unusable key of the table `name` (another
        provider's table, such as "[azure-sev-snp]", when it holds these keys too)."""
        table = platform_policy_table(
            table, name=name, accepted=PLATFORM_POLICY_KEYS, provider="SEV-SNP"
        )
        require_crl = policy_flag(table, name, "require_crl")
        firmware = table.get("minimum_firmware")
        abi = table.get("minimum_abi")
        return cls(
            minimum_tcb=_tcb(name, table["minimum_tcb"]) if "minimum_tcb" in table else None,
            minimum_firmware=(
                None if firmware is None else _version(name, "minimum_firmware", firmware)
            ),
            minimum_abi=(
                None if abi is None else _version(name, "minimum_abi", abi, build=False)[:2]
            ),
            minimum_guest_svn=(
                _integer(name, "minimum_guest_svn", table["minimum_guest_svn"], 0xFFFF_FFFF)
                if "minimum_guest_svn" in table
                else None
            ),
            forbidden_policy_flags=_flags(name, table.get("forbidden_policy_flags", [])),
            id_key_digests=(
                _digests(name, table["id_key_digests"]) if "id_key_digests" in table else ()
            ),
            require_crl=require_crl,
            table=name,
        )


def _integer(name: str, key: str, value: object, largest: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= largest:
        raise ProviderError(
            f"{name} {key} must be an integer from 0 to {largest}, got {value!r}",
            hint=f"write {key} = <integer>, unquoted",
        )
    return value


def _tcb(name: str, value: object) -> Mapping[str, int]:
    if not isinstance(value, Mapping) or not value:
        raise ProviderError(
            f"{name} minimum_tcb must be a table of security patch levels, got {value!r}",
            hint="for example minimum_tcb = { bootloader = 3, tee = 0, snp = 8, microcode = 115 }",
        )
    unknown = sorted(set(value) - set(TCB_COMPONENTS))
    if unknown:
        raise ProviderError(
            f"{name} minimum_tcb names {', '.join(unknown)}, not a TCB component",
            hint=f"the components are {', '.join(TCB_COMPONENTS)} (fmc on Turin only)",
        )
    return {
        part: _integer(name, f"minimum_tcb.{part}", level, 0xFF) for part, level in value.items()
    }


def _version(name: str, key: str, value: object, *, build: bool = True) -> tuple[int, int, int]:
    match = _VERSION.fullmatch(value) if isinstance(value, str) else None
    if match is None or (match[3] is not None and not build):
        shape = '"major.minor" or "major.minor.build"' if build else '"major.minor"'
        raise ProviderError(
            f"{name} {key} must be a string {shape}, got {value!r}",
            hint=f'for example {key} = "1.55"',
        )
    major, minor, patch = (int(part) if part else 0 for part in match.groups())
    if max(major, minor, patch) > 0xFF:
        raise ProviderError(
            f"{name} {key} {value!r} has a part above 255",
            hint="each part of an AMD firmware version is one byte (0 to 255)",
        )
    return major, minor, patch


def _flags(name: str, value: object) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise ProviderError(
            f"{name} forbidden_policy_flags must be a list of names, got {value!r}",
            hint='for example forbidden_policy_flags = ["SMT"]; the flags are '
            + ", ".join(FLAG_NAMES),
        )
    unknown = [item for item in value if item not in FLAG_NAMES]
    if unknown:
        raise ProviderError(
            f"{name} forbidden_policy_flags names {', '.join(unknown)}, not a guest policy flag",
            hint=f"the flags are {', '.join(FLAG_NAMES)}",
        )
    return tuple(value)


def _digests(table: str, value: object) -> tuple[bytes, ...]:
    if not isinstance(value, list) or not all(
        isinstance(v, str) and re.fullmatch(r"[0-9a-f]{96}", v) for v in value
    ):
        raise ProviderError(
            f"{table} id_key_digests must be a list of SHA-384 digests, 96 lowercase hex "
            f"digits each, got {value!r}",
            hint="copy ID_KEY_DIGEST from `cmcp measure` --json, or from a report you trust",
        )
    digests = tuple(bytes.fromhex(v) for v in value)
    if not digests:
        raise ProviderError(
            f"{table} id_key_digests is empty: no key would be pinned, and the check would "
            "judge nothing",
            hint="list the digest of each key that signs your ID blocks, or remove the key",
        )
    if any(not any(d) for d in digests):
        raise ProviderError(
            f"{table} id_key_digests holds the all-zero digest, which a report carries when "
            "no ID block was checked at launch: it would pin nothing",
            hint="pin the digest of the key that signs your ID blocks",
        )
    return digests


def _sentence(clauses: list[str]) -> str:
    text = "; ".join(clauses)
    return text[:1].upper() + text[1:] + "."


def _below(parts: snp.TcbParts, minimum: Mapping[str, int]) -> list[str]:
    return [
        f"{name} {getattr(parts, name)} < {level}"
        for name, level in minimum.items()
        if getattr(parts, name) < level
    ]


def check_platform(report: snp.Report, product: snp.Product, wanted: Requirements) -> str:
    """`sev.tcb.minimum`: the platform's TCB and firmware are at least the auditor's minimum."""
    if wanted.minimum_tcb is None and wanted.minimum_firmware is None:
        raise CheckSkipped(
            _NOT_SET.format(
                table=wanted.table,
                what="minimum TCB or firmware",
                keys="minimum_tcb, minimum_firmware",
            )
            + ": the platform's patch level was not appraised."
        )
    met: list[str] = []
    if wanted.minimum_tcb is not None:
        if "fmc" in wanted.minimum_tcb and product is not snp.Product.TURIN:
            raise CheckFailed(
                f"The policy's minimum_tcb sets fmc, a Turin component, but the report is from "
                f"a {product.value}: the minimum cannot be judged."
            )
        try:
            reported = report.reported_tcb.decode(product)
            current = report.current_tcb.decode(product)
        except snp.ReportFormatError as error:
            raise CheckFailed(f"The TCB cannot be compared: {error}.") from None
        shortfalls = [
            f"{label} {', '.join(low)}"
            for label, parts in (("REPORTED_TCB", reported), ("CURRENT_TCB", current))
            if (low := _below(parts, wanted.minimum_tcb))
        ]
        if shortfalls:
            raise CheckFailed(
                f"The platform is below the minimum TCB: {'; '.join(shortfalls)}. The host's "
                "firmware or microcode must be updated (and REPORTED_TCB raised) first."
            )
        minimum = " ".join(f"{name}>={level}" for name, level in wanted.minimum_tcb.items())
        met.append(
            f"REPORTED_TCB {reported.describe()} and CURRENT_TCB {current.describe()} meet "
            f"the minimum {minimum}"
        )
    if wanted.minimum_firmware is not None:
        running = report.current_version
        if (running.major, running.minor, running.build) < wanted.minimum_firmware:
            raise CheckFailed(
                f"The SEV firmware {running} is older than the minimum "
                f"{'.'.join(map(str, wanted.minimum_firmware))}."
            )
        met.append(f"firmware {running} >= {'.'.join(map(str, wanted.minimum_firmware))}")
    return _sentence(met)


def check_guest(report: snp.Report, wanted: Requirements) -> str:
    """`sev.policy.guest`: the guest was launched under the policy the auditor requires."""
    if (
        wanted.minimum_abi is None
        and wanted.minimum_guest_svn is None
        and not wanted.forbidden_policy_flags
        and not wanted.id_key_digests
    ):
        raise CheckSkipped(
            _NOT_SET.format(
                table=wanted.table,
                what="guest requirement",
                keys="minimum_abi, minimum_guest_svn, forbidden_policy_flags, id_key_digests",
            )
            + ": only the debug bit of the guest policy was judged."
        )
    problems: list[str] = []
    met: list[str] = []
    if wanted.minimum_abi is not None:
        need = f"{wanted.minimum_abi[0]}.{wanted.minimum_abi[1]}"
        if report.abi < wanted.minimum_abi:
            problems.append(
                f"the guest policy requires firmware ABI {report.abi[0]}.{report.abi[1]}, "
                f"below the minimum {need} (the guest could have launched on older firmware)"
            )
        else:
            met.append(f"the guest policy requires ABI >= {report.abi[0]}.{report.abi[1]}")
    if wanted.minimum_guest_svn is not None:
        if report.guest_svn < wanted.minimum_guest_svn:
            problems.append(
                f"GUEST_SVN {report.guest_svn} is below the minimum {wanted.minimum_guest_svn}"
            )
        else:
            met.append(f"GUEST_SVN {report.guest_svn} >= {wanted.minimum_guest_svn}")
    if wanted.forbidden_policy_flags:
        present = [flag for flag in wanted.forbidden_policy_flags if flag in report.policy_flags]
        if present:
            problems.append(f"the guest policy sets the forbidden {', '.join(present)}")
        else:
            met.append(f"none of {', '.join(wanted.forbidden_policy_flags)} is set")
    if wanted.id_key_digests:
        if report.id_key_digest in wanted.id_key_digests:
            met.append(f"ID_KEY_DIGEST {report.id_key_digest[:8].hex()}… is pinned")
        else:
            problems.append(
                f"ID_KEY_DIGEST {report.id_key_digest[:8].hex()}… is not one of the "
                f"{len(wanted.id_key_digests)} pinned (the launch's ID block was signed by "
                "another key, or none was checked)"
            )
    if problems:
        raise CheckFailed(f"The guest does not meet the auditor's policy: {'; '.join(problems)}.")
    return _sentence(met)
