"""Stage 1, segment: run the backend on each block's read box and keep its labels in scratch.

Per block it stores the core labels (renumbered, core labels first) and, for each face neighbour,
its labels on the overlap of the two read boxes, which stage 2 matches.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from pipeline.labels import renumber_core_first
from tasks import runtime
from tasks.context import RunContext

STAGE = "1-segment"


def face_key(block_id: int, axis: int, direction: int) -> str:
    return f"faces/{block_id}/{'zyx'[axis]}{'+' if direction > 0 else '-'}"


def segment_block(ctx: RunContext, block_id: int) -> dict[str, Any]:
    t0 = time.perf_counter()
    grid = ctx.grid
    block = grid.block(block_id)
    image = runtime.volume(ctx.input_key).read(block.read_box)
    labels = runtime.backend(ctx.backend_key).segment(image)
    if labels.shape != image.shape:
        raise RuntimeError(
            f"backend {ctx.backend_name} returned labels of shape {labels.shape} for an image of {image.shape}"
        )
    if not np.issubdtype(labels.dtype, np.integer):
        raise RuntimeError(f"backend {ctx.backend_name} returned {labels.dtype} labels; it must return integers")
    core = block.write_box.slices(block.read_box.start)
    neighbours = list(grid.neighbours(block))
    overlaps = [block.read_box & nb.read_box for _, _, nb in neighbours]
    core_labels, faces, n_core, n_total = renumber_core_first(
        labels[core], [labels[o.slices(block.read_box.start)] for o in overlaps]
    )
    store = runtime.scratch(ctx.output)
    for (axis, direction, _), face in zip(neighbours, faces):
        store.put_arrays(face_key(block_id, axis, direction), {"labels": face})
    store.put_arrays(f"labels/{block_id}", {"core": core_labels, "n": np.array([n_core, n_total], np.int64)})
    info = {"n_core": n_core, "n_total": n_total, "seconds": time.perf_counter() - t0}
    store.mark_done(STAGE, block_id, info)
    return info
