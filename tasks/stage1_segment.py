"""Stage 1, segment: run the backend on each block's read box and keep its labels in scratch.

Per block it stores the core labels (renumbered, core labels first) and, for each face neighbour,
its labels on the overlap of the two read boxes, which stage 2 matches.

With ``neighbour_prompts`` (a backend option, sam2), blocks are coloured like a checkerboard by the
parity of ``i + j + k``: even blocks run first and alone; an odd block runs after its face
neighbours (all even) and gets their labels in the shared overlaps as ``prior``, read from the faces
they stored. The task graph (:mod:`emseg.tasks.driver.graph`) holds the dependencies.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from emseg.pipeline.io import intensity
from emseg.pipeline.geometry import Block
from emseg.pipeline.stitching.labels import renumber_core_first
from emseg.pipeline.errors import VolumeReadError
from emseg.pipeline.io.volume import read_error, ts_message
from emseg.tasks.driver import runtime
from emseg.tasks.driver.context import RunContext
from emseg.pipeline import stages

STAGE = stages.SEGMENT


def face_key(block_id: int, axis: int, direction: int) -> str:
    return f"faces/{block_id}/{'zyx'[axis]}{'+' if direction > 0 else '-'}"


def read_block(ctx: RunContext, block: Block) -> np.ndarray:
    """The input on the block's read box; a missing or unreadable chunk raises with its key."""
    try:
        return runtime.volume(ctx.input_key).read(block.read_box)
    except ValueError as exc:  # a missing chunk (fill_missing: false) or an unreadable one
        raise read_error(str(ctx.input_spec.get("kvstore", "")), exc) from None


def segment_block(ctx: RunContext, block_id: int, *upstream: Any) -> dict[str, Any]:
    if ctx.boundary:
        return fragment_block(ctx, block_id)
    t0 = time.perf_counter()
    grid = ctx.grid
    block = grid.block(block_id)
    raw = read_block(ctx, block)
    # NaN is no data, and input_value_range maps to 0..1: the same for every backend (emseg.pipeline.io.intensity).
    backend = runtime.backend(ctx.backend_key)
    fill = backend.nodata_value() if hasattr(backend, "nodata_value") else None
    image, nodata = intensity.prepare(raw, ctx.value_range, fill)
    prior = neighbour_prior(ctx, block) if ctx.neighbour_prompts and sum(block.index) % 2 == 1 else None
    if image is None:  # nothing but no-data voxels
        image, labels = raw, np.zeros(raw.shape, np.uint32)
    else:
        kwargs: dict[str, Any] = {} if prior is None else {"prior": prior}
        if nodata is not None and getattr(backend, "takes_nodata", False):
            kwargs["nodata"] = nodata
        labels = intensity.clear_nodata(backend.segment(image, **kwargs), nodata)
    if labels.shape != image.shape:
        raise RuntimeError(
            f"backend {ctx.backend_name} returned labels of shape {labels.shape} for an image of {image.shape}"
        )
    if not np.issubdtype(labels.dtype, np.integer):
        raise RuntimeError(f"backend {ctx.backend_name} returned {labels.dtype} labels; it must return integers")
    core = block.write_box.slices(block.read_box.start)
    neighbours = list(grid.neighbours(block))
    overlaps = [block.read_box & nb.read_box for _, _, nb in neighbours]
    core_labels, faces, n_core, n_total = renumber_core_first(
        labels[core], [labels[o.slices(block.read_box.start)] for o in overlaps]
    )
    store = runtime.scratch(ctx.output)
    for (axis, direction, _), face in zip(neighbours, faces):
        store.put_arrays(face_key(block_id, axis, direction), {"labels": face})
    store.put_arrays(f"labels/{block_id}", {"core": core_labels, "n": np.array([n_core, n_total], np.int64)})
    info = {"n_core": n_core, "n_total": n_total, "seconds": time.perf_counter() - t0}
    if prior is not None:
        info["neighbour_labels"] = int(len(np.unique(prior)) - (prior.min() == 0))
    store.mark_done(STAGE, block_id, info)
    return info


def fragment_block(ctx: RunContext, block_id: int) -> dict[str, Any]:
    """Stage 1 of a boundary backend: affinities, fragments and the region graph of one block.

    ::

        read box   ┌────────────────────┐   the model sees the whole read box (core + halo >= context + 1)
                   │  write box ┌────┐  │   fragments (cut with context) and their region graph cover the write box;
                   │            │    │  │   the faces keep the first and last planes of fragments,
                   │            └────┘  │   and on the first plane along each axis the affinities to
                   └────────────────────┘   the voxel before it (in the previous block's core)

    The fragments are cut from the write box grown by the backend's fragment context (within the
    read box) and cropped to the write box (:func:`emseg.pipeline.stitching.agglomeration.block_fragments`).
    The model predicts their affinities here, or with ``write.affinities`` they are read from what
    ``1-predict`` stored (:func:`predict_block`); the done-marker's ``model_seconds`` and
    ``model_cpu_seconds`` time that step (the model, or the read), as they time a stored model's read.

    Scratch: ``labels/<block>`` (fragments, ``n``), ``rag/<block>`` (touching fragments: local ``u``,
    ``v``, affinity ``total`` and ``count`` across their faces; ``out_id``, ``out_n``: fragments on the
    region's faces or next to no data; ``size``: voxels of fragment 1..n; ``face_id``, ``face_n``,
    ``face_side``: the fragments on each face of the write box), ``faces/<block>/<axis><sign>``
    (``labels`` plane, ``continues``: where the plane's fragment goes on across the face; ``affs``
    too on the ``-`` side).
    """
    from emseg.pipeline.stitching.agglomeration import block_fragments, region_graph

    t0, c0 = time.perf_counter(), time.process_time()
    grid = ctx.grid
    block = grid.block(block_id)
    backend = runtime.backend(ctx.backend_key)
    stored = ctx.affinities is not None  # write.affinities: 1-predict stored them, block by block
    image = None  # stored affinities: the image only gives the no-data mask (NaN; 0 in a label volume)
    if not stored or backend.params.model.kind == "labels" or runtime.volume(ctx.input_key).dtype.kind == "f":
        image = read_block(ctx, block)
        if ctx.value_range is not None:  # NaN stays NaN: the backend masks it out as no data
            image = intensity.map_range(image, ctx.value_range)
    core = block.write_box.slices(block.read_box.start)
    # the affinities are needed on the write box and the fragment context around it, not on the
    # whole halo (which is there for the model's own context): the model may skip the rest
    grow = backend.params.fragment_context
    need = tuple(slice(max(0, c.start - grow), min(n, c.stop + grow)) for c, n in zip(core, block.read_box.shape))
    if stored:
        affs = read_affinities(ctx, block, need)
        mask = None if image is None else backend.data_mask(image)
    else:
        affs, mask = backend.affinities(image, block.read_box.start, region=need)
    t_model, c_model = time.perf_counter() - t0, time.process_time() - c0
    core_affs = affs[(slice(None), *core)]
    cut = block_fragments(affs, core, mask, context=grow, **backend.fragment_options())
    frags, n = cut.labels, cut.n
    rag = region_graph(frags, core_affs)
    out_id, out_n = _outside(ctx, block, frags, core, mask)
    store = runtime.scratch(ctx.output)
    for axis, direction, _ in grid.neighbours(block):
        plane = [slice(None)] * 3
        plane[axis] = slice(-1, None) if direction > 0 else slice(0, 1)
        arrays = {"labels": frags[tuple(plane)], "continues": cut.continues[(axis, direction)]}
        if direction < 0:
            arrays["affs"] = core_affs[(axis, *plane)]
        store.put_arrays(face_key(block_id, axis, direction), arrays)
    store.put_arrays(f"rag/{block_id}", {"u": rag.u.astype(np.uint32), "v": rag.v.astype(np.uint32),
                                         "total": rag.total.astype(np.float32), "count": rag.count.astype(np.int32),
                                         "out_id": out_id, "out_n": out_n,
                                         "size": np.bincount(frags.ravel(), minlength=n + 1)[1:].astype(np.int64),
                                         **_face_fragments(frags)})
    store.put_arrays(f"labels/{block_id}", {"core": frags, "n": np.array([n, n], np.int64)})
    info = {"n_core": n, "n_total": n, "model_seconds": t_model, "model_cpu_seconds": c_model,
            "seconds": time.perf_counter() - t0, "cpu_seconds": time.process_time() - c0}
    store.mark_done(STAGE, block_id, info)
    return info


def predict_block(ctx: RunContext, block_id: int, *upstream: Any) -> dict[str, Any]:
    """``1-predict`` (with ``write.affinities``): the model's affinities on the block's write box,
    into ``<output>/affinities``.

    The model sees the whole read box (its context) but classifies only the write box. Stage 1 then
    reads each block's write box and fragment context from the store (:func:`read_affinities`), so
    the context that neighbouring blocks share is predicted once rather than by each of them.

    The stored affinities are the whole volume's everywhere (the halo covers the model's context +
    1). Without ``write.affinities`` a block predicts its fragment context from its own read box,
    which holds the model's whole context there only when ``blocks.halo`` is at least
    ``fragment_context`` + context + 1: so with float32 and a halo of at least ``fragment_context``
    (the forest's context + 1 is) a run gives exactly what a one-pass run with the wider halo gives,
    and with the usual halo (context + 1) its fragments near block faces can differ slightly from a
    one-pass run's (they depend less on where the blocks were cut). With uint8 the fragments are
    cut from the stored values, as a later ``model.kind: stored`` run cuts them.
    """
    t0, c0 = time.perf_counter(), time.process_time()
    block = ctx.grid.block(block_id)
    image = read_block(ctx, block)
    if ctx.value_range is not None:
        image = intensity.map_range(image, ctx.value_range)
    core = block.write_box.slices(block.read_box.start)
    affs, _ = runtime.backend(ctx.backend_key).affinities(image, block.read_box.start, region=core)
    _write_affinities(ctx, block, affs[(slice(None), *core)])
    info = {"voxels": block.write_box.size, "seconds": time.perf_counter() - t0, "cpu_seconds": time.process_time() - c0}
    runtime.scratch(ctx.output).mark_done(stages.PREDICT, block_id, info)
    return info


def segment_alone(ctx: RunContext, block_id: int) -> tuple[dict[str, Any], int]:
    """Stage 1 of one block without its neighbours, for ``emseg plan``'s calibration: the done
    info (with ``write.affinities``, ``seconds`` includes ``1-predict``'s, which ``predict_seconds``
    gives) and the bytes its write box's stored affinities took (0 without). The window's other
    blocks are not predicted: stage 1 reads zeros around the write box, and a block pays for its own
    write box only."""
    if ctx.affinities is None:
        return segment_block(ctx, block_id), 0
    import tensorstore as ts

    from emseg.pipeline.io import kvstore, urls
    from emseg.pipeline.io.volume import spec_for

    box = ctx.grid.block(block_id).read_box.shift([-s for s in ctx.roi.start])
    zeros = ts.open(dict(spec_for("zarr://" + ctx.affinities), store_data_equal_to_fill_value=True), write=True).result()
    zeros[(slice(None), *box.slices())].write(0).result()  # chunks of zeros, not missing ones
    kv = urls.open_kvstore(ctx.affinities)
    before = kvstore.bytes_under(kv, "", skip=(".zarray", ".zattrs"))
    spent = predict_block(ctx, block_id)["seconds"]
    nbytes = kvstore.bytes_under(kv, "", skip=(".zarray", ".zattrs")) - before
    info = segment_block(ctx, block_id)
    return dict(info, seconds=info["seconds"] + spent, predict_seconds=spent), nbytes


def read_affinities(ctx: RunContext, block: Block, need: tuple[slice, ...]) -> np.ndarray:
    """The stored affinities (``write.affinities``, written by :func:`predict_block`) on ``need``
    (slices of the block's read box) as (3, z, y, x) float32 over the read box, 0 outside ``need``;
    uint8 as ``value / 255``, as :class:`emseg.pipeline.backends.boundary.stored.StoredAffinities`
    reads them."""
    box = block.read_box
    out = np.zeros((3, *box.shape), np.float32)
    src = tuple(slice(s - r + n.start, s - r + n.stop) for s, r, n in zip(box.start, ctx.roi.start, need))
    try:
        data = runtime.channels(ctx.affinities, ctx.run_id).array[(slice(0, 3), *src)].read().result()
    except ValueError as exc:  # a missing chunk: the store lost what 1-predict had marked done
        raise VolumeReadError(f"the stored affinities {ctx.affinities} lack what block {block.id} reads, although "
                              f"1-predict marked it done ({ts_message(exc)}); rerun with --restart") from None
    view = out[(slice(None), *need)]
    if data.dtype == np.uint8:
        np.divide(data, np.float32(255.0), out=view, casting="unsafe")
    else:
        view[...] = data
    return out


def _write_affinities(ctx: RunContext, block: Block, core_affs: np.ndarray) -> None:
    """The write box's affinities into ``<output>/affinities`` (``write.affinities``): uint8 as
    ``rint(255 * a)``, float32 as they are. Write boxes are whole chunks of it, so no two blocks
    write one chunk."""
    if ctx.affinities_dtype == "uint8":
        data = np.rint(np.clip(core_affs, 0.0, 1.0) * np.float32(255)).astype(np.uint8)
    else:
        data = core_affs.astype(np.float32, copy=False)
    out = runtime.channels(ctx.affinities, ctx.run_id).array
    out[(slice(None), *block.write_box.slices(ctx.roi.start))].write(data).result()


def _outside(ctx: RunContext, block: Block, frags: np.ndarray, core: tuple[slice, ...],
             mask: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """The block's fragments that touch the region of interest's faces or voxels without data, with
    their face counts (:func:`emseg.pipeline.stitching.inclusions.outside_faces`): what the
    ``agglomeration.enclosed`` rules count as "outside"."""
    from emseg.pipeline.stitching.inclusions import outside_faces

    inner = {(axis, direction) for axis, direction, _ in ctx.grid.neighbours(block)}
    open_faces = [(a, d) for a in range(3) for d in (-1, 1) if (a, d) not in inner]
    beyond = {}
    if mask is not None:  # the voxels just across an inner face lie in the read box (halo >= 1)
        for axis, direction in inner:
            plane = list(core)
            at = core[axis].start - 1 if direction < 0 else core[axis].stop
            plane[axis] = slice(at, at + 1)
            beyond[(axis, direction)] = ~mask[tuple(plane)]
    return outside_faces(frags, open_faces, beyond)


def _face_fragments(frags: np.ndarray) -> dict[str, np.ndarray]:
    """The fragments on each of the write box's six faces, with their face voxels: ``face_id``,
    ``face_n`` and ``face_side`` (``2 * axis`` for the first plane along ``axis``, ``2 * axis + 1`` for
    the last). Blockwise agglomeration's enclosed and small rules treat those on a face that looks out
    of a group's hood (``BlockGrid.hood``) as reaching beyond what the hood shows."""
    ids, counts, sides = [], [], []
    for axis in range(3):
        for side, index in ((2 * axis, 0), (2 * axis + 1, frags.shape[axis] - 1)):
            plane = np.take(frags, index, axis=axis)
            i, c = np.unique(plane[plane > 0], return_counts=True)
            ids.append(i)
            counts.append(c)
            sides.append(np.full(len(i), side, np.int8))
    return {"face_id": np.concatenate(ids).astype(np.uint32), "face_n": np.concatenate(counts).astype(np.int64),
            "face_side": np.concatenate(sides)}


def neighbour_prior(ctx: RunContext, block: Block) -> np.ndarray:
    """The finished face neighbours' labels on this block's read box (0 where none is known).

    Each neighbour stored its labels on the overlap of the two read boxes in stage 1; they are made
    distinct across neighbours by an offset. Where two neighbours' overlaps meet (along the block's
    edges), the first neighbour's labels are kept.
    """
    store = runtime.scratch(ctx.output)
    box = block.read_box
    prior = np.zeros(box.shape, np.uint64)
    offset = 0
    for axis, direction, nb in ctx.grid.neighbours(block):
        key = face_key(nb.id, axis, -direction)
        if store.done_info(STAGE, nb.id) is None:
            raise RuntimeError(f"block {block.id} takes prompts from block {nb.id}, which has no stage-1 result yet")
        face = store.get_arrays(key)["labels"].astype(np.uint64)
        where = (box & nb.read_box).slices(box.start)
        view = prior[where]
        fill = (view == 0) & (face > 0)
        view[fill] = face[fill] + np.uint64(offset)
        offset += int(face.max(initial=0))
    return prior
