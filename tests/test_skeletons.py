"""Stage 9, skeletons: kimimaro skeletons joined across block seams, unsharded and sharded precomputed,
read back by cloud-volume; an object that crosses many seams gives one connected tree."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from emseg.tasks.driver.run import segment
from tests.conftest import read_output, run_config, write_zarr

SHAPE = (48, 48, 64)
BLOCK = 16


def _tubes() -> np.ndarray:
    """Two thick tubes that wander through the volume: a helix along x and a diagonal, radius 3.5 voxels."""
    z, y, x = np.mgrid[: SHAPE[0], : SHAPE[1], : SHAPE[2]].astype(np.float32)
    helix_z = 24 + 12 * np.sin(x / 9.0)
    helix_y = 14 + 8 * np.cos(x / 9.0)
    inside = (z - helix_z) ** 2 + (y - helix_y) ** 2 <= 3.5**2
    t = (x + z) / 2  # a tube along the (1, 0, 1) diagonal at y = 36
    diag = (y - 36) ** 2 + ((x - z) / np.sqrt(2)) ** 2 <= 3.5**2
    img = np.zeros(SHAPE, np.uint8)
    img[(inside | diag) & (x >= 2) & (x < SHAPE[2] - 2)] = 255
    del t
    return img


def _run(root: Path, address: str, **overrides) -> tuple[dict, Path]:
    url = write_zarr(root / "in.zarr", _tubes(), chunks=(16, 16, 16))
    cfg = run_config(url, root / "out", address, blocks={"shape": [BLOCK] * 3, "halo": [1, 1, 1]},
                     postprocess={"pyramid_levels": 0, "meshes": False, "seam_audit": False, "skeletons": True,
                                  "skeleton_teasar_const": 20.0, "skeleton_dust_voxels": 0},
                     **overrides)
    return segment(cfg, progress=False), root / "out"


@pytest.fixture(scope="module", params=["unsharded", "sharded"])
def skeleton_run(request, tmp_path_factory, dask_address) -> tuple[dict, Path, str]:
    root = tmp_path_factory.mktemp(f"skeletons_{request.param}")
    extra = {"write": {"chunk_shape": [8, 8, 8], "sharded": True}} if request.param == "sharded" else {}
    run, out = _run(root, dask_address, **extra)
    assert run["postprocess"]["failures"] == []
    assert run["postprocess"]["skeletons"]["format"] == request.param
    return run, out, request.param


def test_info_and_files(skeleton_run):
    run, out, fmt = skeleton_run
    info = json.loads((out / "segmentation" / "info").read_text())
    assert info["skeletons"] == "skeletons"
    sk_info = json.loads((out / "segmentation" / "skeletons" / "info").read_text())
    assert sk_info["@type"] == "neuroglancer_skeletons"
    assert ("sharding" in sk_info) == (fmt == "sharded")
    shards = list((out / "segmentation" / "skeletons").glob("*.shard"))
    assert bool(shards) == (fmt == "sharded")


def test_cloudvolume_reads_one_connected_tree_per_object(skeleton_run):
    from cloudvolume import CloudVolume

    run, out, _ = skeleton_run
    seg = read_output(out)
    ids = [int(i) for i in np.unique(seg) if i]
    assert len(ids) == 2, "the two tubes are two segments"
    cv = CloudVolume(f"file://{out}/segmentation", progress=False)
    voxel = np.array(cv.resolution, np.float64)  # x, y, z nm
    for seg_id in ids:
        skel = cv.skeleton.get(seg_id)
        assert len(skel.vertices) > 20
        # one connected tree, although the tube crosses many block seams (16³ blocks)
        assert len(skel.components()) == 1, f"segment {seg_id}: {len(skel.components())} pieces"
        assert len(skel.edges) == len(skel.vertices) - 1, f"segment {seg_id} has a cycle"
        # its vertices lie in the object, and it runs from one end of the tube to the other
        idx = np.floor(skel.vertices / voxel).astype(int) - np.array(cv.voxel_offset)
        idx = np.clip(idx, 0, np.array(seg.shape[::-1]) - 1)
        inside = seg[idx[:, 2], idx[:, 1], idx[:, 0]] == seg_id
        assert inside.mean() > 0.95, f"segment {seg_id}: {inside.mean():.2f} of the vertices inside it"
        object_x = np.nonzero((seg == seg_id).any(axis=(0, 1)))[0]
        span = skel.vertices[:, 0].max() - skel.vertices[:, 0].min()
        assert span >= 0.8 * (object_x.max() - object_x.min()) * voxel[0]
        blocks_crossed = len(np.unique(idx // BLOCK, axis=0))
        assert blocks_crossed >= 4


def test_rerun_skips_and_skeletons_stay(skeleton_run, dask_address):
    run, out, _ = skeleton_run
    before = sorted(p.name for p in (out / "segmentation" / "skeletons").iterdir())
    assert run["postprocess"]["stages"]["9-skeletons"]["tasks"] > 0
    assert before


def test_block_pieces_meet_on_the_seam_without_postprocess():
    """The seam vertices of two neighbouring blocks coincide exactly (fix_borders), so the plain union of
    the pieces is already one tree; kimimaro's postprocess (which also joins close pieces) is not needed."""
    from cloudvolume import Skeleton

    from emseg.pipeline.geometry import Box
    from emseg.pipeline.outputs.skeletons import skeleton_box, skeletonize_block

    seg = (_tubes() > 0).astype(np.uint64)  # both tubes as one label would merge them: keep the helix only
    z, y, x = np.mgrid[: SHAPE[0], : SHAPE[1], : SHAPE[2]]
    seg[y > 28] = 0
    domain = Box((0, 0, 0), SHAPE)
    pieces = []
    for x0 in range(0, SHAPE[2], BLOCK):
        for z0 in range(0, SHAPE[0], BLOCK):
            for y0 in range(0, SHAPE[1], BLOCK):
                box = skeleton_box(Box((z0, y0, x0), (z0 + BLOCK, y0 + BLOCK, x0 + BLOCK)), domain)
                got = skeletonize_block(seg[box.slices()], box.start, (8.0, 8.0, 8.0), teasar={"const": 20.0},
                                        dust_voxels=0)
                pieces.extend(got.values())
    assert len(pieces) >= 6
    joined = Skeleton.simple_merge(pieces).consolidate()
    assert len(joined.components()) == 1, f"{len(joined.components())} pieces: the seams did not meet"
