"""The Azure collectors against the paravisor double (a real process in front of swtpm,
speaking the TPM command stream) and the IMDS double (a real HTTP process): the evidence
they collect verifies with the test roots, the binding reaches the report as user data
when it is on and the quote alone binds when it is off, and every way the start must be
refused is refused with the reason."""

from __future__ import annotations

import base64
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from cmcp_azure import hcl, runtime_data
from cmcp_azure.collector import AzureSnpCollector, AzureTdxCollector
from cmcp_azure.snp_verifier import AzureSnpVerifier
from cmcp_azure.tdx_verifier import AzureTdxVerifier
from cmcp_azure.testing.imds import RunningImds
from cmcp_azure.testing.paravisor import RunningParavisor
from cmcp_azure.testing.synthetic import MEASUREMENT, SnpAuthority
from cmcp_cli.attestation.api import (
    CheckStatus,
    Evidence,
    EvidenceVerdict,
    GatewayFacts,
    ProviderError,
    TrustInputs,
)
from cmcp_cli.testing.verdicts import assert_fails, statuses
from cmcp_tpm import structures as tpm
from cmcp_tpm.collector import ak_template
from cmcp_tpm.settings import PERSISTENT_FIRST
from cmcp_tpm.testing import SoftwareTpm
from cmcp_tpm.tpm_access import ESAPI, ESYS_TR, TPM2B_PUBLIC, TPMT_PUBLIC, defined_handles

FACTS = GatewayFacts("sha256:" + "11" * 32, "sha256:" + "22" * 32, "sha256:" + "33" * 32)
BINDING = bytes(range(32))
OTHER_HANDLE = 0x81000004


@pytest.fixture(scope="module")
def snp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningParavisor]:
    """An SNP paravisor whose vTPM has no user-data index: the collector defines it."""
    with RunningParavisor.start(
        tmp_path_factory.mktemp("snp"), "snp", user_data_index=False
    ) as paravisor:
        yield paravisor


@pytest.fixture(scope="module")
def imds(tmp_path_factory: pytest.TempPathFactory, snp: RunningParavisor) -> Iterator[RunningImds]:
    """IMDS answering with the SNP paravisor's VCEK and chain, and TD quotes."""
    folder = tmp_path_factory.mktemp("imds")
    vcek, chain = snp.folder / "vcek.pem", snp.folder / "cert_chain.pem"
    with RunningImds.start(folder, vcek=vcek, cert_chain=chain) as service:
        yield service


@pytest.fixture(scope="module")
def tdx(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningParavisor]:
    with RunningParavisor.start(tmp_path_factory.mktemp("tdx"), "tdx") as paravisor:
        yield paravisor


def collect(collector: AzureSnpCollector | AzureTdxCollector, settings: dict[str, Any]) -> Evidence:
    collector.prepare(FACTS, settings)
    try:
        return collector.collect(BINDING, settings)
    finally:
        collector.close()


def verify_snp(evidence: Evidence, root: Path, binding: bytes = BINDING) -> EvidenceVerdict:
    trust = TrustInputs(binding=binding, at=datetime.now(UTC), trust_roots=(root.read_bytes(),))
    return AzureSnpVerifier().verify(evidence.evidence, trust)


def runtime_of(evidence: Evidence) -> runtime_data.RuntimeData:
    report = hcl.parse(base64.b64decode(evidence.evidence["hcl_report"]))
    return runtime_data.parse(report.runtime_data)


def refusal(call: Any, *fragments: str) -> ProviderError:
    with pytest.raises(ProviderError) as caught:
        call()
    text = f"{caught.value.message} ({caught.value.hint})"
    for fragment in fragments:
        assert fragment in text, text
    return caught.value


def undefine_user_data(tcti: str) -> None:
    esapi = ESAPI(tcti)
    try:
        index = esapi.tr_from_tpmpublic(hcl.USER_DATA_NV_INDEX)
        esapi.nv_undefine_space(index, ESYS_TR.OWNER)
    finally:
        esapi.close()


def test_snp_evidence_carries_the_binding_as_user_data_and_verifies(
    snp: RunningParavisor,
) -> None:
    collector = AzureSnpCollector()
    settings = snp.snp_settings()
    detection = collector.detect(settings)
    assert detection.present and "Azure SEV-SNP CVM" in detection.detail, detection
    evidence = collect(collector, settings)
    assert (evidence.evidence_type, evidence.platform) == ("azure-sev-snp-hcl-v1", "amd-sev-snp")
    assert evidence.measurement == "sha384:" + MEASUREMENT.hex()
    assert sorted(evidence.evidence) == ["cert_chain", "hcl_report", "tpm_quote", "vcek"]
    # the vTPM had no user-data index: the collector defined it, and the report carries it
    assert runtime_of(evidence).user_data == BINDING + bytes(32)
    assert base64.b64decode(evidence.evidence["hcl_report"]) == snp.reports()[-1]
    verdict = verify_snp(evidence, snp.folder / "ark.pem")
    assert verdict.hardware_attested and not verdict.failed, verdict.checks
    assert statuses(verdict)["azure.user_data"] is CheckStatus.PASS
    assert verdict.measurement == evidence.measurement
    # another session's binding: the quote and the user data both say it was not this one
    other = verify_snp(evidence, snp.folder / "ark.pem", binding=bytes(32))
    assert statuses(other)["azure.quote.nonce"] is CheckStatus.FAIL
    assert statuses(other)["azure.user_data"] is CheckStatus.FAIL


def test_without_user_data_the_quote_alone_binds_and_stale_user_data_is_refused(
    snp: RunningParavisor,
) -> None:
    collect(AzureSnpCollector(), snp.snp_settings())  # leaves its binding in NV 0x01400002
    settings = snp.snp_settings(user_data=False)
    refusal(
        lambda: AzureSnpCollector().prepare(FACTS, settings),
        "holds data that the paravisor puts in every report",
        "tpm2_nvundefine 0x01400002",
    )
    undefine_user_data(snp.tcti)
    evidence = collect(AzureSnpCollector(), settings)
    assert runtime_of(evidence).user_data == bytes(64)
    verdict = verify_snp(evidence, snp.folder / "ark.pem")
    assert verdict.hardware_attested and not verdict.failed, verdict.checks
    assert statuses(verdict)["azure.user_data"] is CheckStatus.SKIP
    assert statuses(verdict)["azure.quote.nonce"] is CheckStatus.PASS


def test_the_vcek_and_chain_come_from_imds_once(snp: RunningParavisor, imds: RunningImds) -> None:
    def thim() -> list[dict[str, Any]]:
        return [r for r in imds.requests() if r["path"] == "/metadata/THIM/amd/certification"]

    settings = {"tcti": snp.tcti, "imds_url": imds.url}
    before = len(thim())
    collector = AzureSnpCollector()
    collector.prepare(FACTS, settings)
    try:
        first = collector.collect(BINDING, settings)
        second = collector.collect(bytes(reversed(BINDING)), settings)
    finally:
        collector.close()
    asked = thim()[before:]
    assert len(asked) == 1 and asked[0]["metadata"] == "true"
    assert first.evidence["vcek"] == second.evidence["vcek"]
    assert verify_snp(first, snp.folder / "ark.pem").hardware_attested
    assert verify_snp(second, snp.folder / "ark.pem", bytes(reversed(BINDING))).hardware_attested


def test_an_unanswered_certificate_request_refuses_the_start_naming_amd_kds(
    snp: RunningParavisor, imds: RunningImds
) -> None:
    imds.set_mode("not-found")
    try:
        refusal(
            lambda: AzureSnpCollector().prepare(FACTS, {"tcti": snp.tcti, "imds_url": imds.url}),
            imds.url,
            "404",
            "vcek and cert_chain",
            "AMD KDS serves this VM's VCEK at https://kdsintf.amd.com",
        )
    finally:
        imds.set_mode("succeed")


def test_a_vcek_that_does_not_sign_the_report_refuses_the_start(
    snp: RunningParavisor, tmp_path: Path
) -> None:
    other = SnpAuthority.create().write(tmp_path)
    settings = snp.snp_settings(vcek=str(other.vcek), cert_chain=str(other.chain))
    refusal(
        lambda: AzureSnpCollector().prepare(FACTS, settings),
        "do not verify the paravisor's SNP report",
        "sev.report.signature",
    )
    # the right VCEK under another chain: the chain does not hold
    settings = snp.snp_settings(cert_chain=str(other.chain))
    refusal(lambda: AzureSnpCollector().prepare(FACTS, settings), "sev.vcek.chain")


def test_a_key_other_than_hclakpub_is_refused(snp: RunningParavisor) -> None:
    esapi = ESAPI(snp.tcti)
    try:
        if OTHER_HANDLE not in defined_handles(esapi, PERSISTENT_FIRST):
            key, _, _, _, _ = esapi.create_primary(None, ak_template("rsa"), ESYS_TR.OWNER)
            esapi.evict_control(ESYS_TR.OWNER, key, OTHER_HANDLE)
            esapi.flush_context(key)
    finally:
        esapi.close()
    settings = snp.snp_settings(ak_handle=f"0x{OTHER_HANDLE:08X}")
    refusal(
        lambda: AzureSnpCollector().prepare(FACTS, settings),
        "0x81000004 is not the vTPM's attestation key",
        "HCLAkPub",
    )
    settings = snp.snp_settings(ak_handle="0x81000005")
    refusal(lambda: AzureSnpCollector().prepare(FACTS, settings), "no key is persisted")


def test_a_key_that_is_not_a_restricted_signing_key_is_refused(snp: RunningParavisor) -> None:
    # a signing key that can also sign what the TPM did not make: never an AK
    handle = 0x81000006
    esapi = ESAPI(snp.tcti)
    try:
        if handle not in defined_handles(esapi, PERSISTENT_FIRST):
            attributes = "fixedtpm|fixedparent|sensitivedataorigin|userwithauth|sign"
            public = TPMT_PUBLIC.parse(
                "rsa2048:rsassa-sha256:null", objectAttributes=attributes, nameAlg="sha256"
            )
            key, _, _, _, _ = esapi.create_primary(
                None, TPM2B_PUBLIC(publicArea=public), ESYS_TR.OWNER
            )
            esapi.evict_control(ESYS_TR.OWNER, key, handle)
            esapi.flush_context(key)
    finally:
        esapi.close()
    settings = snp.snp_settings(ak_handle=f"0x{handle:08X}")
    refusal(
        lambda: AzureSnpCollector().prepare(FACTS, settings),
        "cannot be the AK: its attributes are not the paravisor's AK's (restricted not set)",
    )


def test_sessions_collected_at_once_each_carry_their_own_binding(
    snp: RunningParavisor,
) -> None:
    settings = snp.snp_settings()
    collector = AzureSnpCollector()
    collector.prepare(FACTS, settings)
    bindings = [bytes([n]) * 32 for n in range(1, 5)]
    results: dict[bytes, Evidence] = {}

    def one(binding: bytes) -> None:
        results[binding] = collector.collect(binding, settings)

    threads = [threading.Thread(target=one, args=(b,)) for b in bindings]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
    finally:
        collector.close()
    assert sorted(results) == bindings
    for binding, evidence in results.items():
        assert runtime_of(evidence).user_data == binding + bytes(32)
        attest = base64.b64decode(evidence.evidence["tpm_quote"]["attest"])
        assert tpm.parse_attest(attest).extra_data == binding


def test_collect_refuses_changed_settings_and_a_binding_of_another_size(
    snp: RunningParavisor,
) -> None:
    collector = AzureSnpCollector()
    collector.prepare(FACTS, snp.snp_settings())
    try:
        refusal(lambda: collector.collect(BINDING[:16], snp.snp_settings()), "16 bytes, not 32")
        refusal(
            lambda: collector.collect(BINDING, snp.snp_settings(timeout_seconds=3)),
            "changed after the gateway started",
        )
    finally:
        collector.close()


def test_a_paravisor_that_ignores_user_data_refuses_it_but_binds_by_quote(
    tmp_path: Path,
) -> None:
    # this paravisor also says the VM boots without secure boot: the runtime data shipped
    # is the paravisor's, judged by the auditor's vm-configuration policy
    configuration = {"console-enabled": False, "secure-boot": False, "tpm-enabled": True}
    with RunningParavisor.start(
        tmp_path, "snp", ignore_user_data=True, vm_configuration=configuration
    ) as paravisor:
        settings = paravisor.snp_settings(timeout_seconds=0.3)
        refusal(
            lambda: AzureSnpCollector().prepare(FACTS, settings),
            "did not carry the user data written to NV index 0x01400002",
            "user_data = false",
        )
        evidence = collect(AzureSnpCollector(), {**settings, "user_data": False})
    assert runtime_of(evidence).vm_configuration.secure_boot is False
    verdict = verify_snp(evidence, paravisor.folder / "ark.pem")
    assert statuses(verdict)["azure.user_data"] is CheckStatus.SKIP
    assert statuses(verdict)["azure.quote.nonce"] is CheckStatus.PASS
    assert_fails(verdict, "azure.vm_configuration", "secure")
    failed = [name for name, status in statuses(verdict).items() if status is CheckStatus.FAIL]
    assert failed == ["azure.vm_configuration"]


def test_tdx_evidence_has_the_td_quote_of_its_tdreport_and_verifies(
    tdx: RunningParavisor, imds: RunningImds
) -> None:
    settings = {"tcti": tdx.tcti, "imds_url": imds.url}
    collector = AzureTdxCollector()
    assert collector.detect(settings).present
    evidence = collect(collector, settings)
    assert (evidence.evidence_type, evidence.platform) == ("azure-tdx-hcl-v1", "intel-tdx")
    assert sorted(evidence.evidence) == ["hcl_report", "td_quote", "tpm_quote"]
    assert runtime_of(evidence).user_data == BINDING + bytes(32)
    trust = TrustInputs(
        binding=BINDING, at=datetime.now(UTC), trust_roots=(imds.intel_root.read_bytes(),)
    )
    verdict = AzureTdxVerifier().verify(evidence.evidence, trust)
    assert verdict.hardware_attested and not verdict.failed, verdict.checks
    assert statuses(verdict)["azure.td_quote.body"] is CheckStatus.PASS
    assert statuses(verdict)["azure.user_data"] is CheckStatus.PASS
    assert verdict.measurement == evidence.measurement


def test_a_td_quote_of_another_report_refuses_the_start(
    tdx: RunningParavisor, imds: RunningImds
) -> None:
    imds.set_mode("other-report")
    try:
        refusal(
            lambda: AzureTdxCollector().prepare(FACTS, {"tcti": tdx.tcti, "imds_url": imds.url}),
            "is not of the TD report sent",
        )
    finally:
        imds.set_mode("succeed")


def test_each_provider_names_an_azure_cvm_of_the_other_hardware(
    snp: RunningParavisor, tdx: RunningParavisor
) -> None:
    on_snp = AzureTdxCollector().detect({"tcti": snp.tcti})
    assert not on_snp.present and "holds a SNP report, not TDX" in on_snp.detail
    on_tdx = AzureSnpCollector().detect({"tcti": tdx.tcti})
    assert not on_tdx.present and "holds a TDX report, not SNP" in on_tdx.detail
    refusal(
        lambda: AzureSnpCollector().prepare(FACTS, {"tcti": tdx.tcti}),
        "use provider azure-tdx",
    )


def test_a_plain_tpm_is_not_an_azure_cvm() -> None:
    with SoftwareTpm() as plain:
        detection = AzureSnpCollector().detect({"tcti": plain.tcti})
        assert not detection.present
        assert "not an Azure CVM" in detection.detail
        assert "NV index 0x01400001" in detection.detail
        refusal(
            lambda: AzureTdxCollector().prepare(FACTS, {"tcti": plain.tcti}),
            "not an Azure CVM",
            "provider tpm",
        )


def test_no_vtpm_device_is_not_an_azure_cvm(tmp_path: Path) -> None:
    detection = AzureSnpCollector().detect({"tcti": f"device:{tmp_path / 'tpmrm0'}"})
    assert not detection.present and "no vTPM device at" in detection.detail
    unusable = AzureTdxCollector().detect({"tcti": 7})
    assert not unusable.present and "tcti" in unusable.detail
