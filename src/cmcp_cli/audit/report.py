"""The library behind `cmcp replay-audit`: choose sessions, replay, match, decide again."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cmcp_cli.audit.issuer import issuer_member
from cmcp_cli.audit.logfile import count_log_lines, is_sqlite, read_log_lines
from cmcp_cli.audit.matching import compare_with_claim, recheck_with_own_bundle
from cmcp_cli.audit.processes import gateway_processes, live_process
from cmcp_cli.audit.record_members import SessionRecordError
from cmcp_cli.audit.replay import Progress, SessionReplay, replay_log
from cmcp_cli.audit.status import FINE, SessionStatus, StoreProcesses, session_status
from cmcp_cli.errors import UsageError
from cmcp_cli.policy.bundle import read_bundle
from cmcp_cli.policy.engine import CompiledBundle, compile_bundle
from cmcp_cli.strict_json import read_json_file


@dataclass(frozen=True)
class ReplayRequest:
    log: Path
    expect_sqlite: bool  # --db (True) or --log (False)
    session_id: str | None = None
    all_sessions: bool = False
    claim: Path | None = None
    bundles: tuple[Path, ...] = ()  # each session is re-decided with its own, by hash


@dataclass(frozen=True)
class ReplayReport:
    log: Path
    sessions: tuple[SessionReplay, ...]
    claim_session: str | None
    bundle_hashes: tuple[str, ...]
    statuses: Mapping[str, SessionStatus]  # by session id

    @property
    def ok(self) -> bool:
        """Every chain intact and every session ended, recovered or open."""
        return all(
            not s.problems and self.statuses[s.session_id].status in FINE for s in self.sessions
        )

    def to_json(self) -> dict[str, object]:
        return {
            "log": str(self.log),
            "ok": self.ok,
            "claim_session": self.claim_session,
            "bundle_hashes": list(self.bundle_hashes),
            "sessions": [
                {
                    **s.to_json(),
                    **self.statuses[s.session_id].to_json(),
                    "claim_key_thumbprint": claim_key_thumbprint(s),
                }
                for s in self.sessions
            ],
        }


def claim_key_thumbprint(replay: SessionReplay) -> str | None:
    """The RFC 7638 thumbprint of the key that signs the session's claim, as its log
    records it (`session_start.key_thumbprint`, or the recovering process's in
    `session_end.recovered_by`); None when the log records none. An auditor pins it with
    `cmcp verify --trusted-key`."""
    if replay.start is None:
        return None
    try:
        return issuer_member(replay.start, replay.end or {}, "key_thumbprint")
    except SessionRecordError:
        return None


def log_size(request: ReplayRequest) -> int:
    """How many stored lines the log holds (for a progress bar)."""
    return count_log_lines(request.log)


def replay_audit(request: ReplayRequest, progress: Progress | None = None) -> ReplayReport:
    log = request.log
    if not log.exists():
        raise UsageError(f"audit log {log} does not exist")
    if is_sqlite(log) != request.expect_sqlite:
        wanted = (
            "a SQLite audit store (--db)" if request.expect_sqlite else "a JSONL export (--log)"
        )
        raise UsageError(
            f"{log} is not {wanted}", hint="use --db for the store, --log for an export"
        )
    claim = _read_claim(request.claim) if request.claim else None
    only = request.session_id or (claim["gateway"]["session_id"] if claim else None)
    replays = replay_log(log, session_id=only, progress=progress)
    if not replays:
        target = f"session {only}" if only else "any session"
        raise UsageError(f"{log} holds no entries of {target}")
    if only is None and not request.all_sessions and len(replays) > 1:
        raise UsageError(
            f"{log} holds {len(replays)} sessions",
            hint="pass --session ID for one of them or --all for every one",
        )
    if claim is not None:
        compare_with_claim(replays[str(only)], claim)
    bundles = {bundle.hash: bundle for bundle in map(_compiled, request.bundles)}
    if bundles:
        for replay in replays.values():
            recheck_with_own_bundle(replay, read_log_lines(log, replay.session_id), bundles)
    processes = _store_processes(log) if request.expect_sqlite else None
    statuses = {sid: session_status(replay, processes) for sid, replay in replays.items()}
    return ReplayReport(
        log=log,
        sessions=tuple(replays.values()),
        claim_session=str(only) if claim is not None else None,
        bundle_hashes=tuple(bundles),
        statuses=statuses,
    )


def _compiled(path: Path) -> CompiledBundle:
    return compile_bundle(read_bundle(path))


def _store_processes(store: Path) -> StoreProcesses:
    recorded = gateway_processes(store).values()
    return StoreProcesses(
        live=live_process(store),
        stopped_cleanly={p.process for p in recorded if p.stopped_at is not None},
    )


def _read_claim(path: Path) -> Mapping[str, Any]:
    document = read_json_file(path, "claim")
    if not isinstance(document, Mapping):
        raise UsageError(f"{path} is not a GatewayClaim")
    gateway = document.get("gateway")
    if not isinstance(gateway, Mapping) or not isinstance(gateway.get("session_id"), str):
        raise UsageError(f"{path} is not a GatewayClaim (it has no gateway.session_id)")
    return document
