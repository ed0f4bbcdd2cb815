"""Governed messages of every kind in the audit chain: entries, by-kind counts, replay of
every recorded decision from a real SQLite store, and tampering with kinds and counts."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import io
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest

from cmcp_cli.attestation import software
from cmcp_cli.attestation.api import CheckStatus
from cmcp_cli.attestation.manager import load_providers
from cmcp_cli.audit.entry import seal
from cmcp_cli.audit.logfile import export_jsonl
from cmcp_cli.audit.matching import compare_with_claim, recheck_decisions
from cmcp_cli.audit.replay import ProblemKind, SessionReplay, replay_chains
from cmcp_cli.audit.session_record import SessionPolicy
from cmcp_cli.audit.store import AuditStore
from cmcp_cli.catalog.model import load_catalog
from cmcp_cli.claim.keys import ClaimKey
from cmcp_cli.claim.model import sign_claim
from cmcp_cli.config import CmcpConfig
from cmcp_cli.evidence.attesting import Attestor
from cmcp_cli.evidence.session import EvidenceSession
from cmcp_cli.gateway.enforcement.messages import close_gate, fail_gate, open_gate, refusal
from cmcp_cli.gateway.enforcement.wiring import authorizer_for, tool_resources
from cmcp_cli.policy.bundle import read_bundle
from cmcp_cli.policy.engine import Authorizer, compile_bundle
from cmcp_cli.policy.request import MessageKind, ToolResource
from cmcp_cli.verify.claim import VerifyOptions, verify_document
from tests.support import QUICKSTART

BUNDLE = compile_bundle(read_bundle(QUICKSTART / "policies"))
CATALOG = load_catalog(QUICKSTART / "catalog.json")
TOOLS = {tool.name: tool for tool in tool_resources(CATALOG)}
ORDER = ("public", "internal", "confidential", "restricted", "secret")
CARD = "4111 1111 1111 1111"
Lines = list[bytes]


@dataclass
class Runtime:
    """The runtime members a gate reads, from the quickstart's real bundle and catalog."""

    authorizer: Authorizer
    tools: Mapping[str, ToolResource]
    config: CmcpConfig


class Registry:
    """The session registry's part a gate uses: entries durable when the block exits."""

    def __init__(self) -> None:
        self.runtime = Runtime(
            authorizer_for(BUNDLE, CATALOG),
            TOOLS,
            CmcpConfig.model_validate({"policy_bundle_path": ".", "catalog_path": "."}),
        )

    @contextlib.asynccontextmanager
    async def durably(self) -> AsyncIterator[None]:
        yield  # the recorder waits for each entry's fsync outside deferred durability


@dataclass(frozen=True)
class Policy:
    """The policy a session was opened under: the quickstart's."""

    authorizer: Authorizer


@dataclass
class Session:
    agent: str
    evidence: EvidenceSession
    policy: Policy
    calls: int = 0

    def next_call_id(self) -> str:
        self.calls += 1
        return f"{self.evidence.session_id}/{self.calls}"


@dataclass
class Recorded:
    db: Path
    claim: dict[str, Any]
    key: ClaimKey
    answers: dict[str, Any]

    def lines(self) -> Lines:
        buffer = io.BytesIO()
        export_jsonl(self.db, buffer)
        return buffer.getvalue().splitlines()


async def governed_session(evidence: EvidenceSession) -> dict[str, Any]:
    """One of each kind through the gates, around a tool call."""
    sessions = Registry()
    session = Session("anonymous", evidence, Policy(sessions.runtime.authorizer))
    answers: dict[str, Any] = {}
    call = evidence.decide_call(
        sessions.runtime.authorizer,
        call_id="tool-1",
        agent_id="anonymous",
        tool=TOOLS["get_weather"],
        arguments={"city": "Paris"},
    )
    assert call.forwarded
    evidence.outcome(call_id="tool-1", response={"content": []}, latency_us=5)
    listing = await open_gate(
        sessions, session, kind=MessageKind.LIST_TOOLS, server="demo", target="demo", params={}
    )
    await close_gate(sessions, session, listing, {"result": {"tools": []}})
    read = await open_gate(
        sessions,
        session,
        kind=MessageKind.READ_RESOURCE,
        server="demo",
        target="notes://desk/today",
        params={"uri": "notes://desk/today"},
    )
    text = {"uri": "notes://desk/today", "text": "write to ada@example.org"}
    answers["read"] = await close_gate(
        sessions, session, read, {"jsonrpc": "2.0", "id": 7, "result": {"contents": [text]}}
    )
    prompt = await open_gate(
        sessions,
        session,
        kind=MessageKind.GET_PROMPT,
        server="demo",
        target="weather_report",
        params={"name": "weather_report", "arguments": {"city": "Oslo"}},
    )
    await fail_gate(sessions, session, prompt, "upstream went away", "prompts/get")
    sampling = await open_gate(
        sessions,
        session,
        kind=MessageKind.CREATE_MESSAGE,
        server="demo",
        target="demo",
        params={"messages": [], "maxTokens": 50},
        related_call_id="tool-1",
    )
    answers["sampling"] = refusal(sampling, "cmcp-1")
    elicit = await open_gate(
        sessions,
        session,
        kind=MessageKind.ELICIT,
        server="demo",
        target="demo",
        params={"message": "card number?", "requestedSchema": {"properties": {"card": {}}}},
        related_call_id="tool-1",
    )
    answer = {"result": {"action": "accept", "content": {"card": CARD}}}
    answers["elicit"] = await close_gate(sessions, session, elicit, answer)
    roots = await open_gate(
        sessions,
        session,
        kind=MessageKind.LIST_ROOTS,
        server="demo",
        target="demo",
        params={},
        related_call_id="tool-1",
    )
    await close_gate(sessions, session, roots, {"result": {"roots": []}})
    answers["forwarded"] = [g.forwarded for g in (listing, read, prompt, sampling, elicit, roots)]
    return answers


@pytest.fixture
def recorded(tmp_path: Path) -> Recorded:
    db = tmp_path / "audit.db"
    key = ClaimKey.generate()
    policy = SessionPolicy(
        bundle_hash=BUNDLE.hash,
        policy_version="1.0.0",
        catalog_hash=CATALOG.hash,
        enforcement_mode="enforcing",
        data_class_order=ORDER,
    )
    with AuditStore(db) as store:
        evidence = EvidenceSession(
            store=store,
            session_id="msgs",
            policy=policy,
            attestor=Attestor.load(software.SPEC, "x"),
            key=key,
        )
        answers = asyncio.run(governed_session(evidence))
        closed = evidence.close()
    return Recorded(db, closed.claim, key, answers)


def counts(total: int, **decided: int) -> dict[str, int]:
    base = {"allowed": 0, "denied": 0, "redacted": 0, "escalated": 0, "faulted": 0}
    return {"total": total, **base, **decided}


def test_each_kind_is_decided_recorded_and_counted(recorded: Recorded) -> None:
    assert recorded.answers["forwarded"] == [True, True, True, False, True, True]
    read = recorded.answers["read"]["result"]["contents"][0]["text"]
    assert read == "write to [REDACTED:email]"
    assert recorded.answers["elicit"]["result"]["content"] == {"card": "[REDACTED:card]"}
    denied = recorded.answers["sampling"]["error"]
    assert denied["code"] == -32040
    assert denied["data"]["kind"] == "create_message"
    assert "sampling/createMessage" in denied["message"]

    summary = recorded.claim["gateway"]["call_summary"]
    assert summary["by_kind"] == {
        "call_tool": counts(1, allowed=1),
        "create_message": counts(1, denied=1),
        "elicit": counts(1, redacted=1),
        "get_prompt": counts(1, allowed=1, faulted=1),
        "list_roots": counts(1, allowed=1),
        "list_tools": counts(1, allowed=1),
        "read_resource": counts(1, redacted=1),
    }
    assert (summary["total"], summary["faulted"]) == (7, 1)
    assert summary["tools_invoked"] == ["get_weather"]  # only tool calls invoke tools

    entries = [orjson.loads(line) for line in recorded.lines()]
    decisions = [e for e in entries if e.get("phase") == "decision"]
    tool_entry, *message_entries = decisions
    assert "kind" not in tool_entry and tool_entry["tool"] == "get_weather"
    assert [(e["kind"], e["target"], e["server"]) for e in message_entries] == [
        ("list_tools", "demo", "demo"),
        ("read_resource", "notes://desk/today", "demo"),
        ("get_prompt", "weather_report", "demo"),
        ("create_message", "demo", "demo"),
        ("elicit", "demo", "demo"),
        ("list_roots", "demo", "demo"),
    ]
    assert all("tool" not in e for e in message_entries)
    assert [e.get("related_call_id") for e in message_entries[3:]] == ["tool-1"] * 3
    (fault,) = [e for e in entries if e["type"] == "fault"]
    assert fault["kind"] == "get_prompt"
    redacted = [e["redactions"] for e in entries if "redactions" in e]
    assert redacted == [{"email": 1}, {"card": 1}]


def replayed(lines: Lines) -> SessionReplay:
    (replay,) = replay_chains(lines).values()
    return replay


def test_replay_decides_every_kind_again_and_matches_the_claim(recorded: Recorded) -> None:
    lines = recorded.lines()
    replay = replayed(lines)
    compare_with_claim(replay, recorded.claim)
    recheck_decisions(replay, lines, BUNDLE)
    assert replay.problems == []
    assert replay.decisions_checked == 7
    assert replay.to_json()["call_summary"] == recorded.claim["gateway"]["call_summary"]


def reseal(lines: Lines, at: int, change: Any) -> Lines:
    """A writer with the log rewrites an entry and re-hashes every link after it."""
    result: Lines = []
    prev = None
    for index, line in enumerate(lines):
        fields = orjson.loads(line)
        fields.pop("hash")
        if index == at:
            change(fields)
        if prev is not None:
            fields["prev"] = prev
        entry = seal(fields)
        prev = entry.hash
        result.append(entry.line)
    return result


def index_of(lines: Lines, kind: str) -> int:
    return next(
        i
        for i, line in enumerate(lines)
        if orjson.loads(line).get("kind") == kind and orjson.loads(line)["phase"] == "decision"
    )


@pytest.mark.parametrize(
    ("kind", "change"),
    [
        ("create_message", lambda f: f.update(kind="list_roots")),  # a denied sampling hidden
        ("read_resource", lambda f: f.update(target="notes://elsewhere")),
        ("read_resource", lambda f: f.update(data_class="public")),
        ("list_tools", lambda f: f.pop("kind")),  # passed off as a tool call
    ],
)
def test_a_resealed_entry_that_misstates_its_message_is_caught(
    recorded: Recorded, kind: str, change: Any
) -> None:
    lines = recorded.lines()
    at = index_of(lines, kind)
    tampered = reseal(lines, at, change)
    replay = replayed(tampered)
    recheck_decisions(replay, tampered, BUNDLE)
    assert [(p.kind, p.seq) for p in replay.problems] == [(ProblemKind.DECISION_MISMATCH, at)]


def verify_claim(claim: dict[str, Any], db: Path | None = None) -> list[str]:
    options = VerifyOptions(allow_software=True, audit_log=db)
    report = verify_document(claim, options, load_providers(plugins=[]))
    return [f"{c.name}: {c.reason}" for c in report.checks if c.status is CheckStatus.FAIL]


def test_the_claim_verifies_against_its_log(recorded: Recorded) -> None:
    assert verify_claim(recorded.claim, recorded.db) == []


def test_by_kind_that_does_not_add_up_fails_verification(recorded: Recorded) -> None:
    claim = copy.deepcopy(recorded.claim)
    del claim["signature"]
    claim["gateway"]["call_summary"]["by_kind"]["create_message"]["denied"] = 0  # hide it
    failures = verify_claim(sign_claim(claim, recorded.key))
    assert any("by_kind.create_message decisions do not add up" in f for f in failures)
    assert any("by_kind denied counts do not add up" in f for f in failures)


def test_by_kind_that_adds_up_but_disagrees_with_the_log_fails(recorded: Recorded) -> None:
    claim = copy.deepcopy(recorded.claim)
    del claim["signature"]
    by_kind = claim["gateway"]["call_summary"]["by_kind"]
    by_kind["sampling"] = by_kind.pop("create_message")  # still adds up, under no kind
    failures = verify_claim(sign_claim(claim, recorded.key), recorded.db)
    assert any("'sampling', which is not a message kind" in f for f in failures)

    swapped = copy.deepcopy(recorded.claim)  # well-formed, adds up, but not what happened
    del swapped["signature"]
    by_kind = swapped["gateway"]["call_summary"]["by_kind"]
    by_kind["list_roots"], by_kind["create_message"] = counts(1, denied=1), counts(1, allowed=1)
    failures = verify_claim(sign_claim(swapped, recorded.key), recorded.db)
    assert len(failures) == 1
    assert failures[0].startswith("log: counters: gateway.call_summary.by_kind.create_message.")
    assert (
        "gateway.call_summary.by_kind.list_roots.denied: the claim states 1, the log gives 0"
        in (failures[0])
    )


def test_a_claim_without_by_kind_is_read_but_matches_no_log(
    tmp_path: Path, recorded: Recorded
) -> None:
    """A claim as a gateway governing tool calls only wrote it is still well-formed; but a
    log that records its claim's issuer is one of a gateway that counts by kind, so the
    log determines `by_kind` and a claim without it does not match, even for tool calls
    only."""
    older = copy.deepcopy(recorded.claim)
    del older["signature"]
    del older["gateway"]["call_summary"]["by_kind"]
    failures = verify_claim(sign_claim(older, recorded.key), recorded.db)
    assert len(failures) == 1 and failures[0].startswith(
        "log: counters: gateway.call_summary.by_kind: the claim states nothing"
    )

    db = tmp_path / "tools-only.db"
    key = ClaimKey.generate()
    policy = SessionPolicy(
        bundle_hash=BUNDLE.hash,
        policy_version="1.0.0",
        catalog_hash=CATALOG.hash,
        enforcement_mode="enforcing",
        data_class_order=ORDER,
    )
    with AuditStore(db) as store:
        evidence = EvidenceSession(
            store=store,
            session_id="tools-only",
            policy=policy,
            attestor=Attestor.load(software.SPEC, "x"),
            key=key,
        )
        evidence.decide_call(
            authorizer_for(BUNDLE, CATALOG),
            call_id="c1",
            agent_id="anonymous",
            tool=TOOLS["delete_records"],
            arguments={"table": "t"},
        )
        claim = evidence.close().claim
    del claim["signature"]
    del claim["gateway"]["call_summary"]["by_kind"]
    assert verify_claim(sign_claim(claim, key)) == []
    (failure,) = verify_claim(sign_claim(claim, key), db)
    assert failure.startswith("log: counters: gateway.call_summary.by_kind: the claim states")
