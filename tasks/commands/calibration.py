"""The calibration of ``emseg plan`` (:mod:`emseg.tasks.commands.estimate`): a few blocks segmented for real.

The calibration runs stage 1 (:func:`emseg.tasks.stage1_segment.segment_alone`, the configured
backend, for real; with ``write.affinities`` the block's ``1-predict`` too) on ``N`` blocks spread over
the region of interest, in this process, into a temporary output that is deleted afterwards: the
configured output is never opened. The first calibration block is run once more beforehand, untimed,
to warm up (model loading, store opening): that time is reported as the per-worker startup. For each
block it measures

- the seconds of stage 1 (read the read box, segment, keep labels and faces in scratch), and of
  them those of the tasks that run the model (``1-predict``'s with ``write.affinities``, else all),
  which ``cluster.model_resources`` keeps to some workers;
- the bytes of its scratch objects (core labels and overlap faces);
- a stand-in for stage 2, since the neighbouring blocks are not segmented: each forward overlap read
  twice and matched against itself, the edges stored as stage 2 stores them (its time, and the
  bytes of the edges);
- a stand-in for stage 4: the core labels read back, mapped through a lookup table and written with
  the output's encoding and chunks (its time, and the bytes it stores).

This module imports nothing heavy until it runs.
"""

from __future__ import annotations

import os
import sys
import time
from typing import TYPE_CHECKING, Any

from emseg.pipeline.costs import BlockSample, Calibration, calibration_blocks
from emseg.pipeline.errors import ConfigError
from emseg.pipeline.io import kvstore

if TYPE_CHECKING:
    from emseg.tasks.driver.context import ValidatedRun


def _device(backend_params: dict[str, Any]) -> str:
    torch = sys.modules.get("torch")
    wanted = str(backend_params.get("device", "auto"))
    if torch is not None and wanted != "cpu" and torch.cuda.is_available():
        return f"cuda ({torch.cuda.get_device_name(0)})"
    return f"cpu ({os.cpu_count()} cores)"


def calibrate(p: ValidatedRun, n: int = 3, *, workdir: str | None = None) -> Calibration:
    """Segment ``n`` blocks of a planned run for real, into a temporary output, and measure them.

    Parameters
    ----------
    p
        A validated run (:func:`emseg.tasks.driver.run.plan`); its output is not touched.
    n
        How many blocks (spread over the region of interest, see :func:`calibration_blocks`).
    workdir
        Where the temporary output goes (a local directory; the system's temp directory by default).
        It is removed afterwards.
    """
    import dataclasses
    import shutil
    import tempfile

    import numpy as np

    from emseg.pipeline.io import urls
    from emseg.pipeline.stitching.seams import Edges
    from emseg.pipeline.io.volume import create_channels, create_precomputed
    from emseg.tasks.driver import runtime
    from emseg.tasks.driver.context import new_run_id
    from emseg.tasks.stage1_segment import face_key, segment_alone
    from emseg.tasks.stage2_seams import match_seam
    from emseg.tasks.stage4_relabel import segmentation_spec

    if workdir is not None and not os.path.isdir(workdir):
        raise ConfigError(f"--calibration-dir {workdir!r} is not a directory; create it or choose another")
    tmp = tempfile.mkdtemp(prefix="emseg-plan-", dir=workdir)
    try:
        out = urls.store_url(tmp)
        # write.affinities: into the temporary output too (its time counts, never the real output)
        affs = urls.join(out, "affinities") if p.ctx.affinities is not None else None
        ctx = dataclasses.replace(p.ctx, output=out, segmentation=urls.join(out, "segmentation"),
                                  run_id=new_run_id(), affinities=affs)
        if affs is not None:
            create_channels(affs, dtype=str(ctx.affinities_dtype), channels=3, shape_zyx=ctx.roi.shape,
                            chunk_zyx=p.config.write.chunk_shape, voxel_size_nm=p.input.voxel_size_nm)
        grid = ctx.grid
        ids = calibration_blocks(grid, n)
        seg = create_precomputed(
            ctx.segmentation, layer_type="segmentation", dtype="uint64", shape_zyx=ctx.roi.shape,
            voxel_size_nm=p.input.voxel_size_nm, chunk_zyx=p.config.write.chunk_shape,
            encoding=p.config.write.encoding,
        )
        del seg
        writer = runtime.volume(segmentation_spec(ctx), True, ctx.run_id)
        seg_kv = urls.open_kvstore(ctx.segmentation)
        scratch = runtime.scratch(ctx.output)
        rule = ctx.rule

        t0 = time.perf_counter()
        runtime.backend(ctx.backend_key)
        segment_alone(ctx, ids[0])  # warm-up: model load, store open; not counted per block
        warm = time.perf_counter() - t0

        cal = Calibration(device="", startup_seconds=0.0)
        written = kvstore.bytes_under(seg_kv, "", skip=("info",))
        stored = 0  # write.affinities: bytes the write boxes' affinities took
        for bid in ids:
            block = grid.block(bid)
            info, nbytes = segment_alone(ctx, bid)
            stored += nbytes
            labels_bytes = scratch.object_bytes(f"labels/{bid}")
            faces_bytes = scratch.bytes_under(f"faces/{bid}/")
            face_voxels = sum((block.read_box & nb.read_box).size for _, _, nb in grid.neighbours(block))

            # stage 2 stand-in: read each forward overlap twice (for its two sides), match it against
            # itself, store the scored edges as one blob
            t = time.perf_counter()
            fwd_voxels, parts = 0, []
            for axis, nb in grid.forward_neighbours(block):
                mine = scratch.get_arrays(face_key(bid, axis, +1))["labels"]
                theirs = scratch.get_arrays(face_key(bid, axis, +1))["labels"]
                fwd_voxels += mine.size
                parts.append(match_seam(bid, nb.id, mine, theirs, rule))
            edges = Edges.concat(parts)
            scratch.put_arrays(f"edges/{bid}", {"a": edges.a, "b": edges.b, "count": edges.count,
                                                "iou": edges.iou, "merge": edges.merge})
            seam_s = time.perf_counter() - t
            n_edges, edges_bytes = len(edges), scratch.object_bytes(f"edges/{bid}") if parts else 0

            # stage 4 stand-in: read the core labels, map them through a lookup table, write them
            # with the output's encoding and chunks
            t = time.perf_counter()
            core = scratch.get_arrays(f"labels/{bid}")["core"]
            lut = np.arange(int(core.max(initial=0)) + 1, dtype=np.uint64)
            writer.write(block.write_box.shift([-s for s in ctx.roi.start]), lut[core])
            write_s = time.perf_counter() - t
            now = kvstore.bytes_under(seg_kv, "", skip=("info",))
            out_bytes, written = now - written, now

            cal.samples.append(BlockSample(
                block=bid, core_voxels=block.write_box.size, read_voxels=block.read_box.size,
                face_voxels=face_voxels, forward_face_voxels=fwd_voxels,
                segment_seconds=float(info["seconds"]), labels_bytes=labels_bytes, faces_bytes=faces_bytes,
                seam_seconds=seam_s, edges=n_edges, edges_bytes=edges_bytes,
                write_seconds=write_s, output_bytes=out_bytes,
                model_task_seconds=float(info.get("predict_seconds", info["seconds"])),
            ))
        if affs is not None:
            cal.affinities_bytes_per_voxel = stored / sum(grid.block(b).write_box.size for b in ids)
        first = cal.samples[0]
        cal.startup_seconds = max(0.0, warm - first.segment_seconds)
        cal.device = _device(ctx.backend_params)
        return cal
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
