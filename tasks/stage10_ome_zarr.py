"""Stage 10, OME-Zarr: the segmentation and its pyramid as an OME-NGFF label image, beside the
precomputed one, for napari, webknossos and the OME tools (``postprocess.ome_zarr: "0.4"`` or ``"0.5"``).

``<output>/segmentation.ome.zarr`` is one multiscale group: arrays ``0, 1, ...`` (the precomputed
scales, z, y, x, uint64, the same chunk shape) and, in the group's attributes, ``multiscales`` (axes
z, y, x in nanometres; per scale a ``scale`` of its voxel size and a ``translation`` of its voxel
offset times its voxel size, so that a reader's offset = translation / scale is the precomputed
``voxel_offset`` exactly, as emseg's own NGFF reader computes it) and ``image-label`` (the
group is a label image: napari opens it as a labels layer). NGFF 0.4 is zarr v2 (``.zgroup``,
``.zattrs``, blosc-zstd arrays); 0.5 is zarr v3 (``zarr.json``, attributes under ``ome``,
``dimension_names``). Specification: https://ngff.openmicroscopy.org/0.4 and /0.5.

Tasks copy chunk-aligned boxes of each precomputed scale once that scale is written (stage 5), so no
two tasks write one chunk; the group metadata is written by the driver first.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from emseg.pipeline.io import urls
from emseg.pipeline.outputs.downsample import Scale, task_shape
from emseg.pipeline.geometry import BlockGrid
from emseg.tasks.driver import runtime
from emseg.pipeline import stages
from emseg.pipeline.io import kvstore

STAGE = stages.OME_ZARR
NAME = "segmentation.ome.zarr"

Version = Literal["0.4", "0.5"]


@dataclass(frozen=True)
class OmeZarrPlan:
    segmentation: str  # store URL of the precomputed segmentation
    store: str  # store URL of the OME-Zarr group
    version: Version
    scales: tuple[Scale, ...]
    task_shapes: tuple[tuple[int, int, int], ...]
    run_id: str = ""

    def grid(self, level: int) -> BlockGrid:
        return BlockGrid(self.scales[level].box, self.task_shapes[level], (0, 0, 0))

    def source_spec(self, level: int) -> dict[str, Any]:
        return {"driver": "neuroglancer_precomputed", "kvstore": urls.kvstore_spec(self.segmentation),
                "scale_metadata": {"key": self.scales[level].key}}

    def array_spec(self, level: int) -> dict[str, Any]:
        scale = self.scales[level]
        kv = urls.kvstore_spec(urls.join(self.store, str(level)))
        if self.version == "0.4":
            return {"driver": "zarr", "kvstore": kv, "metadata": {
                "shape": list(scale.shape_zyx), "chunks": list(scale.chunk_zyx), "dtype": "<u8",
                "compressor": {"id": "blosc", "cname": "zstd", "clevel": 5, "shuffle": 1},
                "fill_value": 0, "dimension_separator": "/"}}
        return {"driver": "zarr3", "kvstore": kv, "metadata": {
            "shape": list(scale.shape_zyx), "chunk_grid": {"name": "regular", "configuration": {
                "chunk_shape": list(scale.chunk_zyx)}},
            "data_type": "uint64", "fill_value": 0, "dimension_names": ["z", "y", "x"],
            "codecs": [{"name": "bytes", "configuration": {"endian": "little"}},
                       {"name": "blosc", "configuration": {"cname": "zstd", "clevel": 5, "shuffle": "shuffle",
                                                           "typesize": 8, "blocksize": 0}}]}}


def multiscales(scales: tuple[Scale, ...] | list[Scale], version: Version, name: str = "segmentation") -> dict[str, Any]:
    """The ``multiscales`` entry (one) for ``scales``: axes z, y, x in nm, scale and translation per level.

    >>> m = multiscales([Scale((4, 4, 4), (1, 0, 2), (8.0, 8.0, 8.0), (4, 4, 4))], "0.4")
    >>> m["datasets"][0]["coordinateTransformations"]
    [{'type': 'scale', 'scale': [8.0, 8.0, 8.0]}, {'type': 'translation', 'translation': [8.0, 0.0, 16.0]}]
    """
    out: dict[str, Any] = {
        "name": name,
        "axes": [{"name": a, "type": "space", "unit": "nanometer"} for a in "zyx"],
        "datasets": [{"path": str(k), "coordinateTransformations": [
            {"type": "scale", "scale": [float(v) for v in s.voxel_size_nm]},
            {"type": "translation", "translation": [float(o) * float(v) for o, v in zip(s.offset_zyx, s.voxel_size_nm)]},
        ]} for k, s in enumerate(scales)],
        "type": "mode",
        "metadata": {"description": "emseg: the mode of each 2x2(x2) cell (tinybrain); ids are never invented"},
    }
    if version == "0.4":
        out["version"] = "0.4"
    return out


def group_files(plan: OmeZarrPlan) -> dict[str, bytes]:
    """The group's metadata files (relative to the group) for ``plan.version``."""
    ms = multiscales(plan.scales, plan.version)
    if plan.version == "0.4":
        label = {"version": "0.4"}
        return {".zgroup": json.dumps({"zarr_format": 2}).encode(),
                ".zattrs": json.dumps({"multiscales": [ms], "image-label": label}).encode()}
    attrs = {"ome": {"version": "0.5", "multiscales": [ms], "image-label": {}}}
    return {"zarr.json": json.dumps({"zarr_format": 3, "node_type": "group", "attributes": attrs}).encode()}


def plan(segmentation: str, output: str, scales: tuple[Scale, ...] | list[Scale], version: Version,
         run_id: str = "", block_voxels: int = 128**3) -> OmeZarrPlan:
    """Create the group and its arrays (empty); describe the copy tasks."""
    import tensorstore as ts

    store = urls.join(output, NAME)
    kv = urls.open_kvstore(store)
    kvstore.delete_prefix(kv)
    p = OmeZarrPlan(segmentation, store, version, tuple(scales), tuple(task_shape(s, block_voxels) for s in scales),
                    run_id)
    for name, blob in group_files(p).items():
        kv.write(name, blob).result()
    for level in range(len(scales)):
        ts.open(dict(p.array_spec(level), context=urls.CONTEXT), create=True).result()
    return p


def copy_task(p: OmeZarrPlan, level: int, block_id: int, *upstream: Any) -> dict[str, Any]:
    """Copy box ``block_id`` of scale ``level`` from the precomputed segmentation into the OME-Zarr array."""
    import tensorstore as ts

    t0 = time.perf_counter()
    scale = p.scales[level]
    box = p.grid(level).block(block_id).write_box.shift([-o for o in scale.offset_zyx])
    src = runtime.volume(json.dumps(p.source_spec(level)), False, p.run_id)
    data = src.read(box)
    dst = ts.open(dict(p.array_spec(level), context=urls.CONTEXT), open=True, write=True).result()
    dst[box.slices()].write(np.ascontiguousarray(data, np.uint64)).result()
    return {"seconds": time.perf_counter() - t0, "voxels": int(box.size)}
