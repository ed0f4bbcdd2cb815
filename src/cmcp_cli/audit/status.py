"""Where a replayed session stands: ended, recovered, open, interrupted or truncated.

A chain without session_end has three possible stories, and only the store can tell
them apart: its process is the gateway running on the store now (`open`, nothing wrong),
its process died with it open (`interrupted`: the next gateway on the store recovers it),
or its process stopped cleanly, which closes every session first (`truncated`: entries
were removed). A claim stating a longer chain also says entries were removed. A JSONL
export keeps no process records, so an export's open chain is reported as truncated, with
that said.
"""

from __future__ import annotations

import enum
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

from cmcp_cli.audit.replay import ChainProblem, ProblemKind, SessionReplay


class Status(enum.StrEnum):
    ENDED = "ended"  # closed by its own gateway process
    RECOVERED = "recovered"  # closed by a later process after its own died
    OPEN = "open"  # its process is the live gateway on the store
    INTERRUPTED = "interrupted"  # its process died with it open; not yet recovered
    TRUNCATED = "truncated"  # entries were removed


FINE = frozenset({Status.ENDED, Status.RECOVERED, Status.OPEN})


@dataclass(frozen=True)
class SessionStatus:
    status: Status
    process: str | None  # the gateway process that opened the session
    recovered_by: str | None = None  # the process that closed it after its own died

    def to_json(self) -> dict[str, object]:
        return {
            "status": self.status.value,
            "process": self.process,
            "recovered_by": self.recovered_by,
        }

    def describe(self) -> str:
        if self.status is Status.RECOVERED:
            return (
                f"interrupted in gateway process {self.process}, recovered by gateway "
                f"process {self.recovered_by}"
            )
        if self.status is Status.OPEN:
            return f"open in the running gateway process {self.process}"
        if self.status is Status.INTERRUPTED:
            return f"gateway process {self.process} stopped with it open"
        if self.status is Status.ENDED:
            return f"closed by gateway process {self.process}"
        return "entries were removed"


@dataclass(frozen=True)
class StoreProcesses:
    """What the store says about its gateway processes (see `audit.processes`)."""

    live: str | None  # the process holding the store's lock now
    stopped_cleanly: Collection[str]


def session_status(replay: SessionReplay, processes: StoreProcesses | None) -> SessionStatus:
    """The status of a replayed session, its problems brought in line with it: an open
    session's missing session_end is no problem; an interrupted one's is said as such; a
    truncated one's says how it is known. `processes` is None for a JSONL export."""
    process = _text(replay.start, "process")
    if replay.state.ended:
        recovered = replay.end.get("recovered_by") if replay.end is not None else None
        if isinstance(recovered, Mapping):
            return SessionStatus(Status.RECOVERED, process, _text(recovered, "process"))
        return SessionStatus(Status.ENDED, process)
    if replay.open_end is None:  # no chain at all: only unreadable lines
        return SessionStatus(Status.TRUNCATED, process)
    length = replay.state.length
    # Entries removed (a gap, or a claim stating a longer chain) or otherwise changed: the
    # chain is not one a crash left, and no gateway will recover it.
    damaged = any(p is not replay.open_end for p in replay.problems)
    if processes is None:
        _restate(
            replay,
            ProblemKind.TRUNCATED,
            f"the chain ends at seq {length - 1} without session_end: entries were removed, "
            "or the session was open or interrupted when this was exported (a JSONL export "
            "cannot tell these apart; replay the store with --db)",
        )
        return SessionStatus(Status.TRUNCATED, process)
    if damaged or process is None:
        return SessionStatus(Status.TRUNCATED, process)
    if process == processes.live:
        replay.problems = [p for p in replay.problems if p is not replay.open_end]
        replay.open_end = None
        return SessionStatus(Status.OPEN, process)
    if process in processes.stopped_cleanly:
        _restate(
            replay,
            ProblemKind.TRUNCATED,
            f"the chain ends at seq {length - 1} without session_end, but its gateway process "
            f"{process} stopped cleanly, which closes every session: entries were removed",
        )
        return SessionStatus(Status.TRUNCATED, process)
    _restate(
        replay,
        ProblemKind.INTERRUPTED,
        f"the chain ends at seq {length - 1} without session_end: gateway process {process} "
        "stopped with the session open and it is not recovered yet; start the gateway on "
        "this store to recover it (it reports the session truncated instead when its "
        "claims.dir holds a claim for it)",
    )
    return SessionStatus(Status.INTERRUPTED, process)


def _restate(replay: SessionReplay, kind: ProblemKind, message: str) -> None:
    old = replay.open_end
    if old is None:
        return
    new = ChainProblem(old.session_id, old.seq, kind, message)
    replay.problems = [new if p is old else p for p in replay.problems]
    replay.open_end = new


def _text(record: Mapping[str, Any] | None, name: str) -> str | None:
    value = record.get(name) if record is not None else None
    return value if isinstance(value, str) else None
