"""``emseg plan CONFIG``: what a run will need and cost, from a calibration on a few of its blocks.

The calibration (:func:`emseg.tasks.commands.calibration.calibrate`) segments ``N`` blocks of the run
for real, in this process and into a temporary output, and measures each block's stage-1 seconds, its
scratch bytes, and stand-ins for stages 2 and 4.

The estimates scale these by what each one is proportional to, for the whole region of interest or
for a hypothetical volume of ``--volume-shape`` (so that a petascale run can be planned from a small
sample)::

    stage-1 seconds          per voxel read (core + halo)      ┌─────────────┐
    scratch labels, output   per core voxel                    │ ┌─────────┐ │ read box = core + halo
    scratch faces            per overlap-face voxel            │ │  core   │ │ faces   = read box ∩
    seam seconds, edges      per forward overlap-face voxel    │ └─────────┘ │           neighbour's
                                                               └─────────────┘

Rates are the ratio of sums over the calibration blocks; the low/high range uses the smallest and
largest per-block rate. Wall time for ``W`` workers is startup + total task time / min(W, blocks):
perfect load balance, no stragglers, no time for union-find (one task) — a lower bound to plan with.
With ``cluster.model_resources`` only ``--model-workers`` of the W workers (default 1, as a local
cluster gives them to its first worker) run the tasks that run the model, so the wall time is at
least those tasks' time / min(M, blocks) (:func:`emseg.pipeline.costs.wall_seconds`).

This module imports nothing heavy until it runs (the CLI imports it to build its parser).
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Sequence
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from emseg.pipeline.costs import Calibration, grid_totals, rate, readback_voxels, stats, wall_seconds
from emseg.pipeline.errors import ConfigError
from emseg.tasks.commands.calibration import calibrate
from emseg.tasks.commands.estimate_table import format_table

if TYPE_CHECKING:
    from emseg.tasks.driver.context import ValidatedRun

__all__ = ["add_arguments", "calibrate", "check_arguments", "estimate", "run"]


# ------------------------------------------------------------------------------------------------
# the estimate


def check_arguments(
    p: ValidatedRun,
    *,
    volume_shape: Sequence[int] | None = None,
    workers: int | None = None,
    gpus: int | None = None,
    cost_per_hour: float | None = None,
    model_workers: int | None = None,
) -> None:
    """Refuse estimate arguments that make no sense, before any calibration work."""
    from emseg.pipeline.io.sharding import check_alignment

    if volume_shape is not None:
        if len(volume_shape) != 3 or any(int(s) <= 0 for s in volume_shape):
            raise ConfigError(f"--volume-shape needs three positive sizes Z Y X, got {list(volume_shape)}")
        check_alignment(p.config.blocks.shape, p.config.write.chunk_shape, [int(s) for s in volume_shape], "chunk")
    for name, value in (("--workers", workers), ("--gpus", gpus), ("--model-workers", model_workers)):
        if value is not None and value < 1:
            raise ConfigError(f"{name} must be at least 1, got {value}")
    if model_workers is not None:
        if not p.ctx.model_resources:
            raise ConfigError("--model-workers counts the workers holding cluster.model_resources, which this run "
                              "does not set (or its backend runs no model); leave it out or set model_resources")
        count = workers or p.config.cluster.workers
        if model_workers > count:
            raise ConfigError(f"--model-workers {model_workers} exceeds the workers they are among ({count}: --workers "
                              "or cluster.workers); give at most that many, or more --workers")
    if cost_per_hour is not None and cost_per_hour < 0:
        raise ConfigError(f"--cost-per-hour must be >= 0, got {cost_per_hour}")


def _resources(resources: dict[str, float]) -> str:
    """Worker resources as ``dask worker --resources`` spells them.

    >>> _resources({"GPU": 1.0, "MEM": 2.5})
    'GPU=1 MEM=2.5'
    """
    return " ".join(f"{k}={v:g}" for k, v in resources.items())


def _stored_itemsize(p: ValidatedRun) -> int | None:
    """Bytes per value of the affinities a ``model.kind: stored`` run reads (None for other runs)."""
    model = getattr(getattr(p.config.backend, "params", None), "model", None)
    if getattr(model, "kind", None) != "stored":
        return None
    from emseg.pipeline.io.volume import open_channels

    return int(open_channels(model.affinities).dtype.itemsize)


def estimate(
    p: ValidatedRun,
    cal: Calibration,
    *,
    volume_shape: Sequence[int] | None = None,
    workers: int | None = None,
    gpus: int | None = None,
    cost_per_hour: float | None = None,
    model_workers: int | None = None,
) -> dict[str, Any]:
    """Scale a calibration to the whole run (or a hypothetical volume); a JSON-ready dict.

    Parameters
    ----------
    p, cal
        The planned run and its calibration.
    volume_shape
        Plan a volume of this shape (z, y, x voxels) instead of the configured region of interest,
        with the same block shape, halo, backend and data.
    workers, gpus
        Wall time and cost for this many workers (default: ``cluster.workers``) and, when given, GPUs
        (one worker per GPU).
    cost_per_hour
        Price of one worker hour (and of one GPU hour) in USD; no cost without it.
    model_workers
        With ``cluster.model_resources``: how many of the workers hold them (default 1) and so run
        the model's tasks; a GPU run gives every GPU's worker the resources.
    """
    check_arguments(p, volume_shape=volume_shape, workers=workers, gpus=gpus, cost_per_hour=cost_per_hour,
                    model_workers=model_workers)
    blocks = p.config.blocks
    shape = tuple(int(s) for s in volume_shape) if volume_shape is not None else p.ctx.roi.shape
    workers = workers or p.config.cluster.workers
    t = grid_totals(shape, blocks.shape, blocks.halo)
    s = cal.samples

    seg_rate = rate(s, "segment_seconds", "read_voxels")
    seam_rate = rate(s, "seam_seconds", "forward_face_voxels")
    stored_itemsize = _stored_itemsize(p)
    write_rate = rate(s, "write_seconds", "core_voxels")
    labels_rate = rate(s, "labels_bytes", "core_voxels")[0]
    faces_rate = rate(s, "faces_bytes", "face_voxels")[0]
    edges_rate = rate(s, "edges_bytes", "forward_face_voxels")[0]
    nedges_rate = rate(s, "edges", "forward_face_voxels")[0]
    out_rate = rate(s, "output_bytes", "core_voxels")[0]
    model_rate = rate(s, "model_task_seconds", "read_voxels")
    limited = bool(p.ctx.model_resources)

    def task_seconds(k: int) -> float:
        return seg_rate[k] * t.read_voxels + seam_rate[k] * t.forward_face_voxels + write_rate[k] * t.core_voxels

    total, low, high = task_seconds(0), task_seconds(1), task_seconds(2)
    runs = []
    for unit, count in (("workers", workers), ("gpus", gpus)):
        if count is None:
            continue
        run: dict[str, Any] = {"unit": unit, "count": count}
        model = (model_workers or 1) if limited and unit == "workers" else None  # a GPU's worker holds them
        if model is not None:
            run["model_workers"] = model
        for k, (suffix, seconds) in enumerate((("", total), ("_low", low), ("_high", high))):
            run[f"wall_seconds{suffix}"] = wall_seconds(cal.startup_seconds, seconds, count, t.blocks,
                                                        model_rate[k] * t.read_voxels, model)
            if cost_per_hour is not None:
                run[f"cost_usd{suffix}"] = count * run[f"wall_seconds{suffix}"] / 3600 * cost_per_hour
        runs.append(run)

    scratch = {
        "labels": labels_rate * t.core_voxels,
        "faces": faces_rate * t.face_voxels,
        "edges": edges_rate * t.forward_face_voxels,
    }
    scratch["total"] = sum(scratch.values())  # everything stage 1 and 2 ever write (with keep_scratch)
    # Each face is deleted by the one seam task that reads it, which runs once its forward
    # neighbours are segmented: in the streamed order (tasks/driver/graph.py) the faces of about one z-slab
    # of blocks (plus a row and the blocks in flight) wait at any time.
    gz, gy, gx = t.grid_zyx
    pending = min(t.blocks, gy * gx + gx + 1 + workers * p.config.cluster.threads_per_worker)
    scratch["peak"] = scratch["labels"] + scratch["edges"] + scratch["faces"] * pending / max(t.blocks, 1)
    # After a complete run only the core labels, the scored edges and the union-find result stay
    # (pipeline/io/scratch.py); the union-find tables are a few bytes per edge and not counted.
    scratch["kept"] = scratch["labels"] + scratch["edges"]
    itemsize = p.input.dtype.itemsize
    readback = None  # write.affinities: stage 1 reads the stored write box and fragment context back
    if cal.affinities_bytes_per_voxel is not None:
        v = readback_voxels(shape, blocks.shape, int(p.ctx.backend_params["fragment_context"]), p.config.write.chunk_shape)
        readback = {"voxels": v, "overhead": v / t.core_voxels, "bytes": v * cal.affinities_bytes_per_voxel}
    per_block = {
        "segment": stats([x.segment_seconds for x in s]),
        "seams_standin": stats([x.seam_seconds for x in s]),
        "write_standin": stats([x.write_seconds for x in s]),
    }
    return {
        "config": p.config.to_json(),
        "backend": p.config.backend.name,
        "device": cal.device,
        "volume": {
            "shape_zyx": list(shape),
            "voxels": t.core_voxels,
            "hypothetical": volume_shape is not None,
            "sample_roi_shape_zyx": list(p.ctx.roi.shape),
            "dtype": p.input.dtype.name,
            "voxel_size_nm": list(p.input.voxel_size_nm),
        },
        "blocks": {"count": t.blocks, "grid_zyx": list(t.grid_zyx), "shape_zyx": list(blocks.shape),
                   "halo_zyx": list(blocks.halo)},
        "read": {"voxels": t.read_voxels, "overhead": t.read_voxels / t.core_voxels,
                 "bytes": t.read_voxels * itemsize,
                 **({} if stored_itemsize is None else {"affinities_bytes": 3 * stored_itemsize * t.read_voxels}),
                 **({} if readback is None else {"affinities_read_back": readback})},
        "scratch_bytes": scratch,
        "candidate_edges": nedges_rate * t.forward_face_voxels,
        "output_bytes": out_rate * t.core_voxels,
        "output_encoding": p.config.write.encoding,
        **({} if cal.affinities_bytes_per_voxel is None else
           {"affinities_bytes": cal.affinities_bytes_per_voxel * t.core_voxels}),
        "seconds_per_block": per_block,
        "startup_seconds": cal.startup_seconds,
        "task_seconds": {
            "segment": seg_rate[0] * t.read_voxels,
            "seams_standin": seam_rate[0] * t.forward_face_voxels,
            "write_standin": write_rate[0] * t.core_voxels,
            **({"model_tasks": model_rate[0] * t.read_voxels} if limited else {}),
            "total": total,
            "low": low,
            "high": high,
        },
        "runs": runs,
        "cost_per_hour_usd": cost_per_hour,
        "calibration": {"blocks": [x.block for x in s], "samples": [asdict(x) for x in s]},
        "not_estimated": [
            *(["2-seams' agglomeration of each 2 x 2 x 2 group's hood (blockwise scope: stage 2 took 0.06 CPU-s "
               "per 128³ block of mirrored FIB-25, against 0.01 with global scope; docs/agglomeration.md)"]
              if p.ctx.boundary and not p.ctx.global_agglomeration else []),
            *([f"cluster.model_resources {_resources(p.ctx.model_resources)}: the time the other workers wait for "
               "the model's output (the workers' wall time is the larger of the model's tasks on the --model-workers "
               "and all tasks on all workers)"] if limited else []),
            "3-unionfind (its work and memory grow with candidate_edges)",
            "post-processing (pyramid, meshes, segment properties, seam audit), when configured",
            "stragglers, retries, and scheduler overhead per task",
            "queueing for cluster nodes, and image or model download on fresh workers",
        ],
    }


# ------------------------------------------------------------------------------------------------
# command line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of ``emseg plan``."""
    parser.add_argument("config", help="YAML run configuration (see configs/)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key with a YAML value, e.g. --set blocks.shape=[64,64,64] or "
                             "--set agglomeration.small=null (null turns an optional part off; repeatable; every "
                             "key and its default: the README's config table)")
    parser.add_argument("--calibrate", type=int, default=3, metavar="N",
                        help="segment N blocks spread over the region of interest to measure (default 3)")
    parser.add_argument("--workers", type=int, metavar="W", help="wall time for W workers (default cluster.workers)")
    parser.add_argument("--gpus", type=int, metavar="G", help="also the wall time for G GPUs (one worker each)")
    parser.add_argument("--model-workers", type=int, metavar="M",
                        help="with cluster.model_resources: how many of the W workers hold them and run the model "
                             "(1 to W; default 1, as on a local cluster, whose first worker holds them); the --gpus "
                             "row gives every GPU's worker the resources")
    parser.add_argument("--cost-per-hour", type=float, metavar="USD", help="price of one worker or GPU hour")
    parser.add_argument("--volume-shape", type=int, nargs=3, metavar=("Z", "Y", "X"),
                        help="plan a hypothetical volume of this shape instead of the region of interest")
    parser.add_argument("--json", metavar="PATH", help="also write the estimate as JSON to PATH")
    parser.add_argument("--calibration-dir", metavar="DIR",
                        help="local directory for the temporary calibration output (default: system temp)")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")


def run(args: argparse.Namespace) -> int:
    """``emseg plan``: calibrate, estimate, print the table, optionally write JSON."""
    import logging

    from emseg.pipeline import config as config_mod
    from emseg.tasks.driver.run import validate

    log = logging.getLogger("emseg")
    if args.calibrate < 1:
        raise ConfigError(f"--calibrate must be at least 1, got {args.calibrate}")
    cfg = config_mod.load(args.config, args.overrides)
    p = validate(cfg)
    check_arguments(p, volume_shape=args.volume_shape, workers=args.workers, gpus=args.gpus,
                    cost_per_hour=args.cost_per_hour, model_workers=args.model_workers)
    n = min(args.calibrate, p.ctx.grid.num_blocks)
    log.info("plan: calibrating on %d of %d block%s with backend %s (in this process, temporary output)",
             n, p.ctx.grid.num_blocks, "" if p.ctx.grid.num_blocks == 1 else "s", cfg.backend.name)
    cal = calibrate(p, n, workdir=args.calibration_dir)
    est = estimate(p, cal, volume_shape=args.volume_shape, workers=args.workers, gpus=args.gpus,
                   cost_per_hour=args.cost_per_hour, model_workers=args.model_workers)
    est["config_path"] = os.fspath(args.config)
    who = [name for name, on in (("GPUs", args.gpus), ("the workers holding cluster.model_resources",
                                                       p.ctx.model_resources)) if on]
    if who and not cal.device.startswith("cuda"):
        log.warning("plan: the calibration ran the model on %s, so the wall times assume %s as fast as it; run "
                    "emseg plan on a machine like the model's workers for their timings", cal.device, " and ".join(who))
    if p.ctx.model_resources and args.model_workers is None and p.config.cluster.address:
        log.warning("plan: --model-workers not given: the wall time assumes 1 worker of the cluster at %s holds "
                    "cluster.model_resources; give the number of such workers (e.g. GPU workers)",
                    p.config.cluster.address)
    print(format_table(est))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(est, f, indent=2)
        print(f"estimate written to {args.json}")
    return 0
