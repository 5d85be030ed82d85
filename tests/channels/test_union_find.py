"""The union-find behind channel groups: batched unions and the one-pass roots give the same partition as
uniting pairs one by one (checked against a plain reference)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from nnic.channels.graph import UnionFind


def reference_partition(n: int, pairs: list[tuple[int, int]]) -> set[frozenset[int]]:
    label = list(range(n))
    for a, b in pairs:
        old, new = label[a], label[b]
        label = [new if x == old else x for x in label]
    groups: dict[int, set[int]] = {}
    for i, x in enumerate(label):
        groups.setdefault(x, set()).add(i)
    return {frozenset(g) for g in groups.values()}


def partition(roots: list[int]) -> set[frozenset[int]]:
    groups: dict[int, set[int]] = {}
    for i, r in enumerate(roots):
        groups.setdefault(r, set()).add(i)
    return {frozenset(g) for g in groups.values()}


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 40).flatmap(lambda n: st.tuples(
    st.just(n), st.lists(st.lists(st.tuples(st.integers(0, n - 1), st.integers(0, n - 1)), max_size=12),
                         max_size=6))))
def test_batched_unions_and_roots_match_a_reference(case):
    n, batches = case
    uf = UnionFind()
    uf.new(n)
    for batch in batches:
        uf.union_pairs([a for a, _ in batch], [b for _, b in batch])
    roots = uf.roots()
    assert roots == [uf.find(i) for i in range(n)]  # one pass agrees with find
    assert all(roots[r] == r and r <= i for i, r in enumerate(roots))  # a root is its group's smallest id
    assert partition(roots) == reference_partition(n, [p for batch in batches for p in batch])
