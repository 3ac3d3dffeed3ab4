"""Stage 3, union-find: one global mapping from all merge edges to sequential final ids.

It runs as one task on a worker (not on the driver): its memory is proportional to the number of
blocks plus merge edges. See :mod:`pipeline.unionfind` for how final ids are derived.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import numpy as np

from pipeline.unionfind import build_mapping
from tasks import runtime
from tasks.context import RunContext
from tasks.stage1_segment import STAGE as SEGMENT

STAGE = "3-unionfind"


def unionfind(ctx: RunContext, *upstream: Any) -> dict[str, Any]:
    t0 = time.perf_counter()
    store = runtime.scratch(ctx.output)
    n = ctx.grid.num_blocks
    n_core = np.zeros(n, np.int64)
    a_parts, b_parts = [], []
    for block_id in range(n):
        info = store.done_info(SEGMENT, block_id)
        if info is None:
            raise RuntimeError(f"block {block_id} has no stage-1 result; run stage 1-segment first")
        n_core[block_id] = info["n_core"]
        edges = store.get_arrays(f"edges/{block_id}")
        merge = edges["merge"]
        a_parts.append(edges["a"][merge])
        b_parts.append(edges["b"][merge])
    a = np.concatenate(a_parts) if a_parts else np.zeros(0, np.uint64)
    b = np.concatenate(b_parts) if b_parts else np.zeros(0, np.uint64)
    mapping = build_mapping(a, b, n_core)
    token = uuid.uuid4().hex
    store.put_arrays(
        "mapping",
        {
            "offsets": mapping.offsets,
            "keys": mapping.keys,
            "final": mapping.final,
            "num_segments": np.array([mapping.num_segments], np.int64),
            "token": np.frombuffer(token.encode("ascii"), np.uint8),
        },
    )
    info = {
        "token": token,
        "num_segments": mapping.num_segments,
        "merge_edges": int(len(a)),
        "seconds": time.perf_counter() - t0,
    }
    store.mark_done(STAGE, "all", info)
    return info
