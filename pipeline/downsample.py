"""Downsampling kernels and pyramid geometry: averaging for images, mode for segmentations.

A pyramid is a list of scales; scale ``k + 1`` halves scale ``k`` along the axes whose voxels are
finest (within 1.5x of the finest), so anisotropic data becomes more isotropic before it is halved
everywhere. Voxel ``j`` of a coarser scale covers voxels ``[f * j, f * j + f)`` of the finer one in
*absolute* coordinates (voxel offset included), so every scale lies on the same global grid::

    finer scale   |  0  1 |  2  3 |  4  5 |  6  7 |      (absolute voxel coordinates)
    coarser       |   0   |   1   |   2   |   3   |      f = 2

A volume whose offset or size is odd has coarse voxels at its edges that cover only one fine voxel;
the kernels take a validity mask for that, so edge voxels average (or vote over) real data only.

The segmentation kernel takes the *mode* of each cell, ties going to the first voxel in C order, so it
never invents an id: every output id occurs in its input cell. Everything here is pure numpy.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from pipeline.errors import ConfigError
from pipeline.geometry import Box

Vec = tuple[int, int, int]


@dataclass(frozen=True)
class Scale:
    """One scale of a pyramid, z, y, x, in absolute voxel coordinates of that scale."""

    shape_zyx: Vec
    offset_zyx: Vec
    voxel_size_nm: tuple[float, float, float]
    chunk_zyx: Vec
    #: factor relative to the previous (finer) scale; (1, 1, 1) for the base
    factor_zyx: Vec = (1, 1, 1)

    @property
    def box(self) -> Box:
        """The scale's domain in its own absolute voxel coordinates."""
        return Box.from_shape(self.shape_zyx, self.offset_zyx)

    @property
    def key(self) -> str:
        """The scale key Neuroglancer and tensorstore use: resolution x_y_z, integers when exact."""
        return "_".join(_num(v) for v in self.voxel_size_nm[::-1])


def _num(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else repr(float(v))


def next_factor(voxel_size_nm: Sequence[float], shape_zyx: Sequence[int]) -> Vec:
    """The factor of the next coarser scale: 2 along the finest axes (within 1.5x), 1 elsewhere.

    Axes that are already one voxel thick are not halved.

    >>> next_factor((8, 8, 8), (64, 64, 64))
    (2, 2, 2)
    >>> next_factor((40, 4, 4), (64, 512, 512))   # anisotropic: x and y first
    (1, 2, 2)
    >>> next_factor((40, 32, 32), (64, 64, 64))
    (2, 2, 2)
    """
    finest = min(float(v) for v in voxel_size_nm)
    out = tuple(2 if float(v) <= 1.5 * finest and s > 1 else 1 for v, s in zip(voxel_size_nm, shape_zyx))
    return out  # type: ignore[return-value]


def coarser(scale: Scale, factor: Sequence[int]) -> Scale:
    """The scale one level coarser than ``scale`` by ``factor`` on the same absolute grid.

    >>> s = coarser(Scale((10, 12, 7), (3, 0, 1), (8.0, 8.0, 8.0), (8, 8, 8)), (2, 2, 2))
    >>> s.offset_zyx, s.shape_zyx, s.voxel_size_nm
    ((1, 0, 0), (6, 6, 4), (16.0, 16.0, 16.0))
    """
    f = tuple(int(v) for v in factor)
    lo = tuple(o // k for o, k in zip(scale.offset_zyx, f))
    hi = tuple(-(-(o + s) // k) for o, s, k in zip(scale.offset_zyx, scale.shape_zyx, f))
    shape = tuple(b - a for a, b in zip(lo, hi))
    voxel = tuple(float(v) * k for v, k in zip(scale.voxel_size_nm, f))
    chunk = tuple(min(c, s) for c, s in zip(scale.chunk_zyx, shape))
    return Scale(shape, lo, voxel, chunk, f)  # type: ignore[arg-type]


def pyramid(base: Scale, levels: int | None, *, max_levels: int = 12) -> list[Scale]:
    """The base scale followed by ``levels`` coarser ones.

    ``levels=None`` keeps halving until the whole scale fits in one storage chunk of the base.

    >>> [s.shape_zyx for s in pyramid(Scale((256, 256, 256), (0, 0, 0), (8., 8., 8.), (64, 64, 64)), None)]
    [(256, 256, 256), (128, 128, 128), (64, 64, 64)]
    """
    if levels is not None and levels < 0:
        raise ConfigError(f"postprocess.pyramid_levels must be >= 0 (or null for automatic), got {levels}")
    out = [base]
    while True:
        cur = out[-1]
        if levels is not None and len(out) > levels:
            break
        if levels is None and (all(s <= c for s, c in zip(cur.shape_zyx, base.chunk_zyx)) or len(out) > max_levels):
            break
        factor = next_factor(cur.voxel_size_nm, cur.shape_zyx)
        if factor == (1, 1, 1):
            break
        out.append(coarser(cur, factor))
    return out


def source_box(target: Box, factor: Sequence[int], source_domain: Box) -> Box:
    """The finer-scale voxels (absolute) that a coarser-scale box covers, clipped to the source."""
    f = tuple(int(v) for v in factor)
    grown = Box(tuple(s * k for s, k in zip(target.start, f)), tuple(e * k for e, k in zip(target.stop, f)))
    return grown & source_domain


def _views(data: np.ndarray, target: Box, source: Box, factor: Vec) -> tuple[list[np.ndarray], list[np.ndarray] | None]:
    """The ``prod(factor)`` strided views of ``data`` that hold each cell's voxels, one per position
    in the cell (C order), each of the target's shape; plus validity views where the source does not
    fill every cell (volume edges on the absolute grid), else None."""
    if data.shape != source.shape:
        raise ValueError(f"data of shape {data.shape} does not match the source box {source}")
    full_shape = tuple(s * k for s, k in zip(target.shape, factor))
    origin = tuple(s * k for s, k in zip(target.start, factor))
    mask = None
    if data.shape != full_shape:
        inner = source.slices(origin)
        padded = np.zeros(full_shape, data.dtype)
        padded[inner] = data
        mask = np.zeros(full_shape, bool)
        mask[inner] = True
        data = padded
    offsets = list(np.ndindex(*factor))
    fz, fy, fx = factor
    views = [data[i::fz, j::fy, k::fx] for i, j, k in offsets]
    masks = None if mask is None else [mask[i::fz, j::fy, k::fx] for i, j, k in offsets]
    return views, masks


def downsample_labels(data: np.ndarray, target: Box, source: Box, factor: Sequence[int]) -> np.ndarray:
    """Mode downsampling of a label block: each output voxel is the commonest label of its cell.

    ``data`` holds the finer scale's voxels of ``source`` (absolute), which must be
    :func:`source_box` of ``target``. Ties go to the label met first in C order within the cell;
    only voxels inside the source count, so no id appears that is not in the input.

    >>> a = np.array([[[1, 2, 2, 3], [1, 5, 3, 3]]], np.uint64)   # z=1, y=2, x=4
    >>> downsample_labels(a, Box((0, 0, 0), (1, 1, 2)), Box((0, 0, 0), (1, 2, 4)), (1, 2, 2)).tolist()
    [[[1, 3]]]
    >>> # an odd edge: the last coarse voxel covers one fine voxel only
    >>> downsample_labels(np.array([[[4, 4, 7]]]), Box((0, 0, 0), (1, 1, 2)), Box((0, 0, 0), (1, 1, 3)), (1, 1, 2)).tolist()
    [[[4, 7]]]
    """
    f = tuple(int(v) for v in factor)
    views, masks = _views(data, target, source, f)  # type: ignore[arg-type]
    out = np.array(views[0], copy=True)
    if len(views) == 1:
        return out
    # Most cells of a segmentation hold one label: only the others need a vote.
    todo = np.zeros(target.shape, bool)
    for v in views[1:]:
        todo |= v != views[0]
    if masks is not None:
        for m in masks:
            todo |= ~m
    idx = np.flatnonzero(todo)
    if len(idx):
        c = np.stack([v.reshape(-1)[idx] if v.flags.c_contiguous else v[todo] for v in views], axis=1)
        valid = (np.ones(c.shape, bool) if masks is None
                 else np.stack([m.reshape(-1)[idx] if m.flags.c_contiguous else m[todo] for m in masks], axis=1))
        counts = np.zeros(c.shape, np.int16)
        for j in range(c.shape[1]):
            counts += (c == c[:, j : j + 1]) & valid[:, j : j + 1]
        counts[~valid] = -1
        out.reshape(-1)[idx] = c[np.arange(len(idx)), np.argmax(counts, axis=1)]
    return out


def downsample_image(data: np.ndarray, target: Box, source: Box, factor: Sequence[int]) -> np.ndarray:
    """Average downsampling of an image block (rounded to the nearest value for integer types).

    >>> a = np.array([[[0, 10, 20, 31]]], np.uint8)
    >>> downsample_image(a, Box((0, 0, 0), (1, 1, 2)), Box((0, 0, 0), (1, 1, 4)), (1, 1, 2)).tolist()
    [[[5, 26]]]
    """
    f = tuple(int(v) for v in factor)
    views, masks = _views(data, target, source, f)  # type: ignore[arg-type]
    total = np.zeros(target.shape, np.float64)
    for v in views:
        total += v
    if masks is None:
        mean = total / len(views)
    else:
        mean = total / np.maximum(np.sum(masks, axis=0), 1)  # padded voxels are 0: they add nothing
    if np.issubdtype(data.dtype, np.integer):
        info = np.iinfo(data.dtype)
        mean = np.clip(np.floor(mean + 0.5), info.min, info.max)
    return mean.astype(data.dtype)


def task_shape(scale: Scale, target_voxels: int = 128**3) -> Vec:
    """A chunk-aligned box shape for one downsampling task at ``scale``: about ``target_voxels``.

    >>> task_shape(Scale((512, 512, 512), (0, 0, 0), (8., 8., 8.), (64, 64, 64)))
    (128, 128, 128)
    """
    mult = [1, 1, 1]
    chunk = scale.chunk_zyx
    while True:
        grown = False
        for axis in range(3):
            cur = [c * m for c, m in zip(chunk, mult)]
            if cur[axis] >= scale.shape_zyx[axis]:
                continue
            if math.prod(cur) * 2 > target_voxels:
                continue
            mult[axis] *= 2
            grown = True
        if not grown:
            break
    return tuple(c * m for c, m in zip(chunk, mult))  # type: ignore[return-value]
