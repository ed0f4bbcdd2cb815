"""Sets of sequence numbers kept as ranges, so replay memory does not grow with a chain.

A chain read in order is one range however long it is; only tampering (gaps, repeats,
reordering) adds ranges, one per discontinuity.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterator


class SeqRanges:
    """Sorted, disjoint, non-adjacent closed ranges of non-negative integers."""

    __slots__ = ("_ends", "_starts")

    def __init__(self) -> None:
        self._starts: list[int] = []
        self._ends: list[int] = []

    def __contains__(self, seq: int) -> bool:
        index = bisect_right(self._starts, seq) - 1
        return index >= 0 and seq <= self._ends[index]

    def __len__(self) -> int:
        return sum(end - start + 1 for start, end in self.ranges())

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SeqRanges):
            return NotImplemented
        return self._starts == other._starts and self._ends == other._ends

    __hash__ = None  # type: ignore[assignment]  # mutable

    def __repr__(self) -> str:
        return f"SeqRanges({list(self.ranges())})"

    def ranges(self) -> Iterator[tuple[int, int]]:
        return zip(self._starts, self._ends, strict=True)

    def add(self, seq: int) -> None:
        ends = self._ends
        if ends and ends[-1] == seq - 1:  # the next entry of a chain read in order
            ends[-1] = seq
            return
        self.add_range(seq, seq)

    def add_range(self, start: int, end: int) -> None:
        """Add `start`..`end` inclusive, merging whatever it touches or overlaps."""
        starts, ends = self._starts, self._ends
        first = bisect_right(ends, start - 2)  # the first range that ends at start - 1 or later
        last = bisect_right(starts, end + 1)  # one past the last range starting by end + 1
        if first < last:
            start = min(start, starts[first])
            end = max(end, ends[last - 1])
        starts[first:last] = [start]
        ends[first:last] = [end]

    def update(self, other: SeqRanges) -> None:
        for start, end in other.ranges():
            self.add_range(start, end)

    def common(self, other: SeqRanges, limit: int) -> list[int]:
        """The first `limit` numbers in both sets, in ascending order."""
        found: list[int] = []
        mine, theirs = list(self.ranges()), list(other.ranges())
        i = j = 0
        while i < len(mine) and j < len(theirs) and len(found) < limit:
            low = max(mine[i][0], theirs[j][0])
            high = min(mine[i][1], theirs[j][1])
            found.extend(range(low, min(high, low + limit - len(found) - 1) + 1))
            if mine[i][1] < theirs[j][1]:
                i += 1
            else:
                j += 1
        return found
