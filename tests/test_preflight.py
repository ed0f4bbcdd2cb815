"""`check_config`: everything a config references, every problem in one report."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import stat
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cmcp_cli.errors import Severity
from cmcp_cli.gateway.preflight.report import ConfigReport, check_config

TOKEN = "k" * 43


def messages(report: ConfigReport, severity: Severity = Severity.ERROR) -> list[str]:
    return [p.message for p in report.problems if p.severity is severity]


def edit(quickstart: Path, extra: str = "", replace: tuple[str, str] | None = None) -> Path:
    path = quickstart / "cmcp-config.yaml"
    text = path.read_text()
    if replace is not None:
        assert replace[0] in text
        text = text.replace(*replace)
    path.write_text(text + extra)
    return path


def test_quickstart_is_valid(quickstart: Path) -> None:
    report = check_config(quickstart / "cmcp-config.yaml", environ={"CMCP_DEV_MODE": "1"})
    assert report.ok, report.problems
    assert messages(report, Severity.WARNING) == [
        "auth: no operator token: escalated calls cannot be approved (each session's claim "
        "and audit chain stay readable by its own agent)"
    ]
    summary = report.to_json()
    assert summary["policy_count"] == 10  # 5 on tool calls, 5 on other messages
    assert summary["tool_count"] == 5
    assert summary["upstreams"] == ["demo"]
    assert str(summary["bundle_hash"]).startswith("sha256:")


def test_public_listener_needs_a_credential(quickstart: Path) -> None:
    config = edit(quickstart, replace=("listen_addr: 127.0.0.1:8443", "listen_addr: 0.0.0.0:8443"))
    report = check_config(config, environ={})
    assert messages(report) == [
        "listen_addr: 0.0.0.0:8443 is reachable from other hosts but no agent credential is configured"
    ]
    assert report.errors[0].line == 9
    report = check_config(config, environ={"CMCP_BEARER_TOKEN": TOKEN})
    assert report.ok
    assert any("TLS is off" in m for m in messages(report, Severity.WARNING))
    report = check_config(config, environ={"CMCP_BEARER_TOKEN": TOKEN, "CMCP_DEV_MODE": "1"})
    assert messages(report) == [
        "listen_addr: CMCP_DEV_MODE=1 admits anonymous agents, so it listens on loopback only"
    ]


def test_a_wildcard_listener_without_allowed_hosts_is_warned_about(quickstart: Path) -> None:
    config = edit(quickstart, replace=("listen_addr: 127.0.0.1:8443", "listen_addr: 0.0.0.0:8443"))
    report = check_config(config, environ={"CMCP_BEARER_TOKEN": TOKEN})
    (warning,) = [p for p in report.warnings if "allowed_hosts" in p.message]
    assert warning.message.startswith("listen_addr: 0.0.0.0:8443 listens on every interface")
    assert warning.line == 9
    config = edit(quickstart, "allowed_hosts: [gw.example.com]\n")
    report = check_config(config, environ={"CMCP_BEARER_TOKEN": TOKEN})
    assert not [p for p in report.warnings if "allowed_hosts" in p.message]
    config = edit(
        quickstart,
        replace=("allowed_hosts: [gw.example.com]", "allowed_hosts: ['https://gw.example.com']"),
    )
    (error,) = check_config(config, environ={"CMCP_BEARER_TOKEN": TOKEN}).errors
    assert "is not a host name, NAME:PORT or [IPv6]:PORT" in error.message


def test_token_rules(quickstart: Path) -> None:
    digest = "sha256:" + hashlib.sha256(b"x" * 40).hexdigest()
    config = edit(
        quickstart,
        "auth:\n"
        "  bearer_tokens:\n"
        f"    - {{agent: alice, token_sha256: '{digest}'}}\n"
        "    - {agent: bob, token_env: BOB_TOKEN}\n"
        "    - {agent: carol, token_env: CAROL_TOKEN}\n"
        "  operator_token_env: OPS_TOKEN\n",
    )
    report = check_config(config, environ={"CAROL_TOKEN": "x" * 40, "CMCP_BEARER_TOKEN": "short"})
    assert sorted(messages(report)) == [
        "CMCP_BEARER_TOKEN is shorter than 32 characters",
        "auth.bearer_tokens.1: token_env names BOB_TOKEN, which is not set",
        "auth.bearer_tokens.2: the same token is mapped to agents 'alice' "
        "(auth.bearer_tokens[0]) and 'carol' (CAROL_TOKEN of auth.bearer_tokens[2])",
        "auth.operator_token_env: names OPS_TOKEN, which is not set",
    ]
    assert all(
        TOKEN not in json.dumps(p.to_json()) and "short" not in (p.hint or "")
        for p in report.problems
    )


def test_software_only_needs_dev_mode(quickstart: Path) -> None:
    config = edit(quickstart, replace=("provider: auto", "provider: software-only"))
    report = check_config(config, environ={})
    assert len(report.errors) == 1
    assert "need CMCP_DEV_MODE=1" in report.errors[0].message
    assert check_config(config, environ={"CMCP_DEV_MODE": "1"}).ok


def _certificate(key: ec.EllipticCurvePrivateKey, *, days: int, start_days: int = -1) -> bytes:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "gateway.test")])
    now = dt.datetime.now(dt.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now + dt.timedelta(days=start_days))
        .not_valid_after(now + dt.timedelta(days=days))
        .sign(key, hashes.SHA256())
    )
    return certificate.public_bytes(serialization.Encoding.PEM)


def _key_pem(key: ec.EllipticCurvePrivateKey, password: bytes | None = None) -> bytes:
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(password)
        if password
        else serialization.NoEncryption()
    )
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    )


def test_tls_files_are_loaded_and_matched(quickstart: Path) -> None:
    key, other = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    (quickstart / "cert.pem").write_bytes(_certificate(key, days=30))
    (quickstart / "key.pem").write_bytes(_key_pem(key))
    (quickstart / "ca.pem").write_bytes(_certificate(other, days=30))
    config = edit(
        quickstart, "tls:\n  cert_file: cert.pem\n  key_file: key.pem\n  client_ca_file: ca.pem\n"
    )
    assert check_config(config, environ={}).ok

    (quickstart / "key.pem").write_bytes(_key_pem(other))
    assert messages(check_config(config, environ={})) == [
        "tls.key_file: the private key does not belong to the certificate in cert_file"
    ]
    (quickstart / "key.pem").write_bytes(_key_pem(key, password=b"secret"))
    assert messages(check_config(config, environ={})) == [
        "tls.key_file: the private key is encrypted; cMCP needs it unencrypted"
    ]
    (quickstart / "key.pem").write_bytes(_key_pem(key))
    (quickstart / "cert.pem").write_bytes(_certificate(key, days=-1, start_days=-10))
    assert messages(check_config(config, environ={}))[0].startswith(
        "tls.cert_file: certificate expired on"
    )
    (quickstart / "cert.pem").write_bytes(_certificate(key, days=20, start_days=10))
    assert "is not valid before" in messages(check_config(config, environ={}))[0]
    (quickstart / "ca.pem").write_text("not a certificate")
    (quickstart / "cert.pem").unlink()
    found = messages(check_config(config, environ={}))
    assert any(m.startswith("tls.cert_file: cannot read") for m in found)
    assert any(m.endswith("ca.pem holds no PEM certificate") for m in found)


def test_stdio_upstream_executable_is_found_and_pinned(quickstart: Path) -> None:
    server = quickstart / "server.sh"
    server.write_text("#!/bin/sh\nexit 0\n")
    server.chmod(server.stat().st_mode | stat.S_IXUSR)
    digest = "sha256:" + hashlib.sha256(server.read_bytes()).hexdigest()
    catalog = json.loads((quickstart / "catalog.json").read_text())
    catalog["tools"][0]["server"] = "local"
    (quickstart / "catalog.json").write_text(json.dumps(catalog))
    upstream = "  local:\n    transport: stdio\n    command: [./server.sh, --flag]\n"
    config = edit(quickstart, replace=("upstreams:\n", "upstreams:\n" + upstream))
    report = check_config(config, environ={})
    assert report.ok
    (unpinned,) = [p for p in report.warnings if "executable_sha256" in p.message]
    assert unpinned.hint == f"pin it: executable_sha256: {digest}"

    config = edit(quickstart, replace=(upstream, upstream + f"    executable_sha256: {digest}\n"))
    report = check_config(config, environ={})
    assert report.ok and not [p for p in report.warnings if "executable_sha256" in p.message]

    server.write_text("#!/bin/sh\necho changed\n")
    (mismatch,) = check_config(config, environ={}).errors
    assert "hashes to sha256:" in mismatch.message and digest in mismatch.message
    server.unlink()
    (missing,) = check_config(config, environ={}).errors
    assert missing.message == "upstreams.local.command: './server.sh' is not an existing file"

    pathed = f"  local:\n    transport: stdio\n    command: [{Path(sys.executable).name}]\n"
    config = edit(quickstart, replace=(upstream + f"    executable_sha256: {digest}\n", pathed))
    assert check_config(config, environ={}).ok


def test_catalog_and_upstreams_must_agree(quickstart: Path) -> None:
    config = edit(
        quickstart,
        replace=(
            "  demo:\n",
            "  spare:\n    transport: streamable-http\n    url: http://127.0.0.1:1/mcp\n  demo_renamed:\n",
        ),
    )
    report = check_config(config, environ={})
    assert len(report.errors) == 5
    assert report.errors[0].message.startswith(
        "upstreams: catalog tool 'get_weather' routes to upstream 'demo'"
    )
    warnings = messages(report, Severity.WARNING)
    assert "upstreams.spare: no catalog tool routes to this upstream" in warnings


def test_header_secrets_come_from_the_environment(quickstart: Path) -> None:
    config = edit(
        quickstart,
        replace=(
            "    url: http://127.0.0.1:8765/mcp\n",
            "    url: http://127.0.0.1:8765/mcp\n    headers_from_env: {Authorization: DEMO_AUTH}\n",
        ),
    )
    assert messages(check_config(config, environ={})) == [
        "upstreams.demo.headers_from_env.Authorization: DEMO_AUTH is not set"
    ]
    assert check_config(config, environ={"DEMO_AUTH": "Bearer x"}).ok


def test_catalog_data_classes_must_be_ordered(quickstart: Path) -> None:
    config = edit(quickstart, "policy:\n  data_class_order: [public, confidential]\n")
    errors = check_config(config, environ={}).errors
    assert [e.message.split(" has ")[0] for e in errors] == [
        "policy.data_class_order: catalog tool 'delete_records'",
        "policy.data_class_order: catalog tool 'transfer_funds'",
    ]
    assert (
        "data_class 'restricted', which is not in the order (public < confidential)"
        in errors[0].message
    )
    config = edit(quickstart, replace=("[public, confidential]", "[public]"))
    assert len(check_config(config, environ={}).errors) == 4


def test_catalog_that_does_not_fit_the_bundle_schema(quickstart: Path) -> None:
    schema = quickstart / "policies" / "schema.cedarschema"
    schema.write_text(schema.read_text().replace("  data_class: String,\n", "", 1))
    (error,) = check_config(quickstart / "cmcp-config.yaml", environ={}).errors
    assert "do not fit the bundle schema" in error.message
    assert error.file == str(quickstart / "catalog.json")


def test_state_paths_must_be_usable(quickstart: Path) -> None:
    (quickstart / ".state").mkdir()
    (quickstart / ".state" / "audit.db").mkdir()
    (quickstart / ".state" / "claims").write_text("a file")
    errors = messages(check_config(quickstart / "cmcp-config.yaml", environ={}))
    assert errors == [
        f"audit.path: {quickstart / '.state' / 'audit.db'} exists and is not a file",
        f"claims.dir: {quickstart / '.state' / 'claims'} exists and is not a directory",
    ]


def test_schema_errors_do_not_hide_the_other_problems(quickstart: Path) -> None:
    config = edit(
        quickstart,
        "limits:\n  max_json_dept: 3\n",
        replace=("listen_addr: 127.0.0.1:8443", "listen_addr: 0.0.0.0:8443"),
    )
    (quickstart / "policies" / "broken.cedar").write_text("permit(principal, action, resource")
    report = check_config(config, environ={})
    found = messages(report)
    assert "limits.max_json_dept: unknown key 'max_json_dept'" in found
    assert any("reachable from other hosts" in m for m in found)
    assert any(p.file and p.file.endswith("broken.cedar") and p.line == 1 for p in report.errors)
    assert report.config is None  # an invalid config is never handed out


def test_missing_references_point_at_their_keys(quickstart: Path) -> None:
    config = edit(quickstart, replace=("./catalog.json", "./missing.json"))
    (error,) = check_config(config, environ={}).errors
    assert error.message.startswith("catalog_path: catalog")
    assert error.line == 8


def test_invalid_yaml_is_a_report_not_a_crash(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("a: [\n")
    report = check_config(path, environ={})
    assert not report.ok
    assert report.errors[0].file == str(path)


def test_unknown_cmcp_variables_are_warned_about(quickstart: Path) -> None:
    report = check_config(quickstart / "cmcp-config.yaml", environ={"CMCP_BEARER_TOKN": TOKEN})
    (warning,) = [p for p in report.warnings if "not read by cMCP" in p.message]
    assert warning.hint == "did you mean CMCP_BEARER_TOKEN?"


@pytest.mark.parametrize("key", ["policy_bundle_path", "catalog_path"])
def test_required_references(quickstart: Path, key: str) -> None:
    path = quickstart / "cmcp-config.yaml"
    path.write_text(
        "\n".join(line for line in path.read_text().splitlines() if not line.startswith(key))
    )
    report = check_config(path, environ={})
    assert f"{key}: required key is missing" in messages(report)


_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=6), st.just("./policies")),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=8,
)
_TOP = [
    "attestation",
    "policy_bundle_path",
    "catalog_path",
    "listen_addr",
    "upstreams",
    "policy",
    "audit",
    "claims",
    "auth",
    "tls",
    "limits",
    "max_response_size_bytes",
    "typo",
]


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.dictionaries(st.sampled_from(_TOP), _values, max_size=6))
def test_any_yaml_document_gets_a_report_not_a_crash(
    tmp_path: Path, document: dict[str, Any]
) -> None:
    path = tmp_path / "fuzz.yaml"
    path.write_text(yaml.safe_dump(document))
    report = check_config(path, environ={})
    assert isinstance(report.to_json(), dict)
