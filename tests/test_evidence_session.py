"""EvidenceSession: decisions recorded under each enforcement mode, then claimed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cmcp_cli.attestation import software
from cmcp_cli.audit.entry import open_line
from cmcp_cli.audit.session_record import SessionPolicy
from cmcp_cli.audit.store import AuditStore, iter_lines
from cmcp_cli.catalog.model import load_catalog
from cmcp_cli.evidence.attesting import Attestor
from cmcp_cli.evidence.session import EvidenceSession
from cmcp_cli.gateway.enforcement.wiring import authorizer_for, tool_resources
from cmcp_cli.policy.bundle import read_bundle
from cmcp_cli.policy.engine import compile_bundle
from cmcp_cli.policy.request import MessageKind
from tests.support import QUICKSTART

BUNDLE = compile_bundle(read_bundle(QUICKSTART / "policies"))
CATALOG = load_catalog(QUICKSTART / "catalog.json")
TOOLS = {tool.name: tool for tool in tool_resources(CATALOG)}


def session(store: AuditStore, mode: str, record_inputs: str = "full") -> EvidenceSession:
    policy = SessionPolicy(
        bundle_hash=BUNDLE.hash,
        policy_version="1.0.0",
        catalog_hash=CATALOG.hash,
        enforcement_mode=mode,
        data_class_order=("public", "internal", "confidential", "restricted", "secret"),
        record_inputs=record_inputs,
    )
    return EvidenceSession(
        store=store,
        session_id=f"s-{mode}",
        policy=policy,
        attestor=Attestor.load(software.SPEC, "x"),
    )


@pytest.mark.parametrize(
    ("mode", "forwarded"), [("enforcing", False), ("advisory", True), ("silent", True)]
)
def test_enforcement_mode_decides_what_is_forwarded(
    tmp_path: Path, mode: str, forwarded: bool
) -> None:
    with AuditStore(tmp_path / "a.db") as store:
        evidence = session(store, mode)
        verdict = evidence.decide_call(
            authorizer_for(BUNDLE, CATALOG),
            call_id="c1",
            agent_id="anonymous",
            tool=TOOLS["delete_records"],
            arguments={"table": "t"},
        )
        closed = evidence.close()
    assert verdict.decision.effect.value == "deny"
    assert verdict.forwarded is forwarded
    summary = closed.claim["gateway"]["call_summary"]
    assert summary["denied"] == 1
    assert summary["tools_invoked"] == (["delete_records"] if forwarded else [])
    assert closed.claim["trace"]["policy"]["enforcement_mode"] == {"enforcing": "enforce"}.get(
        mode, mode
    )


def test_unrepresentable_arguments_are_recorded_as_a_deny(tmp_path: Path) -> None:
    with AuditStore(tmp_path / "a.db") as store:
        evidence = session(store, "enforcing")
        verdict = evidence.decide_call(
            authorizer_for(BUNDLE, CATALOG),
            call_id="c1",
            agent_id="anonymous",
            tool=TOOLS["get_weather"],
            arguments={"city": {"__entity": {"type": "Agent", "id": "root"}}},
        )
        evidence.close()
    assert verdict.decision.effect.value == "deny"
    assert not verdict.forwarded
    decision = open_line(list(iter_lines(tmp_path / "a.db"))[1])
    assert decision.fields["decision"] == "deny"
    assert "cedar_request" not in decision.fields


def test_hashes_only_keeps_no_request(tmp_path: Path) -> None:
    with AuditStore(tmp_path / "a.db") as store:
        evidence = session(store, "enforcing", record_inputs="hashes")
        evidence.decide_call(
            authorizer_for(BUNDLE, CATALOG),
            call_id="c1",
            agent_id="anonymous",
            tool=TOOLS["get_weather"],
            arguments={"city": "Oslo"},
        )
        evidence.close()
    decision = open_line(list(iter_lines(tmp_path / "a.db"))[1])
    assert decision.fields["decision"] == "allow"
    assert "cedar_request" not in decision.fields
    assert decision.fields["request_sha256"].startswith("sha256:")


def test_arguments_without_canonical_form_are_denied_not_raised(tmp_path: Path) -> None:
    arguments = json.loads('{"city": "\\ud800"}')  # a lone surrogate, which JSON allows
    with AuditStore(tmp_path / "a.db") as store:
        evidence = session(store, "enforcing")
        verdict = evidence.decide_call(
            authorizer_for(BUNDLE, CATALOG),
            call_id="c1",
            agent_id="anonymous",
            tool=TOOLS["get_weather"],
            arguments=arguments,
        )
        evidence.close()
    assert verdict.decision.effect.value == "deny"
    assert not verdict.forwarded
    assert "no canonical JSON form" in verdict.decision.reasons[0]
    decision = open_line(list(iter_lines(tmp_path / "a.db"))[1])
    assert decision.fields["decision"] == "deny"
    assert decision.fields["request_sha256"].startswith("sha256:")


@pytest.mark.parametrize(
    ("mode", "forwarded"), [("enforcing", False), ("advisory", True), ("silent", True)]
)
def test_a_denied_message_follows_the_enforcement_mode_too(
    tmp_path: Path, mode: str, forwarded: bool
) -> None:
    with AuditStore(tmp_path / "a.db") as store:
        evidence = session(store, mode)
        verdict = evidence.decide_message(
            authorizer_for(BUNDLE, CATALOG),
            call_id="m1",
            agent_id="anonymous",
            kind=MessageKind.CREATE_MESSAGE,  # the quickstart permits no sampling
            server="demo",
            target="demo",
            params={"messages": [], "maxTokens": 10},
            data_class="confidential",
            related_call_id="c0",
        )
        closed = evidence.close()
        (decision,) = [
            open_line(line).fields
            for line in iter_lines(tmp_path / "a.db")
            if b'"phase":"decision"' in line
        ]
    assert (verdict.decision.effect.value, verdict.forwarded) == ("deny", forwarded)
    assert decision["kind"] == "create_message" and decision["forwarded"] is forwarded
    assert decision["cedar_request"]["context"]["call_id"] == "c0"
    summary = closed.claim["gateway"]["call_summary"]
    assert summary["by_kind"]["create_message"]["denied"] == 1
    assert summary["tools_invoked"] == []
    # a sampling request forwarded in advisory mode brings the server's data into the session
    assert closed.claim["trace"]["data_class"] == ("confidential" if forwarded else "public")


def test_a_tool_call_is_not_a_message(tmp_path: Path) -> None:
    with AuditStore(tmp_path / "a.db") as store:
        evidence = session(store, "enforcing")
        with pytest.raises(ValueError, match="decide_call"):
            evidence.decide_message(
                authorizer_for(BUNDLE, CATALOG),
                call_id="m1",
                agent_id="anonymous",
                kind=MessageKind.CALL_TOOL,
                server="demo",
                target="get_weather",
                params={},
                data_class="public",
            )
        evidence.close()
