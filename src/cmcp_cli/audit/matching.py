"""Checking a replayed session against what else claims to describe it: the signed claim
(root, tip, length, counters) and the policy bundle (every recorded decision again)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from cmcp_cli.audit.chain import DECISION_PHASE, DEFAULT_KIND
from cmcp_cli.audit.entry import EntryError, open_line
from cmcp_cli.audit.replay import ProblemKind, SessionReplay
from cmcp_cli.claim.canonical import canonical_bytes
from cmcp_cli.errors import CmcpError, PolicyRequestError
from cmcp_cli.policy.engine import Authorizer, CompiledBundle
from cmcp_cli.policy.request import (
    CedarRequest,
    MessageKind,
    MessageTarget,
    ToolResource,
    entity_of,
)


def recheck_decisions(
    replay: SessionReplay, lines: Iterable[bytes], bundle: CompiledBundle
) -> None:
    """Decide every recorded Cedar request of the session again and report mismatches.

    A bundle whose hash is not the one the session recorded is refused: its decisions
    would prove nothing about this session.
    """
    if replay.bundle_hash != bundle.hash:
        recorded = replay.bundle_hash or "no bundle (its session_start is missing)"
        replay.add(
            ProblemKind.NOT_REPLAYABLE,
            None,
            f"decisions not re-checked: the session recorded {recorded}, "
            f"but {bundle.source.root} hashes to {bundle.hash}",
        )
        return
    authorizers: dict[bytes, Authorizer] = {}
    for line in lines:
        try:
            entry = open_line(line)
        except EntryError:
            continue  # already reported by the chain check
        fields = entry.fields
        if entry.session_id != replay.session_id or fields.get("phase") != DECISION_PHASE:
            continue
        record = fields.get("cedar_request")
        if not isinstance(record, Mapping):
            continue  # recorded with audit.record_inputs: hashes
        _recheck(replay, entry.seq, fields, record, bundle=bundle, authorizers=authorizers)


def _recheck(
    replay: SessionReplay,
    seq: int,
    fields: Mapping[str, Any],
    record: Mapping[str, Any],
    *,
    bundle: CompiledBundle,
    authorizers: dict[bytes, Authorizer],
) -> None:
    try:
        request = CedarRequest.from_json(record)
        entities = record.get("entities", [])
        if not isinstance(entities, list):
            raise PolicyRequestError("recorded entities are not a list")
        found = [entity_of(e) for e in entities]
    except CmcpError as exc:
        replay.add(ProblemKind.NOT_REPLAYABLE, seq, f"seq {seq}: {exc.message}")
        return
    tools = [e for e in found if isinstance(e, ToolResource)]
    targets = [e for e in found if isinstance(e, MessageTarget)]
    mismatch = _entry_request_mismatch(fields, request, targets)
    if mismatch is not None:
        replay.add(ProblemKind.DECISION_MISMATCH, seq, f"seq {seq}: {mismatch}")
        return
    key = canonical_bytes([t.entity_json() for t in tools])
    authorizer = authorizers.get(key)
    if authorizer is None:
        try:
            authorizer = authorizers[key] = bundle.authorizer(tools)
        except CmcpError as exc:  # recorded entities the bundle's schema rejects
            replay.add(ProblemKind.NOT_REPLAYABLE, seq, f"seq {seq}: {exc.message}")
            return
    decision = authorizer.decide(request, targets[0] if targets else None)
    replay.decisions_checked += 1
    recorded = (fields.get("decision"), sorted(fields.get("policy_ids") or []))
    again = (decision.effect.value, sorted(decision.policy_ids))
    if recorded != again:
        replay.add(
            ProblemKind.DECISION_MISMATCH,
            seq,
            f"seq {seq}: recorded {recorded[0]} by {recorded[1] or 'no policy'}, "
            f"but the bundle decides {again[0]} by {again[1] or 'no policy'}",
        )


def _entry_request_mismatch(
    fields: Mapping[str, Any], request: CedarRequest, targets: list[MessageTarget]
) -> str | None:
    """Why a decision entry does not describe the request it recorded: its `kind` is not
    the request's action, or its target and server are not the request's resource. An
    entry that says one thing and proves another is counted under the wrong kind."""
    kind = fields.get("kind", DEFAULT_KIND)
    if request.kind is None or kind != request.kind.value:
        return f"the entry's kind {kind!r} is not the recorded request's action {request.action}"
    if request.context.get("data_class") != fields.get("data_class"):
        return "the entry's data_class is not the one the recorded request carried"
    if request.kind is MessageKind.CALL_TOOL:
        if targets or request.resource.id != fields.get("tool"):
            return "the entry's tool is not the recorded request's resource"
        return None
    if len(targets) != 1:
        return f"a {kind} request records {len(targets)} target entities, not one"
    target = targets[0]
    if (target.type, target.id) != (request.resource.type, request.resource.id):
        return "the recorded target entity is not the request's resource"
    if request.resource.type != request.kind.resource_type:
        return f"a {kind} request names a {request.resource.type}"
    expected_target = target.server if target.type == "Server" else target.id
    if fields.get("target") != expected_target or fields.get("server") != target.server:
        return "the entry's target or server is not the recorded request's resource"
    return None


def compare_with_claim(replay: SessionReplay, claim: Mapping[str, Any]) -> None:
    """Match the replayed chain with what a claim states about it."""
    gateway, trace = _mapping(claim.get("gateway")), _mapping(claim.get("trace"))
    state = replay.state
    stated_chain = _mapping(gateway.get("audit_chain"))
    replayed_chain = state.audit_chain_json()
    for key in ("root", "tip", "length"):
        stated = stated_chain.get(key)
        if stated != replayed_chain[key]:
            seq = _first_missing(state.length, stated) if key == "length" else None
            kind = (
                ProblemKind.TRUNCATED
                if key == "length" and seq is not None
                else ProblemKind.CLAIM_MISMATCH
            )
            replay.add(
                kind,
                seq,
                f"claim states audit_chain.{key} {stated!r}, the log gives {replayed_chain[key]!r}",
            )
    stated_summary = gateway.get("call_summary")
    replayed_summary = state.calls.to_json()
    # A claim without by_kind is one of a gateway that governed tool calls only: it
    # matches a log of tool calls only, on every other count; a log with other kinds
    # never matches it.
    older = isinstance(stated_summary, Mapping) and "by_kind" not in stated_summary
    if older and set(state.calls.by_kind) <= {DEFAULT_KIND}:
        replayed_summary.pop("by_kind")
    if stated_summary != replayed_summary:
        replay.add(
            ProblemKind.CLAIM_MISMATCH,
            None,
            f"claim states call_summary {stated_summary}, the log gives {replayed_summary}",
        )
    if gateway.get("session_id") != replay.session_id:
        replay.add(
            ProblemKind.CLAIM_MISMATCH, None, f"claim is for session {gateway.get('session_id')!r}"
        )
    if _mapping(trace.get("tool_transcript")).get("hash") != state.tip:
        replay.add(
            ProblemKind.CLAIM_MISMATCH, None, "trace.tool_transcript.hash is not the chain tip"
        )


def _mapping(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _first_missing(replayed_length: int, stated: object) -> int | None:
    return replayed_length if type(stated) is int and stated > replayed_length else None
