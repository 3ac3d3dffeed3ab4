"""Stage 5, pyramid: further scales of the segmentation (mode) and of the image (average).

Scale ``k`` is computed from scale ``k - 1``, by tasks whose boxes are unions of whole storage
chunks (whole shards when sharded) of scale ``k``, so no two tasks write one object. Where the
geometry allows (unsharded, aligned offsets: :func:`plan_steps`), one task makes several scales from
one read, each from the previous in memory, as igneous does; a task starts when the tasks that wrote
its source box are done. The kernels are :func:`emseg.pipeline.outputs.downsample.downsample_labels` and
``downsample_image`` (tinybrain).

The scales are created in the ``info`` by the driver (:func:`plan_layer`) before any task runs; they
sit beside the base scale in the same precomputed volume, keyed by resolution (``16_16_16``).

The image pyramid never touches the input: :func:`plan_image` makes ``<output>/image``, a
precomputed copy of the input over the region of interest (level-0 tasks copy it box by box, from
any format emseg reads), and its coarser scales are made from that copy like the segmentation's.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass
from typing import Any, Literal

import tensorstore as ts

from emseg.pipeline.io import urls
from emseg.pipeline.outputs.downsample import Scale, downsample_image, downsample_labels, pyramid, source_box, task_shape
from emseg.pipeline.errors import ConfigError
from emseg.pipeline.geometry import Block, BlockGrid, Box
from emseg.pipeline.io.sharding import choose_bits, shard_shape
from emseg.pipeline.io.volume import sharding_spec, ts_message
from emseg.tasks.driver import runtime
from emseg.pipeline import stages

STAGE = stages.PYRAMID
log = logging.getLogger("emseg")

Kind = Literal["image", "segmentation"]


@dataclass(frozen=True)
class PyramidLayer:
    """A precomputed volume and the scales its pyramid has (index 0 = the base, as written)."""

    store: str  # kvstore URL of the volume directory
    kind: Kind
    scales: tuple[Scale, ...]
    task_shapes: tuple[tuple[int, int, int], ...]  # per scale; for the base, the copy tasks' boxes
    #: when set, scale 0 is copied first from this volume (a tensorstore spec as JSON, zero-origin),
    #: whose voxel 0 lies at absolute voxel ``source_origin_zyx`` of scale 0
    source: str | None = None
    source_origin_zyx: tuple[int, int, int] = (0, 0, 0)
    #: the levels one task makes together, ``(first, last)`` each, from one read of level first - 1;
    #: its boxes are the grid of ``last``; empty = one level per task
    steps: tuple[tuple[int, int], ...] = ()

    def level_steps(self) -> tuple[tuple[int, int], ...]:
        return self.steps or tuple((level, level) for level in range(1, len(self.scales)))

    def boxes(self, step: tuple[int, int], block_id: int) -> dict[int, Box]:
        """The boxes task ``block_id`` of ``step`` reads (level first - 1) and writes (first..last)."""
        first, last = step
        out = {last: self.grid(last).block(block_id).write_box}
        for level in range(last, first - 1, -1):
            out[level - 1] = source_box(out[level], self.scales[level].factor_zyx, self.scales[level - 1].box)
        return out

    def step_upstream(self, index: int, block: Block) -> list[int]:
        """Ids of the previous step's tasks whose boxes feed ``block`` of step ``index``."""
        steps = self.level_steps()
        first, last = steps[index]
        if index == 0 and self.source is None:
            return []
        src = self.boxes(steps[index], block.id)[first - 1]
        grid = self.grid(first - 1)
        lo = [(s - r) // t for s, r, t in zip(src.start, grid.roi.start, grid.block_shape)]
        hi = [(e - 1 - r) // t for e, r, t in zip(src.stop, grid.roi.start, grid.block_shape)]
        return [grid.block_id((z, y, x)) for z in range(lo[0], hi[0] + 1)
                for y in range(lo[1], hi[1] + 1) for x in range(lo[2], hi[2] + 1)]

    def spec(self, level: int) -> dict[str, Any]:
        return {"driver": "neuroglancer_precomputed", "kvstore": urls.kvstore_spec(self.store),
                "scale_metadata": {"key": self.scales[level].key}}

    def grid(self, level: int) -> BlockGrid:
        """The task grid of ``level`` in that scale's absolute voxel coordinates."""
        return BlockGrid(self.scales[level].box, self.task_shapes[level], (0, 0, 0))


def read_info(store: str) -> dict[str, Any]:
    kv = urls.open_kvstore(store)
    got = kv.read("info").result()
    if got.state != "value":
        raise ConfigError(f"no precomputed info at {store}; the pyramid needs a precomputed volume")
    return json.loads(got.value)


def base_scale(info: dict[str, Any]) -> Scale:
    s = info["scales"][0]
    return Scale(tuple(s["size"][::-1]), tuple(s["voxel_offset"][::-1]), tuple(float(v) for v in s["resolution"][::-1]),
                 tuple(s["chunk_sizes"][0][::-1]))  # type: ignore[arg-type]


def plan_image(source_spec: dict[str, Any], roi_zyx: Any, origin_zyx: tuple[int, int, int], voxel_size_nm: Any,
               dtype: str, store: str, levels: int | None, *, chunk_zyx: tuple[int, int, int] = (64, 64, 64),
               block_voxels: int = 64**3) -> PyramidLayer:
    """Create ``store`` as a precomputed image covering ``roi_zyx`` of the input, and plan its pyramid.

    ``source_spec`` is the input's tensorstore spec; ``roi_zyx`` the region in zero-origin input
    voxels; ``origin_zyx`` the absolute voxel of the input's voxel 0 (its offset). The copy has raw
    encoding, ``chunk_zyx`` chunks and the input's dtype (float64 is stored as float32, which
    precomputed can hold). Raises :class:`ConfigError` for a dtype precomputed cannot store.
    """
    from emseg.pipeline.io.volume import create_precomputed

    stored = "float32" if dtype == "float64" else dtype
    if stored not in ("uint8", "int8", "uint16", "int16", "uint32", "int32", "uint64", "float32"):
        raise ConfigError(f"the image pyramid cannot store dtype {dtype} as precomputed; set "
                          "postprocess.image_pyramid: false")
    offset = tuple(o + s for o, s in zip(origin_zyx, roi_zyx.start))
    create_precomputed(store, layer_type="image", dtype=stored, shape_zyx=roi_zyx.shape, voxel_size_nm=voxel_size_nm,
                       offset_zyx=offset, chunk_zyx=tuple(min(c, s) for c, s in zip(chunk_zyx, roi_zyx.shape)),
                       encoding="raw")
    spec = {k: v for k, v in source_spec.items() if k != "context"}
    return plan_layer(store, "image", levels, block_voxels=block_voxels,
                      source=json.dumps(spec), source_origin_zyx=tuple(origin_zyx))  # type: ignore[arg-type]


def plan_layer(store: str, kind: Kind, levels: int | None, *, block_voxels: int = 64**3, source: str | None = None,
               source_origin_zyx: tuple[int, int, int] = (0, 0, 0), read_voxels: int = 256**3) -> PyramidLayer:
    """Create (or reopen) the coarser scales of the volume at ``store`` and describe the tasks.

    The new scales copy the base scale's encoding; when the base is sharded, each coarser scale is
    sharded too, with shards that fit inside one task box. A task writes about ``block_voxels``
    voxels (whole chunks) and reads eight times as many.
    """
    info = read_info(store)
    base = info["scales"][0]
    scales = pyramid(base_scale(info), levels)
    shapes: list[tuple[int, int, int]] = [task_shape(scales[0], block_voxels) if source else scales[0].chunk_zyx]
    for scale in scales[1:]:
        shape = task_shape(scale, block_voxels)
        meta: dict[str, Any] = {
            "key": scale.key,
            "size": list(scale.shape_zyx[::-1]),
            "voxel_offset": list(scale.offset_zyx[::-1]),
            "resolution": list(scale.voxel_size_nm[::-1]),
            "chunk_size": list(scale.chunk_zyx[::-1]),
            "encoding": base["encoding"],
        }
        if "compressed_segmentation_block_size" in base:
            meta["compressed_segmentation_block_size"] = base["compressed_segmentation_block_size"]
        if "jpeg_quality" in base:
            meta["jpeg_quality"] = base["jpeg_quality"]
        if "sharding" in base:
            grid = [-(-s // c) for s, c in zip(scale.shape_zyx, scale.chunk_zyx)]
            block_chunks = [t // c for t, c in zip(shape, scale.chunk_zyx)]
            bits = choose_bits(grid, block_chunks)
            meta["sharding"] = sharding_spec(*bits)
            shard = shard_shape(grid, scale.chunk_zyx, bits[0], bits[1])
            # Tasks cover whole shards: grow the task box to a multiple of the shard.
            shape = tuple(max(t, s) // s * s if t < sz else t for t, s, sz in zip(shape, shard, scale.shape_zyx))
        spec = {"driver": "neuroglancer_precomputed", "kvstore": urls.kvstore_spec(store), "context": urls.CONTEXT,
                "scale_metadata": meta}
        try:
            ts.open(spec, create=True, open=True).result()
        except ValueError as exc:
            text = ts_message(exc)
            raise ConfigError(
                f"cannot add scale {scale.key} to {store}: {text}; a scale with that resolution and other "
                "metadata exists — rerun with --restart (segmentation) or remove the extra scales (image)"
            ) from None
        shapes.append(shape)  # type: ignore[arg-type]
    steps = () if "sharding" in base else plan_steps(scales, shapes, read_voxels)
    return PyramidLayer(store, kind, tuple(scales), tuple(shapes), source, source_origin_zyx, steps)


def plan_steps(scales: list[Scale], shapes: list[tuple[int, int, int]], read_voxels: int,
               min_tasks: int = 4) -> tuple[tuple[int, int], ...]:
    """Group levels so that one task makes several from one read (as igneous's DownsampleTask does):
    a group grows while its task reads at most ``read_voxels``, it keeps ``min_tasks`` tasks (a small
    volume is faster split among workers than read once), and every finer level it writes stays
    chunk-aligned (its voxel offset a multiple of the next factor, so that a coarse box maps onto
    whole chunks). Unsharded volumes only: sharded scales keep one level per task.

    >>> s = pyramid(Scale((512, 512, 512), (0, 0, 0), (8., 8., 8.), (64, 64, 64)), None)
    >>> plan_steps(s, [(64, 64, 64)] * 4, 256**3)
    ((1, 2), (3, 3))
    >>> plan_steps(s, [(64, 64, 64)] * 4, 128**3)
    ((1, 1), (2, 2), (3, 3))
    """
    steps: list[tuple[int, int]] = []
    level = 1
    while level < len(scales):
        last = level
        while last + 1 < len(scales):
            nxt = last + 1
            f = [1, 1, 1]
            for k in range(level, nxt + 1):
                f = [a * b for a, b in zip(f, scales[k].factor_zyx)]
            aligned = all(o % k == 0 for o, k in zip(scales[last].offset_zyx, scales[nxt].factor_zyx))
            tasks = math.prod(-(-n // t) for n, t in zip(scales[nxt].shape_zyx, shapes[nxt]))
            if not aligned or math.prod(t * k for t, k in zip(shapes[nxt], f)) > read_voxels or tasks < min_tasks:
                break
            last = nxt
        steps.append((level, last))
        level = last + 1
    return tuple(steps)


def copy_task(layer: PyramidLayer, block_id: int, run_id: str) -> dict[str, Any]:
    """Copy box ``block_id`` of scale 0 from the layer's source (the input) into the layer."""
    t0 = time.perf_counter()
    base = layer.scales[0]
    target = layer.grid(0).block(block_id).write_box
    src = runtime.volume(layer.source, False, run_id)
    data = src.read(target.shift([-o for o in layer.source_origin_zyx]))
    dst = runtime.volume(json.dumps(dict(layer.spec(0), store_data_equal_to_fill_value=True)), True, run_id)
    dst.write(target.shift([-o for o in base.offset_zyx]), data.astype(dst.dtype, copy=False))
    return {"seconds": time.perf_counter() - t0, "voxels": int(target.size)}


def downsample_task(layer: PyramidLayer, step: tuple[int, int], block_id: int, run_id: str, *upstream: Any) -> dict[str, Any]:
    """Write box ``block_id`` of the levels ``step = (first, last)`` from one read of level first - 1,
    each level from the one before it in memory."""
    t0 = time.perf_counter()
    first, last = step
    boxes = layer.boxes(step, block_id)
    below = layer.scales[first - 1]
    src = runtime.volume(json.dumps(layer.spec(first - 1)), False, run_id)
    data = src.read(boxes[first - 1].shift([-o for o in below.offset_zyx]))
    voxels = int(data.size)
    kernel = downsample_labels if layer.kind == "segmentation" else downsample_image
    for level in range(first, last + 1):
        scale = layer.scales[level]
        data = kernel(data, boxes[level], boxes[level - 1], scale.factor_zyx)
        spec = dict(layer.spec(level), store_data_equal_to_fill_value=True)
        runtime.volume(json.dumps(spec), True, run_id).write(boxes[level].shift([-o for o in scale.offset_zyx]), data)
    return {"seconds": time.perf_counter() - t0, "voxels": voxels}
