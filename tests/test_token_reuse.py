"""One token, one holder: a token that authenticates two agents, or an agent and the
operator (who approves escalated calls), is refused by `cmcp validate-config` and `cmcp
start`, whichever sources it comes from: digests in the config file, variables the config
names, CMCP_BEARER_TOKEN and CMCP_OPERATOR_TOKEN."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support import QUICKSTART, run_cmcp

SHARED = "s" * 40  # the token two holders share
OTHER = "t" * 40


def digest(token: str) -> str:
    return "sha256:" + hashlib.sha256(token.encode()).hexdigest()


# (auth section, environment, the holders the error names)
CASES: dict[str, tuple[dict[str, Any], dict[str, str], tuple[str, ...]]] = {
    "operator env = agent env": (
        {"env_token_agent": "alice"},
        {"CMCP_BEARER_TOKEN": SHARED, "CMCP_OPERATOR_TOKEN": SHARED},
        ("CMCP_OPERATOR_TOKEN", "agent 'alice'", "CMCP_BEARER_TOKEN"),
    ),
    "operator digest = agent token_env": (
        {
            "bearer_tokens": [{"agent": "bob", "token_env": "BOB_TOKEN"}],
            "operator_token_sha256": digest(SHARED),
        },
        {"BOB_TOKEN": SHARED},
        ("auth.operator_token_sha256", "agent 'bob'", "BOB_TOKEN of auth.bearer_tokens[0]"),
    ),
    "operator token_env = agent digest": (
        {
            "bearer_tokens": [{"agent": "carol", "token_sha256": digest(SHARED)}],
            "operator_token_env": "OPS_TOKEN",
        },
        {"OPS_TOKEN": SHARED},
        ("OPS_TOKEN of auth.operator_token_env", "agent 'carol'", "auth.bearer_tokens[0]"),
    ),
    "operator env = agent digest": (
        {"bearer_tokens": [{"agent": "dave", "token_sha256": digest(SHARED)}]},
        {"CMCP_OPERATOR_TOKEN": SHARED},
        ("CMCP_OPERATOR_TOKEN", "agent 'dave'", "auth.bearer_tokens[0]"),
    ),
    "agent env = another agent's digest": (
        {
            "bearer_tokens": [{"agent": "erin", "token_sha256": digest(SHARED)}],
            "env_token_agent": "frank",
        },
        {"CMCP_BEARER_TOKEN": SHARED, "CMCP_OPERATOR_TOKEN": OTHER},
        ("'erin' (auth.bearer_tokens[0])", "'frank' (CMCP_BEARER_TOKEN)"),
    ),
    "agent token_env = another agent's token_env": (
        {
            "bearer_tokens": [
                {"agent": "gina", "token_env": "GINA_TOKEN"},
                {"agent": "hugo", "token_env": "HUGO_TOKEN"},
            ]
        },
        {"GINA_TOKEN": SHARED, "HUGO_TOKEN": SHARED},
        ("'gina' (GINA_TOKEN of auth.bearer_tokens[0])", "'hugo' (HUGO_TOKEN"),
    ),
}


def write_config(folder: Path, auth: dict[str, Any]) -> Path:
    config = yaml.safe_load((QUICKSTART / "cmcp-config.yaml").read_text())
    config.update(
        policy_bundle_path=str(QUICKSTART / "policies"),
        catalog_path=str(QUICKSTART / "catalog.json"),
        audit={"path": str(folder / "audit.db")},
        claims={"dir": str(folder / "claims")},
        auth=auth,
    )
    path = folder / "cmcp-config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.parametrize("case", sorted(CASES))
def test_validate_config_refuses_a_token_with_two_holders(tmp_path: Path, case: str) -> None:
    auth, env, named = CASES[case]
    config = write_config(tmp_path, auth)
    result = run_cmcp("validate-config", "--config", config, "--json", env={**env})
    assert result.returncode == 1, result.stdout
    (error,) = result.json()["errors"]
    assert all(part in error["message"] for part in named), error["message"]
    assert "token of its own" in error["hint"]
    assert SHARED not in result.stdout + result.stderr


def test_distinct_tokens_from_every_source_are_accepted(tmp_path: Path) -> None:
    auth = {
        "bearer_tokens": [
            {"agent": "alice", "token_sha256": digest("a" * 40)},
            {"agent": "bob", "token_env": "BOB_TOKEN"},
            {"agent": "bob", "token_sha256": digest("b" * 40)},  # one agent, two tokens
        ],
        "env_token_agent": "bob",  # and the same token again for bob: one holder
        "operator_token_sha256": digest(OTHER),
    }
    env = {"BOB_TOKEN": "b" * 40, "CMCP_BEARER_TOKEN": "b" * 40, "CMCP_OPERATOR_TOKEN": OTHER}
    result = run_cmcp("validate-config", "--config", write_config(tmp_path, auth), env=env)
    assert result.returncode == 0, result.stderr


def test_an_operator_token_the_gateway_does_not_take_is_named(tmp_path: Path) -> None:
    """The gateway takes the first operator source (CMCP_OPERATOR_TOKEN, then the file's):
    a different token in the file would silently not work, so validate-config says so."""
    config = write_config(tmp_path, {"operator_token_sha256": digest(OTHER)})
    result = run_cmcp(
        "validate-config", "--config", config, "--json", env={"CMCP_OPERATOR_TOKEN": "o" * 40}
    )
    assert result.returncode == 0, result.stdout  # a warning: the gateway still starts
    (warning,) = [w for w in result.json()["warnings"] if "operator_token_sha256" in w["message"]]
    assert warning["message"] == (
        "auth.operator_token_sha256: the operator token of auth.operator_token_sha256 is not "
        "accepted: the gateway takes the operator's token from CMCP_OPERATOR_TOKEN"
    )
    assert warning["line"] is not None
    same = run_cmcp(
        "validate-config", "--config", config, "--json", env={"CMCP_OPERATOR_TOKEN": OTHER}
    )
    assert not [w for w in same.json()["warnings"] if "operator" in w["message"]]


def test_start_refuses_an_operator_token_that_is_also_an_agents(tmp_path: Path) -> None:
    auth, env, _ = CASES["operator digest = agent token_env"]
    config = write_config(tmp_path, auth)
    result = run_cmcp("start", "--config", config, env={**env, "CMCP_DEV_MODE": "1"})
    assert result.returncode == 1
    assert "is also the token of agent 'bob'" in result.stderr
    assert "Traceback" not in result.stderr
    assert SHARED not in result.stderr
    assert not (tmp_path / "audit.db").exists()  # refused before anything was opened
