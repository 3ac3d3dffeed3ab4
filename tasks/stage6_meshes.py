"""Stage 6, meshes: marching cubes per block, then one mesh per segment joined across the seams.

Two kinds of task:

``6-meshes`` per block
    reads the block's write box plus one voxel on its high sides (:func:`emseg.pipeline.outputs.meshes.mesh_box`),
    meshes and simplifies every segment in it, and stores the pieces in scratch under the segment's
    *group* (``post/meshes/<group>/<block>``).
``6-meshes`` per group
    after every block task: joins each segment's pieces (welding the shared seam vertices), and writes
    the segment's mesh in the chosen format.

A group is a run of consecutive segment ids (``id >> shift``). Final ids are numbered block by block,
so a block's segments fall into few groups; for the sharded format a group is exactly one shard file.

Formats (``postprocess.mesh_format``): ``legacy`` (one JSON manifest and one fragment file per
segment), ``multires`` (Draco-encoded levels of detail, two files per segment), ``sharded`` (the same
levels of detail packed into shard files); ``auto`` picks ``sharded`` when the segmentation is sharded.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from emseg.pipeline.outputs import meshes

from emseg.pipeline.io import urls
from emseg.pipeline.outputs.downsample import Scale
from emseg.pipeline.geometry import BlockGrid
from emseg.pipeline.outputs.shardfile import ShardSpec, encode_shard
from emseg.tasks.driver import runtime
from emseg.pipeline import stages
from emseg.pipeline.outputs.meshes import levels_of_detail

STAGE = stages.MESHES
PREFIX = "post/meshes/"


@dataclass(frozen=True)
class MeshPlan:
    """What the mesh tasks need: where to read, how to mesh, how to write."""

    output: str  # run output store URL (scratch lives there)
    volume_spec: dict[str, Any]  # tensorstore spec of the scale that is meshed
    scale: Scale
    block_shape: tuple[int, int, int]
    mesh_dir: str  # kvstore URL of <segmentation>/mesh
    format: str  # legacy | multires | sharded
    shift: int  # group = id >> shift
    sharding: dict[str, Any] | None
    reduction: int
    max_error: float
    lods: int
    run_id: str = ""

    @property
    def grid(self) -> BlockGrid:
        return BlockGrid(self.scale.box, self.block_shape, (0, 0, 0))

    def info(self) -> dict[str, Any]:
        if self.format == "legacy":
            return {"@type": "neuroglancer_legacy_mesh"}
        return meshes.multires_info(self.scale.voxel_size_nm, self.sharding)


def mesh_block_task(plan: MeshPlan, block_id: int, *upstream: Any) -> dict[str, Any]:
    """Mesh one block; store its pieces by group."""
    t0 = time.perf_counter()
    block = plan.grid.block(block_id)
    box, pad = meshes.mesh_box(block.write_box, plan.scale.box)
    vol = runtime.volume(json.dumps(plan.volume_spec), False, plan.run_id)
    labels = vol.read(box.shift([-o for o in plan.scale.offset_zyx]))
    lods = 1 if plan.format == "legacy" else plan.lods
    pieces = meshes.mesh_labels(labels, box.start, pad, reduction=plan.reduction, max_error=plan.max_error, lods=lods)
    groups: dict[int, list[int]] = {}
    for seg in sorted(pieces):
        groups.setdefault(seg >> plan.shift, []).append(seg)
    store = runtime.scratch(plan.output)
    faces = 0
    for group, ids in groups.items():
        parts = [(seg, lod, m) for seg in ids for lod, m in enumerate(pieces[seg])]
        faces += sum(len(m.faces) for seg, lod, m in parts if lod == 0)
        store.put_arrays(f"{PREFIX}{group}/{block_id}", {
            "ids": np.array([seg for seg, _, _ in parts], np.uint64),
            "lod": np.array([lod for _, lod, _ in parts], np.int64),
            "nv": np.array([len(m.vertices) for _, _, m in parts], np.int64),
            "nf": np.array([len(m.faces) for _, _, m in parts], np.int64),
            "vertices": np.concatenate([m.vertices for _, _, m in parts]),
            "faces": np.concatenate([m.faces for _, _, m in parts]),
        })
    return {"seconds": time.perf_counter() - t0, "voxels": int(box.size), "segments": len(pieces),
            "faces": faces, "groups": sorted(groups)}


def load_group(output: str, group: int) -> dict[int, dict[int, list[meshes.Mesh]]]:
    """Every block's pieces of the segments in ``group``: ``{segment: {level of detail: pieces}}``."""
    store = runtime.scratch(output)
    prefix = f"{PREFIX}{group}/"
    keys = store.list_keys(prefix)
    out: dict[int, dict[int, list[meshes.Mesh]]] = {}
    for key in keys:
        a = store.get_arrays(key)
        v_end = np.cumsum(a["nv"])
        f_end = np.cumsum(a["nf"])
        for i, (seg, lod) in enumerate(zip(a["ids"].tolist(), a["lod"].tolist())):
            v0 = int(v_end[i - 1]) if i else 0
            f0 = int(f_end[i - 1]) if i else 0
            piece = meshes.Mesh(a["vertices"][v0 : int(v_end[i])], a["faces"][f0 : int(f_end[i])])
            out.setdefault(int(seg), {}).setdefault(int(lod), []).append(piece)
    return out


def merge_group_task(plan: MeshPlan, group: int, *upstream: Any) -> dict[str, Any]:
    """Join the pieces of every segment in ``group`` and write their meshes."""
    t0 = time.perf_counter()
    pieces = load_group(plan.output, group)
    kv = urls.open_kvstore(plan.mesh_dir)
    voxel = plan.scale.voxel_size_nm
    entries: list[tuple[int, bytes, bytes]] = []
    faces = 0
    writes = []
    for seg in sorted(pieces):
        lods = levels_of_detail(pieces[seg]) if plan.format != "legacy" else [meshes.join(pieces[seg][0])]
        mesh = lods[0]
        if len(mesh.faces) == 0:
            continue
        faces += len(mesh.faces)
        if plan.format == "legacy":
            name = f"{seg}:0:1"
            writes.append(kv.write(name, meshes.encode_legacy(mesh, voxel)))
            writes.append(kv.write(f"{seg}:0", json.dumps({"fragments": [name]}).encode()))
            continue
        scales = [max(1.0, meshes.lod_error(plan.max_error, k)) for k in range(len(lods))]
        manifest, data = meshes.encode_multires(lods, scales)
        if plan.format == "multires":
            writes.append(kv.write(str(seg), data))
            writes.append(kv.write(f"{seg}.index", manifest))
        else:
            entries.append((seg, manifest, data))
    if plan.format == "sharded" and entries:
        spec = ShardSpec.from_json(plan.sharding or {})
        writes.append(kv.write(spec.shard_name(group & ((1 << spec.shard_bits) - 1)), encode_shard(entries, spec)))
    for w in writes:
        w.result()
    return {"seconds": time.perf_counter() - t0, "segments": len(pieces), "faces": faces}
