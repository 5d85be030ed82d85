"""The union-find behind channel groups: batched unions and the one-pass roots give the same partition as
uniting pairs one by one (checked against a plain reference)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from nnic.channels.graph import IdRange, UnionFind


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


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 8), st.lists(st.tuples(st.integers(0, 60), st.integers(0, 60)),
                                                         max_size=10)), min_size=1, max_size=6))
def test_roots_read_between_batches_of_new_ids_and_unions_match_a_reference(steps):
    """Unions applied in several flushes (roots read after each batch, more ids made in between): every read
    gives the reference partition so far, each group's smallest id as its root, and plain ints from ``find``."""
    uf, done = UnionFind(), []
    for n_new, pairs in steps:
        uf.new(n_new)
        n = uf.size
        batch = [(a % n, b % n) for a, b in pairs] if n else []
        uf.union_pairs([a for a, _ in batch], [b for _, b in batch])
        done += batch
        roots = uf.roots()
        assert len(roots) == n
        assert all(roots[r] == r and r <= i for i, r in enumerate(roots))
        assert partition(roots) == reference_partition(n, done)
        assert all(type(uf.find(i)) is int and uf.find(i) == roots[i] for i in range(n))


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(0, 20), min_size=1, max_size=6), st.data())
def test_roots_of_new_ids_are_those_of_each_id(sizes, data):
    """Ids made in several ``new`` calls, some united: a slot's roots (read as a slice) are its ids' roots one
    by one, also after unions that came after the ids were made."""
    from nnic.channels.graph import State

    state = State()
    slots = [state.uf.new(n) for n in sizes]
    n = state.uf.size
    if n:
        pairs = data.draw(st.lists(st.tuples(st.integers(0, n - 1), st.integers(0, n - 1)), max_size=10))
        state.uf.union_pairs([a for a, _ in pairs], [b for _, b in pairs])
    every = state.uf.roots()
    for ids in slots:
        assert state.roots_of(ids).tolist() == [every[i] for i in ids]
        assert state.roots_of(list(ids)).tolist() == [every[i] for i in ids]  # a plain list of the same ids


def test_a_slots_ids_refuse_changes_in_place_and_copy_as_plain_lists():
    import copy
    import pickle

    import pytest

    ids = UnionFind().new(4)
    assert ids == [0, 1, 2, 3]
    for change in (lambda: ids.append(4), lambda: ids.__setitem__(0, 9), lambda: ids.sort(), lambda: ids.pop(),
                   lambda: ids.extend([4])):
        with pytest.raises(TypeError):
            change()
    assert ids == [0, 1, 2, 3]
    mine = list(ids)
    mine.append(4)
    assert mine == [0, 1, 2, 3, 4] and type(ids[1:]) is list and ids + [4] == mine
    assert pickle.loads(pickle.dumps(ids)) == ids and copy.deepcopy(ids) == ids


def test_slots_ids_compare_as_the_lists_they_hold():
    uf = UnionFind()
    a, b = uf.new(3), uf.new(3)
    same = IdRange(a.start, 3)
    assert a == same and not (a != same) and a == [0, 1, 2] and [0, 1, 2] == a and not (a != [0, 1, 2])
    assert a != b and not (a == b) and a != IdRange(a.start, 2) and a != [0, 1] and a != (0, 1, 2)
    assert (a, b) == (IdRange(0, 3), [3, 4, 5]) and [(a, b)] != [(b, a)]


@settings(max_examples=150, deadline=None)
@given(st.lists(st.integers(1, 12), min_size=2, max_size=6), st.data())
def test_unions_of_whole_slots_kept_as_given_match_a_reference(sizes, data):
    """Unions between slots (their ids kept as the slots, not copied), cut to the shorter end, and between
    plain lists, flushed together: the reference partition; and a union-find that asked for the same unions
    as plain lists adopts the first one's record."""
    uf = UnionFind()
    slots = [uf.new(n) for n in sizes]
    n = uf.size
    asked, done = [], []
    for _ in range(data.draw(st.integers(1, 8))):
        i, j = data.draw(st.integers(0, len(slots) - 1)), data.draw(st.integers(0, len(slots) - 1))
        if data.draw(st.booleans()):
            a, b = slots[i], slots[j]
        else:
            a = data.draw(st.lists(st.integers(0, n - 1), min_size=1, max_size=8))
            b = data.draw(st.lists(st.integers(0, n - 1), min_size=len(a), max_size=len(a)))
        uf.union_pairs(a, b)
        asked.append((list(a), list(b)))
        done += list(zip(a, b))
    roots = uf.roots()
    assert partition(roots) == reference_partition(n, done)
    assert all(roots[r] == r and r <= i for i, r in enumerate(roots))
    again = UnionFind()
    again.new(n)
    for a, b in asked:
        again.union_pairs(a, b)
    assert again.adopt(uf.record()) and again.roots() == roots


def test_a_slots_ids_are_its_range_below_at_and_beyond_the_shared_ids(monkeypatch):
    """Slots take their int objects from one shared list up to a cap, and make the rest: the ids are the same
    whether they come from it, from beyond it, or straddle it."""
    from nnic.channels import graph

    monkeypatch.setattr(graph, "_IDS", [])
    monkeypatch.setattr(graph, "_IDS_MAX", 40)
    for start, n in [(0, 0), (0, 3), (5, 20), (30, 10), (35, 10), (40, 5), (100, 7), (0, 39), (2, 1)]:
        ids = IdRange(start, n)
        assert ids == list(range(start, start + n)) and ids.start == start and type(ids[:]) is list
        assert len(graph._IDS) <= 40 and graph._IDS == list(range(len(graph._IDS)))
