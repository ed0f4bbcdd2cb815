"""Replaying audit chains: every hash, every link, every discrepancy located.

Replay reads stored lines in stored order. Per session it checks that each line is a
canonical entry whose content hashes to its `hash`, that `seq` counts up from 0 without
gaps, repeats or reordering, that each `prev` is the hash before it, that the chain
starts with `session_start` on the genesis hash and ends with `session_end` with nothing
after it, and that every message an ended session forwarded has its outcome or its
fault; and it rebuilds the same `ChainState` the recorder built, so root, tip, length and
the call summary can be matched with a claim (see `matching`).

A log is replayed as consecutive segments. Each segment is checked on its own, starting
at the first entry it holds of each session; `stitch` then joins a segment to what came
before it and checks the seams: the sequence number and `prev` across the boundary, and
the chain's start in its first segment, an entry after an earlier segment's
`session_end`, and answers in one segment to decisions in an earlier one. `replay_log`
checks the slices of a large log file in parallel worker processes with the same code.
"""

from __future__ import annotations

import copy
import enum
import itertools
import multiprocessing
import os
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import orjson

from cmcp_cli.audit.chain import DECISION_PHASE, DEFAULT_KIND, OUTCOME_PHASE, ChainState
from cmcp_cli.audit.entry import GENESIS_PREV, EntryError, EntryType, SealedEntry, open_line
from cmcp_cli.audit.logfile import (
    SLICE_BYTES,
    SLICE_ROWS,
    Locate,
    LogSlice,
    log_slices,
    read_log_lines,
)
from cmcp_cli.audit.ranges import SeqRanges

MAX_PROBLEMS_PER_SESSION = 50
UNKNOWN_SESSION = "(unreadable)"
SEGMENT_LINES = 50_000
Progress = Callable[[int], None]


class ProblemKind(enum.StrEnum):
    EDITED = "edited"  # the content does not hash to the entry's hash
    MALFORMED = "malformed"  # not a canonical, well-formed entry
    GAP = "gap"  # a sequence number is missing (deleted, or moved later)
    DUPLICATE = "duplicate"  # two entries claim one sequence number (a fork or an insert)
    OUT_OF_ORDER = "out_of_order"  # an entry appears after a later one
    BROKEN_LINK = "broken_link"  # `prev` is not the hash before it
    BAD_START = "bad_start"  # the chain does not open with session_start at seq 0
    TRUNCATED = "truncated"  # the chain ends without session_end, or before the claim's tip
    AFTER_END = "after_end"  # an entry follows session_end: no claim covers it
    UNANSWERED = "unanswered"  # an ended session forwarded a message with no outcome or fault
    INTERRUPTED = "interrupted"  # the session's process died with it open (see `status`)
    CLAIM_MISMATCH = "claim_mismatch"
    DECISION_MISMATCH = "decision_mismatch"
    NOT_REPLAYABLE = "not_replayable"  # decisions that cannot be decided again


@dataclass(frozen=True, slots=True)
class ChainProblem:
    session_id: str
    seq: int | None
    kind: ProblemKind
    message: str

    def to_json(self) -> dict[str, object]:
        return {
            "session_id": self.session_id,
            "seq": self.seq,
            "kind": self.kind.value,
            "message": self.message,
        }


@dataclass(frozen=True, slots=True)
class FirstEntry:
    """The first entry of a session within a segment: where its seam is checked."""

    seq: int
    prev: str
    type: str
    hash: str


class Pending(NamedTuple):
    """A forwarded decision that has, so far, neither an outcome nor a fault."""

    seq: int
    kind: str  # the decision's message kind


@dataclass(frozen=True)
class IssuedClaim:
    """A `claim` entry of the chain and the chain's state right after it: what the claim
    it fixes is matched with (`matching.match_claim`)."""

    fields: Mapping[str, Any]
    state: ChainState


@dataclass
class SessionReplay:
    session_id: str
    state: ChainState
    problems: list[ChainProblem] = field(default_factory=list)
    bundle_hash: str | None = None
    start: Mapping[str, Any] | None = None  # the session_start entry's fields, once read
    end: Mapping[str, Any] | None = None  # the (first) session_end entry's fields, once read
    decisions_checked: int = 0
    # The chain's `claim` entries by their seq (claims issued while the session went on),
    # each with a copy of the chain's state: kept only when one session is replayed
    # (`session_id`, as for matching a claim), so replaying a whole log stays bounded.
    issued: dict[int, IssuedClaim] = field(default_factory=dict, repr=False)
    truncated_report: bool = False
    first: FirstEntry | None = None
    seen: SeqRanges = field(default_factory=SeqRanges, repr=False)
    # Forwarded decisions without outcome or fault, by call_id: while a session is open,
    # its calls in flight; once it ended, each is a problem (see `_assemble`).
    pending: dict[str, Pending] = field(default_factory=dict, repr=False)
    # call_ids this segment answered whose decision it does not hold: an earlier
    # segment's, matched by `stitch`.
    answered_earlier: set[str] = field(default_factory=set, repr=False)
    # The problem that says the chain has no session_end, so a caller that knows why it
    # has none (a live or an interrupted gateway process) can put its reason instead.
    open_end: ChainProblem | None = field(default=None, repr=False)

    @property
    def first_bad_seq(self) -> int | None:
        located = [p.seq for p in self.problems if p.seq is not None]
        return min(located) if located else None

    def add(self, kind: ProblemKind, seq: int | None, message: str) -> None:
        if len(self.problems) < MAX_PROBLEMS_PER_SESSION:
            self.problems.append(ChainProblem(self.session_id, seq, kind, message))
        else:
            self.truncated_report = True

    def to_json(self) -> dict[str, object]:
        return {
            "session_id": self.session_id,
            "ok": not self.problems,
            "first_bad_seq": self.first_bad_seq,
            "audit_chain": self.state.audit_chain_json(),
            "call_summary": self.state.calls.to_json(),
            "data_class": self.state.max_data_class,
            "drift_detected": self.state.drift_detected,
            "ended": self.state.ended,
            "bundle_hash": self.bundle_hash,
            "decisions_checked": self.decisions_checked,
            "problems": [p.to_json() for p in self.problems],
            "problems_truncated": self.truncated_report,
        }


def replay_chains(
    lines: Iterable[bytes],
    *,
    session_id: str | None = None,
    progress: Progress | None = None,
    segment_lines: int = SEGMENT_LINES,
) -> dict[str, SessionReplay]:
    """Check every session in `lines` (or only `session_id`), in first-seen order, in
    this process. For a log file, `replay_log` checks slices in parallel processes."""
    results = (
        (len(batch), replay_segment(batch, start, session_id))
        for start, batch in _segments(lines, segment_lines)
    )
    return _assemble(results, progress)


def replay_log(
    path: Path,
    *,
    session_id: str | None = None,
    progress: Progress | None = None,
    workers: int | None = None,
    slice_bytes: int = SLICE_BYTES,
    slice_rows: int = SLICE_ROWS,
) -> dict[str, SessionReplay]:
    """Check the sessions of a log file. With more than one slice and `workers` > 1 (the
    default is one per CPU, at most 4), each worker process reads and checks its own
    slice, so no log bytes pass between processes; otherwise it runs in this process."""
    workers = _default_workers() if workers is None else workers
    slices = log_slices(path, session_id, slice_bytes=slice_bytes, slice_rows=slice_rows)
    if len(slices) < 2 or workers < 2 or threading.active_count() != 1:
        lines = read_log_lines(path, session_id)
        return replay_chains(lines, session_id=session_id, progress=progress)
    # Forked, so no caller needs a `__main__` guard; only without other threads, since a
    # fork copies no thread but every lock.
    context = multiprocessing.get_context("fork")
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        results = pool.map(_replay_slice, slices, itertools.repeat(session_id))
        return _assemble(results, progress)


def _replay_slice(log_slice: LogSlice, only: str | None) -> tuple[int, dict[str, SessionReplay]]:
    lines, locate = log_slice.read()
    return len(lines), replay_segment(lines, only=only, locate=locate)


def _default_workers() -> int:
    return min(os.cpu_count() or 1, 4)


def _assemble(
    results: Iterable[tuple[int, dict[str, SessionReplay]]], progress: Progress | None
) -> dict[str, SessionReplay]:
    """Stitch segment results in log order, then report chains left without an end."""
    sessions: dict[str, SessionReplay] = {}
    for count, segment in results:
        for replay in segment.values():
            stitch(sessions, replay)
        if progress is not None:
            progress(count)
    for replay in sessions.values():
        if replay.state.length and not replay.state.ended:
            problem = ChainProblem(
                replay.session_id,
                replay.state.length,
                ProblemKind.TRUNCATED,
                f"the chain ends at seq {replay.state.length - 1} without session_end: "
                "later entries were removed, or the session is still open",
            )
            replay.problems.append(problem)  # even past the cap: the end is always said
            replay.open_end = problem
        elif replay.state.ended and not replay.problems:
            # Only in an intact chain: where entries were edited, removed or reordered,
            # the missing answers are that tampering, already reported where it begins.
            for call_id, pending in sorted(replay.pending.items(), key=lambda item: item[1]):
                replay.add(
                    ProblemKind.UNANSWERED,
                    pending.seq,
                    f"seq {pending.seq}: {pending.kind} {call_id} was forwarded, but the "
                    "session ended with neither its outcome nor its fault",
                )
    return sessions


def _segments(lines: Iterable[bytes], size: int) -> Iterator[tuple[int, list[bytes]]]:
    iterator = iter(lines)
    start = 1
    while batch := list(itertools.islice(iterator, size)):
        yield start, batch
        start += len(batch)


def replay_segment(
    lines: list[bytes], start: int = 1, only: str | None = None, locate: Locate | None = None
) -> dict[str, SessionReplay]:
    """Check one run of consecutive lines; each session starts at its first entry here.

    `locate` names where the i-th line is (a file's byte offset, a store's row); by
    default it is line `start + i`.
    """
    sessions: dict[str, SessionReplay] = {}
    for index, line in enumerate(lines):
        try:
            entry = open_line(line)
        except EntryError as exc:
            where = locate(index) if locate is not None else f"line {start + index}"
            _unreadable(sessions, line, where, exc, only)
            continue
        if only is None or entry.session_id == only:
            _link(_session(sessions, entry.session_id), entry, keep_issued=only is not None)
    return sessions


def _session(sessions: dict[str, SessionReplay], session_id: str) -> SessionReplay:
    replay = sessions.get(session_id)
    if replay is None:
        replay = sessions[session_id] = SessionReplay(session_id, ChainState(session_id=session_id))
    return replay


def _link(replay: SessionReplay, entry: SealedEntry, *, keep_issued: bool = False) -> None:
    state = replay.state
    seq = entry.seq
    if replay.first is None:  # the seam with earlier segments is checked by `stitch`
        replay.first = FirstEntry(seq, entry.prev, entry.type, entry.hash)
        state.length, state.tip = seq, entry.prev
    expected = state.next_seq
    if state.ended:
        replay.add(
            ProblemKind.AFTER_END,
            seq,
            f"seq {seq}: a {entry.type} entry after session_end, which no claim covers",
        )
    if seq in replay.seen:
        replay.add(ProblemKind.DUPLICATE, seq, f"a second entry claims seq {seq}: the chain forks")
        return
    if seq < expected:
        replay.add(
            ProblemKind.OUT_OF_ORDER, seq, f"seq {seq} appears after seq {expected - 1}: reordered"
        )
        replay.seen.add(seq)
        return
    if seq > expected:
        replay.add(ProblemKind.GAP, expected, _missing(expected, seq))
    elif entry.prev != state.tip:
        replay.add(
            ProblemKind.BROKEN_LINK,
            seq,
            f"seq {seq}: prev is {entry.prev}, but the entry before it hashes to {state.tip}",
        )
    if entry.type == EntryType.SESSION_START and replay.start is None:
        replay.start = entry.fields
        value = entry.fields.get("bundle_hash")
        replay.bundle_hash = value if isinstance(value, str) else None
    elif entry.type == EntryType.SESSION_END and replay.end is None:
        replay.end = entry.fields
    replay.seen.add(seq)
    # Counting goes on from what is there, so one bad entry does not hide the rest.
    state.length = seq
    state.apply(entry)
    if keep_issued and entry.type == EntryType.CLAIM and seq not in replay.issued:
        replay.issued[seq] = IssuedClaim(entry.fields, copy.deepcopy(state))
    _track_answers(replay, entry)


_ANSWERING_TYPES = frozenset({EntryType.CALL.value, EntryType.FAULT.value})


def _track_answers(replay: SessionReplay, entry: SealedEntry) -> None:
    """Keep the forwarded decisions still waiting for their outcome or fault."""
    kind = entry.type
    if kind not in _ANSWERING_TYPES:
        return
    fields = entry.fields
    call_id = fields.get("call_id")
    if not isinstance(call_id, str):
        return
    phase = fields.get("phase") if kind == EntryType.CALL else None
    if phase == DECISION_PHASE:
        if fields.get("forwarded") is True:
            message = fields.get("kind", DEFAULT_KIND)
            replay.pending[call_id] = Pending(
                entry.seq, message if isinstance(message, str) else "?"
            )
    elif (phase == OUTCOME_PHASE or kind == EntryType.FAULT) and replay.pending.pop(
        call_id, None
    ) is None:
        replay.answered_earlier.add(call_id)


def _missing(expected: int, seq: int) -> str:
    missing = f"{expected}" if seq == expected + 1 else f"{expected} to {seq - 1}"
    return f"seq {missing} missing before seq {seq}"


def _unreadable(
    sessions: dict[str, SessionReplay],
    line: bytes,
    place: str,
    exc: EntryError,
    only: str | None,
) -> None:
    fields = _loose_fields(line)
    session = fields.get("session_id")
    session = session if isinstance(session, str) else None
    if only is not None and session != only:
        return
    replay = _session(sessions, session or UNKNOWN_SESSION)
    seq = fields.get("seq")
    seq = seq if type(seq) is int else None
    kind = ProblemKind.EDITED if "edited" in str(exc) else ProblemKind.MALFORMED
    where = f"seq {seq}" if seq is not None else place
    replay.add(kind, seq if seq is not None else replay.state.next_seq, f"{where}: {exc}")
    claimed, prev = fields.get("hash"), fields.get("prev")
    if kind is not ProblemKind.EDITED or seq is None or not isinstance(claimed, str):
        return
    # Keep linking after an edited entry from the hash it claims, so that one edit is
    # reported once instead of as a broken link on every entry after it.
    if replay.first is None:
        replay.first = FirstEntry(seq, str(prev), str(fields.get("type")), claimed)
        replay.state.length = seq
    if seq == replay.state.next_seq:
        replay.seen.add(seq)
        replay.state.length = seq + 1
        replay.state.tip = claimed


def _loose_fields(line: bytes) -> dict[str, object]:
    try:
        fields = orjson.loads(line)
    except orjson.JSONDecodeError:
        return {}
    return fields if isinstance(fields, dict) else {}


def stitch(sessions: dict[str, SessionReplay], later: SessionReplay) -> None:
    """Join a segment's replay of a session to what came before, checking the seam."""
    earlier = sessions.get(later.session_id)
    if earlier is None:
        sessions[later.session_id] = later
        later.answered_earlier.clear()  # no earlier segment: answers to no decision
        _check_start(later)
        return
    first = later.first
    if first is not None and earlier.first is not None:
        expected = earlier.state.next_seq
        if earlier.state.ended:
            later.add(
                ProblemKind.AFTER_END,
                first.seq,
                f"seq {first.seq}: a {first.type} entry after session_end, which no claim covers",
            )
        if first.seq in earlier.seen:
            later.add(ProblemKind.DUPLICATE, first.seq, f"a second entry claims seq {first.seq}")
        elif first.seq < expected:
            later.add(
                ProblemKind.OUT_OF_ORDER,
                first.seq,
                f"seq {first.seq} appears after seq {expected - 1}",
            )
        elif first.seq > expected:
            later.add(ProblemKind.GAP, expected, _missing(expected, first.seq))
        elif first.prev != earlier.state.tip:
            later.add(
                ProblemKind.BROKEN_LINK,
                first.seq,
                f"seq {first.seq}: prev is {first.prev}, but the entry before it hashes to "
                f"{earlier.state.tip}",
            )
        repeated = earlier.seen.common(later.seen, MAX_PROBLEMS_PER_SESSION + 1)
        for seq in [seq for seq in repeated if seq != first.seq][:MAX_PROBLEMS_PER_SESSION]:
            later.add(ProblemKind.DUPLICATE, seq, f"a second entry claims seq {seq}")
    elif earlier.first is None and first is not None:  # earlier held only unreadable lines
        earlier.first = first
        _check_start(earlier)
    for problem in later.problems:
        earlier.add(problem.kind, problem.seq, problem.message)
    earlier.truncated_report |= later.truncated_report
    earlier.bundle_hash = earlier.bundle_hash or later.bundle_hash
    earlier.start = earlier.start if earlier.start is not None else later.start
    earlier.end = earlier.end if earlier.end is not None else later.end
    earlier.seen.update(later.seen)
    for call_id in later.answered_earlier:
        earlier.pending.pop(call_id, None)
    earlier.pending.update(later.pending)
    if later.first is not None:
        if earlier.state.root is None:
            earlier.state.root = later.state.root
        for seq, issued in later.issued.items():  # their state counted from this segment on
            whole = copy.deepcopy(earlier.state)
            whole.absorb(issued.state)
            earlier.issued.setdefault(seq, IssuedClaim(issued.fields, whole))
        earlier.state.absorb(later.state)


def _check_start(replay: SessionReplay) -> None:
    first = replay.first
    if first is None:
        return
    if first.seq != 0:
        replay.add(ProblemKind.BAD_START, 0, _missing(0, first.seq))
    elif first.type != EntryType.SESSION_START or first.prev != GENESIS_PREV:
        replay.add(
            ProblemKind.BAD_START, 0, "seq 0 is not a session_start linked to the genesis hash"
        )
