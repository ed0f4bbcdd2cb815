"""Devices attested beside the CPU platform, with the test tree's device provider (a real
plugin in a temporary site, tests/device_plugin): chosen and prepared at start under
`attestation.gpu_required`, collected over every session's binding and again at
re-attestation, recorded by digest in the log, carried in `gateway.attestation.devices`,
and judged by `cmcp verify` (each device by a device provider only, checks named
`devices[i].*`) and by the log (`log: issuer`)."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator, Mapping
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from cmcp_cli.attestation import software
from cmcp_cli.attestation.api import CheckStatus, GatewayFacts, ProviderSpec
from cmcp_cli.attestation.manager import ProviderRegistry, load_providers
from cmcp_cli.audit.entry import open_line
from cmcp_cli.audit.matching import match_claim
from cmcp_cli.audit.processes import lock_store, record_start
from cmcp_cli.audit.replay import replay_log
from cmcp_cli.audit.session_record import SessionPolicy
from cmcp_cli.audit.store import AuditStore, iter_lines
from cmcp_cli.catalog.model import load_catalog
from cmcp_cli.claim.keys import ClaimKey
from cmcp_cli.claim.model import sign_claim
from cmcp_cli.config import CmcpConfig
from cmcp_cli.errors import ExitCode
from cmcp_cli.evidence.attesting import Attestor, DeviceAttestor
from cmcp_cli.evidence.freshness import renew_evidence
from cmcp_cli.evidence.recovery import recover_sessions
from cmcp_cli.evidence.session import EvidenceSession
from cmcp_cli.gateway.preflight.devices import DeviceStartupError, choose_devices
from cmcp_cli.policy.bundle import read_bundle
from cmcp_cli.policy.engine import compile_bundle
from cmcp_cli.testing.provider_contract import ProviderContract
from cmcp_cli.verify.claim import VerifyOptions, VerifyReport, verify_document
from tests.claim_variants import fix_binding, resigned, variants
from tests.device_support import install_device_plugin, on_path, registry_with, spec
from tests.sessions import RecordedSession, record_session
from tests.support import QUICKSTART

FACTS = GatewayFacts("sha256:" + "b0" * 32, "sha256:" + "ca" * 32, "sha256:" + "9a" * 32)


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProviderRegistry]:
    site = install_device_plugin(tmp_path_factory.mktemp("site"))
    with on_path(site):
        yield registry_with(site)


def _config(**attestation: Any) -> CmcpConfig:
    return CmcpConfig.model_validate(
        {
            "policy_bundle_path": str(QUICKSTART / "policies"),
            "catalog_path": str(QUICKSTART / "catalog.json"),
            "attestation": attestation,
        }
    )


def _gpus(count: int) -> dict[str, Any]:
    return {"providers": {"testgpu": {"devices": count}}}


# -- start: which device providers attest ----------------------------------------------


def test_gpu_required_refuses_a_host_without_a_device_provider() -> None:
    with pytest.raises(DeviceStartupError) as refused:
        choose_devices(_config(gpu_required=True), load_providers(plugins=()), FACTS)
    assert "gpu_required is true" in refused.value.message
    assert "no device provider is installed" in refused.value.message
    assert refused.value.hint is not None and "cmcp-gpucc[collector]" in refused.value.hint


def test_gpu_required_refuses_devices_that_are_not_detected(registry: ProviderRegistry) -> None:
    with pytest.raises(DeviceStartupError) as refused:
        choose_devices(_config(gpu_required=True, **_gpus(0)), registry, FACTS)
    assert "testgpu: not detected, no test GPU here" in refused.value.message


def test_without_gpu_required_an_undetected_device_is_reported_not_attested(
    registry: ProviderRegistry,
) -> None:
    choice = choose_devices(_config(**_gpus(0)), registry, FACTS)
    assert choice.attestors == ()
    assert choice.left_out == (
        "testgpu: not detected, no test GPU here (attestation.providers.testgpu.devices is 0)",
    )


@pytest.mark.parametrize("required", [True, False])
def test_a_detected_device_that_cannot_be_prepared_refuses_the_start(
    registry: ProviderRegistry, required: bool
) -> None:
    settings = {"providers": {"testgpu": {"devices": 1, "fail_prepare": "bad RIM file"}}}
    with pytest.raises(DeviceStartupError) as refused:
        choose_devices(_config(gpu_required=required, **settings), registry, FACTS)
    assert "detected 1 test GPU(s)" in refused.value.message
    assert "the test GPU refuses: bad RIM file" in refused.value.message
    assert refused.value.hint == "remove attestation.providers.testgpu.fail_prepare"


def test_detected_devices_are_prepared(registry: ProviderRegistry) -> None:
    choice = choose_devices(_config(gpu_required=True, **_gpus(2)), registry, FACTS)
    (attestor,) = choice.attestors
    assert attestor.spec.name == "testgpu" and attestor.settings == {"devices": 2}
    attestor.collector.close()


def test_gpu_cc_as_the_platform_provider_is_refused_with_the_fix() -> None:
    with pytest.raises(ValidationError) as refused:
        _config(provider="gpu-cc")
    text = str(refused.value)
    assert "beside the CPU platform, not instead of it" in text
    assert "attestation.gpu_required: true" in text


# -- a session's claim with devices ----------------------------------------------------


def _attestor(registry: ProviderRegistry, cpu: str, gpus: int, **more: Any) -> Attestor:
    if cpu == "software":
        base = Attestor.load(software.SPEC, "0.1.0")
    else:
        base = Attestor.load(spec(registry, "testtee"), "1.0.0", {"devices": 1})
    device = DeviceAttestor.load(spec(registry, "testgpu"), "1.0.0", {"devices": gpus, **more})
    return replace(base, devices=(device,))


def _recorded(folder: Path, attestor: Attestor, **more: Any) -> RecordedSession:
    return record_session(folder, attestor=attestor, key=ClaimKey.generate(), **more)


def _verify(
    recorded: RecordedSession, claim: Any, registry: ProviderRegistry, *, log: bool = True
) -> VerifyReport:
    options = VerifyOptions(
        audit_log=recorded.db if log else None,
        allow_software=True,
        at=datetime.fromtimestamp(recorded.claim["trace"]["iat"] + 60, UTC),
    )
    return verify_document(claim, options, registry)


def _statuses(report: VerifyReport) -> dict[str, CheckStatus]:
    return {check.name: check.status for check in report.checks}


def _failed(report: VerifyReport) -> set[str]:
    return {c.name for c in report.checks if c.status is CheckStatus.FAIL}


@pytest.fixture(scope="module")
def software_session(
    registry: ProviderRegistry, tmp_path_factory: pytest.TempPathFactory
) -> RecordedSession:
    return _recorded(tmp_path_factory.mktemp("software"), _attestor(registry, "software", 2))


@pytest.fixture(scope="module")
def tee_session(
    registry: ProviderRegistry, tmp_path_factory: pytest.TempPathFactory
) -> RecordedSession:
    return _recorded(tmp_path_factory.mktemp("tee"), _attestor(registry, "tee", 1))


def test_the_claim_carries_each_device_under_the_cpu_binding(
    software_session: RecordedSession, registry: ProviderRegistry
) -> None:
    attestation = software_session.claim["gateway"]["attestation"]
    devices = attestation["devices"]
    assert [d["device"] for d in devices] == ["GPU 0 (Test GPU)", "GPU 1 (Test GPU)"]
    assert {d["provider"] for d in devices} == {"testgpu"}
    assert {d["evidence"]["nonce"] for d in devices} == {attestation["binding"]}
    assert software_session.claim["trace"]["runtime"]["platform"] == "software-only"
    report = _verify(software_session, software_session.claim, registry)
    statuses = _statuses(report)
    for index in (0, 1):
        for check in ("format", "signature", "nonce"):
            assert statuses[f"devices[{index}].testgpu.{check}"] is CheckStatus.PASS
    assert statuses["log: issuer"] is CheckStatus.PASS
    # the CPU is software: the claim is accepted only as software mode
    assert report.exit_code is ExitCode.OK and not report.hardware_attested


def test_hardware_attested_only_when_the_cpu_and_every_device_are(
    tee_session: RecordedSession, software_session: RecordedSession, registry: ProviderRegistry
) -> None:
    report = _verify(tee_session, tee_session.claim, registry)
    assert report.exit_code is ExitCode.OK and report.hardware_attested, report.to_json()
    # a device whose evidence no verifier here judges leaves the claim not verifiable,
    # even when everything else is hardware-attested, or software mode is accepted
    without = ProviderRegistry(
        providers={k: v for k, v in registry.providers.items() if k != "testgpu"}
    )
    for session in (tee_session, software_session):
        report = _verify(session, session.claim, without, log=False)
        assert report.exit_code is ExitCode.NOT_VERIFIABLE and not report.hardware_attested
        assert _statuses(report)["devices[0].evidence"] is CheckStatus.SKIP
        assert "devices[0], devices[1]" in report.verdict or session is tee_session


def _forged(recorded: RecordedSession, change: Any) -> dict[str, Any]:
    """The claim with `change` applied to its attestation, signed by a forger's key that it
    names, its binding recomputed for that key (so the evidence's nonces fail as well)."""
    forger = ClaimKey.generate()
    claim = copy.deepcopy(recorded.claim)
    claim.pop("signature")
    change(claim["gateway"]["attestation"])
    claim["trace"]["cnf"]["jwk"] = dict(forger.public_jwk)
    fix_binding(claim, software=False)
    return sign_claim(claim, forger)


def test_a_platform_providers_evidence_among_the_devices_fails(
    tee_session: RecordedSession, registry: ProviderRegistry
) -> None:
    def cpu_as_device(attestation: dict[str, Any]) -> None:
        item = attestation["devices"][0]
        item |= {"provider": "testtee", "evidence_type": "test-tee-v1"}
        item["evidence"] = attestation["evidence"]

    report = _verify(tee_session, _forged(tee_session, cpu_as_device), registry, log=False)
    (check,) = [c for c in report.checks if c.name == "devices[0].evidence"]
    assert check.status is CheckStatus.FAIL and "testtee platform provider" in check.reason
    assert not report.hardware_attested


def test_a_device_providers_evidence_as_the_cpus_fails(
    tee_session: RecordedSession, registry: ProviderRegistry
) -> None:
    def device_as_cpu(attestation: dict[str, Any]) -> None:
        item = attestation["devices"][0]
        attestation |= {"provider": "testgpu", "evidence_type": "test-gpu-v1"}
        attestation["evidence"] = item["evidence"]

    report = _verify(tee_session, _forged(tee_session, device_as_cpu), registry, log=False)
    (check,) = [c for c in report.checks if c.name == "evidence"]
    assert check.status is CheckStatus.FAIL and "testgpu device provider" in check.reason


@pytest.mark.parametrize(
    ("devices", "problem"),
    [
        ([], "is not a non-empty list"),
        ({"device": "GPU 0"}, "is not a non-empty list"),
        ([{"device": "GPU 0"}], "devices[0] needs exactly provider"),
        (
            [
                {
                    "provider": "testgpu",
                    "provider_version": "1",
                    "evidence_type": "test-gpu-v1",
                    "device": "",
                    "evidence": {},
                }
            ],
            "as non-empty strings",
        ),
    ],
)
def test_a_malformed_devices_member_fails_format(
    tee_session: RecordedSession, registry: ProviderRegistry, devices: Any, problem: str
) -> None:
    def set_devices(attestation: dict[str, Any]) -> None:
        attestation["devices"] = devices

    report = _verify(tee_session, _forged(tee_session, set_devices), registry, log=False)
    (check,) = [c for c in report.checks if c.name == "format"]
    assert check.status is CheckStatus.FAIL and problem in check.reason, check.reason


def test_every_change_to_the_devices_resigned_by_the_gateway_key_fails(
    tmp_path: Path, registry: ProviderRegistry
) -> None:
    """Each leaf of each device item changed (and items added, removed, emptied), the claim
    re-signed by the gateway's own key: verify with the log fails it under `log: issuer`,
    and replay-audit's match names the same; a change inside the evidence fails the
    device's own checks without the log as well."""
    key = ClaimKey.generate()
    recorded = record_session(tmp_path, attestor=_attestor(registry, "tee", 2), key=key)
    replay = replay_log(recorded.db)[recorded.session_id]
    found = [v for v in variants(recorded.claim) if v.path.startswith("gateway.attestation.dev")]
    assert len(found) > 40
    missed = []
    for variant in found:
        claim = resigned(recorded.claim, variant, key, forger=False, software=False)
        report = _verify(recorded, claim, registry)
        if report.exit_code is not ExitCode.FAILED or variant.caught_by not in _failed(report):
            missed.append((variant.label, variant.caught_by, sorted(_failed(report))))
        match = match_claim(replay, claim)
        names = {check.name for check in match.checks if check.mismatches}
        if variant.caught_by != "format" and "log: issuer" not in names:
            missed.append((variant.label, "replay", sorted(names)))
        if ".evidence." in variant.path:
            alone = _verify(recorded, claim, registry, log=False)
            if not any(name.startswith("devices[") for name in _failed(alone)):
                missed.append((variant.label, "device checks", sorted(_failed(alone))))
    assert not missed, "\n".join(map(str, [f"{len(missed)} of {len(found)}:", *missed]))


def test_a_claim_without_the_devices_its_log_records_fails_the_issuer_check(
    tee_session: RecordedSession, registry: ProviderRegistry
) -> None:
    replay = replay_log(tee_session.db)[tee_session.session_id]
    claim = copy.deepcopy(tee_session.claim)
    del claim["gateway"]["attestation"]["devices"]
    match = match_claim(replay, claim)
    (issuer,) = [check for check in match.checks if check.name == "log: issuer"]
    assert "gateway.attestation.devices" in issuer.mismatches[0].message
    assert "the log gives 1" in issuer.mismatches[0].message


# -- re-attestation, claims per call ---------------------------------------------------


def test_a_device_lost_at_re_attestation_fails_the_session_closed_under_warn_only(
    tmp_path: Path, registry: ProviderRegistry
) -> None:
    marker = tmp_path / "unplugged"
    attestor = _attestor(registry, "software", 1, fail_marker=str(marker))

    def unplug(session: EvidenceSession) -> None:
        marker.touch()
        renewal = renew_evidence(session, attestor, policy="warn_only")
        assert not renewal.fresh and renewal.policy == "fail_closed"
        assert renewal.reason is not None and "fell off the bus" in renewal.reason

    recorded = record_session(tmp_path, attestor=attestor, during=unplug)
    (entry,) = _entries_of(recorded, "attestation")
    assert entry["status"] == "stale" and entry["policy"] == "fail_closed"
    assert "devices" not in entry  # nothing could be collected


def test_a_changed_set_of_devices_makes_the_evidence_stale(
    tmp_path: Path, registry: ProviderRegistry
) -> None:
    opened = _attestor(registry, "software", 2)
    fewer = _attestor(registry, "software", 1)

    def lose_one(session: EvidenceSession) -> None:
        renewal = renew_evidence(session, fewer, policy="warn_only")
        assert not renewal.fresh and renewal.policy == "fail_closed"
        assert renewal.reason == (
            "the attested devices changed from testgpu GPU 0 (Test GPU), testgpu GPU 1 (Test "
            "GPU) to testgpu GPU 0 (Test GPU)"
        )

    recorded = record_session(tmp_path, attestor=opened, during=lose_one)
    # the claim carries the newest evidence the log records: one device, and it matches
    assert len(recorded.claim["gateway"]["attestation"]["devices"]) == 1
    report = _verify(recorded, recorded.claim, registry)
    assert _statuses(report)["log: issuer"] is CheckStatus.PASS


def test_a_fresh_re_attestation_carries_new_device_evidence(
    tmp_path: Path, registry: ProviderRegistry
) -> None:
    attestor = _attestor(registry, "tee", 1)
    claims: list[dict[str, Any]] = []

    def renew_and_issue(session: EvidenceSession) -> None:
        assert renew_evidence(session, attestor, policy="fail_closed").fresh
        claims.append(session.issue_claim().sign().claim)

    recorded = record_session(tmp_path, attestor=attestor, during=renew_and_issue)
    (entry,) = _entries_of(recorded, "attestation")
    assert [d["device"] for d in entry["devices"]] == ["GPU 0 (Test GPU)"]
    for claim in (claims[0], recorded.claim):  # per call and at the end
        assert claim["gateway"]["attestation"]["devices"][0]["device"] == "GPU 0 (Test GPU)"
        report = _verify(recorded, claim, registry)
        assert report.exit_code is ExitCode.OK and report.hardware_attested, report.to_json()


def _entries_of(recorded: RecordedSession, kind: str) -> list[dict[str, Any]]:
    fields = [open_line(line).fields for line in iter_lines(recorded.db)]
    return [dict(f) for f in fields if f["type"] == kind]


class TestTheTestGpuPassesTheProviderContract(ProviderContract):
    """The contract suite on a device provider: its collector is a `DeviceCollector`, its
    platform names its devices (the claim's runtime.platform stays the CPU's), and every
    single-leaf change of a device's evidence fails."""

    @pytest.fixture
    def provider_spec(self, registry: ProviderRegistry) -> ProviderSpec:
        return spec(registry, "testgpu")

    @pytest.fixture
    def provider_settings(self) -> Mapping[str, Any]:
        return {"devices": 2}


def test_a_recovery_claim_carries_the_recovering_process_devices(
    tmp_path: Path, registry: ProviderRegistry
) -> None:
    """A session its process left open is closed by the next process, whose own key and
    devices attest the recovery claim; the claim and the log agree on them."""
    attestor = _attestor(registry, "tee", 1)
    bundle = compile_bundle(read_bundle(QUICKSTART / "policies"))
    catalog = load_catalog(QUICKSTART / "catalog.json")
    policy = SessionPolicy(
        bundle_hash=bundle.hash,
        policy_version="1.0.0",
        catalog_hash=catalog.hash,
        enforcement_mode="enforcing",
        data_class_order=("public", "internal"),
    )
    db, claims = tmp_path / "audit.db", tmp_path / "claims"
    claims.mkdir()
    with AuditStore(db) as store:
        EvidenceSession(
            store=store, session_id="left", policy=policy, attestor=attestor, process_id="old"
        )
    lock = lock_store(db, "new")
    try:
        record_start(db, lock.holder)
        with AuditStore(db) as store:
            report = recover_sessions(store, attestor=attestor, claims_dir=claims, process_id="new")
    finally:
        lock.release()
    (recovered,) = report.recovered
    claim = json.loads(recovered.claim.read_text())
    assert claim["gateway"]["recovery"] == {"interrupted_process": "old", "process": "new"}
    (device,) = claim["gateway"]["attestation"]["devices"]
    assert device["evidence"]["nonce"] == claim["gateway"]["attestation"]["binding"]
    (end,) = [
        open_line(line).fields
        for line in iter_lines(db)
        if open_line(line).fields["type"] == "session_end"
    ]
    assert end["recovered_by"]["devices"][0]["device"] == "GPU 0 (Test GPU)"
    options = VerifyOptions(audit_log=db, at=datetime.fromtimestamp(claim["trace"]["iat"], UTC))
    verified = verify_document(claim, options, registry)
    assert verified.exit_code is ExitCode.OK and verified.hardware_attested, verified.to_json()
    assert _statuses(verified)["devices[0].testgpu.nonce"] is CheckStatus.PASS
