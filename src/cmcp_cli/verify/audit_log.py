"""`cmcp verify --audit-log`: the session's chain in the log is intact, and the claim is
the one that chain determines, member by member (`audit.matching.match_claim`), each part
in a named check."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from contextvars import ContextVar
from pathlib import Path
from typing import Any

from cmcp_cli.attestation.api import Check
from cmcp_cli.audit.matching import log_check_names, match_claim
from cmcp_cli.audit.replay import SessionReplay, replay_log


def audit_log_checks(
    document: Mapping[str, Any], gateway_claim: bool, path: Path | None
) -> list[Check]:
    """`audit log`: the session's chain is intact; then one check per part of the claim
    the log determines (`matching.LOG_CHECKS`), each naming the members that differ."""
    if path is None:
        return [Check.skipped("audit log", "no --audit-log given")]
    trace = document["trace"] if gateway_claim else document
    session_id = (
        document["gateway"]["session_id"] if gateway_claim else trace["subject"].rsplit("/", 1)[-1]
    )
    replay = _replayed(path, session_id)
    names = log_check_names(gateway_claim)
    if replay is None:
        reason = f"{path} holds no entries of session {session_id}"
        return [
            Check.failed("audit log", reason),
            *(Check.failed(name, f"not compared: {reason}") for name in names),
        ]
    checks = [_chain_check(replay)]
    match = match_claim(replay, document)
    if match.unmatched is not None:
        return [*checks, *(Check.failed(name, match.unmatched) for name in names)]
    for check in match.checks:
        if check.mismatches:
            checks.append(Check.failed(check.name, "; ".join(m.message for m in check.mismatches)))
        else:
            checks.append(Check.passed(check.name, check.covers))
    return checks


@contextlib.contextmanager
def one_replay_per_log() -> Iterator[None]:
    """Within this block, each session of a log is replayed once, however many claims are
    compared with it: for the claims of one sequence, verified together while the log
    stays as it is."""
    token = _REPLAYS.set({})
    try:
        yield
    finally:
        _REPLAYS.reset(token)


_REPLAYS: ContextVar[dict[tuple[Path, str], SessionReplay | None] | None] = ContextVar(
    "cmcp_replays", default=None
)


def _replayed(path: Path, session_id: str) -> SessionReplay | None:
    replays = _REPLAYS.get()
    if replays is None:
        return replay_log(path, session_id=session_id).get(session_id)
    if (path, session_id) not in replays:
        replays[path, session_id] = replay_log(path, session_id=session_id).get(session_id)
    return replays[path, session_id]


def _chain_check(replay: SessionReplay) -> Check:
    if replay.problems:
        first = replay.problems[0]
        where = (
            f" (first bad seq {replay.first_bad_seq})" if replay.first_bad_seq is not None else ""
        )
        return Check.failed("audit log", f"{first.message}{where}")
    by_kind = replay.state.calls.by_kind
    kinds = ", ".join(f"{name} {by_kind[name].total}" for name in sorted(by_kind)) or "none"
    return Check.passed(
        "audit log",
        f"{replay.state.length} entries from session_start to session_end, every hash and "
        f"link intact (messages by kind: {kinds})",
    )
