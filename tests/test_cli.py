"""The real `cmcp` console script: exit codes, stdout/stderr discipline, JSON reports."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.support import QUICKSTART, independent_bundle_hash, run_cmcp

pytestmark = pytest.mark.cli
BUNDLE = QUICKSTART / "policies"


def test_version_and_help() -> None:
    version = run_cmcp("--version")
    assert version.returncode == 0
    assert version.stdout.startswith("cmcp ")
    bare = run_cmcp()
    assert bare.returncode == 2
    assert "validate-bundle" in bare.stdout + bare.stderr
    assert run_cmcp("--help").returncode == 0
    unknown = run_cmcp("validate-bundle", "--bundle-pth", "x")
    assert unknown.returncode == 2
    assert "No such option" in unknown.stderr


def test_validate_bundle_prints_the_hash_on_stdout_and_details_on_stderr() -> None:
    result = run_cmcp("validate-bundle", "--bundle-path", BUNDLE)
    assert result.returncode == 0, result.stderr
    assert result.stdout == independent_bundle_hash(BUNDLE) + "\n"
    for name in ("finance.cedar", "tools.cedar", "schema.cedarschema", "manifest.json"):
        assert name in result.stderr
    assert "customer-lookup-redacted" in result.stderr
    assert "validated against schema.cedarschema" in result.stderr


def test_validate_bundle_json_is_the_only_stdout() -> None:
    result = run_cmcp("validate-bundle", "--bundle-path", BUNDLE, "--json")
    assert result.returncode == 0
    report = result.json()
    assert report["bundle_hash"] == independent_bundle_hash(BUNDLE)
    assert report["ok"] is True and report["hash_matches"] is None
    assert sorted(report["files"]) == [
        "finance.cedar",
        "manifest.json",
        "messages.cedar",
        "schema.cedarschema",
        "tools.cedar",
    ]
    by_id = {p["id"]: p for p in report["policies"]}
    assert by_id["finance.cedar:policy0"]["line"] == 2
    assert (
        by_id["customer-lookup-redacted"]["annotations"]["redact"] == "email, phone, /customer/ssn"
    )


def test_validate_bundle_warns_about_message_kinds_no_permit_names(quickstart: Path) -> None:
    bundle = quickstart / "policies"
    (bundle / "messages.cedar").unlink()  # a bundle written for tool calls only
    (bundle / "schema.cedarschema").unlink()
    result = run_cmcp("validate-bundle", "--bundle-path", bundle, "--json")
    assert result.returncode == 0, result.stderr  # a warning, not a failure
    warnings = result.json()["warnings"]
    assert [w.split(":")[0] for w in warnings] == [
        f"no permit names {kind}"
        for kind in (
            "list_tools",
            "read_resource",
            "get_prompt",
            "create_message",
            "elicit",
            "list_roots",
        )
    ]
    assert "agents will see no tools" in warnings[0]
    shown = run_cmcp("validate-bundle", "--bundle-path", bundle)
    assert "warning: no permit names list_tools: agents will see no tools" in shown.stderr
    assert run_cmcp("validate-bundle", "--bundle-path", QUICKSTART / "policies", "--json").json()[
        "warnings"
    ] == ["no permit names create_message: upstreams cannot sample the agent's model"]


def test_expected_hash_pins_the_bundle(tmp_path: Path, quickstart: Path) -> None:
    bundle = quickstart / "policies"
    pinned = independent_bundle_hash(bundle)
    assert (
        run_cmcp("validate-bundle", "--bundle-path", bundle, "--expected-hash", pinned).returncode
        == 0
    )

    (bundle / "tools.cedar").write_text((bundle / "tools.cedar").read_text() + "\n")
    result = run_cmcp("validate-bundle", "--bundle-path", bundle, "--expected-hash", pinned)
    assert result.returncode == 1
    assert f"- expected {pinned}" in result.stderr
    assert f"+ actual   {independent_bundle_hash(bundle)}" in result.stderr
    assert result.stdout.strip() == independent_bundle_hash(bundle)
    as_json = run_cmcp(
        "validate-bundle", "--bundle-path", bundle, "--expected-hash", pinned, "--json"
    )
    assert as_json.returncode == 1
    assert as_json.json()["hash_matches"] is False and as_json.json()["ok"] is False


def test_baseline_explains_a_mismatch_file_by_file(tmp_path: Path, quickstart: Path) -> None:
    bundle = quickstart / "policies"
    baseline = tmp_path / "baseline.json"
    baseline.write_text(run_cmcp("validate-bundle", "--bundle-path", bundle, "--json").stdout)
    (bundle / "tools.cedar").write_text((bundle / "tools.cedar").read_text() + "// reviewed\n")
    (bundle / "extra.cedar").write_text("forbid(principal, action, resource);\n")
    (bundle / "finance.cedar").unlink()
    result = run_cmcp("validate-bundle", "--bundle-path", bundle, "--baseline", baseline)
    assert result.returncode == 1
    assert "+ extra.cedar (added)" in result.stderr
    assert "- finance.cedar (removed)" in result.stderr
    assert "~ tools.cedar (changed)" in result.stderr
    changes = run_cmcp(
        "validate-bundle", "--bundle-path", bundle, "--baseline", baseline, "--json"
    ).json()["changes"]
    assert [(c["path"], c["change"]) for c in changes] == [
        ("extra.cedar", "added"),
        ("finance.cedar", "removed"),
        ("tools.cedar", "changed"),
    ]
    baseline.write_text("{}")
    unusable = run_cmcp("validate-bundle", "--bundle-path", bundle, "--baseline", baseline)
    assert unusable.returncode == 2
    assert "is not a `cmcp validate-bundle --json` report" in unusable.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--bundle-path", "/nonexistent/bundle"), "does not exist"),
        (("--bundle-path", str(BUNDLE), "--expected-hash", "abc"), "is not 'sha256:'"),
    ],
)
def test_unusable_arguments_exit_2(args: tuple[str, ...], message: str) -> None:
    result = run_cmcp("validate-bundle", *args)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_broken_bundle_exits_1_with_file_and_line(quickstart: Path) -> None:
    bundle = quickstart / "policies"
    (bundle / "tools.cedar").write_text(
        (bundle / "tools.cedar").read_text()
        + '\n@id("bad")\npermit(principal, action, resource) when { context. };\n'
    )
    result = run_cmcp("validate-bundle", "--bundle-path", bundle)
    assert result.returncode == 1
    assert f"{bundle / 'tools.cedar'}:26: policy does not parse" in result.stderr
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    as_json = run_cmcp("validate-bundle", "--bundle-path", bundle, "--json")
    assert as_json.returncode == 1
    error = as_json.json()
    assert error["error"] == "BundleError" and error["exit_code"] == 1
    assert error["problems"][0]["line"] == 26


def test_schema_violation_exits_1(quickstart: Path) -> None:
    bundle = quickstart / "policies"
    (bundle / "typo.cedar").write_text(
        'permit(principal, action == Action::"call_tool", resource) when { context.data_clas == "x" };\n'
    )
    result = run_cmcp("validate-bundle", "--bundle-path", bundle)
    assert result.returncode == 1
    assert "typo.cedar:1: policy typo.cedar:policy0 does not conform to the schema" in result.stderr


def test_validate_config_on_the_quickstart() -> None:
    result = run_cmcp(
        "validate-config", "--config", QUICKSTART / "cmcp-config.yaml", env={"CMCP_DEV_MODE": "1"}
    )
    assert result.returncode == 0, result.stderr
    assert "config is valid (1 warning)" in result.stderr
    assert result.stdout == ""
    report = run_cmcp(
        "validate-config", "--config", QUICKSTART / "cmcp-config.yaml", "--json"
    ).json()
    assert report["ok"] is True
    assert report["bundle_hash"] == independent_bundle_hash(BUNDLE)
    assert report["errors"] == []


def test_validate_config_reports_everything_and_exits_1(quickstart: Path) -> None:
    config = quickstart / "cmcp-config.yaml"
    config.write_text(
        config.read_text()
        .replace("enforcement_mode: enforcing", "enforcment_mode: enforcing")
        .replace("127.0.0.1:8443", "0.0.0.0:8443")
        .replace("./catalog.json", "./catalogue.json")
    )
    result = run_cmcp("validate-config", "--config", config)
    assert result.returncode == 1
    assert "did you mean 'enforcement_mode'?" in result.stderr
    assert "reachable from other hosts" in result.stderr
    assert "catalogue.json does not exist" in result.stderr
    assert "config is not valid: 3 errors" in result.stderr
    report = run_cmcp("validate-config", "--config", config, "--json").json()
    assert [e["line"] for e in report["errors"]] == [5, 8, 9]


def test_validate_config_and_start_without_any_config_exit_2(tmp_path: Path) -> None:
    for command in ("validate-config", "start"):
        result = run_cmcp(command, cwd=tmp_path)
        assert result.returncode == 2, command
        said = " ".join(result.stderr.split())  # as one line, however the terminal wrapped it
        assert f"no config: there is no cmcp-config.yaml in {tmp_path}" in said
        assert "set CEDAR_POLICY_PATH and UPSTREAM_MCP_URL to start from the environment" in said
    as_json = run_cmcp("validate-config", "--config", tmp_path / "nope.yaml", "--json")
    assert as_json.returncode == 2
    assert json.loads(as_json.stdout)["error"] == "UsageError"


def test_validate_config_names_the_file_it_found_here_when_it_is_not_yaml(tmp_path: Path) -> None:
    (tmp_path / "cmcp-config.yaml").write_text("listen_addr: [unclosed\n")
    result = run_cmcp("validate-config", "--json", cwd=tmp_path)
    assert result.returncode == 1
    report = result.json()
    assert report["config"] == str(tmp_path / "cmcp-config.yaml")
    assert [e["file"] for e in report["errors"]] == [str(tmp_path / "cmcp-config.yaml")]
