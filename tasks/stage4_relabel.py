"""Stage 4, relabel: map each block's core labels to final ids and write them to the output.

Write boxes align to the output's chunks (and shards), so each storage object is written by exactly
one task, whole.
"""

from __future__ import annotations

import json
import time
from typing import Any

from emseg.pipeline.io import urls
from emseg.pipeline.stitching.unionfind import block_lut
from emseg.tasks.driver import runtime
from emseg.tasks.driver.context import RunContext
from emseg.pipeline import stages

STAGE = stages.RELABEL


def segmentation_spec(ctx: RunContext) -> str:
    # Empty chunks are stored too: a reader can tell "all background" from "never written".
    return json.dumps({
        "driver": "neuroglancer_precomputed",
        "kvstore": urls.kvstore_spec(ctx.segmentation),
        "store_data_equal_to_fill_value": True,
    })


def relabel_block(ctx: RunContext, block_id: int, token: str | Any, *upstream: Any) -> dict[str, Any]:
    t0 = time.perf_counter()
    if isinstance(token, dict):  # the stage-3 future's result
        token = token["token"]
    block = ctx.grid.block(block_id)
    store = runtime.scratch(ctx.output)
    arrays = store.get_arrays(f"labels/{block_id}")
    n_core, n_total = (int(v) for v in arrays["n"])
    offs = runtime.offsets(ctx.output, token)
    lut = block_lut(runtime.table(ctx.output, token, block_id), n_total, n_core, offs,
                    lambda other: runtime.table(ctx.output, token, other))
    out = lut[arrays["core"]]
    runtime.volume(segmentation_spec(ctx), True, ctx.run_id).write(block.write_box.shift([-s for s in ctx.roi.start]), out)
    info = {"seconds": time.perf_counter() - t0}
    store.mark_done(STAGE, block_id, info)
    return info
