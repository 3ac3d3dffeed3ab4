"""The boundary path's oracle: affinities made from ground-truth labels give the labels back.

The ``affinities`` backend with ``model.kind: labels`` derives affinities from the input label
volume (1 inside an object, 0 across a boundary). Fragments + agglomeration + seam edges + union-find
must then reproduce the labels' 6-connected components exactly, for any block shape and halo.
"""

from __future__ import annotations

import cc3d
import numpy as np
import pytest

from emseg.pipeline.stitching.agglomeration import Graph, affinities_from_labels, agglomerate, face_graph, segment as segment_whole
from emseg.tasks.driver.run import segment
from tests.conftest import read_output, run_config, same_partition, write_zarr

SHAPE = (45, 53, 39)  # divisible by none of the block shapes


def _touching_cells(shape: tuple[int, int, int], seed: int) -> np.ndarray:
    """Space filled by touching cells (Voronoi regions of random points), a few background gaps,
    a diagonal snake that crosses block corners, and one-voxel objects."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    seeds = np.zeros(shape, np.uint32)
    pts = [tuple(rng.integers(0, s) for s in shape) for _ in range(60)]
    for i, p in enumerate(pts, 1):
        seeds[p] = i
    _, idx = ndimage.distance_transform_edt(seeds == 0, return_indices=True)
    labels = seeds[tuple(idx)].astype(np.uint32)
    labels[rng.random(shape) < 0.01] = 0  # unlabelled voxels
    d = np.arange(min(shape))
    labels[d, d, d] = 1000  # 26-connected only: 6-connected it is one object per voxel
    labels[16, 16, 16] = 2000
    labels[31, 31, 31] = 2001
    return labels


@pytest.fixture(scope="module")
def cells(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, np.ndarray]:
    labels = _touching_cells(SHAPE, seed=3)
    url = write_zarr(tmp_path_factory.mktemp("cells") / "labels.zarr", labels, chunks=(16, 16, 16))
    return url, labels


@pytest.mark.parametrize(
    ("block", "halo", "scope", "stored"),
    [((16, 16, 16), (1, 1, 1), "global", None), ((32, 16, 24), (2, 1, 3), "blockwise", None),
     ((8, 8, 8), (4, 4, 4), "global", None), ((16, 16, 16), (1, 1, 1), "blockwise", None),
     ((48, 56, 40), (0, 0, 0), "auto", None),
     # predicting first (write.affinities): stage 1 reads its neighbours' stored affinities, here up
     # to two blocks away (a 12-voxel halo around 8³ blocks), in either scope
     ((8, 8, 8), (12, 12, 12), "blockwise", "uint8"), ((16, 16, 16), (1, 1, 1), "global", "float32")],
)
def test_labels_come_back_for_any_block_shape(cells, tmp_path, dask_address, block, halo, scope, stored):
    url, labels = cells
    cfg = run_config(url, tmp_path / "out", dask_address,
                     backend={"name": "affinities", "model": {"kind": "labels"}},
                     blocks={"shape": list(block), "halo": list(halo)}, agglomeration={"scope": scope},
                     write={"chunk_shape": [8, 8, 8], "affinities": stored})
    run = segment(cfg, progress=False)
    assert ("1-predict" in run["stages"]) == (stored is not None)
    out = read_output(tmp_path / "out")
    expected = cc3d.connected_components(labels, connectivity=6)
    assert expected.max() > 60
    assert same_partition(out, expected)
    assert run["segments"] == expected.max() and run["status"] == "complete"


def test_whole_volume_reference_equals_components(cells):
    _, labels = cells
    out = segment_whole(affinities_from_labels(labels), 0.5, mask=labels != 0, method="zwatershed")
    assert same_partition(out, cc3d.connected_components(labels, connectivity=6))


def test_threshold_change_reruns_only_unionfind_and_relabel(tmp_path, dask_address):
    # Two cells whose shared face has affinity 0.6: merged at threshold 0.5, apart at 0.3.
    img = np.zeros((16, 16, 16), np.uint8)
    img[:, :, :8] = 1
    img[:, :, 8:] = 2
    url = write_zarr(tmp_path / "two.zarr", img, chunks=(8, 8, 8))
    out = tmp_path / "out"
    base = dict(backend={"name": "affinities", "model": {"kind": "labels"}},
                blocks={"shape": [8, 8, 8], "halo": [1, 1, 1]})
    run = segment(run_config(url, out, dask_address, **base), progress=False)
    assert run["segments"] == 2
    # every edge keeps its score: the seam between the two cells scores 1 (affinity 0)
    rerun = segment(run_config(url, out, dask_address, agglomeration={"threshold": 1.0}, **base), progress=False)
    assert rerun["stages"]["1-segment"]["ran"] == 0 and rerun["stages"]["2-seams"]["ran"] == 0
    assert rerun["stages"]["4-relabel"]["ran"] == 8
    assert rerun["segments"] == 1  # at threshold 1 even affinity-0 faces merge
    again = segment(run_config(url, out, dask_address, agglomeration={"threshold": 0.5}, **base), progress=False)
    assert again["segments"] == 2 and again["stages"]["1-segment"]["ran"] == 0


def test_halo_smaller_than_context_is_refused(tmp_path):
    """The forest's affinities at a voxel depend on 22 voxels around it: a halo that does not cover
    that (+1) is refused before any work, with the halo to set; so is a halo of 0 for any model."""
    from emseg.pipeline.errors import ConfigError
    from emseg.tasks.driver.run import validate

    img = np.ones((32, 32, 32), np.uint8)
    url = write_zarr(tmp_path / "one.zarr", img, chunks=(16, 16, 16))
    cfg = run_config(url, tmp_path / "out", None,
                     backend={"name": "affinities", "model": {"kind": "forest"}},
                     blocks={"shape": [16, 16, 16], "halo": [8, 8, 8]})
    with pytest.raises(ConfigError, match=r"context \[22, 22, 22\] \+ 1 .*set blocks.halo to \[23, 23, 23\]"):
        validate(cfg)
    cfg = run_config(url, tmp_path / "out", None,
                     backend={"name": "affinities", "model": {"kind": "labels"}},
                     blocks={"shape": [16, 16, 16], "halo": [0, 1, 1]})
    with pytest.raises(ConfigError, match=r"blocks.halo"):
        validate(cfg)
    assert not (tmp_path / "out").exists()


def test_face_graph_sums_affinities_per_facing_pair():
    mine = np.array([[1, 1, 1, 2]])
    theirs = np.array([[1, 1, 4, 4]])  # ids of another block: 1 facing 1 is an edge too
    affs = np.array([[0.9, 0.8, 0.1, 0.9]], np.float32)
    g = face_graph(mine, theirs, affs)
    assert g.u.tolist() == [1, 1, 2] and g.v.tolist() == [1, 4, 4]
    assert g.count.tolist() == [2, 1, 1]
    assert np.allclose(g.total, [1.7, 0.1, 0.9])


def test_agglomeration_merges_by_mean_affinity_of_grown_regions():
    # 1-2 and 1-4 are strong (score 0.1); 2-3 alone would be fairly strong (0.2), but once {1, 2, 4}
    # has grown, its faces with 3 are 2-3 and the large weak 3-4 face together: mean 1.8 / 11.
    g = Graph(np.array([1, 2, 3, 1]), np.array([2, 3, 4, 4]),
              np.array([0.9, 0.8, 1.0, 0.9]), np.array([1, 1, 10, 1]))
    s = agglomerate(g)
    assert s[0] == pytest.approx(0.1) and s[3] == pytest.approx(0.1)
    assert s[1] == s[2] == pytest.approx(1 - 1.8 / 11, rel=1e-6)


def _partition_at(graph: Graph, nodes: np.ndarray, threshold: float) -> np.ndarray:
    from emseg.pipeline.stitching.agglomeration import components

    keep = agglomerate(graph) <= threshold
    index = {int(n): i + 1 for i, n in enumerate(nodes.tolist())}
    a = np.array([index[int(x)] for x in graph.u[keep]], np.int64)
    b = np.array([index[int(x)] for x in graph.v[keep]], np.int64)
    return components(len(nodes), a, b)[1:]


@pytest.mark.parametrize("seed", range(5))
def test_join_edges_make_cut_fragments_agglomerate_as_whole_ones(seed):
    """A random region graph against the same graph with every fragment cut into 1-3 pieces (as
    block faces cut them): pieces joined by join edges (statistics of their own) and each original
    edge split among piece pairs. Agglomeration gives the same partition of the fragments at every
    threshold; without the join flags it does not."""
    rng = np.random.default_rng(seed)
    n, m = 60, 200
    u = rng.integers(1, n + 1, m)
    v = rng.integers(1, n + 1, m)
    keep = u != v
    u, v = u[keep], v[keep]
    count = rng.integers(1, 20, len(u)).astype(np.int64)
    total = count * rng.random(len(u))
    whole = Graph(u.astype(np.uint64), v.astype(np.uint64), total, count)
    # pieces: fragment f becomes f * 10 + k, k < pieces[f]; its pieces form a chain of join edges
    pieces = rng.integers(1, 4, n + 1)
    pu, pv, pt, pc, pj = [], [], [], [], []
    for a, b, t, c in zip(u, v, total, count):
        ka, kb = rng.integers(0, pieces[a]), rng.integers(0, pieces[b])
        share = rng.random()
        c1 = max(1, int(c * share)) if c > 1 else c
        pu += [a * 10 + ka]; pv += [b * 10 + kb]; pt += [t * c1 / c]; pc += [c1]; pj += [False]
        if c1 < c:  # the rest of the face between two other pieces
            pu += [a * 10 + (ka + 1) % pieces[a]]; pv += [b * 10 + (kb + 1) % pieces[b]]
            pt += [t * (c - c1) / c]; pc += [c - c1]; pj += [False]
    for f in range(1, n + 1):
        for k in range(1, pieces[f]):
            pu += [f * 10 + k - 1]; pv += [f * 10 + k]; pt += [rng.random() * 3]; pc += [3]; pj += [True]
    cut = Graph(np.array(pu, np.uint64), np.array(pv, np.uint64), np.array(pt), np.array(pc, np.int64),
                join=np.array(pj))
    whole_nodes = np.unique(np.concatenate([whole.u, whole.v]))
    cut_nodes = np.unique(np.concatenate([cut.u, cut.v]))
    owner = np.searchsorted(whole_nodes, cut_nodes // 10)  # each piece's fragment, as an index
    assert (whole_nodes[owner] == cut_nodes // 10).all()
    scores = agglomerate(cut)
    assert (scores[cut.joins] == 0).all()
    differs = False
    for t in (0.2, 0.4, 0.5, 0.6, 0.8):
        expected = _partition_at(whole, whole_nodes, t)[owner]
        assert same_partition(_partition_at(cut, cut_nodes, t), expected), t
        plain = Graph(cut.u, cut.v, cut.total, cut.count)
        differs |= not same_partition(_partition_at(plain, cut_nodes, t), expected)
    assert differs  # the test can tell: without join flags the cut pieces agglomerate differently


def test_block_fragments_continue_across_the_faces_a_fragment_crosses():
    from emseg.pipeline.stitching.agglomeration import block_fragments, fragments

    labels = np.zeros((12, 12, 12), np.uint32)
    labels[:, :, :5] = 1
    labels[:, :, 5:] = 2
    labels[:6, :, 5:] = 3  # a z boundary at 6 in the right half only
    affs = affinities_from_labels(labels)
    write = (slice(4, 8), slice(4, 8), slice(3, 9))
    cut = block_fragments(affs, write, context=2, method="zwatershed")
    assert cut.n == 3 and same_partition(cut.labels, labels[write])
    # along x: every fragment goes on across both faces (x = 3 and x = 8 are inside objects 1 and 2/3)
    assert cut.continues[(2, -1)].all() and cut.continues[(2, 1)].all()
    # along z: the face before z = 4 is inside objects 1 and 3; after z = 7 inside 1 and 2: all go on
    assert cut.continues[(0, -1)].all() and cut.continues[(0, 1)].all()
    write = (slice(6, 10), slice(0, 12), slice(0, 12))  # starts on the 3 | 2 boundary
    cut = block_fragments(affs, write, context=2, method="zwatershed")
    assert cut.continues[(0, -1)][..., :5].all() and not cut.continues[(0, -1)][..., 5:].any()
    # no context: nothing is known beyond the write box
    assert not block_fragments(affs, write, context=0, method="zwatershed").continues[(0, -1)].any()
    # the whole box as the write box: the same fragments as fragments()
    whole = tuple(slice(0, 12) for _ in range(3))
    assert same_partition(block_fragments(affs, whole, context=3, method="zwatershed").labels,
                          fragments(affs, method="zwatershed")[0])
    with pytest.raises(ValueError, match="context"):
        block_fragments(affs, whole, context=-1)


def test_viewing_outputs_of_a_boundary_run(tmp_path, dask_address):
    """Stages 5-8 (pyramid, meshes, properties, seam audit) run on a boundary backend's output; the
    audit's points lie on the seams, scored by the affinity across them."""
    from emseg.pipeline.config import PostprocessConfig

    labels = _touching_cells((32, 32, 32), seed=5)
    url = write_zarr(tmp_path / "cells.zarr", labels, chunks=(16, 16, 16))
    cfg = run_config(url, tmp_path / "out", dask_address,
                     backend={"name": "affinities", "model": {"kind": "labels"}},
                     blocks={"shape": [16, 16, 16], "halo": [1, 1, 1]},
                     postprocess=PostprocessConfig(seam_audit_margin=0.5, pyramid_levels=1, mesh_lods=1))
    run = segment(cfg, progress=False)
    assert run["status"] == "complete"
    audit = run["postprocess"]["seam_audit"]
    assert audit["threshold"] == 0.5 and audit["points"] > 0


def test_backend_passes_the_block_origin_so_the_unet_predicts_like_the_whole_volume():
    """The U-Net pools on a grid anchored to the volume: a block must say where it starts (stage 1
    passes its read box's start). With that, a crop's core equals the whole image's prediction."""
    from emseg.pipeline import backends

    backend = backends.create("affinities", backends.validate_params("affinities", {"model": {"kind": "unet"}}))
    c = backend.context_zyx
    rng = np.random.default_rng(0)
    from scipy import ndimage

    img = (ndimage.gaussian_filter(rng.random((84, 84, 84)), 2) * 255).astype(np.uint8)
    whole, _ = backend.affinities(img, (0, 0, 0))
    o = (13, 7, 5)
    part, _ = backend.affinities(img[o[0]:, o[1]:, o[2]:], o)
    core = tuple(slice(c[i] + 1, 84 - o[i] - c[i] - 1) for i in range(3))
    shifted = tuple(slice(s.start + o[i], s.stop + o[i]) for i, s in enumerate(core))
    assert np.abs(part[(slice(None), *core)] - whole[(slice(None), *shifted)]).max() < 1e-4
