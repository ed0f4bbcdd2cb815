"""TRACE conformance end to end, judged by the public suite (`trace-tests`, PyPI
agentrust-trace-tests) run as a real process on the files the gateway writes.

A session of `cmcp start` on a software TPM (swtpm, its AK enrolled by a test CA), opened
with a verifier's challenge, appraising its own evidence under the TPM's roots with the
measurement pinned, and anchoring its record in the transparency double (a real process
over TLS), passes Level 1 with the challenge and Level 2 with the challenge and the stored
receipt; `cmcp verify` with the nonce, the receipt, the log key and the roots exits 0. Both
anchoring protocols, SCRAPI and registry-anchor-v1, are run.

A software (dev-mode) session opened with a challenge passes Level 0 and fails Level 1 on
exactly the two platform checks a software runtime cannot pass: TR-RTE-001 (the platform is
`software-only`) and TR-APR-005 (its appraisal is `none`, not `affirming`).

Every finding of every level is asserted by code and status, on the session's claim (the
suite's "cmcp-runtime" format) and on its standalone record (the plain TRACE format): a
check that starts skipping or a new one the suite adds shows up here.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pytest

from cmcp_cli.claim.anchor import anchor_id
from cmcp_cli.testing.transparency import RunningTransparency
from tests.gateway_support import Served, start_gateway, statuses, verify, write_config
from tests.support import challenge, run_cmcp
from tests.tpm_support import EnrolledTpm, enrolled_tpm
from tests.trace_levels_support import (
    ChallengedSession,
    anchor_settings,
    run_challenged_session,
    tpm_gateway_config,
)
from tests.trace_suite import SuiteReport, suite_report, suite_verify

Form = Literal["claim", "record"]
FORMS: tuple[Form, ...] = ("claim", "record")

PASS, FAIL, SKIP = "pass", "fail", "skip"
# What the suite finds in every record the gateway signs, at every level.
ENVELOPE = dict.fromkeys(
    ("TR-ENV-001", "TR-ENV-002", "TR-ENV-003", "TR-ENV-004", "TR-ENV-005"), PASS
)
# A claim is checked by its envelope signature, a record by its own embedded one (the
# claim's `trace` carries that same signature, TRACE §3.2.2).
SIGNATURE: dict[Form, dict[str, str]] = {
    "claim": {"TR-SIG-001": PASS},
    "record": {"TR-SIG-004": PASS, "TR-SIG-005": PASS},
}
# TR-POL-003 resolves `policy.policy_uri`; cMCP pins its bundle by hash alone and states
# no URI, so there is nothing to resolve.
POLICY = {"TR-POL-001": PASS, "TR-POL-002": PASS, "TR-POL-003": SKIP}
# Software mode states no appraisal but `none`: no policy_ref, no timestamp.
SOFTWARE_APPRAISAL = {
    "TR-APR-001": PASS,
    "TR-APR-002": PASS,
    "TR-APR-003": SKIP,
    "TR-APR-004": SKIP,
}
PROVENANCE = {"TR-SCA-001": PASS, "TR-SCA-002": PASS}
# From Level 1, besides the platform, the nonce and the appraisal: the measurement's form,
# and TR-RTE-003, the optional `runtime.rim_uri`, which cMCP does not state.
RUNTIME = {"TR-RTE-002": PASS, "TR-RTE-003": SKIP, **PROVENANCE}


def level_0(form: Form, appraisal: dict[str, str]) -> dict[str, str]:
    return {**ENVELOPE, **SIGNATURE[form], **POLICY, **appraisal, "TR-APR-005": SKIP}


def path_of(session: ChallengedSession, form: Form) -> Path:
    return session.claim if form == "claim" else session.record


def _failed(report: SuiteReport, level: int) -> set[str]:
    return {code for code, status in report.findings(level).items() if status == FAIL}


@pytest.fixture(scope="module")
def software(tmp_path_factory: pytest.TempPathFactory, upstream: Served) -> ChallengedSession:
    """A dev-mode gateway's session, opened with a challenge, closed into its claim."""
    folder = tmp_path_factory.mktemp("software")
    gateway = start_gateway(write_config(folder, upstream.url))
    return run_challenged_session(gateway, folder / "claims", anchored=False)


def test_a_software_session_states_its_challenge(software: ChallengedSession) -> None:
    claim, record = software.claim_json(), software.record_json()
    assert claim["trace"] == record  # one object: the record is the claim's trace, signed
    assert record["runtime"]["platform"] == "software-only"
    assert record["runtime"]["nonce"] == software.nonce
    assert record["appraisal"] == {"status": "none", "verifier": "urn:cmcp:appraisal:none"}
    code, report = verify(software.claim, "--expected-nonce", software.nonce)
    assert code == 3 and statuses(report)["nonce"] == "pass", report  # valid, not hardware
    code, report = verify(software.claim, "--expected-nonce", challenge())
    assert code == 1 and statuses(report)["nonce"] == "fail", report


@pytest.mark.parametrize("form", FORMS)
def test_a_software_session_passes_level_0_and_fails_level_1_on_the_platform_alone(
    tmp_path: Path, software: ChallengedSession, form: Form
) -> None:
    path = path_of(software, form)
    report = suite_report(path, tmp_path / "report.json", max_level=2, nonce=software.nonce)
    assert report.findings(0) == level_0(form, SOFTWARE_APPRAISAL)
    assert report.findings(1) == {
        **level_0(form, SOFTWARE_APPRAISAL),
        "TR-APR-005": FAIL,  # appraisal `none`: Level 1 requires `affirming`
        "TR-RTE-001": FAIL,  # `software-only` is a development platform
        "TR-RTE-004": PASS,  # the challenge it was opened with
        **RUNTIME,
    }
    assert report.passed(0) and not report.passed(1) and not report.passed(2)
    assert report.highest_level == 0
    messages = report.messages(1)
    assert "'software-only' is development-mode" in messages["TR-RTE-001"]
    assert "got 'none'" in messages["TR-APR-005"]

    assert suite_verify(path, level=0, nonce=software.nonce)[0] == 0
    code, output = suite_verify(path, level=1, nonce=software.nonce)
    assert code == 1 and "2 failure(s)" in output, output


@pytest.mark.parametrize("form", FORMS)
def test_the_suite_holds_a_software_session_to_its_own_challenge(
    tmp_path: Path, software: ChallengedSession, form: Form
) -> None:
    """The nonce the suite passes is the session's: another verifier's challenge fails it."""
    path = path_of(software, form)
    report = suite_report(path, tmp_path / "report.json", max_level=1, nonce=challenge())
    assert _failed(report, 1) == {"TR-APR-005", "TR-RTE-001", "TR-RTE-004"}
    assert "does not match" in report.messages(1)["TR-RTE-004"]


# The hardware session: swtpm, its own appraisal, anchored.

PROTOCOLS = ("scrapi", "registry-anchor-v1")
HARDWARE_APPRAISAL = dict.fromkeys(("TR-APR-001", "TR-APR-002", "TR-APR-003", "TR-APR-004"), PASS)
LEVEL_1_RUNTIME = {"TR-APR-005": PASS, "TR-RTE-001": PASS, "TR-RTE-004": PASS, **RUNTIME}
LEVEL_2_ANCHOR = {"TR-TXN-001": PASS, "TR-TXN-002": PASS, "TR-ANC-001": PASS, "TR-ANC-002": PASS}


def hardware_level(form: Form, level: int) -> dict[str, str]:
    """Every finding the suite makes on an anchored TPM session's `form` at `level`."""
    expected = level_0(form, HARDWARE_APPRAISAL)
    if level >= 1:
        expected |= LEVEL_1_RUNTIME
    if level >= 2:
        expected |= LEVEL_2_ANCHOR
    return expected


@dataclass(frozen=True)
class TpmSession:
    session: ChallengedSession
    measurement: str
    audit: Path


@pytest.fixture(scope="module")
def enrolled(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EnrolledTpm]:
    with enrolled_tpm(tmp_path_factory.mktemp("tpm")) as tpm:
        yield tpm


@pytest.fixture(scope="module")
def transparency(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningTransparency]:
    with RunningTransparency.start(tmp_path_factory.mktemp("transparency")) as double:
        yield double


@pytest.fixture(scope="module")
def tpm_sessions(
    tmp_path_factory: pytest.TempPathFactory,
    upstream: Served,
    enrolled: EnrolledTpm,
    transparency: RunningTransparency,
) -> dict[str, TpmSession]:
    """One challenged session per anchoring protocol, each of its own gateway on the one
    swtpm, anchored in the one double; each gateway stopped once its receipt is stored."""
    sessions = {}
    for protocol in PROTOCOLS:
        folder = tmp_path_factory.mktemp(protocol)
        anchor = anchor_settings(transparency, protocol)
        measured = run_cmcp(
            "measure", "tpm", "--config", tpm_gateway_config(folder, upstream, enrolled, anchor)
        )
        assert measured.returncode == 0, measured.stderr
        measurement = measured.stdout.strip()
        config = tpm_gateway_config(folder, upstream, enrolled, anchor, measurement)
        session = run_challenged_session(start_gateway(config), folder / "claims", anchored=True)
        sessions[protocol] = TpmSession(session, measurement, folder / "audit.db")
    return sessions


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_tpm_session_states_its_challenge_appraisal_and_anchor(
    tpm_sessions: dict[str, TpmSession], transparency: RunningTransparency, protocol: str
) -> None:
    tpm = tpm_sessions[protocol]
    claim, record = tpm.session.claim_json(), tpm.session.record_json()
    assert claim["cmcp_version"] == "1.1"
    assert claim["trace"] == record
    assert record["runtime"]["platform"] == "tpm2"
    assert record["runtime"]["measurement"] == tpm.measurement
    assert record["runtime"]["nonce"] == tpm.session.nonce
    appraisal = record["appraisal"]
    version = claim["gateway"]["gateway_version"]
    assert appraisal["status"] == "affirming", appraisal
    assert appraisal["verifier"] == f"urn:cmcp:runtime-appraisal:cmcp-gateway/{version}"
    assert appraisal["policy_ref"].startswith("urn:cmcp:appraisal-policy:sha256:")
    assert type(appraisal["timestamp"]) is int
    assert record["transparency"] == f"{transparency.url}/entries/{anchor_id(record)}"
    assert tpm.session.receipt is not None
    receipt = json.loads(tpm.session.receipt.read_text())
    assert receipt["protocol"] == protocol
    assert receipt["transparency"] == record["transparency"]


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_tpm_session_passes_levels_1_and_2(
    tmp_path: Path, tpm_sessions: dict[str, TpmSession], protocol: str, form: Form
) -> None:
    session = tpm_sessions[protocol].session
    path = path_of(session, form)
    report = suite_report(
        path, tmp_path / "report.json", max_level=2, nonce=session.nonce, receipt=session.receipt
    )
    for level in (0, 1, 2):
        assert report.findings(level) == hardware_level(form, level), level
        assert report.passed(level), level
    assert report.highest_level == 2
    assert report.document["record"]["transparency"] == session.record_json()["transparency"]

    assert suite_verify(path, level=1, nonce=session.nonce)[0] == 0
    assert suite_verify(path, level=2, nonce=session.nonce, receipt=session.receipt)[0] == 0


@pytest.mark.parametrize("form", FORMS)
def test_level_2_holds_only_with_the_sessions_own_nonce_and_receipt(
    tmp_path: Path, tpm_sessions: dict[str, TpmSession], form: Form
) -> None:
    """The passes above are earned: the suite fails the session without its receipt, with
    another session's receipt and with another verifier's challenge, each on the one check."""
    session, other = (tpm_sessions[protocol].session for protocol in PROTOCOLS)
    path = path_of(session, form)
    out = tmp_path / "report.json"

    unanchored = suite_report(path, out, max_level=2, nonce=session.nonce)
    assert _failed(unanchored, 2) == {"TR-ANC-002"}
    assert unanchored.highest_level == 1

    assert other.receipt is not None
    misplaced = suite_report(path, out, max_level=2, nonce=session.nonce, receipt=other.receipt)
    assert _failed(misplaced, 2) == {"TR-ANC-002"}
    assert "does not reproduce the committed merkle_root" in misplaced.messages(2)["TR-ANC-002"]

    challenged = suite_report(path, out, max_level=2, nonce=challenge(), receipt=session.receipt)
    assert _failed(challenged, 1) == _failed(challenged, 2) == {"TR-RTE-004"}
    assert challenged.highest_level == 0


def test_a_record_changed_after_anchoring_fails_its_signature_and_its_inclusion(
    tmp_path: Path, tpm_sessions: dict[str, TpmSession]
) -> None:
    session = tpm_sessions[PROTOCOLS[0]].session
    record = session.record_json()
    record["data_class"] = "public" if record["data_class"] != "public" else "internal"
    changed = tmp_path / "changed.record.json"
    changed.write_text(json.dumps(record))
    report = suite_report(
        changed, tmp_path / "report.json", max_level=2, nonce=session.nonce, receipt=session.receipt
    )
    assert _failed(report, 2) == {"TR-SIG-005", "TR-ANC-002"}
    assert report.highest_level is None


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_cmcp_verify_accepts_the_tpm_session_with_every_pin(
    tpm_sessions: dict[str, TpmSession],
    enrolled: EnrolledTpm,
    transparency: RunningTransparency,
    protocol: str,
) -> None:
    tpm = tpm_sessions[protocol]
    assert tpm.session.receipt is not None
    code, report = verify(
        tpm.session.claim,
        "--expected-nonce",
        tpm.session.nonce,
        "--receipt",
        tpm.session.receipt,
        "--log-key",
        transparency.log_key,
        *enrolled.trust_args(),
        "--expected-measurement",
        tpm.measurement,
        "--audit-log",
        tpm.audit,
    )
    assert code == 0, report
    assert report["hardware_attested"] is True
    checks = statuses(report)
    assert not [name for name, status in checks.items() if status == "fail"], checks
    for name in (
        "signature",
        "binding",
        "nonce",
        "appraisal",
        "measurement",
        "receipt.shape",
        "receipt.record",
        "receipt.inclusion",
        "receipt.log_signature",
        "audit log",
        "tpm.attest.extra_data",
        "tpm.ak.certificate",
        "tpm.ek.certificate",
    ):
        assert checks[name] == "pass", (name, checks)


def test_cmcp_verify_refuses_another_challenge_and_another_sessions_receipt(
    tpm_sessions: dict[str, TpmSession], enrolled: EnrolledTpm, transparency: RunningTransparency
) -> None:
    session, other = (tpm_sessions[protocol].session for protocol in PROTOCOLS)
    assert session.receipt is not None and other.receipt is not None
    pins = ("--log-key", transparency.log_key, *enrolled.trust_args())
    code, report = verify(
        session.claim, "--expected-nonce", challenge(), "--receipt", session.receipt, *pins
    )
    assert code == 1 and statuses(report)["nonce"] == "fail", report
    code, report = verify(
        session.claim, "--expected-nonce", session.nonce, "--receipt", other.receipt, *pins
    )
    assert code == 1, report
    assert statuses(report)["receipt.record"] == statuses(report)["receipt.inclusion"] == "fail"


@pytest.mark.parametrize("form", FORMS)
def test_the_log_vouches_for_an_anchored_claim_and_its_record(
    tpm_sessions: dict[str, TpmSession], enrolled: EnrolledTpm, form: Form
) -> None:
    """The log keeps the anchor URL and the key's thumbprint; from them and the record it
    determines the record's `transparency` URI, which is the one the claim states."""
    tpm = tpm_sessions[PROTOCOLS[0]]
    code, report = verify(
        path_of(tpm.session, form),
        "--expected-nonce",
        tpm.session.nonce,
        *enrolled.trust_args(),
        "--audit-log",
        tpm.audit,
    )
    checks = statuses(report)
    assert not [name for name, status in checks.items() if status == "fail"], report
    log_checks = {name: status for name, status in checks.items() if name.startswith("log: ")}
    assert log_checks and set(log_checks.values()) == {"pass"}, log_checks
    assert checks["receipt"] == "skip"  # it states `transparency`: no --receipt given
    assert code == (0 if form == "claim" else 3), report
