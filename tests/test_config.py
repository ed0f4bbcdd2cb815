"""The config model: defaults, strictness, did-you-mean, lines, paths and the environment."""

from __future__ import annotations

from pathlib import Path

import pytest

from cmcp_cli.config import (
    DEFAULT_DATA_CLASS_ORDER,
    HttpUpstream,
    StdioUpstream,
    load_config,
    parse_listen_addr,
    read_environment,
)
from cmcp_cli.errors import ConfigError, UsageError

MINIMAL = "policy_bundle_path: ./policies\ncatalog_path: ./catalog.json\n"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "cmcp-config.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults_of_the_reference_design(tmp_path: Path) -> None:
    loaded = load_config(write(tmp_path, MINIMAL), environ={})
    config = loaded.model
    assert config.attestation.provider == "auto"
    assert config.attestation.enforcement_mode == "enforcing"
    assert config.attestation.validity_seconds == 86_400
    assert config.attestation.staleness_policy == "fail_closed"
    assert config.attestation.expected_measurement == ()
    assert str(config.listen_addr) == "127.0.0.1:8443"
    assert config.max_response_size_bytes == 2 * 1024 * 1024
    assert config.policy_reload_interval_seconds == 0
    assert config.policy.deny_response == "jsonrpc-error"
    assert config.policy.data_class_order == DEFAULT_DATA_CLASS_ORDER
    assert config.audit.durability == "fsync"
    assert config.audit.record_inputs == "full"
    assert config.upstreams == {}
    assert not loaded.env.dev_mode


def test_relative_paths_resolve_against_the_config_folder(tmp_path: Path) -> None:
    folder = tmp_path / "etc" / "cmcp"
    folder.mkdir(parents=True)
    text = (
        MINIMAL
        + "audit:\n  path: state/audit.db\ntls:\n  cert_file: /abs/cert.pem\n  key_file: key.pem\n"
    )
    config = load_config(write(folder, text), environ={}).model
    assert config.policy_bundle_path == folder / "policies"
    assert config.catalog_path == folder / "catalog.json"
    assert config.audit.path == folder / "state" / "audit.db"
    assert config.tls.cert_file == Path("/abs/cert.pem")
    assert config.tls.key_file == folder / "key.pem"


def test_unknown_keys_are_errors_with_did_you_mean_and_lines(tmp_path: Path) -> None:
    text = (
        MINIMAL
        + "attestation:\n  provider: tpm\n  enforcment_mode: advisory\nlisten_adr: 1.2.3.4:1\n"
    )
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, text), environ={})
    found = {(p.line, p.message, p.hint) for p in caught.value.problems}
    assert found == {
        (
            5,
            "attestation.enforcment_mode: unknown key 'enforcment_mode'",
            "did you mean 'enforcement_mode'?",
        ),
        (6, "listen_adr: unknown key 'listen_adr'", "did you mean 'listen_addr'?"),
    }


def test_every_schema_problem_is_reported_at_once(tmp_path: Path) -> None:
    text = (
        "attestation:\n"
        "  provider: sev\n"
        "  validity_seconds: -1\n"
        "  expected_measurement: [sha256:abc]\n"
        "listen_addr: nowhere\n"
        "upstreams:\n"
        "  web:\n"
        "    transport: streamable-http\n"
        "    url: ftp://x\n"
        "  tool:\n"
        "    transport: stdio\n"
        "    command: []\n"
        "  odd:\n"
        "    transport: carrier-pigeon\n"
        "policy:\n"
        "  data_class_order: [public, public]\n"
        "auth:\n"
        "  bearer_tokens:\n"
        "    - agent: a\n"
    )
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, text), environ={})
    by_location = {p.message.split(":", 1)[0]: p.line for p in caught.value.problems}
    assert by_location == {
        "attestation.provider": 2,
        "attestation.validity_seconds": 3,
        "attestation.expected_measurement": 4,
        "policy_bundle_path": None,
        "catalog_path": None,
        "listen_addr": 5,
        "upstreams.web.url": 9,
        "upstreams.tool.command": 12,
        "upstreams.odd": 13,
        "policy.data_class_order": 16,
        "auth.bearer_tokens[0]": 19,
    }


def test_upstreams_are_a_tagged_union(tmp_path: Path) -> None:
    text = MINIMAL + (
        "upstreams:\n"
        "  a: {transport: streamable-http, url: 'http://127.0.0.1:9/mcp'}\n"
        "  b: {transport: stdio, command: [python3, server.py], cwd: srv}\n"
    )
    upstreams = load_config(write(tmp_path, text), environ={}).model.upstreams
    assert isinstance(upstreams["a"], HttpUpstream)
    assert isinstance(upstreams["b"], StdioUpstream)
    assert upstreams["b"].cwd == tmp_path / "srv"


def test_did_you_mean_inside_a_tagged_union_member(tmp_path: Path) -> None:
    text = (
        MINIMAL
        + "upstreams:\n  b:\n    transport: stdio\n    command: [x]\n    executable_sha: sha256:00\n"
    )
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, text), environ={})
    (problem,) = caught.value.problems
    assert problem.message == "upstreams.b.executable_sha: unknown key 'executable_sha'"
    assert problem.hint == "did you mean 'executable_sha256'?"
    assert problem.line == 7


def test_duplicate_yaml_keys_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(
            write(tmp_path, MINIMAL + "listen_addr: 127.0.0.1:1\nlisten_addr: 0.0.0.0:1\n"),
            environ={},
        )
    (problem,) = caught.value.problems
    assert "duplicate key 'listen_addr'" in problem.message
    assert problem.line == 4


def test_invalid_yaml_and_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, "a: [1,\nb: 2\n"), environ={})
    assert caught.value.problems[0].line is not None
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_config(write(tmp_path, "- just\n- a list\n"), environ={})
    with pytest.raises(UsageError, match="does not exist"):
        load_config(tmp_path / "absent.yaml", environ={})


def test_expected_measurement_takes_one_or_many(tmp_path: Path) -> None:
    one = "sha256:" + "a" * 64
    many = ["sha384:" + "b" * 96, one]
    config = load_config(
        write(tmp_path, MINIMAL + f"attestation:\n  expected_measurement: {one}\n"), environ={}
    ).model
    assert config.attestation.expected_measurement == (one,)
    config = load_config(
        write(tmp_path, MINIMAL + f"attestation:\n  expected_measurement: {many}\n"), environ={}
    ).model
    assert config.attestation.expected_measurement == tuple(many)


@pytest.mark.parametrize(
    ("text", "host", "port", "loopback"),
    [
        ("127.0.0.1:8443", "127.0.0.1", 8443, True),
        ("localhost:1", "localhost", 1, True),
        ("[::1]:9", "::1", 9, True),
        ("0.0.0.0:8443", "0.0.0.0", 8443, False),  # noqa: S104 - parsed, not bound
        ("[2001:db8::1]:443", "2001:db8::1", 443, False),
        ("gateway.internal:443", "gateway.internal", 443, False),
    ],
)
def test_listen_addresses(text: str, host: str, port: int, loopback: bool) -> None:
    address = parse_listen_addr(text)
    assert (address.host, address.port, address.is_loopback) == (host, port, loopback)
    assert str(address) == text


@pytest.mark.parametrize("text", ["8443", "::1:8443", "[::g]:1", "host:99999", "host:"])
def test_bad_listen_addresses(text: str) -> None:
    with pytest.raises(ValueError, match=r"HOST:PORT|IPv6|port"):
        parse_listen_addr(text)


def test_environment_overrides(tmp_path: Path) -> None:
    environ = {
        "CMCP_DEV_MODE": "1",
        "CMCP_BEARER_TOKEN": "t" * 40,
        "OPAQUE_ATTESTATION_URL": "https://opaque.example/attest",
        "CMCP_DEVMODE": "1",
    }
    loaded = load_config(
        write(tmp_path, MINIMAL + "attestation:\n  providers:\n    opaque: {timeout: 3}\n"),
        environ=environ,
    )
    assert loaded.env.dev_mode
    assert loaded.env.bearer_token is not None
    assert loaded.env.bearer_token.get_secret_value() == "t" * 40
    assert "t" * 40 not in repr(loaded.env)  # the secret never reaches a log line
    assert loaded.model.attestation.providers["opaque"] == {
        "timeout": 3,
        "url": "https://opaque.example/attest",
    }
    assert loaded.env.unknown == ("CMCP_DEVMODE",)
    assert loaded.model.attestation.provider == "opaque"  # the URL chooses OPAQUE


def test_the_opaque_url_conflicts_with_another_named_provider(tmp_path: Path) -> None:
    environ = {"OPAQUE_ATTESTATION_URL": "https://opaque.example/attest"}
    named = write(tmp_path, MINIMAL + "attestation:\n  provider: opaque\n")
    assert load_config(named, environ=environ).model.attestation.provider == "opaque"
    other = write(tmp_path, MINIMAL + "attestation:\n  provider: tpm\n")
    with pytest.raises(ConfigError) as refused:
        load_config(other, environ=environ)
    (problem,) = refused.value.problems
    assert "OPAQUE_ATTESTATION_URL selects the opaque provider" in problem.message
    assert "'tpm'" in problem.message
    assert load_config(other, environ={}).model.attestation.provider == "tpm"


def test_dev_mode_values(tmp_path: Path) -> None:
    for value, expected in (("0", False), ("true", True), ("", False), ("off", False)):
        assert read_environment({"CMCP_DEV_MODE": value})[0].dev_mode is expected
    env, problems = read_environment({"CMCP_DEV_MODE": "maybe"})
    assert not env.dev_mode
    assert "neither 1 nor 0" in problems[0].message
    with pytest.raises(ConfigError, match="environment"):
        load_config(write(tmp_path, MINIMAL), environ={"CMCP_DEV_MODE": "maybe"})


@pytest.mark.parametrize("value", ["1", "'true'", "null", "[true]"])
def test_claims_per_call_is_true_or_false_and_nothing_else(tmp_path: Path, value: str) -> None:
    assert not load_config(write(tmp_path, MINIMAL), environ={}).model.claims.per_call
    on = load_config(write(tmp_path, MINIMAL + "claims:\n  per_call: true\n"), environ={})
    assert on.model.claims.per_call is True
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, MINIMAL + f"claims:\n  per_call: {value}\n"), environ={})
    (problem,) = caught.value.problems
    assert problem.message.startswith("claims.per_call"), problem.message
    assert problem.line == 4
