"""Sources emseg imports: TIFF stacks (tifffile) and HDF5 datasets (h5py), read box by box.

A source opens lazily and reads any box (z, y, x, zero-origin voxels) without loading the rest of
the volume: a TIFF stack is read through tifffile's zarr interface (a directory or glob of 2-D
slices, one per z, in natural order, or one multi-page / 3-D file), which decodes only the pages
(and, for tiled TIFFs, the tiles) a box touches; an HDF5 dataset is sliced with h5py, which reads the
dataset's chunks the box touches. N5 and zarr sources need no importer: emseg reads them directly
(``n5://``, ``zarr://``), and ``emseg import`` copies them through tensorstore like any volume.

Voxel size (nm) and offset come from the file where it records them:

- TIFF: OME-TIFF ``PhysicalSizeZ/Y/X`` (with units), else ImageJ's ``spacing`` and ``unit`` for z and
  the ``XResolution`` / ``YResolution`` tags (pixels per unit) for x and y;
- HDF5: the dataset's (or its file's) ``resolution`` / ``voxel_size`` / ``pixelResolution``
  attributes (nm, z, y, x), or ``element_size_um`` (micrometres: ilastik, Fiji), and ``offset`` /
  ``voxel_offset`` (voxels, z, y, x).

Where a file records none, :func:`open_source` leaves them None and the caller must ask for them.
"""

from __future__ import annotations

import glob
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from emseg.pipeline.errors import ConfigError, VolumeNotFoundError
from emseg.pipeline.geometry import Box

Vec3f = tuple[float, float, float]

#: length units to nanometres (the spellings TIFF writers use)
_NM = {"nm": 1.0, "nanometer": 1.0, "nanometre": 1.0, "um": 1e3, "µm": 1e3, "\\u00B5m": 1e3, "micron": 1e3,
       "micrometer": 1e3, "micrometre": 1e3, "mm": 1e6, "millimeter": 1e6, "cm": 1e7, "centimeter": 1e7,
       "m": 1e9, "meter": 1e9, "inch": 2.54e7, "a": 0.1, "å": 0.1, "angstrom": 0.1}

TIFF_SUFFIXES = (".tif", ".tiff")
HDF5_SUFFIXES = (".h5", ".hdf5", ".hdf", ".he5")


@dataclass
class Source:
    """A volume to import: shape (z, y, x), dtype, voxel size (nm) and offset (voxels) when known."""

    name: str
    shape_zyx: tuple[int, int, int]
    dtype: np.dtype
    voxel_size_nm: Vec3f | None
    offset_zyx: tuple[int, int, int] | None
    _array: Any = field(repr=False)
    _handle: Any = field(default=None, repr=False)

    def read(self, box: Box) -> np.ndarray:
        """The voxels of ``box`` (zero-origin), z, y, x, as a C-order array."""
        return np.ascontiguousarray(self._array[box.slices()])

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None


def _unit_nm(unit: Any) -> float | None:
    if unit is None:
        return None
    text = str(unit).strip().lower().replace("\u00b5", "µ")
    return _NM.get(text)


def _natural(name: str) -> list[Any]:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def tiff_files(path: str) -> list[str]:
    """The slice files of a TIFF stack: a directory's ``*.tif[f]``, a glob pattern's matches, or the one
    file, in natural order (``z2`` before ``z10``)."""
    if os.path.isdir(path):
        files = [os.path.join(path, f) for f in os.listdir(path) if f.lower().endswith(TIFF_SUFFIXES)]
    elif any(c in path for c in "*?["):
        files = glob.glob(path)
    elif os.path.isfile(path):
        files = [path]
    else:
        raise VolumeNotFoundError(f"no TIFF at {path!r}: the path does not exist; check it")
    if not files:
        raise VolumeNotFoundError(f"no .tif or .tiff files in {path!r}; point at the directory of slices or one file")
    return sorted(files, key=lambda f: _natural(os.path.basename(f)))


def _tiff_metadata(first: str) -> tuple[Vec3f | None, tuple[int, int, int] | None]:
    """Voxel size (nm, z, y, x, None where unrecorded) from one TIFF file's metadata."""
    import tifffile

    with tifffile.TiffFile(first) as tif:
        if tif.is_ome and tif.ome_metadata:
            found = _ome_sizes(tif.ome_metadata)
            if found is not None:
                return found, None
        page = tif.pages.first
        ij = tif.imagej_metadata or {}
        unit = _unit_nm(ij.get("unit")) if ij else None
        res_unit = page.tags.get("ResolutionUnit")
        if unit is None and res_unit is not None:
            unit = {2: _NM["inch"], 3: _NM["cm"]}.get(int(res_unit.value))
        xy: list[float | None] = []
        for tag in ("YResolution", "XResolution"):
            t = page.tags.get(tag)
            if t is None or unit is None:
                xy.append(None)
                continue
            num, den = t.value
            xy.append(unit * den / num if num else None)
        z = float(ij["spacing"]) * unit if ij.get("spacing") and unit is not None else None
        if None in xy or z is None:
            return None, None
        return (z, float(xy[0]), float(xy[1])), None  # type: ignore[arg-type]


def _ome_sizes(xml: str) -> Vec3f | None:
    sizes = []
    for axis in "ZYX":
        m = re.search(rf'PhysicalSize{axis}="([0-9.eE+-]+)"', xml)
        u = re.search(rf'PhysicalSize{axis}Unit="([^"]+)"', xml)
        if m is None:
            return None
        scale = _unit_nm(u.group(1)) if u else _NM["um"]  # OME's default unit is the micrometre
        if scale is None:
            return None
        sizes.append(float(m.group(1)) * scale)
    return tuple(sizes)  # type: ignore[return-value]


def open_tiff(path: str) -> Source:
    """A TIFF stack (directory, glob or one file) as a lazily read source."""
    import tifffile
    import zarr

    files = tiff_files(path)
    if len(files) == 1:
        store = tifffile.imread(files[0], aszarr=True)
    else:
        store = tifffile.TiffSequence(files).aszarr()
    arr = zarr.open(store, mode="r")
    if isinstance(arr, zarr.Group):  # a pyramidal TIFF: level 0
        arr = arr[sorted(arr.array_keys())[0]]
    shape = tuple(int(s) for s in arr.shape)
    if len(shape) == 2:
        arr = arr  # a single 2-D image: one z slice
        shape = (1, *shape)
        view: Any = _Expand(arr)
    elif len(shape) == 3:
        view = arr
    else:
        raise ConfigError(f"{path!r} has shape {list(shape)}; emseg imports single-channel 3-D volumes (z, y, x) "
                          "or stacks of 2-D slices")
    voxel, offset = _tiff_metadata(files[0])
    return Source(path, shape, np.dtype(arr.dtype), voxel, offset, view, store)  # type: ignore[arg-type]


class _Expand:
    """A 2-D array seen as one z slice."""

    def __init__(self, arr: Any) -> None:
        self.arr = arr

    def __getitem__(self, key: tuple[slice, slice, slice]) -> np.ndarray:
        return np.asarray(self.arr[key[1], key[2]])[None][key[0]]


_H5_VOXEL_KEYS = ("resolution", "voxel_size", "pixelResolution", "resolution_nm", "voxel_size_nm")
_H5_OFFSET_KEYS = ("offset", "voxel_offset")


def _h5_attr(attrs: Any, keys: Sequence[str]) -> Any:
    for k in keys:
        if k in attrs:
            v = attrs[k]
            if isinstance(v, bytes):
                v = v.decode()
            return v
    return None


def open_hdf5(path: str, dataset: str | None) -> Source:
    """An HDF5 dataset (``dataset`` inside ``path``; the only 3-D dataset when None), read lazily."""
    import h5py

    if not os.path.isfile(path):
        raise VolumeNotFoundError(f"no HDF5 file at {path!r}; check the path")
    f = h5py.File(path, "r")
    try:
        if dataset is None:
            found: list[str] = []
            f.visititems(lambda n, o: found.append(n) if isinstance(o, h5py.Dataset) and o.ndim == 3 else None)
            if len(found) != 1:
                raise ConfigError(f"{path!r} holds {len(found)} 3-D datasets ({', '.join(found[:5]) or 'none'}); "
                                  "name one with --dataset")
            dataset = found[0]
        if dataset not in f or not isinstance(f[dataset], h5py.Dataset):
            raise VolumeNotFoundError(f"no dataset {dataset!r} in {path!r}; check --dataset")
        ds = f[dataset]
        if ds.ndim != 3:
            raise ConfigError(f"dataset {dataset!r} in {path!r} has shape {list(ds.shape)}; emseg imports 3-D (z, y, x)")
        voxel: Vec3f | None = None
        for attrs in (ds.attrs, f.attrs):
            v = _h5_attr(attrs, _H5_VOXEL_KEYS)
            if v is not None:
                voxel = tuple(float(x) for x in np.ravel(v))  # type: ignore[assignment]
                break
            if "element_size_um" in attrs:
                voxel = tuple(float(x) * 1e3 for x in np.ravel(attrs["element_size_um"]))  # type: ignore[assignment]
                break
        if voxel is not None and len(voxel) != 3:
            voxel = None
        off = _h5_attr(ds.attrs, _H5_OFFSET_KEYS)
        offset = tuple(int(x) for x in np.ravel(off)) if off is not None and np.size(off) == 3 else None
        return Source(f"{path}:{dataset}", tuple(int(s) for s in ds.shape), ds.dtype, voxel, offset,  # type: ignore[arg-type]
                      ds, f)
    except BaseException:
        f.close()
        raise


def open_source(location: str, dataset: str | None = None) -> Source | None:
    """A TIFF or HDF5 source by path (``file.h5:/group/data`` names a dataset too); None for anything
    else, which is a volume URL emseg reads directly."""
    path, _, inner = location.partition(".h5:")
    if inner:
        return open_hdf5(path + ".h5", dataset or inner)
    lower = location.lower()
    if lower.endswith(HDF5_SUFFIXES):
        return open_hdf5(location, dataset)
    if lower.endswith(TIFF_SUFFIXES) or any(c in location for c in "*?[") or (
            os.path.isdir(location) and any(f.lower().endswith(TIFF_SUFFIXES) for f in os.listdir(location))):
        return open_tiff(location)
    return None
