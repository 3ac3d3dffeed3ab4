"""Scale: the octree union-find on generated seam-edge sets, and the driver of a million-block run.

Part 1, union-find. For a grid of B blocks, E merge edges are generated between face neighbours
(random labels, so components wander through many blocks) and written to a scratch area as stage 2
would; stage 3 then runs through a real local Dask cluster. Reported: seconds, peak memory (RSS) of
the driver and of each worker, and whether the ids equal a single global connected-components pass
(the number of segments, and the partition of the labels of 50 sampled blocks). The edges are
generated and checked in a child process, so the driver's peak memory is the driver's own; each case
runs in a fresh driver process.

Part 2, graph. A dry run (backend ``noop``) over a 200³ volume in 2³ blocks: a million blocks, about
3.5 million tasks. (a) Every task of it is generated in the driver without being submitted: the
time and the driver's peak memory; again with the dependencies of a boundary backend's blockwise
agglomeration. (b) It is streamed to a local cluster for ``--graph-seconds``:
the time to the first finished task, tasks submitted and finished, and the driver's peak memory.

    python benchmarks/bench_scale.py                       # 1e4/1e6 and 1e5/1e7 (blocks/edges), graph
    python benchmarks/bench_scale.py --sizes 1e6:1e8 --graph-seconds 0 --generate-blocks 0
                                                           # ~2e6 scratch files, ~1 h on 2 cores

Rows are merged into ``benchmarks/results/scale.json`` (a rerun of one size replaces its row).
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from emseg.pipeline.geometry import Box
from emseg.pipeline.stitching.labels import key
from emseg.pipeline.io.scratch import Scratch
from emseg.pipeline import stages
from emseg.tasks.driver import engine, graph
from emseg.tasks.driver import runtime
from emseg.tasks import stage3_unionfind as stage3
from emseg.tasks.driver.cluster import configure_workers
from emseg.tasks.driver.context import RunContext

RESULTS = Path(__file__).parent / "results"


def rss_mb() -> float:
    """Peak resident memory of this process so far, MB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def current_mb() -> float:
    """Resident memory of this process now, MB."""
    import os

    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def grid_for(blocks: int) -> tuple[int, int, int]:
    side = round(blocks ** (1 / 3))
    return (side, side, max(1, round(blocks / side / side)))


def face_pairs(grid_shape: tuple[int, int, int], lo: int, hi: int) -> np.ndarray:
    """The (source, forward neighbour) block pairs whose source lies in ``[lo, hi)``."""
    gz, gy, gx = grid_shape
    ids = np.arange(lo, hi)
    out = []
    for step, ok in ((1, ids % gx + 1 < gx), (gx, (ids // gx) % gy + 1 < gy), (gx * gy, ids // (gx * gy) + 1 < gz)):
        src = ids[ok]
        out.append(np.stack([src, src + step], axis=1))
    return np.concatenate(out)


def edge_chunks(grid_shape: tuple[int, int, int], n_edges: int, labels_per_block: int, seed: int,
                chunk_blocks: int = 20_000):
    """Random merge edges between face neighbours, generated a range of source blocks at a time.

    Yields ``(lo, hi, src, la, dst, lb)`` with edges sorted by source block; the edge count of each
    range is drawn in proportion to its number of face pairs, so the total is exactly ``n_edges``.
    """
    rng = np.random.default_rng(seed)
    n = int(np.prod(grid_shape))
    starts = list(range(0, n, chunk_blocks))
    sizes = np.array([len(face_pairs(grid_shape, lo, min(n, lo + chunk_blocks))) for lo in starts])
    counts = rng.multinomial(n_edges, sizes / sizes.sum())
    for lo, count in zip(starts, counts.tolist()):
        hi = min(n, lo + chunk_blocks)
        pairs = face_pairs(grid_shape, lo, hi)
        pick = pairs[rng.integers(0, len(pairs), count)]
        pick = pick[np.argsort(pick[:, 0], kind="stable")]
        la = rng.integers(1, labels_per_block + 1, count)
        lb = rng.integers(1, labels_per_block + 1, count)
        yield lo, hi, pick[:, 0], la, pick[:, 1], lb


def _context(work: Path, n_blocks: int) -> RunContext:
    roi = Box((0, 0, 0), tuple(8 * g for g in grid_for(n_blocks)))
    return RunContext(input_spec={}, output=f"file://{work}", segmentation="", roi=roi, block_shape=(8, 8, 8),
                      halo=(1, 1, 1), backend_name="noop", backend_params={}, stitch={}, run_id="bench")


def write_edge_set(work: Path, n_blocks: int, n_edges: int, sample: int) -> dict:
    """In a child process: write the edges as stage 2 would, and the reference partition of a sample.

    The reference is one global connected-components pass over every (block, label) node, indexed
    densely as ``block * labels_per_block + label - 1`` (int32 indices: 10^8 edges take ~1 GB).
    """
    ctx = _context(work, n_blocks)
    n = ctx.grid.num_blocks
    labels_per_block = max(4, 2 * n_edges // n)
    n_nodes = n * labels_per_block
    index = np.int32 if n_nodes < 2**31 else np.int64
    ia = np.empty(n_edges, index)
    ib = np.empty(n_edges, index)
    t = time.perf_counter()
    store = Scratch(ctx.output)
    at = 0
    for lo, hi, src, la, dst, lb in edge_chunks(ctx.grid.grid_shape, n_edges, labels_per_block, seed=n):
        ia[at:at + len(src)] = src * labels_per_block + la - 1
        ib[at:at + len(src)] = dst * labels_per_block + lb - 1
        at += len(src)
        bounds = np.searchsorted(src, np.arange(lo, hi + 1))
        for i, blk in enumerate(range(lo, hi)):
            s = slice(bounds[i], bounds[i + 1])
            b = (dst[s].astype(np.uint64) << np.uint64(32)) | lb[s].astype(np.uint64)
            store.put_arrays(f"edges/{blk}", {"a": key(blk, la[s]), "b": b, "merge": np.ones(len(b), bool)})
            store.mark_done("1-segment", blk, {"n_core": labels_per_block, "n_total": labels_per_block})
    seconds = time.perf_counter() - t
    graph_ = coo_matrix((np.ones(n_edges, np.int8), (ia, ib)), shape=(n_nodes, n_nodes))
    del ia, ib
    segments, comp = connected_components(graph_, directed=False)
    del graph_
    blocks = np.random.default_rng(0).choice(n, size=min(n, sample), replace=False).tolist()
    reference = {blk: comp[blk * labels_per_block:(blk + 1) * labels_per_block].tolist() for blk in blocks}
    return {"labels_per_block": labels_per_block, "write_seconds": seconds, "segments": int(segments),
            "reference": reference, "peak_mb": rss_mb()}


def unionfind_case(n_blocks: int, n_edges: int, workers: int) -> dict:
    from distributed import Client, LocalCluster

    configure_workers()  # in this (child) process: dask settings are not inherited through spawn
    work = Path(tempfile.mkdtemp(prefix="emseg-uf-"))
    made = _in_child(write_edge_set, work, n_blocks, n_edges, 50)
    ctx = _context(work, n_blocks)
    driver_before = rss_mb()
    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=":0",
                      silence_logs=logging.ERROR) as cluster, Client(cluster) as client:
        t = time.perf_counter()
        stream = engine.Streamer(client, run_id="bench", retries=0, window=2000)
        todo = {"1-segment": [], "2-seams": [], "3-unionfind": ["all"], "4-relabel": []}
        for task in graph.streaming_tasks(ctx, todo):
            stream.submit(task)
        for task in graph.resolving_tasks(ctx):
            stream.submit(task)
        stream.barrier()
        stream.submit(engine.Task(stages.UNIONFIND, "finish", stage3.finish, (ctx,), keep=True))
        stream.barrier()
        seconds = time.perf_counter() - t
        if stream.failed:
            raise SystemExit(f"union-find failed: {list(stream.failed.items())[:3]}")
        token = stream.kept[("3-unionfind", "finish")]["token"]
        worker_mb = sorted(v / 1024 for v in client.run(
            lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss).values())
        tasks = int(sum(v[0] for v in stream.results.values()))
    lpb = made["labels_per_block"]
    same = stage3_segments(Scratch(ctx.output)) == made["segments"]
    for blk, ref in made["reference"].items():
        ours = runtime.final_ids(ctx.output, token, int(blk), np.arange(1, lpb + 1), lpb)
        pairs = np.unique(np.stack([ours.astype(np.int64), np.asarray(ref)]), axis=1)
        same &= pairs.shape[1] == len(np.unique(ours)) == len(np.unique(ref))
    shutil.rmtree(work, ignore_errors=True)
    return {"blocks": ctx.grid.num_blocks, "edges": n_edges, "labels_per_block": lpb, "tasks": tasks,
            "write_edges_seconds": round(made["write_seconds"], 1), "unionfind_seconds": round(seconds, 2),
            "driver_peak_mb": round(rss_mb(), 1), "driver_mb_before_run": round(driver_before, 1),
            "worker_peak_mb": [round(v, 1) for v in worker_mb], "segments": made["segments"],
            "equals_global": bool(same)}


def stage3_segments(store: Scratch) -> int:
    info = store.done_info("3-unionfind", "finish") or {}
    return int(info.get("num_segments", -1))


def write_dry_input(work: Path, side: int) -> None:
    """A zero image of ``side``³ voxels for a dry run in 2³ blocks."""
    from emseg.pipeline.io.volume import create_zarr

    vol = create_zarr(str(work / "in.zarr"), dtype="uint8", shape_zyx=(side,) * 3, chunk_zyx=(20, 20, 20),
                      voxel_size_nm=(8, 8, 8))
    vol.write(vol.box, np.zeros((side,) * 3, np.uint8))


def plan_dry_run(work: Path):
    """Plan a dry run (backend ``noop``, 2³ blocks) of ``work/in.zarr``: the plan and what is to do."""
    from emseg.pipeline.config import from_dict
    from emseg.pipeline.stitching.resume import todo
    from emseg.tasks.driver.run import done_markers, prepare_output, validate

    cfg = from_dict({"input": f"zarr://{work}/in.zarr", "output": str(work / "out"), "backend": {"name": "noop"},
                     "blocks": {"shape": [2, 2, 2], "halo": [0, 0, 0]}, "write": {"chunk_shape": [2, 2, 2]},
                     "postprocess": None})
    p = validate(cfg)
    return p, todo(done_markers(prepare_output(p, restart=True)), p.ctx.grid)


def graph_case(seconds: float, workers: int) -> dict:
    """Stream a million-block dry run for a while; report start-up, throughput and driver memory."""
    from distributed import Client, LocalCluster

    configure_workers()  # in this (child) process: dask settings are not inherited through spawn
    work = Path(tempfile.mkdtemp(prefix="emseg-graph-"))
    write_dry_input(work, 200)
    before = rss_mb()
    t0 = time.perf_counter()
    p, todo = plan_dry_run(work)
    t_plan = time.perf_counter() - t0
    first: list[float] = []
    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=":0",
                      silence_logs=logging.ERROR) as cluster, Client(cluster) as client:
        t1 = time.perf_counter()
        counter = {"done": 0}

        def done(task: graph.Task) -> None:
            counter["done"] += 1
            if not first:
                first.append(time.perf_counter() - t1)

        stream = graph.Streamer(client, run_id="graph", retries=0, window=2000, on_done=done)
        submitted = 0
        deadline = t1 + seconds
        samples: list[tuple[float, int, float]] = []  # (seconds, tasks finished, driver MB now)
        for task in graph.streaming_tasks(p.ctx, todo):
            stream.submit(task)
            submitted += 1
            now = time.perf_counter()
            if now - t1 >= 30 * (len(samples) + 1):
                samples.append((round(now - t1), counter["done"], round(current_mb(), 1)))
            if now > deadline:
                break
        elapsed = time.perf_counter() - t1
        for f, _ in list(stream.inflight.values()):
            f.cancel()
    shutil.rmtree(work, ignore_errors=True)
    return {"blocks": p.ctx.grid.num_blocks, "plan_and_resume_scan_seconds": round(t_plan, 2),
            "seconds_to_first_finished_task": round(first[0], 2) if first else None,
            "streamed_seconds": round(elapsed, 1), "submitted": submitted, "finished": counter["done"],
            "tasks_per_second": round(counter["done"] / elapsed, 1),
            "driver_peak_mb": round(rss_mb(), 1), "driver_mb_before": round(before, 1),
            "driver_mb_every_30s": samples}


def generate_case(n_blocks: int, blockwise: bool = False) -> dict:
    """Generate every task of a dry run's graph in the driver, without submitting: time and memory.

    This is the driver's side of the whole graph (3.3 million tasks for a million blocks): the
    streamed submission above holds this plus at most ``window`` futures. ``blockwise``: the graph of
    a boundary backend with blockwise agglomeration and the enclosed and small rules on (each seam
    task waits for its group's hood, each level-1 union-find group for its sources' hoods).
    """
    import dataclasses

    work = Path(tempfile.mkdtemp(prefix="emseg-gen-"))
    write_dry_input(work, round(n_blocks ** (1 / 3)) * 2)
    before = rss_mb()
    t0 = time.perf_counter()
    p, todo = plan_dry_run(work)
    if blockwise:
        ctx = dataclasses.replace(p.ctx, boundary=True, global_agglomeration=False, threshold=0.5,
                                  enclosed={"inclusions": True, "majority": 0.5, "max_score": 0.85},
                                  small={"min_size": 5000, "max_score": 0.8})
        p = dataclasses.replace(p, ctx=ctx)
    counts: dict[str, int] = {}
    for task in graph.streaming_tasks(p.ctx, todo):
        counts[task.stage] = counts.get(task.stage, 0) + 1
    for task in graph.resolving_tasks(p.ctx):
        counts[task.stage] = counts.get(task.stage, 0) + 1
    for task in graph.relabel_tasks(p.ctx, todo["4-relabel"], "token"):
        counts[task.stage] = counts.get(task.stage, 0) + 1
    seconds = time.perf_counter() - t0
    shutil.rmtree(work, ignore_errors=True)
    return {"blocks": p.ctx.grid.num_blocks, "blockwise": blockwise, "tasks": sum(counts.values()) + 1,
            "tasks_by_stage": counts, "plan_and_generate_seconds": round(seconds, 1),
            "driver_peak_mb": round(rss_mb(), 1), "driver_mb_before": round(before, 1)}


def _in_child(fn, *args):
    """Run ``fn`` in a fresh process, so that its peak memory is its own."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    # Not a multiprocessing.Pool: its workers are daemons, which may not start a Dask cluster.
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(fn, *args).result()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="1e4:1e6,1e5:1e7", help="blocks:edges pairs ('' for none)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--graph-seconds", type=float, default=60.0, help="0 skips the streamed dry run")
    ap.add_argument("--generate-blocks", type=float, default=1e6, help="0 skips generating a whole graph")
    args = ap.parse_args()
    logging.getLogger("distributed").setLevel(logging.ERROR)
    configure_workers()
    path = RESULTS / "scale.json"
    out: dict = json.loads(path.read_text()) if path.exists() else {}
    rows = {(r["blocks"], r["edges"]): r for r in out.get("unionfind", [])}
    print(f"{'blocks':>9} {'edges':>11} {'tasks':>7} {'write s':>8} {'UF s':>7} {'driver MB':>10} {'worker MB':>16} {'= global':>8}")
    for pair in filter(None, args.sizes.split(",")):
        b, e = (int(float(v)) for v in pair.split(":"))
        r = _in_child(unionfind_case, b, e, args.workers)
        rows[(r["blocks"], r["edges"])] = r
        print(f"{r['blocks']:>9} {r['edges']:>11} {r['tasks']:>7} {r['write_edges_seconds']:>8} {r['unionfind_seconds']:>7} "
              f"{r['driver_peak_mb']:>10} {str(r['worker_peak_mb']):>16} {str(r['equals_global']):>8}", flush=True)
    out["unionfind"] = [rows[k] for k in sorted(rows)]
    if args.generate_blocks > 0:
        for key, blockwise in (("generate", False), ("generate_blockwise", True)):
            g = _in_child(generate_case, int(args.generate_blocks), blockwise)
            out[key] = g
            print(f"\nwhole graph generated in the driver{' (blockwise agglomeration)' if blockwise else ''}: "
                  f"{g['blocks']} blocks, {g['tasks']} tasks in {g['plan_and_generate_seconds']} s, "
                  f"driver peak {g['driver_peak_mb']} MB", flush=True)
    if args.graph_seconds > 0:
        g = _in_child(graph_case, args.graph_seconds, args.workers)
        out["graph"] = g
        print(f"\ngraph: {g['blocks']} blocks: plan + resume scan "
              f"{g['plan_and_resume_scan_seconds']} s, first task done after {g['seconds_to_first_finished_task']} s, "
              f"{g['finished']} tasks in {g['streamed_seconds']} s ({g['tasks_per_second']}/s), driver peak "
              f"{g['driver_peak_mb']} MB; driver MB now, every 30 s: {[m for _, _, m in g['driver_mb_every_30s']]}")
    RESULTS.mkdir(exist_ok=True)
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
