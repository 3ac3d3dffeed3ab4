"""The compiled merge tree (emseg.pipeline.stitching.merge_tree) against the pure-Python loop it
replaced: the same levels, bit for bit, on graphs with ties, joined edges and hubs."""

from __future__ import annotations

import heapq

import numpy as np
import pytest

from emseg.pipeline.stitching.agglomeration import Graph, agglomerate
from emseg.pipeline.stitching.merge_tree import merge_levels


def _reference(n: int, ends: np.ndarray, total: np.ndarray, count: np.ndarray, joined: np.ndarray) -> np.ndarray:
    """The loop ``agglomerate`` ran before it was compiled: dict adjacency, heapq, member lists."""
    total, count, joined = total.tolist(), count.tolist(), joined.tolist()
    ends = [[int(a), int(b)] for a, b in ends.tolist()]
    members = [[e] for e in range(len(ends))]
    adj: list[dict[int, int]] = [{} for _ in range(n)]
    for e, (a, b) in enumerate(ends):
        adj[a][b] = adj[b][a] = e
    current = [-1.0 if j else 1.0 - t / c for t, c, j in zip(total, count, joined)]
    heap = [(s, e) for e, s in enumerate(current)]
    heapq.heapify(heap)
    alive = [True] * len(ends)
    level = 0.0
    out = np.full(len(ends), np.nan)
    while heap:
        s, e = heapq.heappop(heap)
        if not alive[e] or s != current[e]:
            continue
        alive[e] = False
        x, y = ends[e]
        if len(adj[x]) < len(adj[y]):
            x, y = y, x
        level = max(level, s)
        out[members[e]] = level
        del adj[x][y], adj[y][x]
        for z, e2 in adj[y].items():
            del adj[z][y]
            e1 = adj[x].get(z)
            if e1 is None:
                adj[x][z] = adj[z][x] = e2
                ends[e2] = [x, z]
                continue
            total[e1] += total[e2]
            count[e1] += count[e2]
            members[e1].extend(members[e2])
            alive[e2] = False
            joined[e1] = joined[e1] or joined[e2]
            current[e1] = -1.0 if joined[e1] else 1.0 - total[e1] / count[e1]
            heapq.heappush(heap, (current[e1], e1))
        adj[y] = {}
    return out


def _random_graph(rng: np.random.Generator, n: int, m: int, levels: int, hub: bool) -> tuple:
    a = rng.integers(0, n, m)
    b = rng.integers(0, n, m)
    if hub:  # one region touches a third of the others: merges into it are many and long
        b[: m // 3] = 0
    keep = a != b
    key = np.unique(np.minimum(a, b)[keep] * n + np.maximum(a, b)[keep])
    ends = np.stack([key // n, key % n], axis=1)
    count = rng.integers(1, 20, len(ends)).astype(np.float64)
    # few distinct mean affinities, so that many scores tie exactly
    total = count * rng.integers(0, levels + 1, len(ends)) / levels
    joined = rng.random(len(ends)) < 0.05
    return ends, total, count, joined


@pytest.mark.parametrize("seed", range(6))
def test_merge_levels_equal_the_python_loop(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 400))
    ends, total, count, joined = _random_graph(rng, n, int(n * rng.uniform(1, 6)), levels=int(rng.integers(2, 9)),
                                               hub=seed % 2 == 0)
    before = total.copy()
    got = merge_levels(n, ends, total, count, joined)
    assert np.array_equal(total, before)  # inputs untouched
    expected = _reference(n, ends, total, count, joined)
    assert not np.isnan(expected).any()
    assert np.array_equal(got, expected)


def test_agglomerate_on_a_real_block_graph_equals_the_python_loop():
    from emseg.pipeline.stitching.agglomeration import affinities_from_labels, fragments, region_graph

    rng = np.random.default_rng(3)
    labels = np.zeros((24, 40, 40), np.uint32)
    labels[:, :20], labels[:, 20:] = 1, 2
    labels[8:16, 5:15, 5:30] = 3
    affs = np.clip(0.15 + 0.7 * affinities_from_labels(labels) + rng.normal(0, 0.2, (3, *labels.shape)), 0, 1)
    frags, n = fragments(affs.astype(np.float32), seed_min_distance=1.0)
    graph = region_graph(frags, affs.astype(np.float32))
    assert len(graph) > 100
    ends = np.stack([graph.u, graph.v], axis=1).astype(np.int64) - 1
    expected = _reference(n, ends, graph.total.astype(np.float64), graph.count.astype(np.float64),
                          np.zeros(len(graph), bool))
    assert np.array_equal(agglomerate(graph), np.minimum(expected.astype(np.float32), 1))


def test_merge_levels_of_no_edges():
    assert merge_levels(3, np.zeros((0, 2), np.int64), [], [], []).shape == (0,)


@pytest.mark.parametrize("seed", range(4))
def test_pair_table_agrees_with_a_dict(seed):
    # the merge tree's (region, region) -> edge table: inserts and deletes on a 16-slot table, with
    # probe runs that wrap around its end, checked against a dict after every step
    from emseg.pipeline.stitching import merge_tree

    rng = np.random.default_rng(seed)
    keys = np.full(16, merge_tree._EMPTY, np.int64)
    values = np.empty(16, np.int64)
    shift = 64 - 4
    live: dict[int, int] = {}
    wrapped = 0
    for step in range(3000):
        key = int(rng.integers(0, 40))
        slot = merge_tree._find(keys, key, shift)
        assert (slot >= 0) == (key in live)
        if slot >= 0:
            assert values[slot] == live.pop(key)
            merge_tree._delete(keys, values, slot, shift)
        elif len(live) < 8:  # at most half full, as in the merge tree
            keys[-1 - slot], values[-1 - slot] = key, step
            live[key] = step
            wrapped += -1 - slot < merge_tree._home(key, shift)
        assert sorted(k for k in keys.tolist() if k != merge_tree._EMPTY) == sorted(live)
        for k, v in live.items():
            assert values[merge_tree._find(keys, k, shift)] == v
    assert wrapped > 0
