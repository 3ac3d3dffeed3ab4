"""Pyramids: every scale readable by tensorstore and cloud-volume, mode adds no ids, exact kernels.

One run on a precomputed image with an odd voxel offset and an odd region of interest, so coarse
voxels at the edges cover partial cells on the absolute grid.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import tensorstore as ts

from emseg.pipeline.outputs.downsample import Scale, coarser, downsample_image, downsample_labels, pyramid, source_box
from emseg.pipeline.geometry import Box
from emseg.pipeline.io.volume import create_precomputed
from emseg.tasks.driver.run import segment
from tests.conftest import blobs, run_config

SHAPE = (37, 44, 51)
IMAGE_OFFSET = (3, 1, 5)


@pytest.fixture(scope="module")
def pyramid_run(tmp_path_factory: pytest.TempPathFactory, dask_address: str) -> dict:
    root = tmp_path_factory.mktemp("pyramid")
    img = blobs(SHAPE, sigma=2.5, seed=3)
    vol = create_precomputed(str(root / "image"), layer_type="image", dtype="uint8", shape_zyx=SHAPE,
                             voxel_size_nm=(8, 8, 8), offset_zyx=IMAGE_OFFSET, chunk_zyx=(8, 8, 8))
    vol.write(vol.box, img)
    cfg = run_config(f"precomputed://{root / 'image'}", root / "out", dask_address,
                     roi={"start": [4, 2, 7], "stop": [40, 45, 56]},
                     postprocess={"meshes": False, "seam_audit": False, "image_pyramid": True})
    run = segment(cfg, progress=False)
    return {"root": root, "image": img, "run": run, "config": cfg}


def _scales(store: Path) -> list[ts.TensorStore]:
    """Every scale of a precomputed volume, x, y, z, channel, as tensorstore opens them."""
    meta = json.loads((store / "info").read_text())
    return [ts.open({"driver": "neuroglancer_precomputed", "kvstore": f"file://{store}/",
                     "scale_metadata": {"key": s["key"]}}).result() for s in meta["scales"]]


def test_every_scale_read_by_tensorstore_and_cloudvolume(pyramid_run):
    from cloudvolume import CloudVolume

    for name in ("out/segmentation", "out/image"):
        store = pyramid_run["root"] / name
        arrays = _scales(store)
        assert len(arrays) >= 3, f"{name}: expected a pyramid, got {len(arrays)} scales"
        for mip, arr in enumerate(arrays):
            data = arr.read().result()[..., 0]  # x, y, z
            cv = CloudVolume(f"file://{store}", mip=mip, progress=False, fill_missing=False)
            got = np.asarray(cv[cv.bounds])[..., 0]
            assert got.shape == data.shape
            assert np.array_equal(got, data), f"{name} scale {mip}: cloud-volume and tensorstore differ"
            assert list(cv.bounds.minpt) == list(arr.domain.inclusive_min[:3])


def test_segmentation_pyramid_is_mode_without_new_ids(pyramid_run):
    arrays = [a.read().result()[..., 0].transpose(2, 1, 0) for a in _scales(pyramid_run["root"] / "out/segmentation")]
    offsets = [tuple(int(v) for v in a.domain.inclusive_min[:3][::-1]) for a in _scales(pyramid_run["root"] / "out/segmentation")]
    base_ids = set(np.unique(arrays[0]).tolist())
    assert len(base_ids) > 10
    for level in range(1, len(arrays)):
        ids = set(np.unique(arrays[level]).tolist())
        assert ids <= base_ids, f"scale {level} has ids not in the full-resolution segmentation: {ids - base_ids}"
        # An independent reference: Counter over each 2x2x2 cell of the absolute grid, C order.
        fine, coarse = arrays[level - 1], arrays[level]
        fo, co = offsets[level - 1], offsets[level]
        expected = np.zeros(coarse.shape, bool)
        for idx in np.ndindex(coarse.shape):
            a = [2 * (i + o) - f for i, o, f in zip(idx, co, fo)]
            cell = Counter(fine[max(a[0], 0):a[0] + 2, max(a[1], 0):a[1] + 2, max(a[2], 0):a[2] + 2].ravel().tolist())
            # a commonest label of the cell's real voxels (which of several tied ones is the kernel's choice)
            expected[idx] = cell[coarse[idx]] == max(cell.values())
        assert expected.all(), f"scale {level}: {np.sum(~expected.astype(bool))} voxels are not a mode of their cell"


def test_image_pyramid_averages_on_the_absolute_grid(pyramid_run):
    """The image pyramid is a copy of the region of interest under the output, with averaged scales."""
    arrays = _scales(pyramid_run["root"] / "out/image")
    assert len(json.loads((pyramid_run["root"] / "image/info").read_text())["scales"]) == 1, "the input was written"
    roi_offset = (4, 2, 7)  # the roi's start, in the input's coordinates (offset included)
    roi = tuple(slice(s - o, None) for s, o in zip(roi_offset, IMAGE_OFFSET))
    base = pyramid_run["image"][roi].astype(np.float64)
    assert np.array_equal(arrays[0].read().result()[..., 0].transpose(2, 1, 0), pyramid_run["image"][roi])
    level1 = arrays[1].read().result()[..., 0].transpose(2, 1, 0)
    lo = [int(v) for v in arrays[1].domain.inclusive_min[:3][::-1]]
    assert lo == [o // 2 for o in roi_offset]
    for idx in [(0, 0, 0), (5, 7, 9), tuple(s - 1 for s in level1.shape)]:
        a = [2 * (i + o) - f for i, o, f in zip(idx, lo, roi_offset)]
        cell = base[max(a[0], 0):a[0] + 2, max(a[1], 0):a[1] + 2, max(a[2], 0):a[2] + 2]
        assert level1[idx] == int(np.floor(cell.mean()))  # tinybrain's integer mean rounds down


def test_run_report_has_pyramid_timings(pyramid_run):
    post = pyramid_run["run"]["postprocess"]
    assert post["failures"] == []
    assert post["pyramid"]["segmentation"][0] == "8_8_8" and len(post["pyramid"]["segmentation"]) >= 3
    assert post["pyramid"]["image"] == post["pyramid"]["segmentation"]
    stage = post["stages"]["5-pyramid"]
    assert stage["tasks"] > 0 and stage["megavoxels"] > 0 and stage["megavoxels_per_second"] > 0


def test_rerun_skips_post_processing(pyramid_run):
    info = (pyramid_run["root"] / "out/segmentation/info").read_text()
    again = segment(pyramid_run["config"], progress=False)
    assert again["postprocess"].get("skipped_done") is True
    assert again["postprocess"]["pyramid"] == pyramid_run["run"]["postprocess"]["pyramid"]
    assert (pyramid_run["root"] / "out/segmentation/info").read_text() == info


def test_anisotropic_pyramid_halves_the_fine_axes_first():
    base = Scale((64, 1024, 1024), (0, 0, 0), (40.0, 4.0, 4.0), (16, 64, 64))
    sizes = [s.voxel_size_nm for s in pyramid(base, 4)]
    assert sizes == [(40, 4, 4), (40, 8, 8), (40, 16, 16), (40, 32, 32), (80, 64, 64)]


def test_kernels_with_partial_cells():
    rng = np.random.default_rng(0)
    fine = Scale((9, 7, 5), (1, 2, 3), (8.0, 8.0, 8.0), (8, 8, 8))
    coarse = coarser(fine, (2, 2, 2))
    labels = rng.integers(0, 4, fine.shape_zyx).astype(np.uint64)
    target = coarse.box
    src = source_box(target, (2, 2, 2), fine.box)
    assert src == fine.box
    out = downsample_labels(labels, target, src, (2, 2, 2))
    assert set(np.unique(out)) <= set(np.unique(labels))
    img = rng.integers(0, 256, fine.shape_zyx).astype(np.uint8)
    mean = downsample_image(img, target, src, (2, 2, 2))
    # The first coarse voxel covers fine z 1 only (offset 1 -> cell [0, 2)), y 2..3, x 3 only.
    assert mean[0, 0, 0] == int(np.floor(img[0:1, 0:2, 0:1].mean()))
    assert out.shape == coarse.shape_zyx == mean.shape
    # Unaligned reads of a sub-box give the same values as the whole-volume kernel.
    sub = Box((1, 2, 2), (4, 4, 4))
    sub_src = source_box(sub, (2, 2, 2), fine.box)
    part = downsample_labels(labels[sub_src.slices(fine.offset_zyx)], sub, sub_src, (2, 2, 2))
    whole = out[sub.slices(coarse.offset_zyx)]
    # Equal wherever the cell has one commonest label; a tie may go either way (tinybrain breaks ties
    # by ids it renumbers per call), and both answers are modes (test_mode_kernel_is_a_mode_for_every_factor).
    for idx in np.ndindex(part.shape):
        a = [2 * (i + o) - f for i, o, f in zip(idx, sub.start, fine.offset_zyx)]
        cell = Counter(labels[tuple(slice(max(x, 0), x + 2) for x in a)].ravel().tolist())
        top = [v for v, n in cell.items() if n == max(cell.values())]
        assert part[idx] in top and whole[idx] in top
        if len(top) == 1:
            assert part[idx] == whole[idx]


@pytest.mark.parametrize("factor", [(2, 2, 2), (1, 2, 2), (2, 1, 2), (1, 1, 2), (2, 1, 1)])
def test_mode_kernel_is_a_mode_for_every_factor(factor):
    """tinybrain for cells that halve two or three axes, a numpy vote for one: a commonest label each time."""
    rng = np.random.default_rng(1)
    fine = Scale((11, 9, 13), (1, 0, 3), (8.0, 8.0, 8.0), (8, 8, 8))
    coarse = coarser(fine, factor)
    labels = rng.integers(0, 3, fine.shape_zyx).astype(np.uint64) * np.uint64(2**40)  # large ids: no narrowing
    out = downsample_labels(labels, coarse.box, source_box(coarse.box, factor, fine.box), factor)
    assert out.shape == coarse.shape_zyx and out.dtype == np.uint64
    for idx in np.ndindex(out.shape):
        a = [k * (i + o) - f for i, o, f, k in zip(idx, coarse.offset_zyx, fine.offset_zyx, factor)]
        sl = tuple(slice(max(x, 0), x + k) for x, k in zip(a, factor))
        cell = Counter(labels[sl].ravel().tolist())
        assert cell[int(out[idx])] == max(cell.values()), (idx, cell, out[idx])


def test_several_scales_per_task_equal_one_scale_per_task(tmp_path):
    """With aligned offsets one task makes two scales from one read; the result equals one scale per task."""
    import dataclasses

    from emseg.tasks import stage5_pyramid

    labels = (blobs((70, 64, 66), sigma=2.0, seed=9) // 16).astype(np.uint64)  # ~16 ids, big regions
    stores = []
    for name in ("grouped", "single"):
        vol = create_precomputed(str(tmp_path / name), layer_type="segmentation", dtype="uint64", shape_zyx=labels.shape,
                                 voxel_size_nm=(8, 8, 8), offset_zyx=(4, 0, 8), chunk_zyx=(8, 8, 8))
        vol.write(vol.box, labels)
        layer = stage5_pyramid.plan_layer(f"file://{tmp_path / name}", "segmentation", 3, block_voxels=8**3,
                                          read_voxels=32**3)
        if name == "single":
            layer = dataclasses.replace(layer, steps=())
        stores.append((layer, tmp_path / name))
    grouped = stores[0][0]
    assert grouped.level_steps() == ((1, 2), (3, 3)), grouped.level_steps()  # offset 4 >> 2 = 1 is odd: no third
    for layer, _ in stores:
        for index, step in enumerate(layer.level_steps()):
            for block in layer.grid(step[1]):
                stage5_pyramid.downsample_task(layer, step, block.id, "t")
    a, b = (_scales(path) for _, path in stores)
    assert len(a) == len(b) == 4
    for level in range(1, 4):
        x, y = a[level].read().result(), b[level].read().result()
        assert np.array_equal(x, y), f"scale {level} differs between grouped and single-level tasks"
