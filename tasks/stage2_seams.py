"""Stage 2, seams: match each block's labels to its forward face neighbours' on their overlap.

The matching kernel is :func:`emseg.pipeline.stitching.seams.match_overlap`; this stage only reads the two faces,
turns local ids into global keys and stores every scored candidate (merged or not) for the audit.

Each candidate also keeps the centroid of the voxels its two labels share (``pos``: z, y, x,
zero-origin input voxels), where the seam audit (stage 8) puts its point. Every face is read by
exactly one seam task, so once the edges and the done-marker are written, the faces this task read
are deleted (unless ``keep_scratch``): peak scratch holds the faces of the blocks whose seams are
still pending, not of the whole volume. A task already marked done returns its marker unchanged.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np

from emseg.pipeline.geometry import Block
from emseg.pipeline.io.scratch import decode_arrays
from emseg.pipeline.stitching.labels import key, local_of
from emseg.pipeline.stitching.seams import Edges, match_overlap, pair_centroids
from emseg.tasks.driver import runtime
from emseg.tasks.driver.context import RunContext
from emseg.tasks.stage1_segment import face_key
from emseg.pipeline import stages

STAGE = stages.SEAMS


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


def match_seam(block_id: int, neighbour_id: int, mine: np.ndarray, theirs: np.ndarray, rule: Any) -> Edges:
    """The scored edges of one overlap: ``mine`` and ``theirs`` are the two blocks' local labels in
    it (same shape); the edges carry global keys (``block << 32 | local``)."""
    e = match_overlap(mine, theirs, rule)
    return Edges(key(block_id, e.a), key(neighbour_id, e.b), e.count, e.iou, e.merge)


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
        e = match_seam(block_id, neighbour.id, mine, theirs, rule)
        parts.append(e)
        centres.append(pair_centroids(mine, theirs, local_of(e.a), local_of(e.b)) + face_origin(ctx, block, axis, neighbour))
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


#: stage 2, blockwise scope: a group member's scores, written by the group's leader (transient)
HOOD = "hood/"


def group_scores(ctx: RunContext, block: Block, rag: Callable[[int], Any], seam: Callable[..., Any]
                 ) -> dict[int, np.ndarray]:
    """Blockwise scope: the agglomeration scores of the edges of every block of ``block``'s group, by
    block id, each in the order of that block's ``edges/<block>`` (its region graph, then its
    forward seams).

    One agglomeration of the group's hood (:meth:`~emseg.pipeline.geometry.BlockGrid.hood`: up to
    4 x 4 x 4 blocks; every region graph in it and every seam between two of its blocks) scores all
    of the group's blocks at once. Each block's edges are thereby agglomerated with at least its
    3 x 3 x 3 neighbourhood (1 to 2 blocks of context on each side), and each region graph is
    agglomerated 8 times per 8 blocks instead of 27 times: on 500³ of mirrored FIB-25 in 128³ blocks
    stage 2 took 4.3 / 4.6 against 14.4 / 14.8 CPU-s, side by side (docs/agglomeration.md,
    "Blockwise context").
    """
    from emseg.pipeline.stitching.agglomeration import Graph, agglomerate

    grid = ctx.grid
    members = grid.group_members(grid.group(block))
    hood = grid.hood(block)
    inside = {b.id for b in hood}
    first = {m.id for m in members}
    parts: list[Any] = []
    bounds: dict[int, tuple[int, int]] = {}
    at = 0
    for b in members + [b for b in hood if b.id not in first]:  # the members' own edges first
        graphs = [rag(b.id)] + [seam(b, axis, upper, centroids=False)[0]
                                for axis, upper in grid.forward_neighbours(b) if upper.id in inside]
        parts.extend(graphs)
        size = sum(len(g) for g in graphs)
        if b.id in first:  # a member's forward neighbours all lie in the hood: these are its edges
            bounds[b.id] = (at, at + size)
        at += size
    score = agglomerate(Graph.concat(parts))
    return {b: score[lo:hi] for b, (lo, hi) in bounds.items()}


def _own_scores(ctx: RunContext, store: Any, block: Block, n_edges: int, rag: Callable[[int], Any],
                seam: Callable[..., Any]) -> np.ndarray:
    """The block's scores: the leader of its group computes the group's (:func:`group_scores`) and
    stores the others' at ``hood/<block>``; the others read theirs (or compute the group's
    themselves when it is not there, e.g. after a resume that did not redo the leader)."""
    members = ctx.grid.group_members(ctx.grid.group(block))
    if block.id != members[0].id:
        blob = store.read(f"{HOOD}{block.id}")
        if blob is not None:
            score = decode_arrays(blob)["score"]
            if len(score) == n_edges:
                return score
    scores = group_scores(ctx, block, rag, seam)
    if block.id == members[0].id:
        for m in members[1:]:
            store.put_arrays(f"{HOOD}{m.id}", {"score": scores[m.id]})
    score = scores[block.id]
    if len(score) != n_edges:
        raise RuntimeError(f"block {block.id}: the group's agglomeration scored {len(score)} of its edges, "
                           f"not {n_edges}; rerun with --restart")
    return score


def fragment_seams_block(ctx: RunContext, block_id: int) -> dict[str, Any]:
    """Stage 2 of a boundary backend: the block's fragment edges, scored when agglomeration is blockwise.

    ``edges/<block>`` holds the edges the block owns — between its own fragments (its region graph)
    and to the fragments facing them across its forward faces (:func:`emseg.pipeline.stitching.agglomeration.face_graph`)
    — as global keys ``a``, ``b`` with ``total`` and ``count`` (the affinities across their shared
    faces), ``seam`` (True for the forward-face edges), ``join`` (True for the seam edges between two
    pieces of one fragment that the face cut: agglomeration merges them first), ``iou`` (their mean affinity, which the seam
    audit shows), ``pos`` (a seam edge's contact centroid on the seam plane; NaN for the others),
    ``outside_key`` / ``outside_count`` (fragments on the region's faces or next to no data) and
    ``fragment_key`` / ``fragment_size`` (every fragment of the block and its voxels) and
    ``face_key`` / ``face_count`` / ``face_side`` (the fragments on each face of the block), which
    stage 3's ``agglomeration.enclosed`` and ``.small`` rules read.

    Blockwise agglomeration (``ctx.global_agglomeration`` False) also writes ``score``: the block's
    edges agglomerated together with every region graph of its hood
    (:meth:`~emseg.pipeline.geometry.BlockGrid.hood`: its 2 x 2 x 2 group and one block around it)
    and every seam between two blocks of it
    (:func:`emseg.pipeline.stitching.agglomeration.agglomerate`): :func:`group_scores`, once per
    group, by the group's first block (the other blocks' seam tasks wait for it). Global
    agglomeration scores every edge in stage 3's first task instead. Faces are read by several
    blocks' seam tasks here, so they stay until the run's scratch is pruned.
    """
    from emseg.pipeline.stitching.agglomeration import Graph, agglomerate, face_graph

    t0 = time.perf_counter()
    grid = ctx.grid
    block = grid.block(block_id)
    store = runtime.scratch(ctx.output)

    def rag(b: int) -> Graph:
        r = store.get_arrays(f"rag/{b}")
        return Graph(key(b, r["u"]), key(b, r["v"]), r["total"].astype(np.float64), r["count"].astype(np.int64))

    def seam(lower: Block, axis: int, upper: Block, centroids: bool = True) -> tuple[Graph, np.ndarray | None]:
        lo = store.get_arrays(face_key(lower.id, axis, +1))
        mine = lo["labels"]
        theirs = store.get_arrays(face_key(upper.id, axis, -1))
        joined = lo["continues"] & theirs["continues"] if "continues" in lo and "continues" in theirs else None
        g = face_graph(mine, theirs["labels"], theirs["affs"], joined)
        pos = pair_centroids(mine, theirs["labels"], g.u, g.v) + face_origin(ctx, lower, axis, upper) \
            if centroids else None  # the seam audit's points: only for the block's own seams
        return Graph(key(lower.id, g.u), key(upper.id, g.v), g.total, g.count, join=g.join), pos

    own = [rag(block_id)]
    centres = [np.full((len(own[0]), 3), np.nan)]
    for axis, neighbour in grid.forward_neighbours(block):
        g, pos = seam(block, axis, neighbour)
        own.append(g)
        centres.append(pos)
    mine = Graph.concat(own)
    seam_flag = np.ones(len(mine), bool)
    seam_flag[: len(own[0])] = False
    arrays = {"a": mine.u, "b": mine.v, "total": mine.total, "count": mine.count, "seam": seam_flag,
              "join": mine.joins,
              "iou": (mine.total / np.maximum(mine.count, 1)).astype(np.float32), "pos": _positions(centres)}
    outside = store.get_arrays(f"rag/{block_id}")
    if "out_id" in outside:  # fragments on the region's faces or next to no data (agglomeration.enclosed)
        arrays["outside_key"] = key(block_id, outside["out_id"])
        arrays["outside_count"] = outside["out_n"].astype(np.int64)
    if "size" in outside:  # voxels per fragment 1..n (agglomeration.small)
        arrays["fragment_key"] = key(block_id, np.arange(1, len(outside["size"]) + 1, dtype=np.uint32))
        arrays["fragment_size"] = outside["size"].astype(np.int64)
    if "face_id" in outside:  # fragments on each face of the write box (blockwise enclosed / small rules)
        arrays["face_key"] = key(block_id, outside["face_id"])
        arrays["face_count"] = outside["face_n"].astype(np.int64)
        arrays["face_side"] = outside["face_side"]
    info: dict[str, Any] = {"edges": len(mine), "seam_edges": int(seam_flag.sum())}
    if not ctx.global_agglomeration:
        score = _own_scores(ctx, store, block, len(mine), rag, seam)
        arrays["score"] = score
        arrays["merge"] = score <= ctx.threshold
        info["merges"] = int(arrays["merge"].sum())
    store.put_arrays(f"edges/{block_id}", arrays)
    info["seconds"] = time.perf_counter() - t0
    store.mark_done(STAGE, block_id, info)
    return info
