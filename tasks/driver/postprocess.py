"""Post-processing for viewing, after a complete run: stages 5 to 10 as one Dask graph.

    5-pyramid       per box and scale   coarser scales of the segmentation (mode) and image (average)
    6-meshes        per block, then per group of segment ids: meshes joined across seams
    7-properties    per block, then once: voxel counts and bounding boxes as segment properties
    8-seam-audit    per block, then once: near-threshold stitching edges as point annotations
    9-skeletons     per block, then per group of segment ids: TEASAR skeletons joined across seams
    10-ome-zarr     per box and scale: the segmentation's scales as an OME-NGFF label image

Everything runs through the run's own Dask client (:func:`postprocess` is called by
:func:`emseg.tasks.driver.run.execute` when the four segmentation stages finished without failures). Stages that
do not depend on each other run side by side; meshes from a coarser scale wait for that scale only.
Outputs are written whole by each task, so a rerun simply redoes the post-processing; it is skipped
when the same union-find result was already post-processed with the same settings.
"""

from __future__ import annotations

import json
import logging
import math
import sys
import time
from collections import defaultdict
from typing import TYPE_CHECKING, Any

import tensorstore as ts

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

if TYPE_CHECKING:
    from emseg.tasks.driver.context import RunContext
    from emseg.tasks.driver.run import Plan

log = logging.getLogger("emseg")

STAGES = (stage5_pyramid.STAGE, stage6_meshes.STAGE, stage7_properties.STAGE, stage8_seam_audit.STAGE,
          stage9_skeletons.STAGE, stage10_ome_zarr.STAGE)
MARKER = "postprocess"


def audit_threshold(ctx: RunContext) -> float:
    """The score the seam audit centres on: stitch.min_iou, or for boundary backends the affinity
    at the agglomeration threshold (an edge's ``iou`` field holds its affinity, 1 - score)."""
    return 1.0 - float(ctx.threshold) if ctx.boundary else float(ctx.rule.min_iou)


def _kv(url: str) -> ts.KvStore:
    return ts.KvStore.open(urls.kvstore_spec(url), context=ts.Context(urls.CONTEXT)).result()


def update_info(segmentation: str, **keys: str | None) -> None:
    """Set (or, with None, remove) top-level keys of the segmentation's ``info`` (``mesh``, ...)."""
    kv = _kv(segmentation)
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


def _image_layer(p: Plan, levels: int | None) -> stage5_pyramid.PyramidLayer:
    ctx = p.ctx
    return stage5_pyramid.plan_image(ctx.input_spec, ctx.roi, tuple(p.input.offset_zyx), p.input.voxel_size_nm,
                                     p.input.dtype.name, image_store(ctx.output), levels,
                                     chunk_zyx=tuple(p.config.write.chunk_shape))  # type: ignore[arg-type]


def submit_pyramid(submit: Any, layer: stage5_pyramid.PyramidLayer, run_id: str) -> dict[tuple[str, int], dict[int, Any]]:
    """Submit every downsampling task of ``layer``, scale by scale, each after the tasks it reads.

    ``submit(stage, item, fn, *args, deps=[...])`` submits one task; returns ``{(kind, level): {box: future}}``.
    """
    out: dict[tuple[str, int], dict[int, Any]] = {}
    if layer.source is not None:
        out[(layer.kind, 0)] = {
            block.id: submit(stage5_pyramid.STAGE, f"{layer.kind}-0-{block.id}", stage5_pyramid.copy_task, layer,
                             block.id, run_id)
            for block in layer.grid(0)}
    previous = out.get((layer.kind, 0), {})
    for index, step in enumerate(layer.level_steps()):
        mine: dict[int, Any] = {}
        for block in layer.grid(step[1]):
            deps = [previous[i] for i in layer.step_upstream(index, block) if i in previous]
            mine[block.id] = submit(stage5_pyramid.STAGE, f"{layer.kind}-{step[0]}-{step[1]}-{block.id}",
                                    stage5_pyramid.downsample_task, layer, step, block.id, run_id, deps=deps)
        for level in range(step[0], step[1] + 1):
            out[(layer.kind, level)] = mine
        previous = mine
    return out


def submit_meshes(submit: Any, plan: stage6_meshes.MeshPlan, num_segments: int, upstream: list[Any]) -> list[Any]:
    """Submit the per-block mesh tasks (after ``upstream``) and the per-group merge tasks after them all."""
    blocks = [submit(stage6_meshes.STAGE, f"block-{b.id}", stage6_meshes.mesh_block_task, plan, b.id, deps=upstream)
              for b in plan.grid]
    return [submit(stage6_meshes.STAGE, f"group-{group}", stage6_meshes.merge_group_task, plan, group, deps=blocks)
            for group in range((max(num_segments, 1) >> plan.shift) + 1)]


def _skeleton_plan(p: Plan, seg_layer: Any, num_segments: int) -> stage9_skeletons.SkeletonPlan:
    """Stage 9's plan: the scale to skeletonize, blocks, groups (= shards when sharded), parameters."""
    cfg = p.config.postprocess
    ctx = p.ctx
    scales = seg_layer.scales if seg_layer is not None else None
    if cfg.skeleton_scale > 0 and (scales is None or cfg.skeleton_scale >= len(scales)):
        have = 0 if scales is None else len(scales) - 1
        raise ConfigError(f"postprocess.skeleton_scale {cfg.skeleton_scale} needs that pyramid scale, but the pyramid "
                          f"has {have} coarser scales; raise postprocess.pyramid_levels or lower skeleton_scale")
    scale = scales[cfg.skeleton_scale] if scales is not None else stage5_pyramid.base_scale(
        stage5_pyramid.read_info(ctx.segmentation))
    voxel = tuple(float(v) for v in p.input.voxel_size_nm)
    factor = [round(a / b) for a, b in zip(scale.voxel_size_nm, voxel)]
    block_shape = tuple(max(16, b // f) for b, f in zip(ctx.block_shape, factor))
    fmt = cfg.skeleton_format
    if fmt == "auto":
        fmt = "sharded" if p.config.write.sharded else "unsharded"
    n_blocks = math.prod(-(-s // b) for s, b in zip(scale.shape_zyx, block_shape))
    shift, sharding = stage6_meshes.plan_groups(num_segments, n_blocks, "sharded" if fmt == "sharded" else "legacy")
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


def _settings(p: Plan) -> dict[str, Any]:
    return p.config.postprocess.model_dump(mode="json")


def postprocess(client: Any, p: Plan, *, progress: bool = True) -> dict[str, Any]:
    """Run stages 5-8 for the finished run ``p`` on ``client``; returns the report's ``postprocess``.

    Failed tasks (after the run's retries) are listed under ``failures`` like the run's own.
    """
    from distributed import as_completed

    cfg = p.config.postprocess
    ctx = p.ctx
    t_start = time.time()
    scratch = Scratch(ctx.output)
    uf = scratch.done_info("3-unionfind", "finish")
    if uf is None:
        raise ConfigError("post-processing needs a complete run; run `emseg segment` first")
    token, num_segments = uf["token"], int(uf["num_segments"])
    settings = _settings(p)
    previous = scratch.done_info(MARKER, "all")
    if previous is not None and previous.get("token") == token and previous.get("settings") == settings:
        log.info("resume: post-processing already done for this result")
        return dict(previous["summary"], skipped_done=True)
    scratch.clear_done(MARKER, ["all"])
    scratch.kv.delete_range(ts.KvStore.KeyRange("post/", "post0")).result()

    retries = p.config.retries
    run_id = ctx.run_id
    seg_offset = tuple(o + s for o, s in zip(p.input.offset_zyx, ctx.roi.start))
    voxel = tuple(float(v) for v in p.input.voxel_size_nm)
    summary: dict[str, Any] = {}
    futures: dict[Any, tuple[str, Any, list[Any]]] = {}

    def submit(stage: str, item: Any, fn: Any, *args: Any, deps: list[Any] = ()) -> Any:  # type: ignore[assignment]
        f = client.submit(fn, *args, *deps, key=f"{stage}-{item}-{run_id}", retries=retries, pure=False)
        futures[f] = (stage, item, list(deps))
        return f

    # 5: pyramids ---------------------------------------------------------------------------
    layers = []
    levels = cfg.pyramid_levels
    seg_layer = None
    if levels != 0:
        seg_layer = stage5_pyramid.plan_layer(ctx.segmentation, "segmentation", levels)
        layers.append(seg_layer)
        if cfg.image_pyramid:
            layers.append(_image_layer(p, levels))
    level_futures: dict[tuple[str, int], dict[int, Any]] = {}
    for layer in layers:
        level_futures.update(submit_pyramid(submit, layer, run_id))
    if seg_layer is not None:
        summary["pyramid"] = {layer.kind: [s.key for s in layer.scales] for layer in layers}
    if any(layer.kind == "image" for layer in layers):
        summary["image"] = "precomputed://" + image_store(ctx.output)

    seg_spec = {"driver": "neuroglancer_precomputed", "kvstore": urls.kvstore_spec(ctx.segmentation)}
    abs_grid = BlockGrid(ctx.roi.shift(p.input.offset_zyx), ctx.block_shape, (0, 0, 0))  # absolute voxels

    # 6: meshes -----------------------------------------------------------------------------
    mesh_plan = None
    if cfg.meshes:
        scales = seg_layer.scales if seg_layer is not None else None
        if cfg.mesh_scale > 0 and (scales is None or cfg.mesh_scale >= len(scales)):
            have = 0 if scales is None else len(scales) - 1
            raise ConfigError(
                f"postprocess.mesh_scale {cfg.mesh_scale} needs that pyramid scale, but the pyramid has {have} "
                "coarser scales; raise postprocess.pyramid_levels or lower mesh_scale"
            )
        if scales is not None:
            scale = scales[cfg.mesh_scale]
        else:
            info = stage5_pyramid.read_info(ctx.segmentation)
            scale = stage5_pyramid.base_scale(info)
        factor = [round(a / b) for a, b in zip(scale.voxel_size_nm, voxel)]
        block_shape = tuple(max(16, b // f) for b, f in zip(ctx.block_shape, factor))
        fmt = cfg.mesh_format
        if fmt == "auto":
            fmt = "sharded" if p.config.write.sharded else "legacy"
        n_blocks = math.prod(-(-s // b) for s, b in zip(scale.shape_zyx, block_shape))
        shift, sharding = stage6_meshes.plan_groups(num_segments, n_blocks, fmt)
        spec = dict(seg_spec, scale_metadata={"key": scale.key})
        mesh_plan = stage6_meshes.MeshPlan(
            output=ctx.output, volume_spec=spec, scale=scale, block_shape=block_shape,  # type: ignore[arg-type]
            mesh_dir=urls.join(ctx.segmentation, "mesh"), format=fmt, shift=shift, sharding=sharding,
            reduction=cfg.mesh_reduction, max_error=cfg.mesh_max_error, lods=cfg.mesh_lods, run_id=run_id,
        )
        mesh_kv = _kv(mesh_plan.mesh_dir)
        mesh_kv.delete_range(ts.KvStore.KeyRange()).result()
        mesh_kv.write("info", json.dumps(mesh_plan.info()).encode()).result()
        upstream = list(level_futures.get(("segmentation", cfg.mesh_scale), {}).values())
        submit_meshes(submit, mesh_plan, num_segments, upstream)
        summary["meshes"] = {"format": fmt, "scale": scale.key}

    # 9: skeletons ------------------------------------------------------------------------
    skel_plan = None
    if cfg.skeletons:
        skel_plan = _skeleton_plan(p, seg_layer, num_segments)
        skel_kv = _kv(skel_plan.skeleton_dir)
        skel_kv.delete_range(ts.KvStore.KeyRange()).result()
        skel_kv.write("info", json.dumps(skel_plan.info()).encode()).result()
        upstream = list(level_futures.get(("segmentation", cfg.skeleton_scale), {}).values())
        blocks_f = [submit(stage9_skeletons.STAGE, f"block-{b.id}", stage9_skeletons.skeleton_block_task, skel_plan,
                           b.id, deps=upstream) for b in skel_plan.grid]
        for group in range((max(num_segments, 1) >> skel_plan.shift) + 1):
            submit(stage9_skeletons.STAGE, f"group-{group}", stage9_skeletons.merge_group_task, skel_plan, group,
                   deps=blocks_f)
        summary["skeletons"] = {"format": skel_plan.format, "scale": skel_plan.scale.key}

    # 10: OME-Zarr ------------------------------------------------------------------------
    if cfg.ome_zarr is not None:
        scales = seg_layer.scales if seg_layer is not None else (
            stage5_pyramid.base_scale(stage5_pyramid.read_info(ctx.segmentation)),)
        ome = stage10_ome_zarr.plan(ctx.segmentation, ctx.output, scales, cfg.ome_zarr, run_id)
        for level in range(len(scales)):
            upstream = list(level_futures.get(("segmentation", level), {}).values())
            for b in ome.grid(level):
                submit(stage10_ome_zarr.STAGE, f"{level}-{b.id}", stage10_ome_zarr.copy_task, ome, level, b.id,
                       deps=upstream)
        summary["ome_zarr"] = {"version": cfg.ome_zarr, "url": "zarr://" + ome.store if cfg.ome_zarr == "0.4"
                               else "zarr3://" + ome.store, "scales": len(scales)}

    # 7: segment properties -----------------------------------------------------------------
    if cfg.segment_properties:
        props = stage7_properties.PropertiesPlan(
            output=ctx.output, volume_spec=seg_spec, grid=abs_grid, offset_zyx=seg_offset,  # type: ignore[arg-type]
            voxel_size_nm=voxel, properties_dir=urls.join(ctx.segmentation, "segment_properties"),  # type: ignore[arg-type]
            run_id=run_id,
        )
        stats_f = [submit(stage7_properties.STAGE, f"block-{b.id}", stage7_properties.stats_task, props, b.id)
                   for b in abs_grid]
        submit(stage7_properties.STAGE, "reduce", stage7_properties.reduce_task, props, deps=stats_f)

    # 8: seam audit -------------------------------------------------------------------------
    if cfg.seam_audit:
        audit = stage8_seam_audit.AuditPlan(
            run=ctx, token=token, input_offset_zyx=tuple(p.input.offset_zyx), voxel_size_nm=voxel,  # type: ignore[arg-type]
            threshold=audit_threshold(ctx), margin=cfg.seam_audit_margin, limit=cfg.seam_audit_limit,
            audit_dir=urls.join(ctx.output, "seam_audit"),
        )
        audit_f = [submit(stage8_seam_audit.STAGE, f"block-{i}", stage8_seam_audit.audit_block_task, audit, i)
                   for i in range(ctx.grid.num_blocks)]
        submit(stage8_seam_audit.STAGE, "reduce", stage8_seam_audit.reduce_task, audit, deps=audit_f)

    # wait ----------------------------------------------------------------------------------
    failures: list[dict[str, Any]] = []
    per_stage: dict[str, dict[str, Any]] = defaultdict(lambda: {"tasks": 0, "task_seconds": 0.0, "voxels": 0})
    errored: set[Any] = set()
    results: dict[tuple[str, Any], dict[str, Any]] = {}
    bar = _progress(len(futures), enabled=progress)
    t_submit = time.time()
    for f in as_completed(list(futures)):
        stage, item, deps = futures[f]
        s = per_stage[stage]
        if f.status == "finished":
            info = f.result()
            results[(stage, item)] = info
            s["tasks"] += 1
            s["task_seconds"] += float(info.get("seconds", 0.0))
            s["voxels"] += int(info.get("voxels", 0)) if not str(item).startswith(("group", "reduce")) else 0
        else:
            errored.add(f)
            if any(d in errored for d in deps):
                failures.append({"stage": stage, "block": item, "error": "skipped: an upstream task failed"})
            else:
                exc = f.exception()
                failures.append({"stage": stage, "block": item, "error": f"{type(exc).__name__}: {exc}"})
        s["wall_seconds"] = time.time() - t_submit
        bar.update(1)
        bar.set_postfix_str(f"{stage} {item}", refresh=False)
    bar.close()

    stages_out = {}
    for stage in STAGES:
        if stage not in per_stage:
            continue
        s = per_stage[stage]
        wall = s["wall_seconds"]
        stages_out[stage] = {
            "tasks": s["tasks"], "task_seconds": round(s["task_seconds"], 3), "wall_seconds": round(wall, 3),
            "megavoxels": round(s["voxels"] / 1e6, 3),
            "megavoxels_per_second": round(s["voxels"] / 1e6 / max(wall, 1e-9), 3),
        }
    summary["stages"] = stages_out
    if mesh_plan is not None:
        groups = [v for (st, it), v in results.items() if st == stage6_meshes.STAGE and str(it).startswith("group")]
        summary["meshes"].update(segments=sum(g["segments"] for g in groups), faces=sum(g["faces"] for g in groups))
    if skel_plan is not None:
        groups = [v for (st, it), v in results.items() if st == stage9_skeletons.STAGE and str(it).startswith("group")]
        summary["skeletons"].update(segments=sum(g["segments"] for g in groups),
                                    vertices=sum(g["vertices"] for g in groups))
    reduce = results.get((stage7_properties.STAGE, "reduce"))
    if reduce is not None:
        summary["segment_properties"] = {"segments": reduce["segments"]}
        summary["largest"] = reduce["largest"]
    audit_r = results.get((stage8_seam_audit.STAGE, "reduce"))
    if audit_r is not None:
        summary["seam_audit"] = {k: audit_r[k] for k in ("points", "candidates", "merged")}
        summary["seam_audit"].update(threshold=audit_threshold(ctx), margin=cfg.seam_audit_margin,
                                     source="precomputed://" + urls.join(ctx.output, "seam_audit"))
    summary["wall_seconds"] = round(time.time() - t_start, 3)
    summary["failures"] = failures
    if not failures:
        update_info(ctx.segmentation,
                    mesh="mesh" if mesh_plan is not None else None,
                    skeletons="skeletons" if skel_plan is not None else None,
                    segment_properties="segment_properties" if reduce is not None else None)
        scratch.mark_done(MARKER, "all", {"token": token, "settings": settings, "summary": summary})
    return summary


def _progress(total: int, *, enabled: bool) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, desc="emseg postprocess", unit="task", disable=not enabled, file=sys.stderr,
                mininterval=0.5)


def postprocess_config(config: Any, *, progress: bool = True) -> dict[str, Any]:
    """Post-process the finished run of ``config`` on its own cluster (for a run made without it, or
    after changing the ``postprocess`` settings); returns the summary and stores it in ``run.json``."""
    import dataclasses
    import uuid

    from emseg.tasks.driver import report
    from emseg.tasks.driver.cluster import connect
    from emseg.tasks.driver.run import plan

    p = plan(config)
    p.ctx = dataclasses.replace(p.ctx, run_id=uuid.uuid4().hex)
    with connect(config.cluster) as client:
        summary = postprocess(client, p, progress=progress)
    run = report.read(p.ctx.output)
    if run is not None:
        from emseg.pipeline.outputs import neuroglancer

        run["postprocess"] = summary
        run["neuroglancer"] = neuroglancer.run_state(run)
        report.write(p.ctx.output, run)
    return summary
