"""Stage 8, seam audit: the stitching edges whose score fell near the merge threshold, as points.

Stage 2 keeps every candidate edge between neighbouring blocks with its overlap IoU and whether the
rule merged it. An edge is *near the threshold* when ``|iou - stitch.min_iou| <= seam_audit_margin``:
those are the merge decisions a person should look at. Per block, this stage finds the voxels the
two labels share in the overlap (their centroid, which stage 2 kept with the edge) as the point,
and maps both labels to final segment ids through the union-find result. A tree of reduce tasks keeps
the ``seam_audit_limit`` points nearest the threshold, and its root writes the
points as a precomputed annotation collection ``<output>/seam_audit`` with properties ``iou``,
``overlap`` (voxels) and ``merged``, related to the two segments (``segments``), so the viewer lists
the audit points of a selected segment. For boundary backends the points are the seam edges, ``iou``
is the mean affinity at which agglomeration merges them (``1 - score``) and ``merged`` says whether
the run merged them: at the threshold, or by ``agglomeration.enclosed`` or ``.small``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from emseg.pipeline.io import urls
from emseg.pipeline.outputs.annotations import Property, point_annotations
from emseg.pipeline.stitching.labels import block_of, local_of
from emseg.pipeline.stitching.seams import pair_centroids
from emseg.tasks.driver import runtime
from emseg.tasks.driver.context import RunContext
from emseg.tasks.driver.engine import children
from emseg.tasks.stage1_segment import face_key
from emseg.tasks.stage2_seams import face_origin
from emseg.pipeline import stages
from emseg.pipeline.io import kvstore
from emseg.pipeline.stitching.seams import near, nearest

STAGE = stages.SEAM_AUDIT
PREFIX = "post/audit/"


@dataclass(frozen=True)
class AuditPlan:
    run: RunContext
    token: str  # the union-find result this audit maps through
    input_offset_zyx: tuple[int, int, int]
    voxel_size_nm: tuple[float, float, float]
    threshold: float
    margin: float
    limit: int
    audit_dir: str  # kvstore URL of <output>/seam_audit


def audit_block_task(plan: AuditPlan, block_id: int, *upstream: Any) -> dict[str, Any]:
    t0 = time.perf_counter()
    ctx = plan.run
    grid = ctx.grid
    block = grid.block(block_id)
    store = runtime.scratch(ctx.output)
    edges = store.get_arrays(f"edges/{block_id}")
    if ctx.boundary:  # the seam edges, by the mean affinity at which agglomeration merges them
        from emseg.tasks.stage3_unionfind import edge_merges, edge_scores

        score = edge_scores(ctx, store, block_id, edges)
        merged, _ = edge_merges(ctx, store, block_id, edges)  # the threshold's and the rules' merges
        edges = {**edges, "iou": (1.0 - score).astype(np.float32), "merge": merged}
        pick = near(edges["iou"], plan.threshold, plan.margin) & edges["seam"]
    else:
        pick = near(edges["iou"], plan.threshold, plan.margin)
    rows: dict[str, list[np.ndarray]] = {k: [] for k in ("pos", "a", "b", "iou", "count", "merge")}
    if pick.any():
        def finals(b: int, local: np.ndarray) -> np.ndarray:
            """Final ids of block ``b``'s local labels; 0 for halo-only labels no merge reached."""
            return runtime.final_ids(ctx.output, plan.token, b, local)

        a_key, b_key = edges["a"][pick], edges["b"][pick]
        nb_blocks = block_of(b_key).astype(np.int64)
        for axis, nb in grid.forward_neighbours(block):
            sel = nb_blocks == nb.id
            if not sel.any():
                continue
            la, lb = local_of(a_key[sel]), local_of(b_key[sel])
            if "pos" in edges:  # stage 2 kept each candidate's centroid (zero-origin input voxels)
                centre = edges["pos"][pick][sel].astype(np.float64)
            else:  # an older scratch area: from the faces, which stage 2 then kept
                mine = store.get_arrays(face_key(block_id, axis, +1))["labels"]
                theirs = store.get_arrays(face_key(nb.id, axis, -1))["labels"]
                centre = pair_centroids(mine, theirs, la, lb) + face_origin(ctx, block, axis, nb)
            origin = np.array(plan.input_offset_zyx, np.float64)
            rows["pos"].append(centre + origin + 0.5)
            rows["a"].append(finals(block_id, la))
            rows["b"].append(finals(nb.id, lb))
            rows["iou"].append(edges["iou"][pick][sel])
            rows["count"].append(edges["count"][pick][sel])
            rows["merge"].append(edges["merge"][pick][sel])
    empty = {"pos": np.zeros((0, 3)), "a": np.zeros(0, np.uint64), "b": np.zeros(0, np.uint64),
             "iou": np.zeros(0, np.float32), "count": np.zeros(0, np.int64), "merge": np.zeros(0, bool)}
    arrays = {k: (np.concatenate(v) if v else empty[k]) for k, v in rows.items()}
    store.put_arrays(f"{PREFIX}{block_id}", arrays)
    return {"seconds": time.perf_counter() - t0, "points": int(len(arrays["iou"]))}


def part_key(level: int, index: int) -> str:
    """Scratch key of a block's points (level 0) or of a partial reduce (level >= 1)."""
    return f"{PREFIX}{index}" if level == 0 else f"{PREFIX}L{level}/{index}"


def _gather(plan: AuditPlan, level: int, indices: range) -> tuple[dict[str, np.ndarray], int]:
    """The parts ``indices`` on ``level`` concatenated and cut to the nearest ``limit``, and how many
    candidate points they held before any cut."""
    store = runtime.scratch(plan.run.output)
    parts = [store.get_arrays(part_key(level, i)) for i in indices]
    n_all = sum(int(p["candidates"][0]) if "candidates" in p else len(p["iou"]) for p in parts)
    keys = [k for k in parts[0] if k != "candidates"] if parts else []
    cat = {k: np.concatenate([p[k] for p in parts]) for k in keys}
    return (nearest(cat, plan.threshold, plan.limit) if cat else cat), n_all


def partial_task(plan: AuditPlan, level: int, index: int, below: int, *upstream: Any) -> dict[str, Any]:
    """One node of the reduce tree: keep the nearest ``limit`` points of its children."""
    t0 = time.perf_counter()
    cat, n_all = _gather(plan, level - 1, children(index, below))
    runtime.scratch(plan.run.output).put_arrays(part_key(level, index), {**cat, "candidates": np.array([n_all])})
    return {"seconds": time.perf_counter() - t0, "points": int(len(cat.get("iou", [])))}


def reduce_task(plan: AuditPlan, level: int, count: int, *upstream: Any) -> dict[str, Any]:
    """The root: the nearest ``limit`` points of the ``count`` parts on ``level``, written as a
    precomputed annotation collection."""
    t0 = time.perf_counter()
    cat, n_all = _gather(plan, level, range(count))
    n = len(cat.get("iou", []))
    roi = plan.run.roi
    lower = [s + o for s, o in zip(roi.start, plan.input_offset_zyx)]
    upper = [e + o for e, o in zip(roi.stop, plan.input_offset_zyx)]
    related = [sorted({int(x) for x in (a, b) if int(x) != 0}) for a, b in zip(cat.get("a", []), cat.get("b", []))]
    files = point_annotations(
        cat.get("pos", np.zeros((0, 3))),
        voxel_size_nm=plan.voxel_size_nm,
        properties=[
            Property("iou", "float32", "mean affinity across the seam contact (boundary backends: the score "
                     "agglomeration merges by)" if plan.run.boundary else "IoU of the two labels inside the overlap"),
            Property("overlap", "uint32", "voxels the two labels share in the overlap"),
            Property("merged", "uint8", "whether the stitching rule (boundary backends: the agglomeration, its "
                     "enclosed and small rules included) merged the pair", {0: "kept apart", 1: "merged"}),
        ],
        values={"iou": cat.get("iou", np.zeros(0)), "overlap": np.minimum(cat.get("count", np.zeros(0)), 2**32 - 1),
                "merged": cat.get("merge", np.zeros(0)).astype(np.uint8)},
        relationships={"segments": related},
        bounds_zyx=(lower, upper),
    )
    kv = urls.open_kvstore(plan.audit_dir)
    kvstore.delete_prefix(kv)
    futures = [kv.write(k, v) for k, v in files.items()]
    for f in futures:
        f.result()
    merged = int(cat["merge"].sum()) if n else 0
    return {"seconds": time.perf_counter() - t0, "points": n, "candidates": n_all, "merged": merged}
