"""Volumes: open any supported store as a zero-origin z, y, x array; create precomputed layers.

This is the I/O edge. Neuroglancer precomputed volumes are x, y, z (plus a channel axis) on disk; the
conversion to z, y, x happens here and nowhere else. A volume's own voxel offset is kept in
:attr:`Volume.offset_zyx` and its domain is translated to start at zero, so the rest of the code works
in zero-origin voxel coordinates.

Axis order, voxel size and offset come from the metadata, wherever the format keeps them:
precomputed ``info``; for zarr v2, zarr v3 and n5 see :func:`axis_metadata` (NGFF multiscale groups,
xarray / funlib / n5-viewer attributes, tensorstore's labels and units). ``docs/input.md`` has the
table of formats and places, each tested in ``tests/test_input_metadata.py``. A volume whose metadata
gives no voxel size opens with ``voxel_size_nm = (1, 1, 1)`` and ``voxel_size_source = None``: the run
refuses it unless the config sets ``input_voxel_size_nm``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import tensorstore as ts

from emseg.pipeline.io import urls
from emseg.pipeline.errors import ConfigError, EmsegError, VolumeNotFoundError, VolumeReadError
from emseg.pipeline.geometry import Box

log = logging.getLogger("emseg")

Source = str | Mapping[str, Any]


@dataclass
class Volume:
    """A 3D volume, z, y, x, zero-origin, with its physical metadata.

    ``voxel_size_source`` names the metadata the voxel size came from; None when no metadata gives
    one (``voxel_size_nm`` is then a placeholder of 1 nm).
    """

    array: ts.TensorStore
    voxel_size_nm: tuple[float, float, float]
    offset_zyx: tuple[int, int, int]
    source: str
    voxel_size_source: str | None = "emseg"

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
    group = urls.local_path(urls.source_store(source) or "") if isinstance(source, str) else None
    if group is not None:
        from emseg.pipeline.outputs.ngff import scale_choices

        hint = scale_choices(group)
        if hint is not None:
            return VolumeNotFoundError(f"{source} holds no single volume: {hint}")
    if "NOT_FOUND" in text:
        return VolumeNotFoundError(
            f"no volume at {source}: {text}; check the URL (for zarr, point at the array inside the "
            "group, e.g. .../em.zarr/raw)"
        )
    return VolumeReadError(f"cannot open {source}: {text}; its metadata is unreadable or not of this format")


def read_error(source: str, exc: Exception) -> EmsegError:
    """A one-line error for a failed read; a missing chunk names its key and the ``fill_missing`` option."""
    text = ts_message(exc)
    if "is missing" in text or "NOT_FOUND" in text:
        return VolumeReadError(
            f"a chunk of the input {source} is missing ({text}); restore it, or set fill_missing: true to read "
            "missing chunks as the fill value (recorded in run.json)"
        )
    return VolumeReadError(f"cannot read {source}: {text}")


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


def open_volume(source: Source, *, write: bool = False, store_all: bool = False) -> Volume:
    """Open a volume by Neuroglancer-style URL, local path or tensorstore spec.

    ``store_all`` makes writes store chunks equal to the fill value too (images: a run refuses
    missing input chunks unless ``fill_missing`` is set).

    Raises :class:`~emseg.pipeline.errors.VolumeNotFoundError` when nothing is there and
    :class:`~emseg.pipeline.errors.UnsupportedURLError` for an unknown scheme.
    """
    spec = spec_for(source)
    name = describe(source)
    mode = {"read": True, "write": write}
    if write and store_all:
        spec["store_data_equal_to_fill_value"] = True
    try:
        arr = ts.open(spec, **mode).result()
    except ValueError as exc:
        raise _open_error(name, exc) from None
    return _as_zyx(arr, spec, name)


def _as_zyx(arr: ts.TensorStore, spec: Mapping[str, Any], name: str) -> Volume:
    """Put ``arr`` in z, y, x order, translated to zero; read its voxel size and offset (see :func:`axis_metadata`)."""
    driver = spec.get("driver")
    if driver == "neuroglancer_precomputed":
        if arr.shape[3] != 1:
            raise ConfigError(f"{name} has {arr.shape[3]} channels; emseg segments single-channel volumes")
        arr = arr[ts.d["channel"][0]]
        arr = arr[ts.d["z", "y", "x"].transpose[:]]
        offset = tuple(int(v) for v in arr.domain.inclusive_min)
        units = arr.dimension_units
        voxel = tuple(float(u.multiplier) for u in units)  # precomputed always states its resolution (nm)
        return Volume(arr.translate_to[0, 0, 0], voxel, offset, name,  # type: ignore[arg-type]
                      voxel_size_source="precomputed info resolution")
    meta = axis_metadata(arr, spec, name)
    arr = arr[ts.d[:].label[meta.names]] if meta.relabel else arr
    for dim in meta.drop:
        arr = arr[ts.d[dim][arr.domain[dim].inclusive_min]]
    arr = arr[ts.d["z", "y", "x"].transpose[:]]
    return Volume(arr.translate_to[0, 0, 0], meta.voxel_size_nm or (1.0, 1.0, 1.0),  # type: ignore[arg-type]
                  meta.offset_zyx, name, voxel_size_source=meta.voxel_source)


@dataclass
class ChannelVolume:
    """A volume with a channel axis: ``array`` is (c, z, y, x), zero-origin in z, y, x; the metadata is
    that of its z, y, x axes, as :class:`Volume`'s."""

    array: ts.TensorStore
    voxel_size_nm: tuple[float, float, float]
    offset_zyx: tuple[int, int, int]
    source: str
    voxel_size_source: str | None
    #: the metadata the offset came from; None when none gives one (the offset is then 0)
    offset_source: str | None = None
    #: the channel axis' name; ``dim0`` / ``dim3`` when no metadata names the axes
    channel_axis: str = "channel"
    #: the array's user attributes (zarr / n5; empty for precomputed)
    attributes: dict[str, Any] = field(default_factory=dict)

    @property
    def channels(self) -> int:
        return int(self.array.shape[0])

    @property
    def shape_zyx(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.array.shape[1:])  # type: ignore[return-value]

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.array.dtype.numpy_dtype)


def open_channels(source: Source, *, write: bool = False) -> ChannelVolume:
    """Open a multi-channel volume (e.g. affinities) by URL, path or spec, as (c, z, y, x).

    The channel axis is precomputed's ``channel``, or the one axis besides z, y and x that a zarr / n5
    array's metadata names (:func:`axis_metadata`); an unnamed 4D zarr array is taken as c, z, y, x
    (MALA / lsd / volara write affinities so), an unnamed n5 one as x, y, z, c. Missing chunks are an
    error on read, never the fill value. ``write``: open for writing too, and every chunk written is
    stored, all-zero ones included (tensorstore skips chunks equal to the fill value otherwise, and a
    reader would then find them missing).

    Raises
    ------
    VolumeNotFoundError, VolumeReadError
        Nothing (or nothing readable) at ``source``.
    ConfigError
        The array has no channel axis, or more than one axis besides z, y, x that is not of size 1.
    """
    spec = spec_for(source)
    spec.setdefault("fill_missing_data_reads", False)
    if write:
        spec.setdefault("store_data_equal_to_fill_value", True)
    name = describe(source)
    try:
        arr = ts.open(spec, read=True, write=write).result()
    except ValueError as exc:
        raise _open_error(name, exc) from None
    if spec.get("driver") == "neuroglancer_precomputed":
        arr = arr[ts.d["channel", "z", "y", "x"].transpose[:]]
        offset = tuple(int(v) for v in arr.domain.inclusive_min[1:])
        voxel = tuple(float(u.multiplier) for u in arr.dimension_units[1:])
        return ChannelVolume(arr.translate_to[0, 0, 0, 0], voxel, offset, name,  # type: ignore[arg-type]
                             "precomputed info resolution", "precomputed info voxel_offset")
    if arr.rank < 4:
        raise ConfigError(f"{name} has dimensions of shape {list(arr.shape)}; emseg needs a channel axis besides "
                          "z, y, x here (c, z, y, x)")
    meta = axis_metadata(arr, spec, name, channel=True)
    arr = arr[ts.d[:].label[meta.names]] if meta.relabel else arr
    for dim in meta.drop:
        arr = arr[ts.d[dim][arr.domain[dim].inclusive_min]]
    arr = arr[ts.d[meta.channel, "z", "y", "x"].transpose[:]]
    return ChannelVolume(arr.translate_to[0, 0, 0, 0], meta.voxel_size_nm or (1.0, 1.0, 1.0),  # type: ignore[arg-type]
                         meta.offset_zyx, name, meta.voxel_source, meta.offset_source, str(meta.channel),
                         _attributes(spec))


@dataclass(frozen=True)
class AxisMetadata:
    """What a zarr / n5 array's metadata says about its axes, in z, y, x order where it is per axis."""

    names: list[str]  # the array's dimension names, in its own order
    relabel: bool  # the names did not come from tensorstore's domain labels
    drop: list[str]  # dimensions of size 1 that are not z, y or x (nor the channel axis)
    voxel_size_nm: tuple[float, float, float] | None  # None: no metadata gives it
    voxel_source: str | None
    offset_zyx: tuple[int, int, int]
    offset_source: str | None
    channel: str | None = None  # with channel=True: the name of the kept channel axis


def _attributes(spec: Mapping[str, Any]) -> dict[str, Any]:
    """The user attributes of the array: zarr v2 ``.zattrs``, zarr v3 ``zarr.json`` ``attributes``, n5 ``attributes.json``."""
    driver = str(spec.get("driver"))
    name = {"zarr": ".zattrs", "zarr3": "zarr.json", "n5": "attributes.json"}.get(driver)
    if name is None or "kvstore" not in spec:
        return {}
    try:
        kv = ts.KvStore.open(spec["kvstore"], context=ts.Context(urls.CONTEXT)).result()
        raw = kv.read(name).result()
    except Exception:  # noqa: BLE001 - attributes are optional metadata
        return {}
    if raw.state != "value":
        return {}
    try:
        attrs = json.loads(raw.value)
    except ValueError as exc:
        raise VolumeReadError(f"the attributes file {name} of {describe(spec)} is not valid JSON ({exc}); "
                              "repair or remove it") from None
    if driver == "zarr3":
        attrs = attrs.get("attributes", {}) if isinstance(attrs, dict) else {}
    return attrs if isinstance(attrs, dict) else {}


def _number_list(value: Any, rank: int) -> list[float] | None:
    if isinstance(value, list | tuple) and len(value) == rank and all(
        isinstance(v, int | float) and not isinstance(v, bool) for v in value
    ):
        return [float(v) for v in value]
    return None


def axis_metadata(arr: ts.TensorStore, spec: Mapping[str, Any], name: str, channel: bool = False) -> AxisMetadata:
    """Axis order, voxel size and offset of a zarr v2 / zarr v3 / n5 array, from every place they can be.

    Every list below is in the array's own dimension order (for n5, the order of its ``dimensions``:
    x, y, z), and is permuted to z, y, x with the array:

    ========================  =========================================================================
    axis names                tensorstore's dimension labels (zarr v3 ``dimension_names``, n5 ``axes``);
                              else the NGFF ``axes`` of a multiscale group above the array; else the
                              attribute ``_ARRAY_DIMENSIONS`` (xarray), ``axis_names`` (funlib) or
                              ``axes``; else z, y, x for zarr and x, y, z for n5 (its native order)
    voxel size (nm)           tensorstore's dimension units (n5 ``resolution`` + ``units``); NGFF
                              ``scale`` x axis unit; attributes ``resolution_nm``, ``resolution``,
                              ``voxel_size`` (funlib, with ``units``), n5 ``pixelResolution``
                              ``{dimensions, unit}``
    offset (voxels)           the domain's origin; NGFF ``translation`` / ``scale``; attribute
                              ``voxel_offset``; funlib ``offset`` (nm) / ``voxel_size``
    ========================  =========================================================================

    Two places that disagree are refused (:class:`~emseg.pipeline.errors.ConfigError`, naming both), as is
    an array whose dimensions other than z, y, x are not of size 1. With ``channel``, exactly one other
    dimension is kept as the channel axis (:attr:`AxisMetadata.channel`), of any size.
    """
    from emseg.pipeline.outputs import ngff

    driver = str(spec.get("driver"))
    rank = arr.rank
    attrs = _attributes(spec)
    transform = ngff.find(spec["kvstore"], rank=rank, context=ts.Context(urls.CONTEXT)) if "kvstore" in spec else None
    if transform is not None and len(transform.axes) != rank:
        transform = None

    raw_labels = [str(v) for v in arr.domain.labels]
    labels = [v.lower() for v in raw_labels]
    relabel = labels != raw_labels  # "Z", "Y", "X" are relabelled z, y, x
    if all(labels):
        names = labels
    else:
        relabel = True
        candidates = [transform.axes if transform is not None else None, attrs.get("_ARRAY_DIMENSIONS"),
                      attrs.get("axis_names"), attrs.get("axes")]
        found = next((list(c) for c in candidates if ngff.names_in(c) and len(c) == rank), None)  # type: ignore[arg-type]
        if found is not None:
            names = [str(v).lower() for v in found]
        else:
            default = ["x", "y", "z"] if driver == "n5" else ["z", "y", "x"]
            names = [f"dim{i}" for i in range(rank - 3)] + default if driver != "n5" else \
                default + [f"dim{i}" for i in range(rank - 3)]
            if rank < 3:
                names = names[-rank:] if driver != "n5" else names[:rank]
    if len(set(names)) != len(names) or not {"x", "y", "z"} <= set(names):
        raise ConfigError(
            f"{name} has dimensions {names} (shape {list(arr.shape)}); emseg needs a 3D volume with axes "
            "z, y, x (other axes of size 1 are dropped)"
        )
    extra = [(i, n) for i, n in enumerate(names) if n not in ("x", "y", "z")]
    kept = None
    if channel:
        wide_axes = [(i, n) for i, n in extra if arr.shape[i] != 1]
        if len(extra) != 1 and len(wide_axes) != 1:
            raise ConfigError(
                f"{name} has dimensions {names} (shape {list(arr.shape)}); emseg needs one channel axis besides "
                "z, y, x (e.g. c, z, y, x)"
            )
        kept = (extra if len(extra) == 1 else wide_axes)[0][1]
        extra = [(i, n) for i, n in extra if n != kept]
    wide = [f"{n} = {arr.shape[i]}" for i, n in extra if arr.shape[i] != 1]
    if wide:
        raise ConfigError(
            f"{name} has {', '.join(wide)} besides z, y, x (shape {list(arr.shape)}, axes {names}); emseg segments "
            "one 3D single-channel volume: select one (e.g. a tensorstore spec with a transform)"
        )
    zyx = [names.index(a) for a in ("z", "y", "x")]
    spatial = sorted(zyx)  # the z, y, x axes in the array's own order

    def per_axis(value: Any) -> list[float | None] | None:
        """An attribute's list, one entry per axis; a list of three on an array of more axes is
        taken as the spatial axes' values in the array's own order (what funlib and most writers of
        channel volumes put there)."""
        full = _number_list(value, rank)
        if full is not None or rank == 3:
            return full  # type: ignore[return-value]
        three = _number_list(value, 3)
        if three is None:
            return None
        out: list[float | None] = [None] * rank
        for i, v in zip(spatial, three):
            out[i] = v
        return out

    def pick(values: Sequence[float | None]) -> tuple[float, float, float] | None:
        out = [values[i] for i in zyx]
        return None if any(v is None for v in out) else tuple(float(v) for v in out)  # type: ignore[misc, arg-type]

    # Voxel size, in nm, from every place that states it.
    sizes: list[tuple[str, tuple[float, float, float]]] = []
    units = arr.dimension_units
    if all(units[i] is not None and ngff.unit_nm(units[i].base_unit) for i in zyx):
        sizes.append(("tensorstore dimension units",
                      tuple(float(units[i].multiplier) * ngff.unit_nm(units[i].base_unit) for i in zyx)))  # type: ignore[misc]
    if transform is not None and transform.voxel_size_nm() is not None:
        got = pick(transform.voxel_size_nm())  # type: ignore[arg-type]
        if got is not None:
            sizes.append((f"NGFF coordinateTransformations scale of {transform.path!r}", got))
    for key in ("resolution_nm", "resolution"):
        values = per_axis(attrs.get(key))
        if values is not None:
            sizes.append((f"attribute {key}", pick(values)))  # type: ignore[arg-type]
    funlib_units = attrs.get("units")
    funlib_scale = 1.0
    if ngff.names_in(funlib_units) and len(funlib_units) in (3, rank):
        factors = [ngff.unit_nm(u) for u in funlib_units[-3:]]
        funlib_scale = factors[0] if len(set(factors)) == 1 and factors[0] else 1.0
    funlib_voxel = per_axis(attrs.get("voxel_size"))
    if funlib_voxel is not None:
        sizes.append(("attribute voxel_size", tuple(v * funlib_scale for v in pick(funlib_voxel))))  # type: ignore[union-attr]
    pixel = attrs.get("pixelResolution")
    if isinstance(pixel, Mapping) and _number_list(pixel.get("dimensions"), rank) is not None:
        factor = ngff.unit_nm(pixel.get("unit", "nm")) or 1.0
        values = [v * factor for v in _number_list(pixel.get("dimensions"), rank)]  # type: ignore[union-attr]
        sizes.append(("attribute pixelResolution", pick(values)))  # type: ignore[arg-type]
    voxel, voxel_source = _agree(sizes, name, "voxel size (nm, z, y, x)")

    # Offset, in voxels.
    offsets: list[tuple[str, tuple[float, float, float]]] = []
    origin = [int(arr.domain.inclusive_min[i]) for i in zyx]
    if any(origin):
        offsets.append(("the array's domain origin", tuple(float(v) for v in origin)))  # type: ignore[arg-type]
    if transform is not None and transform.translation is not None and transform.scale is not None:
        t = pick(transform.translation)
        s = pick(transform.scale)
        if t is not None and s is not None and any(t):
            offsets.append((f"NGFF coordinateTransformations translation of {transform.path!r}",
                            tuple(a / b for a, b in zip(t, s))))  # type: ignore[arg-type]
    values = per_axis(attrs.get("voxel_offset"))
    if values is not None:
        offsets.append(("attribute voxel_offset", pick(values)))  # type: ignore[arg-type]
    funlib_offset = per_axis(attrs.get("offset"))
    if funlib_offset is not None and funlib_voxel is not None:
        offsets.append(("attribute offset / voxel_size",
                        tuple(a / b for a, b in zip(pick(funlib_offset), pick(funlib_voxel)))))  # type: ignore[arg-type]
    found_offset, offset_source = _agree(offsets, name, "voxel offset (voxels, z, y, x)")
    offset = (0, 0, 0)
    if found_offset is not None:
        rounded = tuple(int(round(v)) for v in found_offset)
        if any(abs(v - r) > 1e-3 for v, r in zip(found_offset, rounded)):
            log.warning("%s: the %s gives an offset of %s voxels, not whole voxels; the output is placed at %s",
                        name, offset_source, [round(v, 3) for v in found_offset], list(rounded))
        offset = rounded  # type: ignore[assignment]
    drop = [n for _, n in extra]
    return AxisMetadata(names, relabel, drop, voxel, voxel_source, offset, offset_source, kept)  # type: ignore[arg-type]


def _agree(found: list[tuple[str, Any]], name: str, what: str) -> tuple[Any, str | None]:
    """The one value all sources give, or None if none does; refuse sources that disagree."""
    found = [(src, v) for src, v in found if v is not None]
    if not found:
        return None, None
    first_src, first = found[0]
    for src, value in found[1:]:
        if not np.allclose(value, first, rtol=1e-6, atol=1e-9):
            raise ConfigError(
                f"{name}: the {first_src} gives a {what} of {[round(v, 6) for v in first]} but the {src} gives "
                f"{[round(v, 6) for v in value]}; correct or remove one of them"
            )
    return tuple(float(v) for v in first), first_src


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
        # An image stores every chunk, even one equal to the fill value: runs refuse missing input
        # chunks by default (fill_missing), so emseg's own images must not lack any.
        arr = ts.open(dict(spec, store_data_equal_to_fill_value=layer_type == "image"),
                      open=True, create=True, read=True, write=True).result()
    except ValueError as exc:
        text = ts_message(exc)
        raise ConfigError(
            f"cannot create a precomputed {layer_type} at {store}: {text}; an existing layer there has "
            "other metadata — remove it or choose another output"
        ) from None
    return _as_zyx(arr, spec, f"precomputed://{store}")


#: blosc-zstd level 3, bit shuffle: emseg's other zarr arrays
ZSTD = {"id": "blosc", "cname": "zstd", "clevel": 3, "shuffle": 2}
#: blosc-lz4 level 5, byte shuffle: stored affinities, which stage 1 reads back with their context.
#: On the bundled forest's affinities of 192³ of FIB-25, against blosc-zstd 3 with bit shuffle, one
#: thread (benchmarks/bench_affinity_codec.py, 2026-12-01, 2-core AMD EPYC): float32 written 3.3
#: and an inner 64³ block read back 2.9 times as fast, for 7 % more bytes (9.54 against 8.95 per
#: voxel; 12 uncompressed); uint8 written 4.1 and read 4.9 times as fast, 2.73 against 2.42 bytes
LZ4 = {"id": "blosc", "cname": "lz4", "clevel": 5, "shuffle": 1}


def _zarr_spec(store: str, dtype: str, shape: Sequence[int], chunks: Sequence[int],
               compressor: Mapping[str, Any] = ZSTD) -> tuple[Any, dict[str, Any]]:
    """The kvstore and the tensorstore spec of a new zarr v2 array at ``store``."""
    url = urls.kvstore_spec(urls.store_url(store))
    return url, {"driver": "zarr", "kvstore": url, "context": urls.CONTEXT,
                 "metadata": {"shape": [int(v) for v in shape], "chunks": [int(v) for v in chunks],
                              "dtype": np.dtype(dtype).str, "compressor": dict(compressor)}}


def create_zarr(
    store: str, *, dtype: str, shape_zyx: Sequence[int], chunk_zyx: Sequence[int], voxel_size_nm: Sequence[float]
) -> Volume:
    """Create a zarr v2 array (blosc-zstd) with ``resolution_nm`` in its attributes; every chunk is stored."""
    url, spec = _zarr_spec(store, dtype, shape_zyx, chunk_zyx)
    spec["store_data_equal_to_fill_value"] = True
    arr = ts.open(spec, create=True, delete_existing=True).result()
    kv = ts.KvStore.open(url, context=ts.Context(urls.CONTEXT)).result()
    kv.write(".zattrs", json.dumps({"resolution_nm": list(voxel_size_nm), "axes": ["z", "y", "x"]})).result()
    return Volume(arr, tuple(float(v) for v in voxel_size_nm), (0, 0, 0), f"zarr://{store}")  # type: ignore[arg-type]


def create_channels(
    store: str, *, dtype: str, channels: int, shape_zyx: Sequence[int], chunk_zyx: Sequence[int],
    voxel_size_nm: Sequence[float], offset_zyx: Sequence[int] = (0, 0, 0), attributes: Mapping[str, Any] | None = None,
) -> ChannelVolume:
    """Create, or open when it exists with the same shape, chunks and dtype, a zarr v2 array (c, z, y, x).

    Chunks are ``(channels, *chunk_zyx)``, blosc-lz4 (:data:`LZ4`; an existing array keeps its
    compressor, blosc-zstd in stores of emseg before 2026-12); chunks never written read as missing (an
    error through :func:`open_channels`). The attributes are funlib's (``axis_names`` c^, z, y, x,
    ``units``, ``voxel_size`` and ``offset`` in nm), which lsd and volara read as they are and
    :func:`axis_metadata` reads too, and ``attributes`` besides.

    Raises
    ------
    VolumeReadError
        An array with other metadata is there already.
    """
    url, spec = _zarr_spec(store, dtype, [channels, *shape_zyx], [channels, *chunk_zyx], LZ4)
    spec["metadata"]["fill_value"] = 0
    kv = ts.KvStore.open(url, context=ts.Context(urls.CONTEXT)).result()
    exists = kv.read(".zarray").result().state == "value"
    if exists:  # any compressor: the chunks decode by their own array's metadata
        spec["metadata"].pop("compressor")
    try:
        ts.open(spec, create=not exists, open=exists).result()
    except ValueError as exc:
        raise VolumeReadError(f"cannot create {store}: {ts_message(exc)}; an array of other shape, chunks or dtype is "
                              "there: rerun with --restart, or choose another output") from None
    voxel = [float(v) for v in voxel_size_nm]
    attrs = {"axis_names": ["c^", "z", "y", "x"], "units": ["nm", "nm", "nm"], "voxel_size": voxel,
             "offset": [float(o) * v for o, v in zip(offset_zyx, voxel)], **(attributes or {})}
    kv.write(".zattrs", json.dumps(attrs)).result()
    return open_channels("zarr://" + urls.store_url(store))
