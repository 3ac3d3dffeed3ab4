"""Volumes: open any supported store as a zero-origin z, y, x array; create precomputed layers.

This is the I/O edge. Neuroglancer precomputed volumes are x, y, z (plus a channel axis) on disk; the
conversion to z, y, x happens here and nowhere else. A volume's own voxel offset is kept in
:attr:`Volume.offset_zyx` and its domain is translated to start at zero, so the rest of the code works
in zero-origin voxel coordinates.

Voxel size comes from the metadata: precomputed ``resolution``; for zarr/n5, the attributes
``resolution_nm`` or ``resolution`` (z, y, x) or n5's ``pixelResolution`` / ``resolution`` (x, y, z).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import tensorstore as ts

from pipeline import urls
from pipeline.errors import ConfigError, EmsegError, VolumeNotFoundError
from pipeline.geometry import Box

Source = str | Mapping[str, Any]


@dataclass
class Volume:
    """A 3D volume, z, y, x, zero-origin, with its physical metadata."""

    array: ts.TensorStore
    voxel_size_nm: tuple[float, float, float]
    offset_zyx: tuple[int, int, int]
    source: str

    @property
    def shape_zyx(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.array.shape)  # type: ignore[return-value]

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.array.dtype.numpy_dtype)

    @property
    def box(self) -> Box:
        return Box.from_shape(self.shape_zyx)

    def read(self, box: Box) -> np.ndarray:
        """Read ``box`` (zero-origin voxels) into memory."""
        if not self.box.contains(box):
            raise ValueError(f"box {box} is outside the volume {self.box} of {self.source}")
        return self.array[box.slices()].read().result()

    def write(self, box: Box, data: np.ndarray) -> None:
        """Write ``data`` at ``box``; the store writes each chunk atomically."""
        self.array[box.slices()].write(data).result()


def ts_message(exc: Exception) -> str:
    """A tensorstore error's message without the (long) spec it appends."""
    return str(exc).split(" [tensorstore_spec")[0]


def _open_error(source: str, exc: Exception) -> EmsegError:
    text = ts_message(exc)
    if "NOT_FOUND" in text:
        return VolumeNotFoundError(
            f"no volume at {source}: {text}; check the URL (for zarr, point at the array inside the "
            "group, e.g. .../em.zarr/raw)"
        )
    return VolumeNotFoundError(f"cannot open {source}: {text}")


def spec_for(source: Source) -> dict[str, Any]:
    """A tensorstore spec for a URL or (already) a spec mapping."""
    if isinstance(source, Mapping):
        spec = dict(source)
        spec.setdefault("context", urls.CONTEXT)
        return spec
    parsed = urls.parse(source)
    return {"driver": parsed.driver, "kvstore": urls.kvstore_spec(parsed.store), "context": urls.CONTEXT}


def describe(source: Source) -> str:
    return source if isinstance(source, str) else json.dumps(dict(source), sort_keys=True)


def open_volume(source: Source, *, write: bool = False) -> Volume:
    """Open a volume by Neuroglancer-style URL, local path or tensorstore spec.

    Raises :class:`~pipeline.errors.VolumeNotFoundError` when nothing is there and
    :class:`~pipeline.errors.UnsupportedURLError` for an unknown scheme.
    """
    spec = spec_for(source)
    name = describe(source)
    mode = {"read": True, "write": write}
    try:
        arr = ts.open(spec, **mode).result()
    except ValueError as exc:
        raise _open_error(name, exc) from None
    return _as_zyx(arr, spec, name)


def _as_zyx(arr: ts.TensorStore, spec: Mapping[str, Any], name: str) -> Volume:
    driver = spec.get("driver")
    labels = list(arr.domain.labels)
    if driver == "neuroglancer_precomputed":
        if arr.shape[3] != 1:
            raise ConfigError(f"{name} has {arr.shape[3]} channels; emseg segments single-channel volumes")
        arr = arr[ts.d["channel"][0]]
        arr = arr[ts.d["z", "y", "x"].transpose[:]]
    else:
        while arr.rank > 3 and arr.shape[0] == 1:
            arr = arr[0]
        if arr.rank != 3:
            raise ConfigError(f"{name} has shape {list(arr.shape)}; emseg needs a 3D (z, y, x) volume")
        if set(labels[-3:]) == {"x", "y", "z"}:
            arr = arr[ts.d["z", "y", "x"].transpose[:]]
    offset = tuple(int(v) for v in arr.domain.inclusive_min)
    voxel = _voxel_size(arr, spec)
    attrs_offset = _attributes(spec).get("voxel_offset")
    if driver != "neuroglancer_precomputed" and attrs_offset is not None and offset == (0, 0, 0):
        offset = tuple(int(v) for v in attrs_offset)
    arr = arr.translate_to[0, 0, 0]
    return Volume(arr, voxel, offset, name)  # type: ignore[arg-type]


def _attributes(spec: Mapping[str, Any]) -> dict[str, Any]:
    """The zarr v2 ``.zattrs`` / n5 ``attributes.json`` of the array, or {}."""
    names = {"zarr": ".zattrs", "n5": "attributes.json"}
    name = names.get(str(spec.get("driver")))
    if name is None:
        return {}
    try:
        kv = ts.KvStore.open(spec["kvstore"]).result()
        raw = kv.read(name).result()
    except Exception:  # noqa: BLE001 - attributes are optional metadata
        return {}
    if raw.state != "value":
        return {}
    try:
        attrs = json.loads(raw.value)
    except ValueError:
        return {}
    return attrs if isinstance(attrs, dict) else {}


def _voxel_size(arr: ts.TensorStore, spec: Mapping[str, Any]) -> tuple[float, float, float]:
    units = arr.dimension_units
    if all(u is not None and u.base_unit == "nm" for u in units[:3]):
        return tuple(float(u.multiplier) for u in units[:3])  # type: ignore[return-value]
    attrs = _attributes(spec)
    for key in ("resolution_nm", "resolution"):
        value = attrs.get(key)
        if isinstance(value, list) and len(value) == 3:
            return _zyx_from(value, spec)
    value = attrs.get("pixelResolution")
    if isinstance(value, dict) and isinstance(value.get("dimensions"), list):
        return tuple(float(v) for v in value["dimensions"][::-1])  # type: ignore[return-value]
    return (1.0, 1.0, 1.0)


def _zyx_from(value: Sequence[float], spec: Mapping[str, Any]) -> tuple[float, float, float]:
    # n5 lists dimensions x, y, z; zarr attributes here are z, y, x.
    v = [float(x) for x in value]
    return tuple(v[::-1] if spec.get("driver") == "n5" else v)  # type: ignore[return-value]


LayerType = Literal["image", "segmentation"]


def sharding_spec(preshift_bits: int, minishard_bits: int, shard_bits: int) -> dict[str, Any]:
    """Neuroglancer's ``neuroglancer_uint64_sharded_v1`` with the identity hash."""
    return {
        "@type": "neuroglancer_uint64_sharded_v1",
        "preshift_bits": preshift_bits,
        "hash": "identity",
        "minishard_bits": minishard_bits,
        "shard_bits": shard_bits,
        "minishard_index_encoding": "gzip",
        "data_encoding": "gzip",
    }


def create_precomputed(
    store: str,
    *,
    layer_type: LayerType,
    dtype: str,
    shape_zyx: Sequence[int],
    voxel_size_nm: Sequence[float],
    offset_zyx: Sequence[int] = (0, 0, 0),
    chunk_zyx: Sequence[int] = (64, 64, 64),
    encoding: str | None = None,
    sharding: Mapping[str, Any] | None = None,
) -> Volume:
    """Create (or open, if the same layer already exists) a single-scale precomputed layer.

    Segmentations default to ``compressed_segmentation``, images to ``raw``.
    """
    if encoding is None:
        encoding = "compressed_segmentation" if layer_type == "segmentation" else "raw"
    scale: dict[str, Any] = {
        "size": list(shape_zyx)[::-1],
        "resolution": list(voxel_size_nm)[::-1],
        "voxel_offset": list(offset_zyx)[::-1],
        "chunk_size": list(chunk_zyx)[::-1],
        "encoding": encoding,
    }
    if encoding == "compressed_segmentation":
        scale["compressed_segmentation_block_size"] = [8, 8, 8]
    if sharding is not None:
        scale["sharding"] = dict(sharding)
    spec = {
        "driver": "neuroglancer_precomputed",
        "kvstore": urls.kvstore_spec(urls.store_url(store)),
        "context": urls.CONTEXT,
        "multiscale_metadata": {"type": layer_type, "data_type": dtype, "num_channels": 1},
        "scale_metadata": scale,
    }
    try:
        arr = ts.open(spec, open=True, create=True, read=True, write=True).result()
    except ValueError as exc:
        text = ts_message(exc)
        raise ConfigError(
            f"cannot create a precomputed {layer_type} at {store}: {text}; an existing layer there has "
            "other metadata — remove it or choose another output"
        ) from None
    return _as_zyx(arr, spec, f"precomputed://{store}")


def create_zarr(
    store: str, *, dtype: str, shape_zyx: Sequence[int], chunk_zyx: Sequence[int], voxel_size_nm: Sequence[float]
) -> Volume:
    """Create a zarr v2 array (blosc-zstd) with ``resolution_nm`` in its attributes."""
    url = urls.kvstore_spec(urls.store_url(store))
    spec = {
        "driver": "zarr",
        "kvstore": url,
        "context": urls.CONTEXT,
        "metadata": {
            "shape": list(shape_zyx),
            "chunks": list(chunk_zyx),
            "dtype": np.dtype(dtype).str,
            "compressor": {"id": "blosc", "cname": "zstd", "clevel": 3, "shuffle": 2},
        },
    }
    arr = ts.open(spec, create=True, delete_existing=True).result()
    kv = ts.KvStore.open(url, context=ts.Context(urls.CONTEXT)).result()
    kv.write(".zattrs", json.dumps({"resolution_nm": list(voxel_size_nm), "axes": ["z", "y", "x"]})).result()
    return Volume(arr, tuple(float(v) for v in voxel_size_nm), (0, 0, 0), f"zarr://{store}")  # type: ignore[arg-type]
