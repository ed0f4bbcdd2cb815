"""The Azure keys of the auditor's platform policy: parsed strictly (a wrong type is a
`ProviderError` naming the key), the rest handed to the hardware's verifier, and each
requirement failing the VM configuration or PCRs that do not meet it."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from cmcp_azure import hcl
from cmcp_azure.runtime_data import VmConfiguration
from cmcp_azure.snp_verifier import AzureSnpVerifier
from cmcp_azure.tdx_verifier import AzureTdxVerifier
from cmcp_azure.testing.vectors import AzureSet
from cmcp_azure.vm_policy import VmPolicy
from cmcp_cli.attestation.api import CheckStatus, ProviderError
from cmcp_cli.attestation.toolkit import CheckFailed
from cmcp_cli.testing.verdicts import assert_fails, reason, statuses
from cmcp_sev import structures as snp
from cmcp_sev.plugin import PLATFORM_POLICY_KEYS as SEV_KEYS

TABLE = "[azure-sev-snp]"


def parse(table: dict[str, Any]) -> tuple[VmPolicy, dict[str, Any]]:
    return VmPolicy.parse(table, name=TABLE, hardware_keys=SEV_KEYS)


def configuration(**members: bool | None) -> VmConfiguration:
    flags = {"secure_boot": True, "tpm_enabled": True, "console_enabled": False, **members}
    return VmConfiguration(vm_unique_id=None, members={}, **flags)


def test_defaults_require_secure_boot_and_the_tpm_and_allow_the_console() -> None:
    policy, hardware = parse({})
    assert policy == VmPolicy(True, True, True, {})
    assert hardware == {}
    policy.judge(configuration(console_enabled=True))


def test_hardware_keys_go_to_the_hardware_verifier_and_azure_keys_stay() -> None:
    policy, hardware = parse({"minimum_guest_svn": 6, "allow_console": False})
    assert hardware == {"minimum_guest_svn": 6}
    assert not policy.allow_console


@pytest.mark.parametrize(
    ("table", "fragment"),
    [
        ({"require_secure_boot": "yes"}, "require_secure_boot must be true or false"),
        ({"require_tpm_enabled": 1}, "require_tpm_enabled must be true or false"),
        ({"allow_console": None}, "allow_console must be true or false"),
        ({"pcrs": ["7"]}, "pcrs must be a table"),
        ({"pcrs": {}}, "pcrs must be a table"),
        ({"pcrs": {"24": "00" * 32}}, "pcrs has key '24'"),
        ({"pcrs": {"07": "00" * 32}}, "pcrs has key '07'"),
        ({"pcrs": {"7": "00" * 31}}, "pcrs.7 must be 64 hex digits"),
        ({"pcrs": {"7": 7}}, "pcrs.7 must be 64 hex digits"),
        ({"accepted_tcb_statuses": ["UpToDate"]}, "unknown setting(s) accepted_tcb_statuses"),
    ],
)
def test_a_wrong_key_is_refused_naming_it(table: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ProviderError) as caught:
        parse(table)
    assert fragment in str(caught.value)
    assert TABLE in str(caught.value)
    assert caught.value.hint, caught.value.message  # every refusal names its fix


@pytest.mark.parametrize(
    ("policy", "config", "fragment"),
    [
        (VmPolicy(), configuration(secure_boot=False), "secure-boot is false"),
        (VmPolicy(), configuration(secure_boot=None), "secure-boot is not stated"),
        (VmPolicy(), configuration(tpm_enabled=False), "tpm-enabled is false"),
        (VmPolicy(), configuration(tpm_enabled=None), "tpm-enabled is not stated"),
        (VmPolicy(allow_console=False), configuration(console_enabled=True), "console-enabled is true"),
        (VmPolicy(allow_console=False), configuration(console_enabled=None), "console-enabled is not stated"),
    ],
)  # fmt: skip
def test_each_requirement_fails_a_configuration_that_misses_it(
    policy: VmPolicy, config: VmConfiguration, fragment: str
) -> None:
    with pytest.raises(CheckFailed) as caught:
        policy.judge(config)
    assert fragment in str(caught.value)


def test_a_requirement_turned_off_accepts_what_it_would_refuse() -> None:
    off = VmPolicy(require_secure_boot=False, require_tpm_enabled=False)
    off.judge(configuration(secure_boot=False, tpm_enabled=None))


def test_refusing_the_console_fails_the_genuine_sets(
    milan_set: AzureSet, tdx_set: AzureSet
) -> None:
    policy = {"allow_console": False}
    verdict = AzureSnpVerifier().verify(
        milan_set.evidence, milan_set.trusting(platform_policy=policy)
    )
    assert_fails(verdict, "azure.vm_configuration", "console-enabled is true")
    verdict = AzureTdxVerifier().verify(tdx_set.evidence, tdx_set.trusting(platform_policy=policy))
    assert_fails(verdict, "azure.vm_configuration", "console-enabled is true")


def test_pinned_pcrs_pass_when_quoted_and_fail_otherwise(milan_set: AzureSet) -> None:
    pcrs = milan_set.evidence["tpm_quote"]["pcrs"]["sha256"]
    good = {"pcrs": {"0": pcrs["0"], "7": pcrs["7"].upper()}}
    verdict = AzureSnpVerifier().verify(
        milan_set.evidence, milan_set.trusting(platform_policy=good)
    )
    assert statuses(verdict)["azure.pcrs.pinned"] is CheckStatus.PASS
    assert "PCR(s) 0, 7" in reason(verdict, "azure.pcrs.pinned")
    assert verdict.hardware_attested
    wrong = {"pcrs": {"7": "ab" * 32}}
    verdict = AzureSnpVerifier().verify(
        milan_set.evidence, milan_set.trusting(platform_policy=wrong)
    )
    assert_fails(verdict, "azure.pcrs.pinned", "PCR 7 is")


def test_pins_are_not_judged_on_values_the_quote_does_not_cover(milan_set: AzureSet) -> None:
    evidence = json.loads(json.dumps(milan_set.evidence))
    evidence["tpm_quote"]["pcrs"]["sha256"]["7"] = "ab" * 32
    pinned = {"pcrs": {"7": "ab" * 32}}
    verdict = AzureSnpVerifier().verify(evidence, milan_set.trusting(platform_policy=pinned))
    assert_fails(verdict, "azure.quote.pcrs")
    assert statuses(verdict)["azure.pcrs.pinned"] is CheckStatus.SKIP
    assert "azure.quote.pcrs" in reason(verdict, "azure.pcrs.pinned")


def test_the_hardware_keys_reach_the_hardware_verifiers(
    milan_set: AzureSet, tdx_set: AzureSet
) -> None:
    above = {"minimum_guest_svn": 6}  # the Milan set's guest SVN is 5
    verdict = AzureSnpVerifier().verify(
        milan_set.evidence, milan_set.trusting(platform_policy=above)
    )
    assert_fails(verdict, "sev.policy.guest")
    required = {"require_collateral": True}  # the TDX set has no collateral for its FMSPC
    verdict = AzureTdxVerifier().verify(
        tdx_set.evidence, tdx_set.trusting(platform_policy=required)
    )
    assert_fails(verdict, "tdx.tcb.status", "requires it")


def test_the_paravisor_signer_can_be_pinned_by_its_id_key_digest(milan_set: AzureSet) -> None:
    # An Azure launch measurement changes with every paravisor build; the ID key that signs
    # the builds' ID blocks does not, so an auditor may pin that instead.
    raw = base64.b64decode(milan_set.evidence["hcl_report"])
    report = snp.parse_report(hcl.parse(raw).hardware_report)
    assert report.id_key_digest.hex().startswith("03562158")
    pinned = {"id_key_digests": [report.id_key_digest.hex()]}
    verdict = AzureSnpVerifier().verify(
        milan_set.evidence, milan_set.trusting(platform_policy=pinned)
    )
    assert "ID_KEY_DIGEST 03562158" in reason(verdict, "sev.policy.guest")
    assert verdict.hardware_attested
    other = {"id_key_digests": ["5a" * 48]}
    verdict = AzureSnpVerifier().verify(
        milan_set.evidence, milan_set.trusting(platform_policy=other)
    )
    assert_fails(verdict, "sev.policy.guest", "is not one of the 1 pinned")
    assert not verdict.hardware_attested


def test_the_hardware_keys_are_named_in_the_azure_table(
    milan_set: AzureSet, tdx_set: AzureSet
) -> None:
    verdict = AzureSnpVerifier().verify(milan_set.evidence, milan_set.trust)
    assert "([azure-sev-snp] minimum_tcb" in reason(verdict, "sev.tcb.minimum")
    with pytest.raises(ProviderError, match=r"\[azure-sev-snp\] minimum_guest_svn must be"):
        AzureSnpVerifier().verify(
            milan_set.evidence, milan_set.trusting(platform_policy={"minimum_guest_svn": "6"})
        )
    with pytest.raises(ProviderError, match=r"\[azure-tdx\] accepted_tcb_statuses must be"):
        AzureTdxVerifier().verify(
            tdx_set.evidence, tdx_set.trusting(platform_policy={"accepted_tcb_statuses": []})
        )


def test_the_reason_says_what_the_paravisor_stated() -> None:
    said = VmPolicy().judge(configuration(console_enabled=None))
    assert "console-enabled not stated" in said
    assert "serial console is enabled" not in said
    said = VmPolicy().judge(configuration(console_enabled=True))
    assert "serial console is enabled, which the policy allows" in said
