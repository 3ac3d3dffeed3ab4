"""Stage 2, seams: match each block's labels to its forward face neighbours' on their overlap.

The matching kernel is :func:`pipeline.seams.match_overlap`; this stage only reads the two faces,
turns local ids into global keys and stores every scored candidate (merged or not) for the audit.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from pipeline.labels import key
from pipeline.seams import Edges, match_overlap
from tasks import runtime
from tasks.context import RunContext
from tasks.stage1_segment import face_key

STAGE = "2-seams"


def seams_block(ctx: RunContext, block_id: int, *upstream: Any) -> dict[str, Any]:
    if ctx.boundary:
        return fragment_seams_block(ctx, block_id)
    t0 = time.perf_counter()
    grid = ctx.grid
    block = grid.block(block_id)
    store = runtime.scratch(ctx.output)
    rule = ctx.rule
    parts = []
    for axis, neighbour in grid.forward_neighbours(block):
        mine = store.get_arrays(face_key(block_id, axis, +1))["labels"]
        theirs = store.get_arrays(face_key(neighbour.id, axis, -1))["labels"]
        e = match_overlap(mine, theirs, rule)
        parts.append(Edges(key(block_id, e.a), key(neighbour.id, e.b), e.count, e.iou, e.merge))
    edges = Edges.concat(parts)
    store.put_arrays(
        f"edges/{block_id}",
        {"a": edges.a, "b": edges.b, "count": edges.count, "iou": edges.iou, "merge": edges.merge},
    )
    info = {"candidates": len(edges), "merges": int(edges.merge.sum()), "seconds": time.perf_counter() - t0}
    store.mark_done(STAGE, block_id, info)
    return info


def fragment_seams_block(ctx: RunContext, block_id: int) -> dict[str, Any]:
    """Stage 2 of a boundary backend: scored edges between fragments facing each other across the
    block's forward faces (:func:`pipeline.agglomeration.face_edges`).

    ``edges/<block>`` holds ``a``, ``b`` (global keys), ``count`` (voxel pairs in contact), ``score``
    (1 - the affinity statistic), ``iou`` (the affinity statistic itself, which the seam audit shows)
    and ``merge`` (score <= the run's threshold; stage 3 applies the threshold itself).
    """
    from pipeline.agglomeration import face_edges

    t0 = time.perf_counter()
    grid = ctx.grid
    block = grid.block(block_id)
    store = runtime.scratch(ctx.output)
    scoring = runtime.backend(ctx.backend_key).params.scoring
    a_parts, b_parts, counts, scores = [], [], [], []
    for axis, neighbour in grid.forward_neighbours(block):
        mine = store.get_arrays(face_key(block_id, axis, +1))["labels"]
        theirs = store.get_arrays(face_key(neighbour.id, axis, -1))
        a, b, count, score = face_edges(mine, theirs["labels"], theirs["affs"], scoring=scoring)
        a_parts.append(key(block_id, a))
        b_parts.append(key(neighbour.id, b))
        counts.append(count)
        scores.append(score)
    u64 = np.zeros(0, np.uint64)
    score = np.concatenate(scores) if scores else np.zeros(0, np.float32)
    edges = {
        "a": np.concatenate(a_parts) if a_parts else u64,
        "b": np.concatenate(b_parts) if b_parts else u64.copy(),
        "count": np.concatenate(counts) if counts else np.zeros(0, np.int64),
        "iou": (1.0 - score).astype(np.float32),
        "merge": score <= ctx.threshold,
        "score": score,
    }
    store.put_arrays(f"edges/{block_id}", edges)
    info = {"candidates": len(score), "merges": int(edges["merge"].sum()), "seconds": time.perf_counter() - t0}
    store.mark_done(STAGE, block_id, info)
    return info
