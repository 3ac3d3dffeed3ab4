"""Stage 3, union-find: the merge edges reduced up an octree of blocks, then resolved down it.

Tasks (see :mod:`emseg.pipeline.stitching.unionfind` for the algorithm)::

    up-L-g      level L = 1..top, per group: join the edges inside the group, pass the rest up
    down-L-g    level L = top..1, per group: final representatives, handed to the children
    finish      per-block id offsets (one number per block) and the number of segments

Every task holds one group's edges at most; the driver holds nothing but futures. Scratch keys::

    uf/up/<L>/<z>_<y>_<x>      renaming (keys, reps) and the edges passed up (pa, pb)
    uf/down/<L>/<z>_<y>_<x>    the parent's final map restricted to the group's keys
    uf/table/<block>           the block's labels that take part in merges, with final representatives
    uf/offsets                 offsets per block, number of segments, run token
    uf/hood/<block>            blockwise scope: the enclosed and small merges of the block's edges
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import numpy as np

from emseg.pipeline.stitching.unionfind import (
    Renaming,
    children,
    groups,
    levels,
    offsets,
    plain_block,
    reduce_edges,
    resolve,
    sort_keys,
    split_by,
    table_from,
)
from emseg.tasks.driver import runtime
from emseg.tasks.driver.context import RunContext
from emseg.tasks.stage1_segment import STAGE as SEGMENT
from emseg.pipeline import stages
from emseg.pipeline.io.scratch import decode_arrays
from emseg.pipeline.stitching.resume import AGGLOMERATE, FINISH, down_item, group_name, up_item
from emseg.pipeline.stitching.unionfind import group_index

STAGE = stages.UNIONFIND
Vec = tuple[int, int, int]
#: scratch prefix of :func:`stored_hood_merges` (deleted by the driver before stage 3 runs again)
HOOD = "uf/hood/"


def _n_core(ctx: RunContext, block_ids: np.ndarray) -> np.ndarray:
    store = runtime.scratch(ctx.output)
    uniq, inverse = np.unique(block_ids, return_inverse=True)
    values = []
    for b in uniq.tolist():
        info = store.done_info(SEGMENT, int(b))
        if info is None:
            raise RuntimeError(f"block {b} has no stage-1 result; run stage 1-segment first")
        values.append(info["n_core"])
    return np.asarray(values, np.int64)[inverse]


def agglomerate_all(ctx: RunContext, *upstream: Any) -> dict[str, Any]:
    """Global agglomeration (boundary backends): every block's edges in one region graph.

    Reads ``edges/<block>`` of all blocks, agglomerates the whole graph by mean affinity
    (:func:`emseg.pipeline.stitching.agglomeration.agglomerate`) and writes each block's scores to
    ``scores/<block>``, in the order of its edges. Memory grows with the number of edges (about
    0.8 KB each at the peak: 10⁶ random edges took 0.8 GB and 28 s of CPU); ``agglomeration.scope: blockwise``
    avoids this task for volumes whose graph does not fit one worker.
    """
    from emseg.pipeline.stitching.agglomeration import Graph, agglomerate

    t0 = time.perf_counter()
    store = runtime.scratch(ctx.output)
    n = ctx.grid.num_blocks
    parts, sizes = [], []
    for b in range(n):
        e = store.get_arrays(f"edges/{b}")
        parts.append(Graph(e["a"], e["b"], e["total"].astype(np.float64), e["count"].astype(np.int64),
                           join=e.get("join")))
        sizes.append(len(e["a"]))
    graph = Graph.concat(parts)
    score = agglomerate(graph)
    bounds = np.cumsum([0] + sizes)
    absorb, counts = _after_threshold(ctx, store, graph, score)
    for b in range(n):
        arrays = {"score": score[bounds[b]:bounds[b + 1]]}
        if absorb is not None:
            arrays["absorb"] = absorb[bounds[b]:bounds[b + 1]]
        store.put_arrays(f"scores/{b}", arrays)
    info = {"edges": int(bounds[-1]), "seconds": time.perf_counter() - t0, **counts}
    store.mark_done(STAGE, AGGLOMERATE, info)
    return info


def _after_threshold(ctx: RunContext, store: Any, graph: Any, score: np.ndarray
                     ) -> tuple[np.ndarray | None, dict[str, int]]:
    """Global scope: ``agglomeration.enclosed``, then ``agglomeration.small``, on the whole region graph
    at ``ctx.threshold`` (:func:`_rules`): the extra merges, one bool per edge of ``graph`` (None when
    both are off), and how many edges each rule added."""
    if ctx.enclosed is None and ctx.small is None:
        return None, {}
    keys, faces, frag_keys, frag_sizes = [], [], [], []
    for b in range(ctx.grid.num_blocks):  # read again, field by field: the graph holds the rest already
        e = _rule_inputs(ctx, store, b)
        keys.append(e["outside_key"])
        faces.append(e["outside_count"])
        frag_keys.append(e["fragment_key"])
        frag_sizes.append(e["fragment_size"])
    absorb, added = _rules(ctx, graph.u, graph.v, graph.total, graph.count, score <= ctx.threshold,
                           np.concatenate(keys), np.concatenate(faces), np.concatenate(frag_keys),
                           np.concatenate(frag_sizes))
    return absorb, {rule: int(extra.sum()) for rule, extra in added.items()}


def _rule_inputs(ctx: RunContext, store: Any, block_id: int) -> dict[str, np.ndarray]:
    """``edges/<block>`` with the arrays the rules read present (empty where a rule is off)."""
    e = store.get_arrays(f"edges/{block_id}")
    if ctx.small is not None and "fragment_key" not in e:
        raise RuntimeError("agglomeration.small needs the fragments' sizes, which this output's scratch "
                           "(written by an older emseg) lacks; rerun with --restart, or set "
                           "agglomeration.small: null")
    if not ctx.global_agglomeration and "face_key" not in e:  # blockwise rules: see _check_rule_inputs
        raise RuntimeError("the blockwise enclosed and small rules need each block face's fragments, which this "
                           "output's scratch (written by an older emseg) lacks; rerun with --restart")
    none_u, none_i = np.zeros(0, np.uint64), np.zeros(0, np.int64)
    for name, empty in (("outside_key", none_u), ("outside_count", none_i), ("fragment_key", none_u),
                        ("fragment_size", none_i), ("face_key", none_u), ("face_count", none_i),
                        ("face_side", np.zeros(0, np.int8))):
        e.setdefault(name, empty)
    return e


def _rules(ctx: RunContext, u: np.ndarray, v: np.ndarray, total: np.ndarray, count: np.ndarray,
           merged: np.ndarray, outside_keys: np.ndarray, outside_count: np.ndarray, frag_keys: np.ndarray,
           frag_sizes: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The enclosed merges (:mod:`emseg.pipeline.stitching.inclusions`), then the small-segment ones
    (:mod:`emseg.pipeline.stitching.small`), on a region graph whose ``merged`` edges passed the
    threshold: one bool per edge, and per rule that is on (``enclosed_merges``, ``small_merges``) the
    edges it added."""
    from emseg.pipeline.stitching.inclusions import enclosed_merges
    from emseg.pipeline.stitching.small import small_merges

    absorb = np.zeros(len(u), bool)
    added: dict[str, np.ndarray] = {}
    if ctx.enclosed is not None:
        opts = ctx.enclosed
        extra = enclosed_merges(u, v, count, merged, outside_keys, outside_count,
                                inclusions=opts.get("inclusions", True), majority=opts.get("majority"),
                                total=total, max_score=opts.get("max_score", 1.0))
        added["enclosed_merges"] = extra
        absorb |= extra
    if ctx.small is not None:
        extra = small_merges(u, v, total, count, merged | absorb, frag_keys, frag_sizes,
                             min_size=ctx.small["min_size"], max_score=ctx.small["max_score"])
        added["small_merges"] = extra
        absorb |= extra
    return absorb, added


def group_hood_merges(ctx: RunContext, store: Any, group: tuple[int, int, int]
                      ) -> dict[int, tuple[np.ndarray, dict[str, int]]]:
    """Blockwise scope: ``agglomeration.enclosed`` and ``.small`` on the hood of a 2 x 2 x 2 group
    (:meth:`~emseg.pipeline.geometry.BlockGrid.hood`, the hood whose agglomeration scored its
    edges in stage 2), for every block of the group at once: per block id, one bool per edge of
    ``edges/<block>`` (True = merge it too) and how many of the block's edges each rule merged.

    The hood's region graph is every ``edges/<b>`` of its blocks (each block's own edges and
    forward seams, scored by stage 2); edges that leave it are dropped. Fragments on a face that looks
    out of the hood onto another block reach beyond what it shows, so they count as touching
    "outside" (by their face voxels) and as large as ``small.min_size``: no rule treats a segment it
    cannot see whole as enclosed or small. Faces of the region of interest are "outside" as in the
    global scope. Where the hood is the whole grid, the result is the global scope's.
    """
    from emseg.pipeline.stitching.labels import block_of

    grid = ctx.grid
    members = grid.group_members(group)
    first = {m.id for m in members}
    hood = members + [b for b in grid.hood(members[0]) if b.id not in first]  # the members' edges first
    inside = np.array(sorted(b.id for b in hood), np.int64)
    parts: dict[str, list[np.ndarray]] = {k: [] for k in ("u", "v", "total", "count", "score", "out", "out_n",
                                                          "frag", "size", "beyond", "beyond_n")}
    for hb in hood:
        e = _rule_inputs(ctx, store, hb.id)
        for name, field in (("u", "a"), ("v", "b"), ("total", "total"), ("count", "count"), ("score", "score"),
                            ("out", "outside_key"), ("out_n", "outside_count"), ("frag", "fragment_key"),
                            ("size", "fragment_size")):
            parts[name].append(e[field])
        for axis, direction, nb in grid.neighbours(hb):
            if nb.id not in inside:  # this face looks out of the hood
                side = e["face_side"] == 2 * axis + (direction > 0)
                parts["beyond"].append(e["face_key"][side])
                parts["beyond_n"].append(e["face_count"][side])
    cat = {k: np.concatenate(p) if p else np.zeros(0) for k, p in parts.items()}
    sizes = [len(p) for p in parts["u"][: len(members)]]
    n_own = sum(sizes)
    keep = np.isin(block_of(cat["v"]).astype(np.int64), inside)  # seams out of the hood
    keep[:n_own] = True  # (the members' own seams all lead into it)
    u, v = cat["u"][keep], cat["v"][keep]
    total, count = cat["total"][keep].astype(np.float64), cat["count"][keep].astype(np.int64)
    beyond = cat["beyond"].astype(np.uint64)
    big = np.full(len(beyond), ctx.small["min_size"] if ctx.small is not None else 0, np.int64)
    absorb, added = _rules(ctx, u, v, total, count, cat["score"][keep] <= ctx.threshold,
                           np.concatenate([cat["out"].astype(np.uint64), beyond]),
                           np.concatenate([cat["out_n"].astype(np.int64), cat["beyond_n"].astype(np.int64)]),
                           np.concatenate([cat["frag"].astype(np.uint64), beyond]),
                           np.concatenate([cat["size"].astype(np.int64), big]))
    out: dict[int, tuple[np.ndarray, dict[str, int]]] = {}
    at = 0
    for m, size in zip(members, sizes):
        span = slice(at, at + size)
        out[m.id] = absorb[span], {rule: int(extra[span].sum()) for rule, extra in added.items()}
        at += size
    return out


def stored_hood_merges(ctx: RunContext, store: Any, block_id: int) -> tuple[np.ndarray, dict[str, int]]:
    """:func:`group_hood_merges` once per group and run of stage 3: up to four level-1 groups read a
    block's edges (their own blocks' and their backward neighbours'), and each needs the same
    decisions. The first to need a block's computes those of its whole group and stores them at
    ``uf/hood/<block>`` for each block of it; the others read them. The driver
    deletes ``uf/hood/`` before stage 3 runs again (a new threshold or rule, redone seams), so what is
    stored always comes from the edges and settings of this run; two groups that compute it at once
    write the same bytes. The threshold and the rules' settings are stored with it too, and a
    reader with others (the seam audit run on its own after a changed config) computes them again."""
    key = f"{HOOD}{block_id}"
    stamp = np.frombuffer(json.dumps([ctx.threshold, ctx.enclosed, ctx.small], sort_keys=True).encode(), np.uint8)
    blob = store.read(key)
    if blob is not None:
        arrays = decode_arrays(blob)
        if np.array_equal(arrays.get("stamp"), stamp):
            return arrays["absorb"], {k: int(arrays[k][0]) for k in arrays if k not in ("absorb", "stamp")}
    decided = group_hood_merges(ctx, store, ctx.grid.group(ctx.grid.block(block_id)))
    for b, (absorb, counts) in decided.items():
        store.put_arrays(f"{HOOD}{b}", {"absorb": absorb, "stamp": stamp,
                                        **{k: np.array([c], np.int64) for k, c in counts.items()}})
    return decided[block_id]


def edge_merges(ctx: RunContext, store: Any, block_id: int, edges: dict[str, np.ndarray]
                ) -> tuple[np.ndarray, dict[str, int]]:
    """Which of a block's ``edges/<block>`` union-find joins: the stitching rule's decision for
    instance backends; for boundary backends the edges whose score passes the threshold, and with
    ``agglomeration.enclosed`` and ``agglomeration.small`` the extra merges they make (global scope:
    stage 3's first task made them; blockwise: :func:`stored_hood_merges`, which also says how many of
    the block's edges each rule merged; ``{}`` otherwise)."""
    if not ctx.boundary:
        return edges["merge"], {}
    keep = edge_scores(ctx, store, block_id, edges) <= ctx.threshold
    if ctx.enclosed is None and ctx.small is None:
        return keep, {}
    if ctx.global_agglomeration:
        stored = store.get_arrays(f"scores/{block_id}")
        if "absorb" in stored:
            keep = keep | stored["absorb"]
        return keep, {}
    absorb, counts = stored_hood_merges(ctx, store, block_id)
    return keep | absorb, counts


def edge_scores(ctx: RunContext, store: Any, block_id: int, edges: dict[str, np.ndarray]) -> np.ndarray:
    """The agglomeration scores of a boundary backend's ``edges/<block>`` (stage 2's own when
    blockwise, the global agglomeration's otherwise)."""
    if not ctx.global_agglomeration:
        return edges["score"]
    return store.get_arrays(f"scores/{block_id}")["score"]


def up(ctx: RunContext, level: int, group: Vec, *upstream: Any) -> dict[str, Any]:
    t0 = time.perf_counter()
    store = runtime.scratch(ctx.output)
    grid = ctx.grid
    a_parts, b_parts = [], []
    rule_merges: dict[str, int] = {}
    if level == 1:
        # The group's own edges, and the edges that its backward neighbours hold into it: both
        # groups of a crossing edge must see it (see emseg.pipeline.stitching.unionfind.reduce_edges).
        members = {grid.block_id(k) for k in children(group, level, grid.grid_shape)}
        sources = set(members)
        for block_id in members:
            for _, direction, nb in grid.neighbours(grid.block(block_id)):
                if direction < 0:  # edges point forward: only backward neighbours hold edges into us
                    sources.add(nb.id)
        for source in sorted(sources):
            edges = store.get_arrays(f"edges/{source}")
            # boundary backends: the edge's agglomeration score against the threshold (so that a new
            # threshold needs no new edges); instance backends: the stitching rule's decision
            keep, counts = edge_merges(ctx, store, source, edges)
            if source in members:  # each block is a member of one level-1 group: counted once
                for name, c in counts.items():
                    rule_merges[name] = rule_merges.get(name, 0) + c
            if source not in members:
                keep = keep & np.isin(plain_block(edges["b"]).astype(np.int64), list(members))
            a_parts.append(edges["a"][keep])
            b_parts.append(edges["b"][keep])
    else:
        for child in children(group, level, grid.grid_shape):
            passed = store.get_arrays(f"uf/up/{level - 1}/{group_name(child)}")
            a_parts.append(passed["pa"])
            b_parts.append(passed["pb"])
    a = np.concatenate(a_parts) if a_parts else np.zeros(0, np.uint64)
    b = np.concatenate(b_parts) if b_parts else np.zeros(0, np.uint64)
    if level == 1:
        a = sort_keys(a, lambda blocks: _n_core(ctx, blocks))
        b = sort_keys(b, lambda blocks: _n_core(ctx, blocks))
    here = np.asarray(group)
    inside_a = ((ctx.grid.block_indices(plain_block(a)) >> level) == here).all(axis=1)
    inside_b = ((ctx.grid.block_indices(plain_block(b)) >> level) == here).all(axis=1)
    renaming, pa, pb = reduce_edges(a, b, inside_a, inside_b)
    store.put_arrays(f"uf/up/{level}/{group_name(group)}", {"keys": renaming.keys, "reps": renaming.reps, "pa": pa, "pb": pb})
    info = {"edges": int(len(a)), "renamed": int(len(renaming.keys)), "passed_up": int(len(pa)),
            "seconds": time.perf_counter() - t0, **rule_merges}
    store.mark_done(STAGE, up_item(level, group), info)
    return info


def down(ctx: RunContext, level: int, group: Vec, *upstream: Any) -> dict[str, Any]:
    t0 = time.perf_counter()
    store = runtime.scratch(ctx.output)
    grid = ctx.grid
    own_arrays = store.get_arrays(f"uf/up/{level}/{group_name(group)}")
    own = Renaming(own_arrays["keys"], own_arrays["reps"])
    if level == levels(grid.grid_shape):
        parent = Renaming(np.zeros(0, np.uint64), np.zeros(0, np.uint64))
    else:
        arrays = store.get_arrays(f"uf/down/{level}/{group_name(group)}")
        parent = Renaming(arrays["keys"], arrays["reps"])
    final = resolve(own, parent)
    kids = children(group, level, grid.grid_shape)
    info: dict[str, Any] = {"keys": int(len(final.keys))}
    if level > 1:
        owner = group_index(ctx.grid.block_indices(plain_block(final.keys)) >> (level - 1), grid.grid_shape, level - 1)
        parts = split_by(final, owner)
        for kid in kids:
            part = parts.get(int(group_index(np.asarray([kid]), grid.grid_shape, level - 1)[0]), _EMPTY)
            store.put_arrays(f"uf/down/{level - 1}/{group_name(kid)}", {"keys": part.keys, "reps": part.reps})
    else:
        parts = split_by(final, plain_block(final.keys).astype(np.int64))
        block_ids = [grid.block_id(kid) for kid in kids]
        n_core = _n_core(ctx, np.asarray(block_ids))
        nonroot = {}
        for block_id, cores in zip(block_ids, n_core.tolist()):
            table = table_from(parts.get(block_id, _EMPTY), block_id)
            store.put_arrays(f"uf/table/{block_id}", {"locals": table.locals, "finals": table.finals})
            nonroot[str(block_id)] = [int(cores), int((table.nonroots <= cores).sum())]
        info["blocks"] = nonroot  # block -> [n_core, non-root core labels], read by finish()
    info["seconds"] = time.perf_counter() - t0
    store.mark_done(STAGE, down_item(level, group), info)
    return info


_EMPTY = Renaming(np.zeros(0, np.uint64), np.zeros(0, np.uint64))


def finish(ctx: RunContext, *upstream: Any) -> dict[str, Any]:
    t0 = time.perf_counter()
    store = runtime.scratch(ctx.output)
    grid = ctx.grid
    n = grid.num_blocks
    n_core = np.zeros(n, np.int64)
    nonroot = np.zeros(n, np.int64)
    for group in groups(grid.grid_shape, 1):
        info = store.done_info(STAGE, down_item(1, group)) or {}
        for block_id, (cores, nr) in info.get("blocks", {}).items():
            n_core[int(block_id)], nonroot[int(block_id)] = cores, nr
    offs, num_segments = offsets(n_core, nonroot)
    token = uuid.uuid4().hex
    store.put_arrays("uf/offsets", {"offsets": offs, "num_segments": np.array([num_segments], np.int64),
                                    "token": np.frombuffer(token.encode("ascii"), np.uint8)})
    info = {"token": token, "num_segments": num_segments, "merged_labels": int(nonroot.sum()),
            "threshold": ctx.threshold, "seconds": time.perf_counter() - t0}
    if ctx.boundary:
        info["enclosed"] = ctx.enclosed
        info["small"] = ctx.small
        info["rule_merges"] = _rule_merges(ctx, store)
    store.mark_done(STAGE, FINISH, info)
    return info




def _rule_merges(ctx: RunContext, store: Any) -> dict[str, int]:
    """How many edges ``agglomeration.enclosed`` and ``.small`` merged beyond the threshold: from the
    global agglomeration's task, or summed over the level-1 groups with blockwise scope (each
    counts its member blocks' edges). ``{}`` when both rules are off."""
    if ctx.global_agglomeration:
        infos = [store.done_info(STAGE, AGGLOMERATE) or {}]
    else:
        infos = [store.done_info(STAGE, up_item(1, g)) or {} for g in groups(ctx.grid.grid_shape, 1)]
    out: dict[str, int] = {}
    for info in infos:
        for name in ("enclosed_merges", "small_merges"):
            if name in info:
                out[name] = out.get(name, 0) + int(info[name])
    return out
