"""SeqRanges behaves as a set of integers while keeping a chain read in order as one range."""

from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from cmcp_cli.audit.ranges import SeqRanges

numbers = st.lists(st.integers(min_value=0, max_value=60), max_size=40)


def ranges_of(values: list[int]) -> SeqRanges:
    ranges = SeqRanges()
    for value in values:
        ranges.add(value)
    return ranges


def test_a_chain_in_order_is_one_range() -> None:
    ranges = ranges_of(list(range(100_000)))
    assert list(ranges.ranges()) == [(0, 99_999)]
    assert len(ranges) == 100_000


@settings(max_examples=400, deadline=None)
@given(numbers, numbers, st.integers(min_value=0, max_value=70))
def test_ranges_agree_with_a_set(first: list[int], second: list[int], probe: int) -> None:
    mine, theirs = ranges_of(first), ranges_of(second)
    assert (probe in mine) == (probe in set(first))
    assert len(mine) == len(set(first))
    assert mine.common(theirs, 5) == sorted(set(first) & set(second))[:5]
    mine.update(theirs)
    assert mine == ranges_of(sorted(set(first) | set(second)))
    spans = list(mine.ranges())
    assert all(end + 1 < start for (_, end), (start, _) in itertools.pairwise(spans))
