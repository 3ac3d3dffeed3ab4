"""Stage 2, seams: match each block's labels to its forward face neighbours' on their overlap.

The matching kernel is :func:`pipeline.seams.match_overlap`; this stage only reads the two faces,
turns local ids into global keys and stores every scored candidate (merged or not) for the audit.
"""

from __future__ import annotations

import time
from typing import Any

from pipeline.labels import key
from pipeline.seams import Edges, match_overlap
from tasks import runtime
from tasks.context import RunContext
from tasks.stage1_segment import face_key

STAGE = "2-seams"


def seams_block(ctx: RunContext, block_id: int, *upstream: Any) -> dict[str, Any]:
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
