"""The driver of a run: validate, build one Dask graph of the four stages, execute, report.

Stages, in order (the same numbers in file names and on the CLI)::

    1-segment    per block     tasks/stage1_segment.py
    2-seams      per block     tasks/stage2_seams.py      (after its own and its forward neighbours' stage 1)
    3-unionfind  once          tasks/stage3_unionfind.py  (after every stage 2)
    4-relabel    per block     tasks/stage4_relabel.py    (after stage 3)

Tasks talk through the scratch area, so a rerun skips what has a done-marker (resume); whatever
depends on redone work is redone too. ``restart=True`` wipes the output first.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from emseg.pipeline import backends

from emseg.pipeline.io import urls
from emseg.pipeline.config import Config
from emseg.pipeline.errors import BlocksFailedError, ConfigError, OutputExistsError, RegionError
from emseg.pipeline.geometry import Box, BlockGrid
from emseg.pipeline.io.lock import OutputLock
from emseg.pipeline.io.scratch import Scratch
from emseg.pipeline.io.sharding import check_alignment, choose_bits, shard_shape
from emseg.pipeline.io.volume import Volume, create_channels, create_precomputed, open_volume, read_error, sharding_spec, spec_for
from emseg.tasks.driver import report as report_mod
from emseg.tasks.driver.context import RunContext, ValidatedRun, new_run_id
from emseg.tasks.driver import engine, graph
from emseg.tasks import stage3_unionfind as stage3
from emseg.pipeline import stages as registry
from emseg.pipeline.stitching import resume
from emseg.pipeline.io import kvstore

log = logging.getLogger("emseg")


def region(config: Config, vol: Volume) -> Box:
    """The region of interest in zero-origin input voxels (the whole volume by default)."""
    if config.roi is None:
        return vol.box
    r = config.roi
    scale = vol.voxel_size_nm if r.units == "nm" else (1.0, 1.0, 1.0)
    start = [math.floor(s / k) - o for s, k, o in zip(r.start, scale, vol.offset_zyx)]
    stop = [math.ceil(s / k) - o for s, k, o in zip(r.stop, scale, vol.offset_zyx)]
    box = Box(start, stop)
    if box.empty:
        raise RegionError(f"roi {r.start}..{r.stop} ({r.units}) is empty; stop must exceed start on every axis")
    if not vol.box.contains(box):
        lo = list(vol.offset_zyx)
        hi = [o + s for o, s in zip(vol.offset_zyx, vol.shape_zyx)]
        raise RegionError(
            f"roi {list(r.start)}..{list(r.stop)} ({r.units}) lies outside the input, which spans voxels "
            f"{lo}..{hi} (z, y, x, offset included); shrink the roi"
        )
    return box


def check_hands_off(config: Config) -> None:
    """Refuse an output that is the input, lies inside it, or holds it: emseg never writes into its input.

    The same holds for a boundary backend's stored affinities (``backend.model.affinities``).
    Raises :class:`~emseg.pipeline.errors.ConfigError` (before anything is written); a ``--restart`` would
    otherwise delete the input, and resume markers would land among the user's files.
    """
    sources = [("the input", config.input)]
    model = getattr(config.backend.params, "model", None)
    if getattr(model, "affinities", None) is not None:
        sources.append(("the stored affinities", model.affinities))
    for what, source in sources:
        _hands_off(what, source, config.output)


def _hands_off(what: str, source: Any, output: str) -> None:
    src = urls.source_store(source)
    if src is None:
        return
    out = urls.store_url(output)
    how = urls.overlaps(src, out)
    if how is None and urls.overlaps(urls.container(src), out) in ("same", "b in a"):
        raise ConfigError(f"output {output!r} lies inside {urls.container(src)}, the container of {what}; "
                          "emseg never writes into its inputs — choose an output outside it")
    if how == "same":
        raise ConfigError(f"output {output!r} is {what} itself; emseg never writes into its inputs — "
                          "choose another output directory")
    if how == "b in a":
        raise ConfigError(f"output {output!r} lies inside {what} {src}; emseg never writes into its "
                          "inputs — choose an output outside it")
    if how == "a in b":
        raise ConfigError(f"{what} {src} lies inside the output {output!r}, which emseg writes and "
                          "--restart clears — choose an output that does not contain it")


#: label keys are ``block_id << 32 | local_id`` in a uint64 with bit 63 reserved: block ids stay below 2^31
MAX_BLOCKS = 1 << 31


def validate(config: Config) -> ValidatedRun:
    """Validate everything that can be checked before any work, and describe the run."""
    check_hands_off(config)
    check_output_location(config.output)
    if config.phantom is not None:
        from emseg.tasks.commands.phantom import ensure_phantom

        ensure_phantom(config)
    vol = open_volume(config.input)
    config = resolve_voxel_size(config, vol)
    # With input_value_range, stage 1 hands the backend float32 whatever the input's dtype.
    backends.check_input_dtype(config.backend.name, "float32" if config.input_value_range else vol.dtype)
    backends.preflight(config.backend.name, config.backend.params)
    roi = region(config, vol)
    config = resolve_stored(config, vol, roi)
    blocks = config.blocks
    grid = BlockGrid(roi, blocks.shape, blocks.halo)
    check_grid_size(grid)
    min_halo = backends.module(config.backend.name).Backend.min_halo
    for axis, (g, h) in enumerate(zip(grid.grid_shape, blocks.halo)):
        if g > 1 and h < min_halo:
            raise ConfigError(
                f"blocks.halo {list(blocks.halo)} is too small along {'zyx'[axis]}: neighbouring blocks must "
                f"overlap for stitching; backend {config.backend.name!r} needs a halo of at least {min_halo}"
            )
    boundary = backends.is_boundary(config.backend.name)
    runs_model = backends.runs_model(config.backend.name, config.backend.params)
    if config.cluster.model_resources and not runs_model:
        log.warning("cluster.model_resources %s is ignored: backend %s runs no model, so any worker runs every task",
                    config.cluster.model_resources, config.backend.name
                    + (f" with model.kind {config.backend.params.model.kind}" if boundary else ""))
    if config.write.affinities is not None and not boundary:
        raise ConfigError(f"write.affinities stores a boundary backend's affinities, but backend {config.backend.name!r} "
                          "gives labels; remove write.affinities, or use backend affinities")
    threshold = made = None
    if boundary:
        threshold, model_threshold = _check_boundary(config, vol, grid)
        model = config.backend.params.model
        made = {"emseg": {"model": model.kind, **({"weights": model.weights} if model.kind in ("forest", "unet") else {}),
                          "threshold": model_threshold}}  # what a later run from the stored affinities defaults to
    write = config.write
    check_alignment(blocks.shape, write.chunk_shape, roi.shape, "chunk")
    sharding = None
    if write.sharded:
        chunk_grid = [-(-s // c) for s, c in zip(roi.shape, write.chunk_shape)]
        block_chunks = [b // c for b, c in zip(blocks.shape, write.chunk_shape)]
        bits = write.sharding_bits or choose_bits(chunk_grid, block_chunks)
        shard = shard_shape(chunk_grid, write.chunk_shape, bits[0], bits[1])
        check_alignment(blocks.shape, shard, roi.shape, "shard")
        sharding = sharding_spec(*bits)
    input_spec = spec_for(config.input)
    if not config.fill_missing:  # a tensorstore spec that says otherwise itself is followed
        input_spec.setdefault("fill_missing_data_reads", False)
    check_intensities(config, vol, input_spec, roi)
    if config.evaluate is not None:
        from emseg.tasks.commands.evaluate import check_groundtruth

        check_groundtruth(config.evaluate.groundtruth, vol, roi, resample=config.evaluate.resample)
    out = urls.store_url(config.output)
    ctx = RunContext(
        input_spec=input_spec,
        output=out,
        segmentation=urls.join(out, "segmentation"),
        roi=roi,
        block_shape=blocks.shape,
        halo=blocks.halo,
        backend_name=config.backend.name,
        backend_params=config.backend.params.model_dump(mode="json"),
        stitch=config.stitch_rule().model_dump(),
        neighbour_prompts=bool(getattr(config.backend.params, "neighbour_prompts", False)),
        boundary=boundary,
        threshold=threshold,
        global_agglomeration=boundary and _global_agglomeration(config, roi),
        enclosed=_rule(config.agglomeration.enclosed, boundary),
        small=_rule(config.agglomeration.small, boundary),
        keep_scratch=config.keep_scratch,
        value_range=config.input_value_range,
        affinities=urls.join(out, "affinities") if config.write.affinities else None,
        affinities_dtype=config.write.affinities,
        affinities_attributes=made if config.write.affinities else None,
        model_resources=config.cluster.model_resources if runs_model else None,
    )
    data = config.to_json()
    fingerprint = {k: data[k] for k in ("input", "roi", "blocks", "backend", "write")}
    fingerprint["stitch"] = ctx.stitch
    if ctx.boundary:  # stage 2 scores edges itself only when blockwise
        fingerprint["global_agglomeration"] = ctx.global_agglomeration
    return ValidatedRun(config, ctx, vol, sharding, fingerprint)


def _rule(rule: Any, boundary: bool) -> dict[str, Any] | None:
    """``agglomeration.enclosed`` or ``.small`` as the tasks receive it: None when off (or no boundary backend)."""
    return rule.model_dump() if rule is not None and boundary else None


def _check_rule_inputs(ctx: RunContext, scratch: Any, redo: list[Any], seams_done: set[str]) -> None:
    """Refuse, before any work, to reuse stage-2 edges that lack what ``agglomeration.small`` (fragment
    sizes) or the blockwise rules (each block face's fragments) read: scratch written by an emseg
    from before those rules, which would otherwise fail in stage 3 or, blockwise, treat segments it
    cannot see whole as enclosed or small."""
    if not ctx.boundary or (ctx.small is None and (ctx.enclosed is None or ctx.global_agglomeration)):
        return
    redone = {int(b) for b in redo}
    kept = min((int(b) for b in seams_done if b.isdigit() and int(b) not in redone), default=None)  # one is enough
    if kept is None:
        return
    edges = scratch.get_arrays(f"edges/{kept}")
    need = (["fragment_key"] if ctx.small is not None else []) + ([] if ctx.global_agglomeration else ["face_key"])
    missing = [k for k in need if k not in edges]
    if missing:
        raise ConfigError(
            f"the scratch data in {ctx.output} was written by an older emseg and lacks {', '.join(missing)}, which "
            "agglomeration.small and the blockwise enclosed rules need; rerun with --restart, or set "
            "agglomeration.small: null (and agglomeration.enclosed: null with blockwise scope)"
        )


def _check_boundary(config: Config, vol: Volume, grid: BlockGrid) -> tuple[float, float]:
    """A boundary backend's checks before any work; returns the agglomeration threshold and the
    model's own (its card's, :attr:`Backend.default_threshold`).

    The halo must cover the model's context plus one voxel (the affinity to the voxel before the
    write box), or the affinities in a block's core would depend on where the block was cut.
    """
    backend = backends.create(config.backend.name, config.backend.params)
    backend.check_input(vol.dtype)
    need = [c + 1 for c in backend.context_zyx]
    halo = config.blocks.halo
    short = [axis for axis in range(3) if grid.grid_shape[axis] > 1 and halo[axis] < need[axis]]
    if short:
        fix = [max(h, n) if grid.grid_shape[a] > 1 else h for a, (h, n) in enumerate(zip(halo, need))]
        raise ConfigError(
            f"blocks.halo {list(halo)} is smaller than the {config.backend.params.model.kind} model's context "
            f"{list(backend.context_zyx)} + 1 along {', '.join('zyx'[a] for a in short)}: blocks would see "
            f"different affinities depending on where they were cut; set blocks.halo to {fix} or more"
        )
    grow = config.backend.params.fragment_context
    thin = [axis for axis in range(3) if grid.grid_shape[axis] > 1 and halo[axis] < grow]
    if thin and backend.fragment_options()["method"] == "watershed":
        log.warning("blocks.halo %s is smaller than backend.fragment_context (%d) along %s: fragments near block faces "
                    "are cut with less context and depend more on where the blocks were cut; set blocks.halo to %d "
                    "or more for block-invariant fragments", list(halo), grow, ", ".join("zyx"[a] for a in thin), grow)
    model = config.backend.params.model
    if model.kind == "stored" and config.write.affinities is not None:
        log.warning("write.affinities with backend.model.kind stored copies %s into the output's affinities before "
                    "cutting fragments; without write.affinities the run reads them where they are", model.affinities)
    own = float(backend.default_threshold)
    t = config.agglomeration.threshold
    t = own if t is None else float(t)
    small = config.agglomeration.small
    if small is not None and small.max_score <= t:
        log.warning("agglomeration.small.max_score (%g) is not above the threshold (%g): the contacts it could take "
                    "have merged at the threshold already, so the small-segment rule merges next to nothing", small.max_score, t)
    return t, own


def check_output_location(output: str) -> None:
    """Refuse an output that cannot be a directory (a local path that is an existing file)."""
    path = urls.local_path(urls.store_url(output))
    if path is None:
        return
    probe = os.path.abspath(path)
    while probe and not os.path.exists(probe):
        parent = os.path.dirname(probe)
        if parent == probe:
            break
        probe = parent
    if os.path.exists(probe) and not os.path.isdir(probe):
        what = "is" if probe == os.path.abspath(path) else f"lies under {probe!r}, which is"
        raise ConfigError(f"the output {output!r} {what} a file, not a directory; choose another output")


def resolve_voxel_size(config: Config, vol: Volume) -> Config:
    """Settle the input's voxel size (metadata or ``input_voxel_size_nm``) and give it to the backend.

    Refuses an input whose metadata gives no voxel size when the config does not set one, and a config
    value that contradicts the metadata. Returns the config with the backend's ``voxel_size_zyx``
    filled in (when it has that key and it is unset).
    """
    given = config.input_voxel_size_nm
    if vol.voxel_size_source is None:
        if given is None:
            raise ConfigError(
                f"the input {vol.source} has no voxel size in its metadata (precomputed resolution, NGFF "
                "coordinateTransformations, or attributes resolution_nm / resolution / voxel_size / "
                "pixelResolution); set input_voxel_size_nm: [z, y, x] (nm), e.g. --set input_voxel_size_nm=[40,8,8]"
            )
        vol.voxel_size_nm = tuple(float(v) for v in given)  # type: ignore[assignment]
        vol.voxel_size_source = "config input_voxel_size_nm"
    elif given is not None and not np.allclose(given, vol.voxel_size_nm, rtol=1e-6):
        raise ConfigError(
            f"input_voxel_size_nm {list(given)} disagrees with the input's {vol.voxel_size_source} "
            f"({list(vol.voxel_size_nm)} nm, z, y, x); remove input_voxel_size_nm or correct the metadata"
        )
    params = backends.with_voxel_size(config.backend.params, vol.voxel_size_nm)
    if params is not config.backend.params:
        config = config.model_copy(update={"backend": config.backend.model_copy(update={"params": params})})
    return config


def resolve_stored(config: Config, vol: Volume, roi: Box) -> Config:
    """Stored affinities (``backend.model.kind: stored``): open them, fill in where the input lies in
    them (``affinities_shift_zyx``, from both volumes' offsets) and refuse them, before any work,
    when they do not cover the region of interest on the input's grid. Any other config as it is."""
    model = getattr(config.backend.params, "model", None)
    if getattr(model, "kind", None) != "stored":
        return config
    from emseg.pipeline.backends.boundary.stored import StoredAffinities

    stored = StoredAffinities(model.affinities, model.affinities_shift_zyx or (0, 0, 0))
    found = stored.shift_for(vol)
    if model.affinities_shift_zyx is None:
        stored.shift = found
        model = model.model_copy(update={"affinities_shift_zyx": stored.shift})
        params = config.backend.params.model_copy(update={"model": model})
        config = config.model_copy(update={"backend": config.backend.model_copy(update={"params": params})})
    elif tuple(model.affinities_shift_zyx) != found and stored.volume.offset_source is not None:
        raise ConfigError(
            f"backend.model.affinities_shift_zyx {list(model.affinities_shift_zyx)} disagrees with the offsets of the "
            f"input ({list(vol.offset_zyx)}) and of the stored affinities ({list(stored.volume.offset_zyx)}, "
            f"{stored.volume.offset_source}), which give {list(found)}; remove affinities_shift_zyx or correct the metadata"
        )
    stored.check_geometry(vol, roi)
    stored.check_sample(roi)
    return config


def check_grid_size(grid: BlockGrid) -> None:
    """Refuse a grid whose block ids would not fit the label keys (``block_id << 32 | local_id``)."""
    if grid.num_blocks < MAX_BLOCKS:
        return
    shape = list(grid.block_shape)
    while math.prod(-(-s // b) for s, b in zip(grid.roi.shape, shape)) >= MAX_BLOCKS:
        axis = int(np.argmin(shape))
        shape[axis] *= 2
    raise ConfigError(
        f"the region needs {grid.num_blocks} blocks of {list(grid.block_shape)}, but label keys hold block ids "
        f"below 2^31 (block_id << 32 | local_id); use larger blocks, e.g. blocks.shape={shape}, or split the "
        "region into several runs with roi"
    )


def check_intensities(config: Config, vol: Volume, input_spec: dict[str, Any], roi: Box) -> None:
    """Sample the input before any work: missing chunks (unless ``fill_missing``) and a float range the backend cannot take."""
    from emseg.pipeline.io import intensity

    name = config.backend.name
    own_range = getattr(config.backend.params, "value_range", None)
    if config.input_value_range is not None and own_range is not None:
        raise ConfigError(
            f"both input_value_range {list(config.input_value_range)} and backend.value_range {list(own_range)} "
            "are set; the image would be mapped twice: keep one"
        )
    checked = vol.dtype.kind == "f" and config.input_value_range is None and own_range is None
    sample_vol = open_volume(input_spec) if not config.fill_missing else vol
    values = []
    for start, stop in intensity.sample_boxes(roi.shape):
        box = Box([a + o for a, o in zip(start, roi.start)], [b + o for b, o in zip(stop, roi.start)])
        try:
            values.append(sample_vol.read(box).ravel())
        except ValueError as exc:
            raise read_error(vol.source, exc) from None
    if checked:
        intensity.check_range(np.concatenate(values), vol.dtype, name, backends.float_range(name))


def _global_agglomeration(config: Config, roi: Box) -> bool:
    a = config.agglomeration
    return a.scope == "global" or (a.scope == "auto" and roi.size <= a.global_max_voxels)


def _delete_prefix(store: str) -> None:
    kvstore.delete_prefix(urls.open_kvstore(store))
    path = urls.local_path(urls.store_url(store))
    if path is not None and os.path.isdir(path):  # the file kvstore leaves the emptied directories behind
        for folder, _, _ in os.walk(path, topdown=False):
            try:
                os.rmdir(folder)
            except OSError:  # not empty
                pass


#: fingerprint entries that are not config keys themselves, by the config keys that decide them
_FINGERPRINT_KEYS = {"global_agglomeration": "agglomeration.scope (or agglomeration.global_max_voxels)",
                     "stitch": "stitch (or the backend's stitching rule)"}


def prepare_output(p: ValidatedRun, *, restart: bool) -> Scratch:
    """Create (or reopen for resume) the output; refuse to mix two different runs."""
    ctx = p.ctx
    scratch = Scratch(ctx.output)
    if restart:
        log.info("--restart: removing the previous segmentation and scratch data in %s", ctx.output)
        _delete_prefix(ctx.segmentation)
        _delete_prefix(urls.join(ctx.output, "image"))  # the image pyramid (postprocess.image_pyramid)
        _delete_prefix(urls.join(ctx.output, "affinities"))  # write.affinities
        scratch.clear()
        report_mod.remove(ctx.output)
    previous = scratch.fingerprint()
    if previous is not None and previous != p.fingerprint:
        changed = sorted(_FINGERPRINT_KEYS.get(k, k) for k in set(previous) | set(p.fingerprint)
                         if previous.get(k) != p.fingerprint.get(k))
        raise OutputExistsError(
            f"the output {ctx.output} holds a run with a different config (changed: {', '.join(changed)}); "
            "rerun with --restart to overwrite it, or choose another output"
        )
    create_precomputed(
        ctx.segmentation,
        layer_type="segmentation",
        dtype="uint64",
        shape_zyx=ctx.roi.shape,
        voxel_size_nm=p.input.voxel_size_nm,
        offset_zyx=[o + s for o, s in zip(p.input.offset_zyx, ctx.roi.start)],
        chunk_zyx=p.config.write.chunk_shape,
        encoding=p.config.write.encoding,
        sharding=p.sharding,
    )
    if ctx.affinities is not None:
        if not kvstore.list_keys(urls.open_kvstore(ctx.affinities), ".zarray"):  # new, or removed since
            scratch.clear_done(registry.PREDICT)  # 1-predict's markers vouch for its chunks
        create_channels(ctx.affinities, dtype=str(ctx.affinities_dtype), channels=3, shape_zyx=ctx.roi.shape,
                        chunk_zyx=p.config.write.chunk_shape, voxel_size_nm=p.input.voxel_size_nm,
                        offset_zyx=[o + s for o, s in zip(p.input.offset_zyx, ctx.roi.start)],
                        attributes=ctx.affinities_attributes)
    scratch.set_fingerprint(p.fingerprint)
    return scratch


def done_markers(scratch: Scratch) -> dict[str, set[str]]:
    """The done-markers of the four segmentation stages, by stage."""
    return {stage: scratch.done_items(stage) for stage in registry.SEGMENTATION}


def execute(p: ValidatedRun, *, restart: bool = False, stages: Sequence[str] = registry.SEGMENTATION, progress: bool = True) -> dict[str, Any]:
    """Run the stages of a planned run on its Dask cluster and write ``run.json``.

    The output is locked for the whole run: a second run into it is refused, not interleaved.
    """
    with OutputLock(p.ctx.output):
        return _execute(p, restart=restart, stages=stages, progress=progress)


def _execute(p: ValidatedRun, *, restart: bool, stages: Sequence[str], progress: bool) -> dict[str, Any]:
    from emseg.tasks.driver.cluster import connect, warn_without_model_resources

    t_start = time.time()
    p.ctx = ctx = dataclasses.replace(p.ctx, run_id=new_run_id())
    grid = ctx.grid
    scratch = prepare_output(p, restart=restart)
    done = done_markers(scratch)
    for stage in stages:
        for earlier in registry.after(stage):
            if earlier not in stages and resume.incomplete(done, earlier, grid, ctx.global_agglomeration):
                raise ConfigError(
                    f"stage {stage} needs stage {earlier} to be complete first; run `emseg stage {earlier}` before it"
                )
    finished = scratch.done_info(registry.UNIONFIND, resume.FINISH) or {}
    todo = resume.todo(done, grid, ctx.neighbour_prompts, ctx.threshold, finished.get("threshold"), ctx.boundary,
                       ctx.global_agglomeration)
    _check_rule_inputs(ctx, scratch, todo[registry.SEAMS], done[registry.SEAMS])
    rules = (finished.get("enclosed"), finished.get("small")) != (ctx.enclosed, ctx.small)
    if ctx.boundary and finished and rules and not todo[registry.UNIONFIND]:
        # agglomeration.enclosed or .small changed: like a new threshold, union-find and relabel only
        todo[registry.UNIONFIND] = list(resume.unionfind_items(grid.grid_shape, ctx.global_agglomeration))
        todo[registry.RELABEL] = list(range(grid.num_blocks))
    # Invalidate the markers of everything that is to be redone (now or by a later stage command)
    # before anything runs, so that a kill at any point leaves consistent markers.
    scratch.clear_done(registry.SEAMS, todo[registry.SEAMS])
    if todo[registry.UNIONFIND]:
        scratch.clear_done(registry.UNIONFIND)
        scratch.clear_done(registry.RELABEL)
        scratch.delete_prefix(stage3.HOOD)  # made from the edges and settings of the union-find it redoes
    totals = {stage: len(items) for stage, items in resume.all_items(grid, ctx.global_agglomeration).items()}
    for stage in registry.SEGMENTATION:
        if stage not in stages:
            todo[stage] = []
            continue
        skipped = totals[stage] - len(todo[stage])
        if skipped:
            log.info("resume: %s skips %d of %d %s already done", stage, skipped, totals[stage],
                     "tasks" if stage == registry.UNIONFIND else "blocks")
    if ctx.affinities is not None:  # write.affinities: the blocks stage 1 reads stored affinities of
        reach = resume.predict_reach(grid, int(ctx.backend_params["fragment_context"]))
        predicted = scratch.done_items(registry.PREDICT)
        todo[registry.PREDICT] = resume.predict_todo(grid, todo[registry.SEGMENT], predicted, reach)
        totals[registry.PREDICT] = grid.num_blocks
        if predicted and todo[registry.SEGMENT]:
            log.info("resume: %s keeps the stored affinities of %d blocks", registry.PREDICT, len(predicted))

    previous = report_mod.read(ctx.output)
    if not any(todo.values()) and previous is not None and previous.get("status") == "complete" \
            and list(stages) == list(registry.SEGMENTATION) \
            and (previous.get("config") or {}).get("postprocess") == p.config.to_json().get("postprocess"):
        # Nothing to do: the finished run's report stands; the rerun is recorded beside it, not over it.
        log.info("resume: every task is done already; run.json keeps the finished run's report")
        return report_mod.record_rerun(ctx.output, previous, started=t_start)

    retries = p.config.retries
    cluster = p.config.cluster
    if cluster.model_resources and not ctx.model_resources:  # a backend without a model: no worker is special
        cluster = cluster.model_copy(update={"model_resources": None})
    with connect(cluster) as client:
        model_stage = registry.SEGMENT if ctx.affinities is None else registry.PREDICT
        if ctx.model_resources and p.config.cluster.address and todo[model_stage]:
            warn_without_model_resources(client, p.config.cluster)
        bar = engine.progress_bar(sum(len(v) for v in todo.values()), desc="emseg", enabled=progress)
        window = max(1000, 50 * p.config.cluster.workers * p.config.cluster.threads_per_worker)
        stream = engine.Streamer(client, run_id=ctx.run_id, retries=retries, window=window, progress=bar)
        stream.submit_all(graph.streaming_tasks(ctx, todo))
        token: str | None = None
        if todo[registry.UNIONFIND]:
            stream.submit_all(graph.resolving_tasks(ctx))
            stream.barrier()
            if not stream.failed:
                stream.submit(engine.Task(registry.UNIONFIND, "finish", stage3.finish, (ctx,), keep=True))
                stream.barrier()
                token = (stream.kept.get((registry.UNIONFIND, "finish")) or {}).get("token")
        else:
            stream.barrier()
            if todo[registry.RELABEL]:
                token = (scratch.done_info(registry.UNIONFIND, "finish") or {}).get("token")
        if todo[registry.RELABEL] and token is not None and not stream.failed:
            stream.submit_all(graph.relabel_tasks(ctx, [int(i) for i in todo[registry.RELABEL]], token))
        stream.barrier()
        bar.close()
        failures = stream.failures()
        post = None
        if not failures and list(stages) == list(registry.SEGMENTATION) and p.config.postprocess is not None:
            from emseg.tasks.driver.postprocess import postprocess  # stages 5-10: viewing outputs

            post = postprocess(client, p, window=window, progress=progress)
            failures.extend(post["failures"])
        versions = report_mod.versions(client)

    # The union-find result of this run, or (when only relabelling was redone) of the run it resumes.
    finish = stream.kept.get((registry.UNIONFIND, "finish")) or scratch.done_info(registry.UNIONFIND, "finish") or {}
    results = {"stats": stream.results, "wall": stream.wall, "workers": stream.workers, "finish": finish}
    run = report_mod.build(p, todo, totals, results, failures, started=t_start, versions=versions, post=post)
    if not failures and list(stages) == list(registry.SEGMENTATION):
        run["scratch"] = _scratch_lifecycle(p, scratch)
    report_mod.write(ctx.output, run)
    real = [f for f in failures if not f["error"].startswith("skipped")]
    if real:
        groups: dict[tuple[str, str], list[Any]] = {}
        for f in real:
            groups.setdefault((f["stage"], f["error"]), []).append(f["block"])
        parts = [
            f"{'block' if len(items) == 1 else 'blocks'} {_ids(items)} in {stage}: {error}"
            for (stage, error), items in list(groups.items())[:3]
        ]
        more = f" (and {len(groups) - 3} more errors)" if len(groups) > 3 else ""
        raise BlocksFailedError(
            f"{len(real)} task(s) failed after {retries + 1} attempt{'s' if retries else ''}: {'; '.join(parts)}{more}. "
            "The output is incomplete (run.json status 'failed', failures listed there); fix the cause and rerun "
            "the same command to resume (with -v, a local cluster's workers print each failure's traceback)"
        )
    return run


def _scratch_lifecycle(p: ValidatedRun, scratch: Scratch) -> dict[str, Any]:
    """After a complete run: prune the scratch area (unless ``keep_scratch``) and say what it holds."""
    if not p.config.keep_scratch:
        scratch.prune()
    out: dict[str, Any] = {"pruned": not p.config.keep_scratch, "url": scratch.url}
    sizes = scratch.local_bytes()
    if sizes is not None:
        out["bytes"] = sizes
        seg = urls.local_path(p.ctx.segmentation)
        if seg is not None:
            import os

            total = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(seg) for f in fs)
            out["segmentation_bytes"] = total
            out["kept_fraction_of_segmentation"] = round(sizes["total"] / max(total, 1), 4)
    return out


def _ids(items: list[Any]) -> str:
    items = sorted(items, key=str)
    return ", ".join(map(str, items[:10])) + (f", … ({len(items)} in all)" if len(items) > 10 else "")


def segment(config: Config, *, restart: bool = False, stages: Sequence[str] = registry.SEGMENTATION, progress: bool = True) -> dict[str, Any]:
    """Validate and run; returns the content of ``run.json``."""
    return execute(validate(config), restart=restart, stages=stages, progress=progress)
