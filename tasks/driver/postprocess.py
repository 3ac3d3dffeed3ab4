"""Post-processing for viewing, after a complete run: stages 5 to 10 through the run's task engine.

    5-pyramid       per box and scale   coarser scales of the segmentation (mode) and image (average)
    6-meshes        per block, then per group of segment ids: meshes joined across seams
    7-properties    per block, then a reduce tree: voxel counts and bounding boxes as segment properties
    8-seam-audit    per block, then a reduce tree: near-threshold stitching edges as point annotations
    9-skeletons     per block, then per group of segment ids: TEASAR skeletons joined across seams
    10-ome-zarr     per box and scale: the segmentation's scales as an OME-NGFF label image

:func:`postprocess` is called by :func:`emseg.tasks.driver.run.execute` when the four segmentation
stages finished without failures, on the same Dask client and through the same
:class:`~emseg.tasks.driver.engine.Streamer` (bounded window, retries, failure records, progress bar).
Stages that do not depend on each other run side by side; meshes from a coarser scale wait for that
scale only (a join task stands for "every pyramid task of that scale"). Outputs are written whole by
each task, so a rerun simply redoes the post-processing; it is skipped when the same union-find
result was already post-processed with the same settings.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any


from emseg.pipeline.io import urls
from emseg.pipeline.errors import ConfigError
from emseg.pipeline.geometry import BlockGrid
from emseg.pipeline.io.scratch import Scratch
from emseg.tasks import stage5_pyramid
from emseg.tasks import stage6_meshes
from emseg.tasks import stage7_properties
from emseg.tasks import stage8_seam_audit
from emseg.tasks import stage9_skeletons
from emseg.tasks import stage10_ome_zarr
from emseg.pipeline import stages
from emseg.pipeline.io import kvstore
from emseg.tasks.driver import engine
from emseg.tasks.driver.engine import Item
from emseg.pipeline.outputs.shardfile import plan_groups

if TYPE_CHECKING:
    from emseg.tasks.driver.context import RunContext
    from emseg.tasks.driver.context import ValidatedRun

log = logging.getLogger("emseg")

MARKER = "postprocess"


def audit_threshold(ctx: RunContext) -> float:
    """The score the seam audit centres on: stitch.min_iou, or for boundary backends the affinity
    at the agglomeration threshold (an edge's ``iou`` field holds its affinity, 1 - score)."""
    return 1.0 - float(ctx.threshold) if ctx.boundary else float(ctx.rule.min_iou)



def update_info(segmentation: str, **keys: str | None) -> None:
    """Set (or, with None, remove) top-level keys of the segmentation's ``info`` (``mesh``, ...)."""
    kv = urls.open_kvstore(segmentation)
    info = json.loads(kv.read("info").result().value)
    for k, v in keys.items():
        if v is None:
            info.pop(k, None)
        else:
            info[k] = v
    kv.write("info", json.dumps(info).encode()).result()


def image_store(output: str) -> str:
    """Where the image pyramid goes: ``<output>/image`` (never the input)."""
    return urls.join(output, "image")


def _image_layer(p: ValidatedRun, levels: int | None) -> stage5_pyramid.PyramidLayer:
    ctx = p.ctx
    return stage5_pyramid.plan_image(ctx.input_spec, ctx.roi, tuple(p.input.offset_zyx), p.input.voxel_size_nm,
                                     p.input.dtype.name, image_store(ctx.output), levels,
                                     chunk_zyx=tuple(p.config.write.chunk_shape))  # type: ignore[arg-type]


def pyramid_tasks(layer: stage5_pyramid.PyramidLayer, run_id: str,
                  items: dict[int, list[Item]] | None = None) -> Iterator[engine.Task]:
    """Every downsampling task of ``layer``, scale by scale, each after the tasks it reads.

    ``items``, when given, receives per level the task items (``(stage, item)``) that write it.
    """
    stage = stage5_pyramid.STAGE
    levels: dict[int, list[Item]] = {} if items is None else items
    previous: dict[int, Item] = {}
    if layer.source is not None:
        for block in layer.grid(0):
            previous[block.id] = (stage, f"{layer.kind}-0-{block.id}")
            yield engine.Task(stage, previous[block.id][1], stage5_pyramid.copy_task, (layer, block.id, run_id))
        levels[0] = list(previous.values())
    for index, step in enumerate(layer.level_steps()):
        mine: dict[int, Item] = {}
        for block in layer.grid(step[1]):
            deps = [previous[i] for i in layer.step_upstream(index, block) if i in previous]
            mine[block.id] = (stage, f"{layer.kind}-{step[0]}-{step[1]}-{block.id}")
            yield engine.Task(stage, mine[block.id][1], stage5_pyramid.downsample_task, (layer, step, block.id, run_id),
                              deps)
        for level in range(step[0], step[1] + 1):
            levels[level] = list(mine.values())
        previous = mine


def grouped_tasks(stage: str, plan: Any, num_segments: int, upstream: list[Item], block_task: Any,
                  group_task: Any) -> Iterator[engine.Task]:
    """Per-block tasks (after ``upstream``), a join, and per-group merge tasks after it: stage 6
    (meshes) and stage 9 (skeletons), whose groups are ``2^plan.shift`` consecutive segment ids."""
    blocks = []
    for b in plan.grid:
        blocks.append((stage, f"block-{b.id}"))
        yield engine.Task(stage, blocks[-1][1], block_task, (plan, b.id), list(upstream))
    yield engine.Task(stage, "blocks", engine.join, (), blocks, counts_voxels=False)
    for group in range((max(num_segments, 1) >> plan.shift) + 1):
        yield engine.Task(stage, f"group-{group}", group_task, (plan, group), [(stage, "blocks")], keep=True,
                          counts_voxels=False)


def mesh_tasks(plan: stage6_meshes.MeshPlan, num_segments: int, upstream: list[Item]) -> Iterator[engine.Task]:
    """Stage 6: meshes per block, joined per group of segment ids."""
    return grouped_tasks(stage6_meshes.STAGE, plan, num_segments, upstream, stage6_meshes.mesh_block_task,
                         stage6_meshes.merge_group_task)


def skeleton_tasks(plan: stage9_skeletons.SkeletonPlan, num_segments: int, upstream: list[Item]) -> Iterator[engine.Task]:
    """Stage 9: skeletons per block, joined per group of segment ids."""
    return grouped_tasks(stage9_skeletons.STAGE, plan, num_segments, upstream, stage9_skeletons.skeleton_block_task,
                         stage9_skeletons.merge_group_task)


def reduce_tasks(stage: str, plan: Any, n: int, block_task: Any, partial_task: Any, root_task: Any) -> Iterator[engine.Task]:
    """``n`` block tasks, then a tree of partial reduces (:func:`engine.reduce_levels`), then the root."""
    for i in range(n):
        yield engine.Task(stage, f"block-{i}", block_task, (plan, i))
    counts = engine.reduce_levels(n)
    for level in range(1, len(counts)):
        for index in range(counts[level]):
            deps = [(stage, f"block-{c}" if level == 1 else f"partial-{level - 1}-{c}")
                    for c in engine.children(index, counts[level - 1])]
            yield engine.Task(stage, f"partial-{level}-{index}", partial_task, (plan, level, index, counts[level - 1]),
                              deps, counts_voxels=False)
    top = len(counts) - 1
    deps = [(stage, f"block-{c}" if top == 0 else f"partial-{top}-{c}") for c in range(counts[top])]
    yield engine.Task(stage, "reduce", root_task, (plan, top, counts[top]), deps, keep=True, counts_voxels=False)


def _scale_blocks(p: ValidatedRun, seg_layer: Any, level: int, key: str) -> tuple[Any, tuple[int, ...], int]:
    """The pyramid scale ``level`` that stages 6 and 9 read, the run's blocks measured at that scale
    (at least 16 voxels a side), and how many there are. :class:`ConfigError` names ``postprocess.<key>``
    when the pyramid has no such scale."""
    scales = seg_layer.scales if seg_layer is not None else None
    if level > 0 and (scales is None or level >= len(scales)):
        have = 0 if scales is None else len(scales) - 1
        raise ConfigError(f"postprocess.{key} {level} needs that pyramid scale, but the pyramid has {have} coarser "
                          f"scales; raise postprocess.pyramid_levels or lower {key}")
    scale = scales[level] if scales is not None else stage5_pyramid.base_scale(
        stage5_pyramid.read_info(p.ctx.segmentation))
    voxel = tuple(float(v) for v in p.input.voxel_size_nm)
    factor = [round(a / b) for a, b in zip(scale.voxel_size_nm, voxel)]
    block_shape = tuple(max(16, b // f) for b, f in zip(p.ctx.block_shape, factor))
    return scale, block_shape, math.prod(-(-s // b) for s, b in zip(scale.shape_zyx, block_shape))


def _skeleton_plan(p: ValidatedRun, seg_layer: Any, num_segments: int) -> stage9_skeletons.SkeletonPlan:
    """Stage 9's plan: the scale to skeletonize, blocks, groups (= shards when sharded), parameters."""
    cfg = p.config.postprocess
    ctx = p.ctx
    scale, block_shape, n_blocks = _scale_blocks(p, seg_layer, cfg.skeleton_scale, "skeleton_scale")
    fmt = cfg.skeleton_format
    if fmt == "auto":
        fmt = "sharded" if p.config.write.sharded else "unsharded"
    shift, sharding = plan_groups(num_segments, n_blocks, "sharded" if fmt == "sharded" else "legacy")
    return stage9_skeletons.SkeletonPlan(
        output=ctx.output,
        volume_spec={"driver": "neuroglancer_precomputed", "kvstore": urls.kvstore_spec(ctx.segmentation),
                     "scale_metadata": {"key": scale.key}},
        scale=scale, block_shape=block_shape, skeleton_dir=urls.join(ctx.segmentation, "skeletons"),  # type: ignore[arg-type]
        format=fmt, shift=shift, sharding=sharding,
        teasar={"scale": cfg.skeleton_teasar_scale, "const": cfg.skeleton_teasar_const},
        dust_voxels=cfg.skeleton_dust_voxels, dust_nm=cfg.skeleton_dust_nm, tick_nm=cfg.skeleton_tick_nm,
        run_id=ctx.run_id,
    )


def _settings(p: ValidatedRun) -> dict[str, Any]:
    return p.config.postprocess.model_dump(mode="json")


def _mesh_plan(p: ValidatedRun, seg_layer: Any, num_segments: int) -> stage6_meshes.MeshPlan:
    """Stage 6's plan: the scale to mesh, blocks, groups (= shards when sharded), simplification."""
    cfg = p.config.postprocess
    ctx = p.ctx
    scale, block_shape, n_blocks = _scale_blocks(p, seg_layer, cfg.mesh_scale, "mesh_scale")
    fmt = cfg.mesh_format
    if fmt == "auto":
        fmt = "sharded" if p.config.write.sharded else "legacy"
    shift, sharding = plan_groups(num_segments, n_blocks, fmt)
    spec = {"driver": "neuroglancer_precomputed", "kvstore": urls.kvstore_spec(ctx.segmentation),
            "scale_metadata": {"key": scale.key}}
    return stage6_meshes.MeshPlan(
        output=ctx.output, volume_spec=spec, scale=scale, block_shape=block_shape,  # type: ignore[arg-type]
        mesh_dir=urls.join(ctx.segmentation, "mesh"), format=fmt, shift=shift, sharding=sharding,
        reduction=cfg.mesh_reduction, max_error=cfg.mesh_max_error, lods=cfg.mesh_lods, run_id=ctx.run_id,
    )


def _reset(directory: str, info: dict[str, Any]) -> None:
    """Empty an output directory (meshes, skeletons) and write its ``info``."""
    kv = urls.open_kvstore(directory)
    kvstore.delete_prefix(kv)
    kv.write("info", json.dumps(info).encode()).result()


def postprocess(client: Any, p: ValidatedRun, *, window: int = 1000, progress: bool = True) -> dict[str, Any]:
    """Run stages 5-10 for the finished run ``p`` on ``client``; returns the report's ``postprocess``.

    The tasks go through the run's task engine (:class:`engine.Streamer`, at most ``window`` in
    flight). Failed tasks (after the run's retries) are listed under ``failures`` like the run's own.
    Raises :class:`ConfigError` when the run is not complete or a scale setting names a missing scale.
    """
    cfg = p.config.postprocess
    ctx = p.ctx
    t_start = time.time()
    scratch = Scratch(ctx.output)
    uf = scratch.done_info(stages.UNIONFIND, "finish")
    if uf is None:
        raise ConfigError("post-processing needs a complete run; run `emseg segment` first")
    token, num_segments = uf["token"], int(uf["num_segments"])
    settings = _settings(p)
    previous = scratch.done_info(MARKER, "all")
    if previous is not None and previous.get("token") == token and previous.get("settings") == settings:
        log.info("resume: post-processing already done for this result")
        return dict(previous["summary"], skipped_done=True)
    scratch.clear_done(MARKER, ["all"])
    scratch.delete_prefix("post/")

    run_id = ctx.run_id
    seg_offset = tuple(o + s for o, s in zip(p.input.offset_zyx, ctx.roi.start))
    voxel = tuple(float(v) for v in p.input.voxel_size_nm)
    summary: dict[str, Any] = {}

    # Plans first (every check before any task), then the tasks in an order with dependencies first.
    layers = []
    seg_layer = None
    if cfg.pyramid_levels != 0:
        seg_layer = stage5_pyramid.plan_layer(ctx.segmentation, "segmentation", cfg.pyramid_levels)
        layers.append(seg_layer)
        if cfg.image_pyramid:
            layers.append(_image_layer(p, cfg.pyramid_levels))
        summary["pyramid"] = {layer.kind: [s.key for s in layer.scales] for layer in layers}
        if cfg.image_pyramid:
            summary["image"] = "precomputed://" + image_store(ctx.output)
    mesh_plan = _mesh_plan(p, seg_layer, num_segments) if cfg.meshes else None
    skel_plan = _skeleton_plan(p, seg_layer, num_segments) if cfg.skeletons else None
    ome = None
    if cfg.ome_zarr is not None:
        ome_scales = seg_layer.scales if seg_layer is not None else (
            stage5_pyramid.base_scale(stage5_pyramid.read_info(ctx.segmentation)),)
        ome = stage10_ome_zarr.plan(ctx.segmentation, ctx.output, ome_scales, cfg.ome_zarr, run_id)
    seg_spec = {"driver": "neuroglancer_precomputed", "kvstore": urls.kvstore_spec(ctx.segmentation)}
    abs_grid = BlockGrid(ctx.roi.shift(p.input.offset_zyx), ctx.block_shape, (0, 0, 0))  # absolute voxels
    props = stage7_properties.PropertiesPlan(
        output=ctx.output, volume_spec=seg_spec, grid=abs_grid, offset_zyx=seg_offset,  # type: ignore[arg-type]
        voxel_size_nm=voxel, properties_dir=urls.join(ctx.segmentation, "segment_properties"),  # type: ignore[arg-type]
        run_id=run_id,
    ) if cfg.segment_properties else None
    audit = stage8_seam_audit.AuditPlan(
        run=ctx, token=token, input_offset_zyx=tuple(p.input.offset_zyx), voxel_size_nm=voxel,  # type: ignore[arg-type]
        threshold=audit_threshold(ctx), margin=cfg.seam_audit_margin, limit=cfg.seam_audit_limit,
        audit_dir=urls.join(ctx.output, "seam_audit"),
    ) if cfg.seam_audit else None
    if mesh_plan is not None:
        _reset(mesh_plan.mesh_dir, mesh_plan.info())
        summary["meshes"] = {"format": mesh_plan.format, "scale": mesh_plan.scale.key}
    if skel_plan is not None:
        _reset(skel_plan.skeleton_dir, skel_plan.info())
        summary["skeletons"] = {"format": skel_plan.format, "scale": skel_plan.scale.key}
    if ome is not None:
        summary["ome_zarr"] = {"version": cfg.ome_zarr, "url": "zarr://" + ome.store if cfg.ome_zarr == "0.4"
                               else "zarr3://" + ome.store, "scales": len(ome_scales)}

    def tasks() -> Iterator[engine.Task]:
        written: dict[int, list[Item]] = {}  # segmentation level -> the pyramid tasks that write it
        for layer in layers:
            yield from pyramid_tasks(layer, run_id, written if layer is seg_layer else None)

        def after_level(level: int) -> list[Item]:
            """A join on the pyramid tasks that write ``level`` (nothing to wait for at full resolution)."""
            if level not in written:
                return []
            item = (stage5_pyramid.STAGE, f"segmentation-{level}-written")
            return [item]

        for level in sorted(written):
            yield engine.Task(stage5_pyramid.STAGE, f"segmentation-{level}-written", engine.join, (), written[level],
                              counts_voxels=False)
        if props is not None:
            yield from reduce_tasks(stage7_properties.STAGE, props, abs_grid.num_blocks, stage7_properties.stats_task,
                                    stage7_properties.partial_task, stage7_properties.reduce_task)
        if audit is not None:
            yield from reduce_tasks(stage8_seam_audit.STAGE, audit, ctx.grid.num_blocks,
                                    stage8_seam_audit.audit_block_task, stage8_seam_audit.partial_task,
                                    stage8_seam_audit.reduce_task)
        if mesh_plan is not None:
            yield from mesh_tasks(mesh_plan, num_segments, after_level(cfg.mesh_scale))
        if skel_plan is not None:
            yield from skeleton_tasks(skel_plan, num_segments, after_level(cfg.skeleton_scale))
        if ome is not None:
            for level in range(len(ome_scales)):
                for b in ome.grid(level):
                    yield engine.Task(stage10_ome_zarr.STAGE, f"{level}-{b.id}", stage10_ome_zarr.copy_task,
                                      (ome, level, b.id), after_level(level))

    total = sum(1 for _ in tasks())  # generated twice: counting holds no task in memory
    bar = engine.progress_bar(total, desc="emseg postprocess", enabled=progress)
    stream = engine.Streamer(client, run_id=run_id, retries=p.config.retries, window=window, progress=bar)
    stream.submit_all(tasks())
    stream.barrier()
    bar.close()

    stages_out = {}
    for stage in stages.POSTPROCESS:
        if stage not in stream.results:
            continue
        ran, secs, voxels, cpu = stream.results[stage]
        first, last = stream.wall[stage]
        wall = last - first
        stages_out[stage] = {
            "tasks": int(ran), "task_seconds": round(secs, 3), "task_cpu_seconds": round(cpu, 3),
            "wall_seconds": round(wall, 3),
            "megavoxels": round(voxels / 1e6, 3), "megavoxels_per_second": round(voxels / 1e6 / max(wall, 1e-9), 3),
        }
    summary["stages"] = stages_out
    kept = stream.kept

    def groups(stage: str) -> list[dict[str, Any]]:
        return [v for (st, it), v in kept.items() if st == stage and str(it).startswith("group")]

    if mesh_plan is not None:
        summary["meshes"].update(segments=sum(g["segments"] for g in groups(stage6_meshes.STAGE)),
                                 faces=sum(g["faces"] for g in groups(stage6_meshes.STAGE)))
    if skel_plan is not None:
        summary["skeletons"].update(segments=sum(g["segments"] for g in groups(stage9_skeletons.STAGE)),
                                    vertices=sum(g["vertices"] for g in groups(stage9_skeletons.STAGE)))
    reduce = kept.get((stage7_properties.STAGE, "reduce"))
    if reduce is not None:
        summary["segment_properties"] = {"segments": reduce["segments"]}
        summary["largest"] = reduce["largest"]
    audit_r = kept.get((stage8_seam_audit.STAGE, "reduce"))
    if audit_r is not None:
        summary["seam_audit"] = {k: audit_r[k] for k in ("points", "candidates", "merged")}
        summary["seam_audit"].update(threshold=audit_threshold(ctx), margin=cfg.seam_audit_margin,
                                     score="mean affinity" if ctx.boundary else "IoU",
                                     source="precomputed://" + urls.join(ctx.output, "seam_audit"))
    summary["wall_seconds"] = round(time.time() - t_start, 3)
    failures = stream.failures()
    summary["failures"] = failures
    if not failures:
        update_info(ctx.segmentation,
                    mesh="mesh" if mesh_plan is not None else None,
                    skeletons="skeletons" if skel_plan is not None else None,
                    segment_properties="segment_properties" if reduce is not None else None)
        scratch.mark_done(MARKER, "all", {"token": token, "settings": settings, "summary": summary})
    return summary
