"""``agglomeration.enclosed``: segments that one neighbour encloses merge into it after agglomeration.

A constructed volume holds two cells side by side (a confident boundary between them) and two
"mitochondria" in the left cell whose faces with it have affinity 0.2 (score 0.8: above the
threshold 0.7, below the rules' ``max_score`` 0.85): one fully inside (an inclusion), one touching
the volume's face (mostly enclosed: the majority rule). The rules must merge exactly those, and
nothing across the confident boundary; the pipeline must apply them the same for any block shape.
"""

from __future__ import annotations

import numpy as np
import pytest

from emseg.pipeline.stitching.agglomeration import affinities_from_labels
from emseg.pipeline.stitching.inclusions import enclosed_merges, outside_faces, segment
from emseg.pipeline.stitching.small import small_merges

SHAPE = (24, 24, 24)
A, B, INSIDE, AT_FACE = 1, 2, 3, 4


def _cells() -> np.ndarray:
    labels = np.full(SHAPE, A, np.uint32)
    labels[:, :, 12:] = B
    z, y, x = np.indices(SHAPE)
    labels[(z - 12) ** 2 + (y - 12) ** 2 + (x - 5) ** 2 <= 9] = INSIDE  # a ball inside A
    labels[0:4, 16:20, 3:7] = AT_FACE  # a box in A on the z = 0 face
    return labels


def _faces_set(labels: np.ndarray, between, value: float) -> np.ndarray:
    """The labels' binary affinities, with ``value`` on the faces where ``between(a, b)`` (the labels
    of a voxel and of its predecessor along an axis) is True."""
    affs = affinities_from_labels(labels)
    for axis in range(3):
        hi = [slice(None)] * 3
        lo = [slice(None)] * 3
        hi[axis] = slice(1, None)
        lo[axis] = slice(None, -1)
        affs[(axis, *hi)][between(labels[tuple(hi)], labels[tuple(lo)])] = value
    return affs


def _soft_affinities(labels: np.ndarray, organelle_face: float = 0.2) -> np.ndarray:
    """1 inside an object, 0 between the two cells, ``organelle_face`` between an organelle and its cell."""
    return _faces_set(labels, lambda a, b: ((a >= INSIDE) & (b == A)) | ((b >= INSIDE) & (a == A)), organelle_face)


def _objects(seg: np.ndarray, labels: np.ndarray) -> set[frozenset[int]]:
    """The partition of ``seg`` in terms of the constructed objects."""
    groups: dict[int, set[int]] = {}
    for s, g in zip(seg.ravel().tolist(), labels.ravel().tolist()):
        groups.setdefault(s, set()).add(g)
    return {frozenset(g) for g in groups.values()}


def test_enclosed_organelles_merge_into_their_cell_and_nothing_else():
    labels = _cells()
    affs = _soft_affinities(labels)
    opts = {"method": "zwatershed"}
    assert _objects(segment(affs, 0.7, inclusions=False, majority=None, **opts), labels) == \
        {frozenset({A}), frozenset({B}), frozenset({INSIDE}), frozenset({AT_FACE})}
    # the inclusion rule takes the ball; the box touches the volume's face, so it is no inclusion
    assert _objects(segment(affs, 0.7, inclusions=True, majority=None, **opts), labels) == \
        {frozenset({A, INSIDE}), frozenset({B}), frozenset({AT_FACE})}
    # the majority rule takes the box too (80 of its 96 faces touch A)
    assert _objects(segment(affs, 0.7, **opts), labels) == {frozenset({A, INSIDE, AT_FACE}), frozenset({B})}
    # faces that score above max_score are a confident boundary: nothing merges
    assert _objects(segment(affs, 0.7, max_score=0.75, **opts), labels) == \
        {frozenset({A}), frozenset({B}), frozenset({INSIDE}), frozenset({AT_FACE})}
    # binary affinities (the labels oracle): an object inside another stays apart
    assert _objects(segment(affinities_from_labels(labels), 0.7, **opts), labels) == \
        {frozenset({A}), frozenset({B}), frozenset({INSIDE}), frozenset({AT_FACE})}


def test_inclusions_follow_the_block_cut_tree():
    # 1 touches outside; 2 lies in 1; 3 and 4 lie in 2 and touch each other; 5 touches 1 and outside
    u = np.array([1, 2, 2, 3, 1])
    v = np.array([2, 3, 4, 4, 5])
    count = np.array([50, 10, 10, 2, 20])
    total = count * 0.25  # score 0.75 everywhere
    none = np.zeros(5, bool)
    merged = enclosed_merges(u, v, count, none, np.array([1, 5]), np.array([30, 30]), majority=None, total=total)
    assert merged.tolist() == [True, True, True, True, False]  # 2, 3, 4 all end in 1; 5 stays
    # ids are arbitrary: relabelled nodes give the same merges (the rules never look at id order)
    perm = {1: 900, 2: 7, 3: 55, 4: 3, 5: 12}
    pu, pv = np.array([perm[x] for x in u]), np.array([perm[x] for x in v])
    again = enclosed_merges(pu, pv, count, none, np.array([900, 12]), np.array([30, 30]), majority=None, total=total)
    assert again.tolist() == merged.tolist()
    # an edge that agglomeration merged already is not reported again
    assert not enclosed_merges(u, v, count, np.array([True, False, False, False, False]), np.array([1, 5]),
                               np.array([30, 30]), majority=None, total=total)[0]


def test_majority_needs_more_than_the_fraction_and_a_larger_neighbour():
    # 2 shares 60 faces with 1 and 40 with 3, and has no faces outside; 1 and 3 touch outside
    u, v = np.array([1, 2, 1]), np.array([2, 3, 3])
    total = np.array([60, 40, 30]) * 0.25
    outside = (np.array([1, 3]), np.array([100, 300]))
    hit = enclosed_merges(u, v, np.array([60, 40, 30]), np.zeros(3, bool), *outside, inclusions=False,
                          majority=0.5, total=total)
    assert hit.tolist() == [True, False, False]
    assert not enclosed_merges(u, v, np.array([60, 40, 30]), np.zeros(3, bool), *outside, inclusions=False,
                               majority=0.7, total=total).any()
    # outside faces count in the surface: 60 of 60 + 40 + 40 is not more than half
    assert not enclosed_merges(u, v, np.array([60, 40, 30]), np.zeros(3, bool), np.array([1, 3, 2]),
                               np.array([100, 300, 40]), inclusions=False, majority=0.5, total=total).any()
    with pytest.raises(ValueError, match="majority"):
        enclosed_merges(u, v, np.array([60, 40, 30]), np.zeros(3, bool), *outside, majority=0.3)


def _majority_by_hand(u, v, count, total, merged, out_keys, out_count, fraction, max_score):
    """The majority rule read off its definition, on the fragments: segments as sets, every
    contact summed edge by edge in each round (the library groups segment pairs once instead)."""
    group = {int(x): {int(x)} for x in np.r_[u, v, out_keys]}
    def join(a, b):
        ga, gb = group[a], group[b]
        if ga is not gb:
            ga |= gb
            for x in gb:
                group[x] = ga
    for a, b, m in zip(u, v, merged):
        if m:
            join(int(a), int(b))
    first = {x: min(g) for x, g in group.items()}  # the agglomeration's segments
    while True:
        of = {x: min(g) for x, g in group.items()}
        contact, faces, surface = {}, {}, {}
        for a, b, c, t in zip(u, v, count, total):
            sa, sb = of[int(a)], of[int(b)]
            if sa == sb:
                continue
            for x, y in ((sa, sb), (sb, sa)):
                contact[x, y] = contact.get((x, y), 0) + c
                faces[x, y] = faces.get((x, y), 0.0) + t
                surface[x] = surface.get(x, 0) + c
        for k, c in zip(out_keys, out_count):
            surface[of[int(k)]] = surface.get(of[int(k)], 0) + c
        moves = []
        for x in sorted(surface):
            best = [(c, -y) for (a, y), c in contact.items() if a == x]
            if not best:
                continue
            c, y = max(best)
            y = -y
            if c > fraction * surface[x] and surface[x] < surface[y] and 1 - faces[x, y] / c <= max_score:
                moves.append((x, y))
        if not moves:
            return np.array([of[int(a)] == of[int(b)] and first[int(a)] != first[int(b)] for a, b in zip(u, v)])
        for x, y in moves:
            join(x, y)


@pytest.mark.parametrize("seed", range(4))
def test_majority_over_many_edges_per_pair_equals_its_definition(seed):
    """Random region graphs with several fragment edges between the same segments."""
    rng = np.random.default_rng(seed)
    side = 8  # fragments on an 8 x 8 grid, each touching its grid neighbours through 1-3 edges
    pairs = [(i * side + j + 1, i * side + j + 2) for i in range(side) for j in range(side - 1)] + \
        [(i * side + j + 1, (i + 1) * side + j + 1) for i in range(side - 1) for j in range(side)]
    repeat = rng.integers(1, 4, len(pairs))
    u = np.repeat([a for a, _ in pairs], repeat)
    v = np.repeat([b for _, b in pairs], repeat)
    e = len(u)
    count = rng.integers(1, 10**6, e)  # no two contacts alike: ties are broken by segment ids, which differ here
    total = count * rng.uniform(0.0, 1.0, e)
    merged = rng.random(e) < 0.1
    out_keys, out_count = np.arange(1, side + 1), rng.integers(1, 10**6, side)  # the first row touches outside
    got = enclosed_merges(u, v, count, merged, out_keys, out_count, inclusions=False, majority=0.5, total=total,
                          max_score=0.9)
    want = _majority_by_hand(u, v, count, total, merged, out_keys, out_count, 0.5, 0.9)
    assert got.any() and np.array_equal(got, want)


def test_outside_faces_counts_region_faces_and_voxels_without_data():
    labels = np.zeros((2, 3, 3), np.uint32)
    labels[:, :, :2] = 1
    labels[:, :, 2] = 2
    labels[0, 0, 0] = 0  # no data
    ids, n = outside_faces(labels, [(2, 1)])  # the last x plane is on the region's face
    assert ids.tolist() == [1, 2]
    assert n.tolist() == [3, 6]  # 1: three faces next to the no-data voxel; 2: its six voxels on the face
    ids, n = outside_faces(labels, [], beyond={(0, -1): np.ones((1, 3, 3), bool)})
    assert dict(zip(ids.tolist(), n.tolist())) == {1: 5 + 3, 2: 3}


def test_small_segments_merge_along_their_best_contact_unless_it_is_confident():
    """agglomeration.small: a splinter of a cell behind a soft false boundary (score 0.75, above the
    threshold 0.7) joins its cell; a tiny object behind a confident boundary (score 1) stays, and so
    does a large piece behind the same soft boundary as the splinter (both sides over min_size)."""
    A, B, SPLINTER, TINY, PIECE = 1, 2, 5, 6, 7
    labels = np.full(SHAPE, A, np.uint32)
    labels[:, :, 12:] = B
    labels[:12, :, 12:] = PIECE  # 12 x 24 x 12 = 3456 voxels of B behind a soft boundary
    labels[0:8, 0:8, 0:2] = SPLINTER  # 128 voxels of A on the volume's faces
    labels[16:19, 10:13, 16:19] = TINY  # 27 voxels inside B, a true object
    soft = [(A, SPLINTER), (B, PIECE)]
    affs = _faces_set(labels, lambda a, b: np.any([((a == x) & (b == y)) | ((a == y) & (b == x)) for x, y in soft],
                                                  axis=0), 0.25)
    opts = {"method": "zwatershed", "inclusions": False, "majority": None}
    assert _objects(segment(affs, 0.7, **opts), labels) == {frozenset({k}) for k in (A, B, SPLINTER, TINY, PIECE)}
    assert _objects(segment(affs, 0.7, min_size=1000, small_max_score=0.8, **opts), labels) == \
        {frozenset({A, SPLINTER}), frozenset({B}), frozenset({TINY}), frozenset({PIECE})}
    # a larger min_size takes the 3456-voxel piece too; the confident boundary still keeps the tiny object
    assert _objects(segment(affs, 0.7, min_size=5000, small_max_score=0.8, **opts), labels) == \
        {frozenset({A, SPLINTER}), frozenset({B, PIECE}), frozenset({TINY})}


def test_small_merges_grow_groups_and_check_their_input():
    # a chain of small fragments 1-2-3 (300 voxels each) beside a large 4: best contacts first;
    # 1+2 (600) is still small and takes 3 (900), still small, so it takes 4 as well
    u, v = np.array([1, 2, 3]), np.array([2, 3, 4])
    count = np.array([10, 10, 10])
    total = np.array([9.0, 8.0, 5.0])  # scores 0.1, 0.2, 0.5
    keys, sizes = np.array([1, 2, 3, 4]), np.array([300, 300, 300, 5000])
    none = np.zeros(3, bool)
    assert small_merges(u, v, total, count, none, keys, sizes, min_size=1000, max_score=0.8).tolist() == [True] * 3
    # with min_size 600, 1+2 (600) is no longer small, but 3 (300) is: it joins them along its best
    # contact (score 0.2 before 0.5), and the group (900) then leaves 4 alone
    assert small_merges(u, v, total, count, none, keys, sizes, min_size=600, max_score=0.8).tolist() == \
        [True, True, False]
    # edges merged already are not returned; max_score stops the contact with 4
    assert small_merges(u, v, total, count, np.array([True, False, False]), keys, sizes, min_size=1000,
                        max_score=0.4).tolist() == [False, True, False]
    assert not small_merges(u, v, total, count, none, keys, sizes, min_size=0, max_score=1.0).any()
    with pytest.raises(ValueError, match="min_size"):
        small_merges(u, v, total, count, none, keys, sizes, min_size=-1, max_score=1.0)
    with pytest.raises(ValueError, match="one value per edge"):
        small_merges(u, v[:2], total, count, none, keys, sizes, min_size=1, max_score=1.0)


@pytest.mark.parametrize("block", [(24, 24, 24), (8, 8, 8), (16, 8, 12)])
def test_pipeline_merges_enclosed_segments_for_any_block_shape(tmp_path, dask_address, block):
    """Through the real pipeline (zarr in, precomputed out, a Dask cluster): the constructed cells as
    a label input (``model.kind: labels``: affinity 0 between objects, score 1), with ``max_score`` 1
    so that the rules may cross them. Blocks of 8³ and 16 x 8 x 12 cut both organelles; the result is
    the one-block result. Switching the rules off reruns only union-find and relabel."""
    from emseg.tasks.driver.run import segment as run
    from tests.conftest import read_output, run_config, same_partition, write_zarr

    labels = _cells()
    url = write_zarr(tmp_path / "cells.zarr", labels, chunks=(8, 8, 8))
    out = tmp_path / "out"
    base = dict(backend={"name": "affinities", "model": {"kind": "labels"}},
                blocks={"shape": list(block), "halo": [1, 1, 1]}, write={"chunk_shape": [4, 4, 4]})
    first = run(run_config(url, out, dask_address, agglomeration={"scope": "global", "enclosed": {"max_score": 1.0}},
                           **base), progress=False)
    merged = labels.copy()
    merged[labels >= INSIDE] = A
    assert first["segments"] == 2 and same_partition(read_output(out), merged)
    off = run(run_config(url, out, dask_address, agglomeration={"scope": "global", "enclosed": None}, **base),
              progress=False)
    assert off["stages"]["1-segment"]["ran"] == 0 and off["stages"]["2-seams"]["ran"] == 0
    assert off["segments"] == 4 and same_partition(read_output(out), labels)
    # the default max_score (0.85) keeps affinity-0 faces: the labels come back (the oracle holds)
    default = run(run_config(url, out, dask_address, agglomeration={"scope": "global"}, **base), progress=False)
    assert default["segments"] == 4 and default["stages"]["1-segment"]["ran"] == 0
    # agglomeration.small alone (max_score 1 to cross the label faces) takes both organelles as well:
    # each is under 200 voxels and touches only the left cell; the cells are larger and stay apart
    small = run(run_config(url, out, dask_address, agglomeration={
        "scope": "global", "enclosed": None, "small": {"min_size": 200, "max_score": 1.0}}, **base), progress=False)
    assert small["stages"]["1-segment"]["ran"] == 0 and small["stages"]["2-seams"]["ran"] == 0
    assert small["segments"] == 2 and same_partition(read_output(out), merged)
    # blockwise scope: each 2 x 2 x 2 group makes the rules' merges from its hood; in 8³ blocks
    # (3 x 3 x 3) the last group's hood is 16³ of the 24³ volume, and both organelles still merge
    bw = tmp_path / "blockwise"
    blockwise = run(run_config(url, bw, dask_address, keep_scratch=True,
                               agglomeration={"scope": "blockwise", "enclosed": {"max_score": 1.0}}, **base), progress=False)
    assert blockwise["segments"] == 2 and same_partition(read_output(bw), merged)
    # run.json counts the rules' merges, blockwise (summed over the level-1 groups) as globally
    assert first["rule_merges"]["enclosed_merges"] > 0 and first["rule_merges"]["small_merges"] == 0
    assert blockwise["rule_merges"] == first["rule_merges"]
    # each group's decisions were stored once for each of its blocks (uf/hood/, kept here by keep_scratch)...
    from emseg.pipeline.io.scratch import Scratch

    assert len(Scratch(str(bw)).list_keys("uf/hood/")) == blockwise["blocks"]["total"]
    # ...and a rerun of stage 3 with the rules off does not reuse them
    plain = run(run_config(url, bw, dask_address, keep_scratch=True,
                           agglomeration={"scope": "blockwise", "enclosed": None}, **base), progress=False)
    assert plain["stages"]["2-seams"]["ran"] == 0 and plain["stages"]["3-unionfind"]["ran"] > 0
    assert plain["segments"] == 4 and same_partition(read_output(bw), labels)
    assert plain["rule_merges"] == {"small_merges": 0}


@pytest.mark.parametrize("scope", ["global", "blockwise"])
def test_seam_audit_counts_the_rules_merges_as_merged(tmp_path, dask_address, scope):
    """The seam audit's ``merged`` flag is what the run did: the organelles' contacts with the cell
    across block seams score 1 (label faces), so only the enclosed rule merges them."""
    from emseg.tasks.driver.run import segment as run
    from tests.conftest import run_config, write_zarr

    url = write_zarr(tmp_path / "cells.zarr", _cells(), chunks=(8, 8, 8))
    merged = {}
    for enclosed in ({"max_score": 1.0}, None):
        out = tmp_path / f"out_{enclosed is None}"
        done = run(run_config(url, out, dask_address, backend={"name": "affinities", "model": {"kind": "labels"}},
                              blocks={"shape": [8, 8, 8], "halo": [1, 1, 1]}, write={"chunk_shape": [4, 4, 4]},
                              agglomeration={"scope": scope, "enclosed": enclosed},
                              postprocess={"pyramid_levels": 0, "meshes": False, "segment_properties": False,
                                           "seam_audit_margin": 1.0, "seam_audit_limit": 100000}),
                   progress=False)
        audit = done["postprocess"]["seam_audit"]
        assert audit["points"] == audit["candidates"] > 0
        merged[enclosed is None] = audit["merged"]
    assert merged[False] > merged[True]


def test_blockwise_rules_wait_for_every_neighbourhood_they_read(tmp_path):
    """Blockwise scope with the rules on: a level-1 union-find group reads the edges of every block in
    its blocks' (and their backward neighbours') hoods (``BlockGrid.hood``), so it must come after all
    of those blocks' seam tasks in the streamed graph; without the rules, only its own and backward.
    A seam task comes after its hood's stage-1 blocks and its group's first seam task, which scores
    the group's edges."""
    import dataclasses

    from emseg.pipeline.stitching.resume import all_items
    from emseg.pipeline.stitching.unionfind import children
    from emseg.tasks.driver import graph
    from emseg.tasks.driver.run import validate
    from tests.conftest import blobs, run_config, write_zarr

    write_zarr(tmp_path / "in.zarr", blobs((24, 32, 40), sigma=2.0, seed=4), chunks=(8, 8, 8))
    p = validate(run_config(f"zarr://{tmp_path}/in.zarr", tmp_path / "out", None,
                            blocks={"shape": [8, 8, 8], "halo": [2, 2, 2]}))
    for rules in (True, False):
        ctx = dataclasses.replace(p.ctx, boundary=True, global_agglomeration=False, threshold=0.5,
                                  enclosed={"inclusions": True, "majority": 0.5, "max_score": 0.85} if rules else None,
                                  small={"min_size": 10, "max_score": 0.8} if rules else None)
        grid = ctx.grid  # 3 x 4 x 5 blocks
        seen: set = set()
        for task in graph.streaming_tasks(ctx, all_items(grid)):
            missing = [d for d in task.deps if d not in seen]
            assert not missing, f"{task.stage} {task.item} yielded before {missing}"
            seen.add((task.stage, task.item))
            if task.stage == "2-seams":
                block = grid.block(task.item)
                leader = grid.group_members(grid.group(block))[0].id
                want = {("1-segment", b.id) for b in grid.hood(block)} | ({("2-seams", leader)} if leader != block.id else set())
                assert set(task.deps) == want
            if task.stage != "3-unionfind" or not str(task.item).startswith("up-1-"):
                continue
            group = tuple(int(g) for g in str(task.item)[len("up-1-"):].split("_"))
            members = {grid.block_id(k) for k in children(group, 1, grid.grid_shape)}
            sources = members | {nb.id for m in members for _, d, nb in grid.neighbours(grid.block(m)) if d < 0}
            if rules:
                sources = {b.id for s in sources for b in grid.hood(grid.block(s))}
            assert {item for stage, item in task.deps} == sources


def test_scratch_without_fragment_sizes_is_refused_before_any_work(tmp_path, dask_address):
    """Edges written by an emseg from before agglomeration.small (no fragment sizes) are refused with
    one clear error before anything runs, and the finished output is left as it was."""
    from emseg.pipeline.errors import ConfigError
    from emseg.pipeline.io.scratch import Scratch
    from emseg.tasks.driver.run import segment as run
    from tests.conftest import read_output, run_config, same_partition, write_zarr

    labels = _cells()
    url = write_zarr(tmp_path / "cells.zarr", labels, chunks=(8, 8, 8))
    out = tmp_path / "out"
    base = dict(backend={"name": "affinities", "model": {"kind": "labels"}},
                blocks={"shape": [8, 8, 8], "halo": [1, 1, 1]}, write={"chunk_shape": [4, 4, 4]})
    first = run(run_config(url, out, dask_address, agglomeration={"scope": "global"}, **base), progress=False)
    assert first["segments"] == 4
    scratch = Scratch(str(out))
    edges = scratch.get_arrays("edges/0")
    scratch.put_arrays("edges/0", {k: v for k, v in edges.items() if k not in ("fragment_key", "fragment_size")})
    with pytest.raises(ConfigError, match="older emseg and lacks fragment_key.*--restart"):
        run(run_config(url, out, dask_address, agglomeration={"scope": "global", "small": {"min_size": 200,
                                                                                            "max_score": 1.0}}, **base),
            progress=False)
    assert same_partition(read_output(out), labels)
    # without the small rule the same scratch serves a new threshold
    again = run(run_config(url, out, dask_address, agglomeration={"scope": "global", "small": None, "threshold": 0.4},
                           **base), progress=False)
    assert again["segments"] == 4 and again["stages"]["1-segment"]["ran"] == 0
    # another scope is another run: refused, naming the key the user changed
    from emseg.pipeline.errors import OutputExistsError

    with pytest.raises(OutputExistsError, match=r"changed: agglomeration\.scope"):
        run(run_config(url, out, dask_address, agglomeration={"scope": "blockwise"}, **base), progress=False)


@pytest.mark.parametrize("value, expected", [(False, None), (None, None), (True, {"min_size": 5000, "max_score": 0.8}),
                                             ({"min_size": 10}, {"min_size": 10, "max_score": 0.8})])
def test_rules_switch_off_with_null_or_false(value, expected):
    from emseg.pipeline.config import AgglomerationConfig

    small = AgglomerationConfig(small=value).small
    assert (None if small is None else small.model_dump()) == expected


def test_a_rule_given_a_plain_value_says_how_to_switch_it(tmp_path):
    from emseg.pipeline.config import from_dict
    from emseg.pipeline.errors import ConfigError

    with pytest.raises(ConfigError, match=r"agglomeration\.small.*null \(or false\) to turn it off"):
        from_dict({"input": "zarr://x", "output": str(tmp_path), "agglomeration": {"small": 5000}})
