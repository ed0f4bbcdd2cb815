"""The gateway's own appraisal over a CPU platform and devices beside it, with the test
tree's real plugin (`testtee`, `testgpu`; tests/device_plugin): each device's evidence is
judged by its device provider's verifier with that provider's own platform-policy table
and never the CPU's roots or pins, its checks named `devices[i].<check>` as `cmcp verify`
names them; a device that fails makes the whole appraisal `contraindicated`; a table its
verifier refuses opens no session."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from cmcp_cli.attestation.api import CheckStatus
from cmcp_cli.attestation.manager import ProviderRegistry
from cmcp_cli.audit.entry import open_line
from cmcp_cli.audit.store import iter_lines
from cmcp_cli.claim.keys import ClaimKey
from cmcp_cli.evidence.appraising import AppraisalInputs
from cmcp_cli.evidence.attesting import AttestationUnavailableError, Attestor, DeviceAttestor
from cmcp_cli.verify.claim import VerifyOptions, verify_document
from tests.device_plugin.cmcp_testgpu import TEE_MEASUREMENT
from tests.device_support import install_device_plugin, on_path, registry_with, spec
from tests.sessions import RecordedSession, record_session


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProviderRegistry]:
    site = install_device_plugin(tmp_path_factory.mktemp("site"))
    with on_path(site):
        yield registry_with(site)


def _attestor(registry: ProviderRegistry, inputs: AppraisalInputs, **gpu: Any) -> Attestor:
    cpu = Attestor.load(spec(registry, "testtee"), "1.0.0", {"devices": 1})
    device = DeviceAttestor.load(spec(registry, "testgpu"), "1.0.0", {"devices": 2, **gpu})
    return replace(cpu, devices=(device,), pins=(TEE_MEASUREMENT,), appraisal=inputs)


def _recorded(folder: Path, attestor: Attestor) -> RecordedSession:
    return record_session(
        folder, attestor=attestor, key=ClaimKey.generate(), start=datetime.now(UTC)
    )


def _start(recorded: RecordedSession) -> dict[str, Any]:
    (start,) = [
        dict(fields)
        for fields in (open_line(line).fields for line in iter_lines(recorded.db))
        if fields["type"] == "session_start"
    ]
    return start


def test_a_pinned_platform_and_its_devices_are_affirming(
    tmp_path: Path, registry: ProviderRegistry
) -> None:
    recorded = _recorded(tmp_path, _attestor(registry, AppraisalInputs()))
    appraisal = recorded.claim["trace"]["appraisal"]
    assert appraisal["status"] == "affirming"
    assert _start(recorded)["appraisal_checks"] == []
    report = verify_document(recorded.claim, VerifyOptions(audit_log=recorded.db), registry)
    statuses = {check.name: check.status for check in report.checks}
    assert statuses["appraisal"] is CheckStatus.PASS and not report.failed, report.checks
    assert statuses["devices[1].testgpu.signature"] is CheckStatus.PASS


def test_a_device_signed_by_another_key_is_contraindicated(
    tmp_path: Path, registry: ProviderRegistry
) -> None:
    recorded = _recorded(tmp_path, _attestor(registry, AppraisalInputs(), signer="rogue gpu"))
    assert recorded.claim["trace"]["appraisal"]["status"] == "contraindicated"
    failed = {check["name"] for check in _start(recorded)["appraisal_checks"]}
    assert failed == {"devices[0].testgpu.signature", "devices[1].testgpu.signature"}


def test_the_cpu_roots_are_never_a_devices(tmp_path: Path, registry: ProviderRegistry) -> None:
    """A root given for the CPU (`trust_roots`) replaces the testtee's pinned key: the
    CPU's evidence then fails, while each device is still judged by its own pinned key."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    other = Ed25519PrivateKey.generate().public_key()
    pem = other.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    recorded = _recorded(tmp_path, _attestor(registry, AppraisalInputs(trust_roots=(pem,))))
    failed = {check["name"] for check in _start(recorded)["appraisal_checks"]}
    assert failed == {"testtee.signature"}


def test_a_device_table_its_verifier_refuses_opens_no_session(
    tmp_path: Path, registry: ProviderRegistry
) -> None:
    inputs = AppraisalInputs(platform_policy={"testgpu": {"trust_roots": "gpu.pem"}})
    with pytest.raises(AttestationUnavailableError) as refused:
        _recorded(tmp_path, _attestor(registry, inputs))
    assert "the testgpu verifier refuses trace.appraisal.platform_policy" in refused.value.message
    assert "[testgpu] trust_roots must be a list of PEM file paths" in refused.value.message
