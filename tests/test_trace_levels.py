"""TRACE conformance end to end, judged by the public suite (`trace-tests`, PyPI
agentrust-trace-tests) run as a real process on the files the gateway writes.

A software (dev-mode) session opened with a challenge passes Level 0 and fails Level 1 on
exactly the two platform checks a software runtime cannot pass: TR-RTE-001 (the platform is
`software-only`) and TR-APR-005 (its appraisal is `none`, not `affirming`).

Every finding of every level is asserted by code and status, on the session's claim (the
suite's "cmcp-runtime" format) and on its standalone record (the plain TRACE format): a
check that starts skipping or a new one the suite adds shows up here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import pytest

from tests.gateway_support import Served, start_gateway, write_config
from tests.trace_levels_support import ChallengedSession, new_challenge, run_challenged_session
from tests.trace_suite import suite_report, suite_verify

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
# TR-RTE-003 checks the optional `runtime.rim_uri`, which cMCP does not state.
PROVENANCE = {"TR-SCA-001": PASS, "TR-SCA-002": PASS}


def level_0(form: Form, appraisal: dict[str, str]) -> dict[str, str]:
    return {**ENVELOPE, **SIGNATURE[form], **POLICY, **appraisal, "TR-APR-005": SKIP}


def path_of(session: ChallengedSession, form: Form) -> Path:
    return session.claim if form == "claim" else session.record


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
        "TR-RTE-002": PASS,
        "TR-RTE-003": SKIP,
        "TR-RTE-004": PASS,  # the challenge it was opened with
        **PROVENANCE,
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
    report = suite_report(path, tmp_path / "report.json", max_level=1, nonce=new_challenge())
    failed = {code for code, status in report.findings(1).items() if status == FAIL}
    assert failed == {"TR-APR-005", "TR-RTE-001", "TR-RTE-004"}
    assert "does not match" in report.messages(1)["TR-RTE-004"]
