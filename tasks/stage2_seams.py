"""Stage 2, seams: match each block's labels to its forward face neighbours' on their overlap.

The matching kernel is :func:`pipeline.seams.match_overlap`; this stage only reads the two faces,
turns local ids into global keys and stores every scored candidate (merged or not) for the audit.

Each candidate also keeps the centroid of the voxels its two labels share (``pos``: z, y, x,
zero-origin input voxels), where the seam audit (stage 8) puts its point. Every face is read by
exactly one seam task, so once the edges and the done-marker are written, the faces this task read
are deleted (unless ``keep_scratch``): peak scratch holds the faces of the blocks whose seams are
still pending, not of the whole volume. A task already marked done returns its marker unchanged.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from pipeline.geometry import Block
from pipeline.labels import key
from pipeline.seams import Edges, match_overlap, pair_centroids
from tasks import runtime
from tasks.context import RunContext
from tasks.stage1_segment import face_key

STAGE = "2-seams"


def face_origin(ctx: RunContext, block: Block, axis: int, neighbour: Block) -> np.ndarray:
    """Zero-origin input voxel of the faces' voxel (0, 0, 0) for the seam of ``block`` and its forward
    ``neighbour`` along ``axis``. Instance backends keep the overlap of the two read boxes; boundary
    backends the two planes either side of the seam, whose points go on the seam itself (half a voxel
    before the neighbour's first plane)."""
    if ctx.boundary:
        start = [float(v) for v in block.write_box.start]
        start[axis] = neighbour.write_box.start[axis] - 0.5
        return np.array(start, np.float64)
    return np.array((block.read_box & neighbour.read_box).start, np.float64)


def seams_block(ctx: RunContext, block_id: int, *upstream: Any) -> dict[str, Any]:
    store = runtime.scratch(ctx.output)
    done = store.done_info(STAGE, block_id)
    if done is not None:  # a repeated execution (a lost worker's result recomputed by Dask): faces are gone
        return done
    if ctx.boundary:
        return fragment_seams_block(ctx, block_id)
    t0 = time.perf_counter()
    grid = ctx.grid
    block = grid.block(block_id)
    rule = ctx.rule
    parts = []
    centres = []
    consumed: list[str] = []
    for axis, neighbour in grid.forward_neighbours(block):
        keys = face_key(block_id, axis, +1), face_key(neighbour.id, axis, -1)
        mine = store.get_arrays(keys[0])["labels"]
        theirs = store.get_arrays(keys[1])["labels"]
        e = match_overlap(mine, theirs, rule)
        parts.append(Edges(key(block_id, e.a), key(neighbour.id, e.b), e.count, e.iou, e.merge))
        centres.append(pair_centroids(mine, theirs, e.a, e.b) + face_origin(ctx, block, axis, neighbour))
        consumed.extend(keys)
    edges = Edges.concat(parts)
    store.put_arrays(
        f"edges/{block_id}",
        {"a": edges.a, "b": edges.b, "count": edges.count, "iou": edges.iou, "merge": edges.merge,
         "pos": _positions(centres)},
    )
    info = {"candidates": len(edges), "merges": int(edges.merge.sum()), "seconds": time.perf_counter() - t0}
    store.mark_done(STAGE, block_id, info)
    if not ctx.keep_scratch:
        store.delete(consumed)
    return info


def _positions(centres: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(centres).astype(np.float32) if centres else np.zeros((0, 3), np.float32)


def fragment_seams_block(ctx: RunContext, block_id: int) -> dict[str, Any]:
    """Stage 2 of a boundary backend: scored edges between fragments facing each other across the
    block's forward faces (:func:`pipeline.agglomeration.face_edges`).

    ``edges/<block>`` holds ``a``, ``b`` (global keys), ``count`` (voxel pairs in contact), ``score``
    (1 - the affinity statistic), ``iou`` (the affinity statistic itself, which the seam audit shows),
    ``merge`` (score <= the run's threshold; stage 3 applies the threshold itself) and ``pos`` (the
    centroid of each pair's contact, on the seam plane).
    """
    from pipeline.agglomeration import face_edges

    t0 = time.perf_counter()
    grid = ctx.grid
    block = grid.block(block_id)
    store = runtime.scratch(ctx.output)
    scoring = runtime.backend(ctx.backend_key).params.scoring
    a_parts, b_parts, counts, scores, centres = [], [], [], [], []
    consumed: list[str] = []
    for axis, neighbour in grid.forward_neighbours(block):
        keys = face_key(block_id, axis, +1), face_key(neighbour.id, axis, -1)
        mine = store.get_arrays(keys[0])["labels"]
        theirs = store.get_arrays(keys[1])
        a, b, count, score = face_edges(mine, theirs["labels"], theirs["affs"], scoring=scoring)
        a_parts.append(key(block_id, a))
        b_parts.append(key(neighbour.id, b))
        counts.append(count)
        scores.append(score)
        centres.append(pair_centroids(mine, theirs["labels"], a, b) + face_origin(ctx, block, axis, neighbour))
        consumed.extend(keys)
    u64 = np.zeros(0, np.uint64)
    score = np.concatenate(scores) if scores else np.zeros(0, np.float32)
    edges = {
        "a": np.concatenate(a_parts) if a_parts else u64,
        "b": np.concatenate(b_parts) if b_parts else u64.copy(),
        "count": np.concatenate(counts) if counts else np.zeros(0, np.int64),
        "iou": (1.0 - score).astype(np.float32),
        "merge": score <= ctx.threshold,
        "score": score,
        "pos": _positions(centres),
    }
    store.put_arrays(f"edges/{block_id}", edges)
    info = {"candidates": len(score), "merges": int(edges["merge"].sum()), "seconds": time.perf_counter() - t0}
    store.mark_done(STAGE, block_id, info)
    if not ctx.keep_scratch:
        store.delete(consumed)
    return info
