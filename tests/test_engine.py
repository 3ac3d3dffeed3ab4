"""The task engine: one Streamer for every stage, bounded in flight, reduces as trees.

A real local Dask cluster throughout; the post-processing test runs a volume of 75 blocks, more
than one reduce task's fan-in, so stages 7 and 8 reduce through a two-level tree.
"""

from __future__ import annotations

import json

import numpy as np

from emseg.pipeline import stages
from emseg.pipeline.io.scratch import Scratch
from emseg.tasks.driver import engine
from emseg.tasks.driver.context import new_run_id
from emseg.tasks.driver.run import segment
from emseg.pipeline.stitching.seams import nearest
from tests.conftest import blobs, read_output, run_config, write_zarr


def _fail_on(value: int, *upstream: object) -> dict:
    if value == 3:
        raise ValueError("three is refused")
    return {"seconds": 0.0, "voxels": value}


def test_window_bounds_tasks_in_flight_and_failures_skip_their_dependants(dask_address):
    from distributed import Client

    with Client(dask_address) as client:
        seen: list[int] = []
        stream = engine.Streamer(client, run_id=new_run_id(), retries=0, window=2)
        stream.on_done = lambda task: seen.append(len(stream.inflight))
        for i in range(8):
            stream.submit(engine.Task("s", i, _fail_on, (i,)))
            assert len(stream.inflight) <= 2
        stream.submit(engine.Task("t", "after-3", _fail_on, (0,), deps=[("s", 3)]))
        stream.submit(engine.Task("t", "after-4", _fail_on, (0,), deps=[("s", 4)]))
        stream.barrier()
    assert len(seen) == 10
    failures = {(f["stage"], f["block"]): f["error"] for f in stream.failures()}
    assert failures == {("s", 3): "ValueError: three is refused", ("t", "after-3"): engine.SKIPPED}, failures
    assert stream.results["s"][0] == 7 and stream.results["s"][2] == sum(range(8)) - 3
    assert stream.results["t"][0] == 1


def _busy(n: int) -> dict:
    total = 0
    for i in range(n):
        total += i * i
    return {"seconds": 0.0, "voxels": total % 7}


def test_tasks_record_their_cpu_seconds(dask_address):
    from distributed import Client

    with Client(dask_address) as client:
        stream = engine.Streamer(client, run_id=new_run_id(), retries=0, window=2)
        stream.submit(engine.Task("idle", 0, _fail_on, (0,)))
        stream.submit(engine.Task("busy", 0, _busy, (3_000_000,)))
        stream.barrier()
    # a pure-Python loop of 3 million steps takes well over 0.05 CPU-s; returning a constant, far less
    assert stream.results["busy"][3] > 0.05 > stream.results["idle"][3] >= 0.0


def test_a_dependency_that_fails_while_the_window_is_full_skips_its_dependant(dask_address):
    """Window 1: submitting the dependant waits for the dependency, which fails during that wait; the
    dependant must be skipped, not submitted without it (it would run and succeed)."""
    from distributed import Client

    with Client(dask_address) as client:
        stream = engine.Streamer(client, run_id=new_run_id(), retries=0, window=1)
        stream.submit(engine.Task("s", 3, _fail_on, (3,)))
        stream.submit(engine.Task("t", "after-3", _fail_on, (0,), deps=[("s", 3)], keep=True))
        stream.barrier()
    assert stream.failed == {("s", 3): "ValueError: three is refused", ("t", "after-3"): engine.SKIPPED}
    assert not stream.kept


def test_tree_reduce_keeps_exactly_the_nearest_points():
    rng = np.random.default_rng(4)
    parts = [{"iou": rng.random(rng.integers(0, 9)).astype(np.float32)} for _ in range(75)]
    parts[10]["iou"] = np.full(5, 0.5, np.float32)  # ties: the earlier ones win, in a tree as in one pass
    parts[60]["iou"] = np.full(5, 0.5, np.float32)
    flat = nearest({"iou": np.concatenate([p["iou"] for p in parts])}, 0.5, 20)["iou"]
    level = parts
    for below in engine.reduce_levels(len(parts), fan_in=4)[1:]:
        level = [nearest({"iou": np.concatenate([level[c]["iou"] for c in engine.children(i, len(level), 4)])}, 0.5, 20)
                 for i in range(below)]
    tree = nearest({"iou": np.concatenate([p["iou"] for p in level])}, 0.5, 20)["iou"]
    assert np.array_equal(tree, flat)


def test_postprocess_reduces_75_blocks_through_a_tree(tmp_path, dask_address):
    img = blobs((48, 80, 80), sigma=2.0, seed=11)
    url = write_zarr(tmp_path / "img.zarr", img, chunks=(16, 16, 16))
    cfg = run_config(url, tmp_path / "out", dask_address, keep_scratch=True,
                     postprocess={"meshes": False, "pyramid_levels": 0, "seam_audit_limit": 7,
                                  "seam_audit_margin": 1.0})
    assert cfg.blocks.shape == (16, 16, 16) and np.prod([-(-s // 16) for s in img.shape]) > engine.FAN_IN
    run = segment(cfg, progress=False)
    assert run["status"] == "complete", run["failures"]
    post = run["postprocess"]
    seg = read_output(tmp_path / "out")
    ids, counts = np.unique(seg[seg > 0], return_counts=True)
    info = json.loads((tmp_path / "out" / "segmentation" / "segment_properties" / "info").read_text())
    got = dict(zip(map(int, info["inline"]["ids"]), map(int, info["inline"]["properties"][0]["values"])))
    assert got == dict(zip(ids.tolist(), counts.tolist()))
    assert post["segment_properties"]["segments"] == len(ids)
    # the audit: every candidate counted once through the tree, the nearest 7 kept
    scratch = Scratch(str(tmp_path / "out"))
    blocks = [scratch.get_arrays(f"post/audit/{i}") for i in range(run["blocks"]["total"])]
    candidates = sum(len(b["iou"]) for b in blocks)
    assert candidates > 7
    assert post["seam_audit"]["candidates"] == candidates and post["seam_audit"]["points"] == 7
    partials = scratch.list_keys("post/audit/L1/")
    assert len(partials) == 2  # 75 blocks -> 2 partial reduces -> the root
    assert stages.PROPERTIES in post["stages"] and post["stages"][stages.PROPERTIES]["tasks"] == 75 + 2 + 1
