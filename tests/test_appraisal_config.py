"""`trace.appraisal` before start: `check_config` (behind `cmcp validate-config`) and
`cmcp start` read its files as the appraisal will, and refuse a setting that cannot be used
or would do nothing, naming the setting, its line and the fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from cmcp_cli.errors import Problem
from cmcp_cli.gateway.preflight.report import check_config
from cmcp_tpm.testing import TestCa
from tests.support import run_cmcp


def _config(quickstart: Path, section: str, provider: str = "auto") -> Path:
    path = quickstart / "cmcp-config.yaml"
    text = path.read_text().replace("provider: auto ", f"provider: {provider} ", 1)
    path.write_text(text + "trace:\n  appraisal:\n" + section)
    return path


def _appraisal_problems(config: Path) -> list[Problem]:
    report = check_config(config, environ={"CMCP_DEV_MODE": "1"})
    return [p for p in report.errors if p.message.startswith("trace.appraisal")]


def test_readable_roots_and_a_fitting_policy_pass(quickstart: Path) -> None:
    (quickstart / "root.pem").write_bytes(TestCa.create("appraisal test root").root_pem)
    (quickstart / "platform.toml").write_text('[sev-snp]\nminimum_firmware = "1.55"\n')
    section = (
        "    trust_roots: [root.pem]\n    platform_policy: platform.toml\n"
        "    required_status: warning\n"
    )
    assert _appraisal_problems(_config(quickstart, section)) == []


@pytest.mark.parametrize(
    ("files", "section", "message", "hint"),
    [
        (
            {},
            "    trust_roots: [missing.pem]\n",
            "trace.appraisal.trust_roots.0: cannot read the trust root",
            "a relative path is taken from the config's folder",
        ),
        (
            {"root.pem": "not a certificate\n"},
            "    trust_roots: [root.pem]\n",
            "trace.appraisal.trust_roots.0: trust root 1 is not PEM certificate data",
            "give PEM certificates",
        ),
        (
            {"platform.toml": "[sev-snp\n"},
            "    platform_policy: platform.toml\n",
            "trace.appraisal.platform_policy: the platform policy",
            "one table per provider",
        ),
        (
            {"platform.toml": '[sevsnp]\nminimum_firmware = "1.55"\n'},
            "    platform_policy: platform.toml\n",
            "trace.appraisal.platform_policy: the platform policy has a [sevsnp] table, but no "
            "installed provider is named 'sevsnp'",
            "fix the table's name",
        ),
        (
            {"platform.toml": '[sev-snp]\nminimum_firmwar = "1.55"\n'},
            "    platform_policy: platform.toml\n",
            "trace.appraisal.platform_policy: the platform policy's [sev-snp] table sets "
            "minimum_firmwar, which the 'sev-snp' provider does not take",
            "its keys are",
        ),
        (
            {"platform.toml": "[sev-snp]\nminimum_firmware = 2026-01-01\n"},
            "    platform_policy: platform.toml\n",
            "trace.appraisal.platform_policy: the platform policy has no canonical JSON form",
            "write its values as strings",
        ),
    ],
)
def test_an_unusable_setting_is_an_error_at_its_line(
    quickstart: Path, files: dict[str, str], section: str, message: str, hint: str
) -> None:
    for name, text in files.items():
        (quickstart / name).write_text(text)
    config = _config(quickstart, section)
    (problem,) = _appraisal_problems(config)
    assert problem.message.startswith(message), problem
    assert problem.hint is not None and hint in problem.hint, problem
    assert problem.file == str(config) and problem.line is not None


@pytest.mark.parametrize(
    ("section", "message"),
    [
        (
            "    required_status: affirming\n",
            "trace.appraisal.required_status: is affirming, but software-only evidence is never "
            "appraised",
        ),
        ("    allow_debug: true\n", "trace.appraisal.allow_debug: is set, but software-only"),
        ("    trust_roots: [root.pem]\n", "trace.appraisal.trust_roots: is set, but software-only"),
    ],
)
def test_software_mode_refuses_what_it_would_ignore(
    quickstart: Path, section: str, message: str
) -> None:
    (quickstart / "root.pem").write_bytes(TestCa.create("appraisal test root").root_pem)
    config = _config(quickstart, section, provider="software-only")
    (problem,) = _appraisal_problems(config)
    assert problem.message.startswith(message), problem
    # `cmcp start` refuses it too, before serving anything
    started = run_cmcp("start", "--config", config, env={"CMCP_DEV_MODE": "1"})
    assert started.returncode != 0
    assert message.split(": ", 1)[1] in " ".join(started.stderr.split()), started.stderr


OPAQUE_REFUSAL = (
    "is set, but the opaque provider's evidence is software-only: it states its issuer's "
    "appraisal, which the gateway keeps and never appraises itself, so it would do nothing"
)


@pytest.mark.parametrize(
    ("section", "key"),
    [
        ("    trust_roots: [root.pem]\n", "trust_roots"),
        ("    collateral: [root.pem]\n", "collateral"),
        ("    platform_policy: platform.toml\n", "platform_policy"),
        ("    allow_debug: true\n", "allow_debug"),
    ],
)
def test_opaque_refuses_every_input_the_gateway_would_not_appraise_with(
    quickstart: Path, section: str, key: str
) -> None:
    """The same predicate as the appraisal itself: an OPAQUE token is its issuer's
    appraisal, so the gateway appraises nothing with these."""
    (quickstart / "root.pem").write_bytes(TestCa.create("appraisal test root").root_pem)
    (quickstart / "platform.toml").write_text('[sev-snp]\nminimum_firmware = "1.55"\n')
    config = _config(quickstart, section, provider="opaque")
    (problem,) = _appraisal_problems(config)
    assert problem.message == f"trace.appraisal.{key}: {OPAQUE_REFUSAL}", problem
    env = {"CMCP_DEV_MODE": "1", "OPAQUE_ATTESTATION_URL": "https://127.0.0.1:9/token"}
    started = run_cmcp("start", "--config", config, env=env)
    assert started.returncode != 0
    assert f"trace.appraisal.{key}: {OPAQUE_REFUSAL}" in " ".join(started.stderr.split())


def test_opaque_takes_a_required_status_its_tokens_status_is_judged_by(quickstart: Path) -> None:
    config = _config(quickstart, "    required_status: affirming\n", provider="opaque")
    assert _appraisal_problems(config) == []
