"""``write.affinities``: the model predicts each block's write box once (``1-predict``), and stage 1
cuts fragments from the stored affinities of its write box and fragment context.

A one-pass run predicts each block's fragment context from its own read box, so there the
affinities are the whole volume's only when the halo also holds the model's context beyond the
fragment context (16 + 22 + 1 voxels for the bundled forest); predicted first, they are the whole
volume's for any halo of the model's context + 1 (and, cut with the whole fragment context, for
a halo of at least the fragment context, which the forest's 23 is). On real data with the bundled forest, predicting
first with the usual halo (24) gives exactly the segmentation of a one-pass run with that wide halo,
while the model classifies far fewer voxels; a resumed run reuses the stored predictions.
"""

from __future__ import annotations

import numpy as np
import pytest

from emseg.pipeline import stages
from emseg.pipeline.geometry import BlockGrid, Box
from emseg.pipeline.stitching import resume
from tests.conftest import FIB25, read_output

ROI = {"start": [170, 0, 0], "stop": [218, 96, 96]}


def _run(tmp_path, address, name: str, affinities: str | None, keep_scratch: bool = False, halo: int = 24) -> dict:
    from emseg.pipeline.config import from_dict
    from emseg.tasks.driver.run import segment

    return segment(from_dict({
        "input": f"zarr://{FIB25}/raw",
        "output": str(tmp_path / name),
        "backend": {"name": "affinities", "model": {"kind": "forest"}},
        "blocks": {"shape": [48, 48, 48], "halo": [halo] * 3},
        "write": {"chunk_shape": [48, 48, 48], "affinities": affinities},
        "cluster": {"address": address} if address else {"workers": 2},
        "roi": ROI,
        "postprocess": None,
        "keep_scratch": keep_scratch,
    }), progress=False)


@pytest.mark.skipif(not FIB25.exists(), reason="needs ../shared/data/fib25_ts2.zarr")
def test_predicting_first_gives_the_whole_volume_affinities(tmp_path, dask_address):
    one = _run(tmp_path, dask_address, "one", None, halo=16 + 22 + 1)  # fragment context + forest context + 1
    two = _run(tmp_path, dask_address, "two", "float32", keep_scratch=True)
    assert "1-predict" not in one["stages"]
    assert two["stages"]["1-predict"]["ran"] == 4 and two["stages"]["1-segment"]["ran"] == 4
    a, b = read_output(tmp_path / "one"), read_output(tmp_path / "two")
    assert one["segments"] == two["segments"] > 10
    assert np.array_equal(a, b)  # the same ids too: the same fragments, edges and scores
    # The forest classified each write box once, not each block's write box and fragment context
    # (with its features over the wide halo): its CPU time, now in 1-predict, is well below stage 1's
    # of the one-pass run.
    assert two["stages"]["1-predict"]["task_cpu_seconds"] < 0.85 * one["stages"]["1-segment"]["task_cpu_seconds"]

    # Resume: a block whose stage 1 is to be redone reads the stored predictions; none is redone.
    from emseg.pipeline.io.scratch import Scratch

    Scratch(str(tmp_path / "two")).clear_done(stages.SEGMENT, [3])
    again = _run(tmp_path, dask_address, "two", "float32", keep_scratch=True)
    assert again["stages"]["1-predict"]["ran"] == 0 and again["stages"]["1-segment"]["ran"] == 1
    assert np.array_equal(read_output(tmp_path / "two"), a)

    # uint8 (what lsd and volara store): the fragments are cut from the stored values, so a later run
    # from them (model.kind stored) gives this run's segmentation.
    q = _run(tmp_path, dask_address, "q", "uint8")
    from emseg.pipeline.config import from_dict
    from emseg.tasks.driver.run import segment

    segment(from_dict({
        "input": f"zarr://{FIB25}/raw", "output": str(tmp_path / "from_q"),
        "backend": {"name": "affinities", "model": {"kind": "stored", "affinities": q["affinities"]}},
        "blocks": {"shape": [48, 48, 48], "halo": [24, 24, 24]}, "write": {"chunk_shape": [48, 48, 48]},
        "cluster": {"address": dask_address} if dask_address else {"workers": 2}, "roi": ROI, "postprocess": None,
    }), progress=False)
    assert np.array_equal(read_output(tmp_path / "from_q"), read_output(tmp_path / "q"))


@pytest.mark.parametrize("dtype", ["uint8", "float32"])
def test_chunks_of_zero_affinities_are_stored(tmp_path, dask_address, dtype):
    """Background wider than a chunk (label 0, whose affinities are 0) is stored as chunks of zeros,
    not left missing (tensorstore skips chunks equal to the fill value unless told otherwise), so
    stage 1 reads it; and a store removed after its 1-predict markers is predicted again."""
    from emseg.pipeline.io.scratch import Scratch
    from emseg.tasks.driver.run import segment
    from tests.conftest import run_config, write_zarr

    labels = np.zeros((24, 24, 24), np.uint32)
    labels[:, :, 10:] = 1
    labels[:, 12:, 10:] = 2
    url = write_zarr(tmp_path / "labels.zarr", labels, chunks=(8, 8, 8))
    cfg = run_config(url, tmp_path / "out", dask_address, backend={"name": "affinities", "model": {"kind": "labels"}},
                     blocks={"shape": [8, 8, 8], "halo": [1, 1, 1]}, write={"chunk_shape": [8, 8, 8], "affinities": dtype},
                     keep_scratch=True)
    run = segment(cfg, progress=False)
    assert run["status"] == "complete" and run["segments"] == 2
    assert (tmp_path / "out" / "affinities" / "0.0.0.0").exists()  # x < 8: all background
    import shutil

    shutil.rmtree(tmp_path / "out" / "affinities")
    Scratch(str(tmp_path / "out")).clear_done(stages.SEGMENT, [13])
    again = segment(cfg, progress=False)
    assert again["stages"]["1-predict"]["ran"] == 27 and again["segments"] == 2
    assert np.array_equal(read_output(tmp_path / "out") > 0, labels > 0)


def test_affinities_stored_by_an_older_emseg_are_reused(tmp_path, dask_address):
    """New stores are blosc-lz4 (read back faster than blosc-zstd); a run resumed on a store that an
    older emseg wrote with blosc-zstd reuses its chunks instead of refusing the store."""
    import json

    import tensorstore as ts

    from emseg.pipeline.io.scratch import Scratch
    from emseg.pipeline.io.volume import ZSTD, _zarr_spec
    from emseg.tasks.driver.run import segment
    from tests.conftest import run_config, write_zarr

    labels = np.zeros((24, 24, 24), np.uint32)
    labels[:, :, 10:] = 1
    labels[:, 12:, 10:] = 2
    url = write_zarr(tmp_path / "labels.zarr", labels, chunks=(8, 8, 8))
    cfg = run_config(url, tmp_path / "out", dask_address, backend={"name": "affinities", "model": {"kind": "labels"}},
                     blocks={"shape": [8, 8, 8], "halo": [1, 1, 1]}, write={"chunk_shape": [8, 8, 8], "affinities": "float32"},
                     keep_scratch=True)
    assert segment(cfg, progress=False)["segments"] == 2
    store = tmp_path / "out" / "affinities"
    assert json.loads((store / ".zarray").read_text())["compressor"]["cname"] == "lz4"
    data = ts.open({"driver": "zarr", "kvstore": {"driver": "file", "path": str(store)}}).result().read().result()
    attrs = (store / ".zattrs").read_text()
    import shutil

    shutil.rmtree(store)  # the same values, as an older emseg stored them
    _, spec = _zarr_spec(str(store), "float32", data.shape, [3, 8, 8, 8], ZSTD)
    spec["metadata"]["fill_value"] = 0
    ts.open(dict(spec, store_data_equal_to_fill_value=True), create=True).result().write(data).result()
    (store / ".zattrs").write_text(attrs)
    Scratch(str(tmp_path / "out")).clear_done(stages.SEGMENT)
    again = segment(cfg, progress=False)
    assert again["stages"]["1-predict"]["ran"] == 0 and again["stages"]["1-segment"]["ran"] == 27
    assert again["segments"] == 2 and np.array_equal(read_output(tmp_path / "out") > 0, labels > 0)
    assert json.loads((store / ".zarray").read_text())["compressor"]["cname"] == "zstd"


def test_the_window_of_stored_affinities_a_block_reads():
    """Stage 1 reads its write box grown by the fragment context, within its halo: here up to one
    block along z and y (16-voxel context in 16-voxel blocks), two along x (8-voxel blocks)."""
    grid = BlockGrid(Box((0, 0, 0), (48, 48, 40)), (16, 16, 8), (24, 4, 24))
    reach = resume.predict_reach(grid, 16)
    assert reach == (1, 1, 2)
    window = resume.predict_window(grid, grid.block_id((1, 0, 4)), reach)
    want = [grid.block_id((z, y, x)) for z in (0, 1, 2) for y in (0, 1) for x in (2, 3, 4)]
    assert window == want
    last = resume.predict_last(grid, reach)
    assert all(last[b] == max(resume.predict_window(grid, b, reach)) for b in range(grid.num_blocks))
    # to redo one block's stage 1, predict its window except what is predicted already
    todo = resume.predict_todo(grid, [grid.block_id((1, 0, 4))], {str(want[0]), "x"}, reach)
    assert todo == want[1:]
