"""Stage 9, skeletons: TEASAR skeletons per block (kimimaro), then one skeleton per segment joined
across the seams, written as Neuroglancer precomputed skeletons (unsharded or sharded).

Two kinds of task, as for meshes (:mod:`emseg.tasks.stage6_meshes`):

``9-skeletons`` per block
    skeletonizes the block's write box plus one voxel on its high sides
    (:func:`emseg.pipeline.outputs.skeletons.skeletonize_block`, with ``fix_borders`` so that neighbouring blocks
    put identical vertices on their shared plane) and stores the pieces in scratch under the
    segment's group (``post/skeletons/<group>/<block>``).
``9-skeletons`` per group
    after every block task: joins each segment's pieces (:func:`emseg.pipeline.outputs.skeletons.join`) and writes
    ``<segmentation>/skeletons/<id>`` (unsharded) or the group's shard file (sharded: a group is one
    shard, ids mapped by their own bits).

The segmentation's ``info`` gets ``"skeletons": "skeletons"``, which Neuroglancer follows to show a
selected segment's skeleton (so ``emseg view`` shows them), and cloud-volume to read them.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any


from emseg.pipeline.outputs import skeletons

from emseg.pipeline.io import urls
from emseg.pipeline.outputs.downsample import Scale
from emseg.pipeline.geometry import BlockGrid
from emseg.pipeline.outputs.shardfile import ShardSpec, encode_shard
from emseg.tasks.driver import runtime
from emseg.pipeline import stages

STAGE = stages.SKELETONS
PREFIX = "post/skeletons/"


@dataclass(frozen=True)
class SkeletonPlan:
    output: str  # run output store URL (scratch lives there)
    volume_spec: dict[str, Any]  # tensorstore spec of the scale that is skeletonized
    scale: Scale
    block_shape: tuple[int, int, int]
    skeleton_dir: str  # kvstore URL of <segmentation>/skeletons
    format: str  # unsharded | sharded
    shift: int  # group = id >> shift
    sharding: dict[str, Any] | None
    teasar: dict[str, float] = field(default_factory=dict)
    dust_voxels: int = 100
    dust_nm: float = 0.0
    tick_nm: float = 0.0
    run_id: str = ""

    @property
    def grid(self) -> BlockGrid:
        return BlockGrid(self.scale.box, self.block_shape, (0, 0, 0))

    def info(self) -> dict[str, Any]:
        return skeletons.info(self.sharding)



def skeleton_block_task(plan: SkeletonPlan, block_id: int, *upstream: Any) -> dict[str, Any]:
    """Skeletonize one block; store its pieces by group."""
    t0 = time.perf_counter()
    block = plan.grid.block(block_id)
    box = skeletons.skeleton_box(block.write_box, plan.scale.box)
    vol = runtime.volume(json.dumps(plan.volume_spec), False, plan.run_id)
    labels = vol.read(box.shift([-o for o in plan.scale.offset_zyx]))
    pieces = skeletons.skeletonize_block(labels, box.start, plan.scale.voxel_size_nm, teasar=plan.teasar,
                                         dust_voxels=plan.dust_voxels)
    groups: dict[int, dict[int, Any]] = {}
    for seg, skel in pieces.items():
        groups.setdefault(seg >> plan.shift, {})[seg] = skel
    store = runtime.scratch(plan.output)
    for group, members in groups.items():
        store.put_arrays(f"{PREFIX}{group}/{block_id}", skeletons.to_arrays(members))
    return {"seconds": time.perf_counter() - t0, "voxels": int(box.size), "segments": len(pieces),
            "groups": sorted(groups)}


def merge_group_task(plan: SkeletonPlan, group: int, *upstream: Any) -> dict[str, Any]:
    """Join the pieces of every segment in ``group`` and write their skeletons."""
    t0 = time.perf_counter()
    store = runtime.scratch(plan.output)
    prefix = f"{PREFIX}{group}/"
    keys = store.list_keys(prefix)
    pieces: dict[int, list[Any]] = {}
    for key in keys:
        for seg, skel in skeletons.from_arrays(store.get_arrays(key)).items():
            pieces.setdefault(seg, []).append(skel)
    kv = urls.open_kvstore(plan.skeleton_dir)
    entries: list[tuple[int, bytes, bytes]] = []
    writes = []
    vertices = 0
    for seg in sorted(pieces):
        skel = skeletons.join(pieces[seg], seg, dust_nm=plan.dust_nm, tick_nm=plan.tick_nm)
        if len(skel.vertices) == 0:
            continue
        vertices += len(skel.vertices)
        blob = skel.to_precomputed()
        if plan.format == "sharded":
            entries.append((seg, blob, b""))
        else:
            writes.append(kv.write(str(seg), blob))
    if plan.format == "sharded" and entries:
        spec = ShardSpec.from_json(plan.sharding or {})
        writes.append(kv.write(spec.shard_name(group & ((1 << spec.shard_bits) - 1)), encode_shard(entries, spec)))
    for w in writes:
        w.result()
    return {"seconds": time.perf_counter() - t0, "segments": len(pieces), "vertices": vertices}
