"""Input intensities as every backend gets them: no-data voxels, value range, and the check before a run.

Stage 1 passes each block's image through :func:`prepare` before an instance backend sees it, and
zeroes the labels of the no-data voxels afterwards (:func:`clear_nodata`), so the rules below hold for
every backend, present and future. Boundary backends (affinities) get the image with
``input_value_range`` applied and NaN kept: they mask NaN voxels out of their fragments themselves.

- **NaN is no data.** Aligned EM exports pad outside the tissue with NaN, and a never-written float
  chunk reads as its fill value, often NaN. Each NaN (or infinite) voxel is given the value the
  backend takes for "not an object" (``Backend.nodata_value()``: ``-inf`` for ``threshold-cc``), or,
  for a backend that names none, the value of the nearest finite voxel (Euclidean distance transform,
  :func:`scipy.ndimage.distance_transform_edt`), so that filters see no edge there; a backend that
  takes the mask (``watershed``) keeps its segments out of the gap; the backend runs on that, and the
  voxels' labels are set to 0. Labels farther from the no-data voxels than the backend's filters
  reach are those of the same image without them. A block that is all NaN is not given to the
  backend at all: its labels are 0.
- **Value range.** Backends assume float images in 0..1 (:attr:`Backend.float_range`). With
  ``input_value_range: [low, high]`` in the config, stage 1 maps ``low -> 0`` and ``high -> 1``
  (float32, not clipped) for any input dtype. Without it, :func:`check_range` samples the input before
  any work and refuses a float input whose values fall outside the backend's range, naming the key
  and a value to set (the smallest of 0..255 and 0..65535 that holds the sample, else its min..max).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage as ndi

from emseg.pipeline.errors import ConfigError


def prepare(image: np.ndarray, value_range: Sequence[float] | None = None, fill: float | None = None
            ) -> tuple[np.ndarray | None, np.ndarray | None]:
    """The image a backend gets, and the no-data mask.

    Parameters
    ----------
    image
        One block, (z, y, x), any numeric dtype.
    value_range
        ``(low, high)`` intensities mapped linearly to 0 and 1 (float32) first; None keeps the values.
    fill
        The value no-data voxels get, in the backend's units (after the mapping): what the backend
        takes for "not an object" (:meth:`Backend.nodata_value`). None: the nearest finite voxel's value.

    Returns
    -------
    (image, nodata)
        ``image`` with its non-finite voxels filled (None when no voxel is finite: the block has no
        data); ``nodata`` is the boolean mask of those voxels, or None when there are none.

    >>> img, nodata = prepare(np.array([[[0.0, np.nan, 1.0, 1.0]]], np.float32))
    >>> img.tolist(), nodata.tolist()
    ([[[0.0, 0.0, 1.0, 1.0]]], [[[False, True, False, False]]])
    >>> prepare(np.array([[[0.5, np.nan]]], np.float32), fill=-1.0)[0].tolist()
    [[[0.5, -1.0]]]
    >>> prepare(np.array([[[0, 255]]], np.uint8), (0, 255))[0].tolist()
    [[[0.0, 1.0]]]
    """
    if value_range is not None:
        image = map_range(image, value_range)
    nodata = None
    if image.dtype.kind == "f":
        bad = ~np.isfinite(image)
        if bad.any():
            if bad.all():
                return None, bad
            if fill is None:
                nearest = ndi.distance_transform_edt(bad, return_distances=False, return_indices=True)
                image = image[tuple(nearest)]
            else:
                image = np.where(bad, image.dtype.type(fill), image)
            nodata = bad
    return image, nodata


def map_range(image: np.ndarray, value_range: Sequence[float]) -> np.ndarray:
    """``(low, high)`` -> ``(0, 1)``, linearly, as float32 (not clipped; NaN stays NaN)."""
    low, high = (float(v) for v in value_range)
    return ((image.astype(np.float32) - np.float32(low)) / np.float32(high - low)).astype(np.float32, copy=False)


def clear_nodata(labels: np.ndarray, nodata: np.ndarray | None) -> np.ndarray:
    """Set the labels of no-data voxels to 0 (background)."""
    if nodata is not None:
        labels = np.array(labels, copy=True)
        labels[nodata] = 0
    return labels


def standard_range(low: float, high: float) -> tuple[float, float]:
    """The range to suggest for sampled values ``low..high``: 0..255, 0..65535 or the values' own span.

    >>> standard_range(3.0, 250.0), standard_range(-1.5, 2.0)
    ((0.0, 255.0), (-1.5, 2.0))
    """
    for top in (255.0, 65535.0):
        if low >= 0 and high <= top:
            return 0.0, top
    return float(low), float(high)


def check_range(values: np.ndarray, dtype: np.dtype, backend: str, float_range: Sequence[float] | None) -> None:
    """Refuse a float input whose sampled values lie outside what the backend takes.

    ``values`` is a sample of the input (non-finite voxels are ignored); ``float_range`` is the backend's
    :attr:`float_range` (None: it takes any values). Integer inputs are not checked: their dtype says
    their range.

    Raises
    ------
    ConfigError
        With the sampled span and an ``input_value_range`` to set.
    """
    if float_range is None or np.dtype(dtype).kind != "f":
        return
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return
    low, high = float(finite.min()), float(finite.max())
    lo, hi = (float(v) for v in float_range)
    slack = 1e-6 * max(1.0, hi - lo)
    if low >= lo - slack and high <= hi + slack:
        return
    s_lo, s_hi = standard_range(low, high)
    raise ConfigError(
        f"the input is {np.dtype(dtype).name} with values {low:g}..{high:g} (sampled from {finite.size} voxels), "
        f"but backend {backend!r} takes float images in {lo:g}..{hi:g}; set input_value_range: [{s_lo:g}, {s_hi:g}] "
        "(the intensities that map to 0 and 1), or rescale the volume"
    )


def sample_boxes(shape_zyx: Sequence[int], side: int = 32, per_axis: int = 3) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    """Up to ``per_axis**3`` boxes of ``side`` voxels spread evenly over a volume, as (start, stop).

    >>> sample_boxes((10, 10, 10), side=32, per_axis=3)
    [((0, 0, 0), (10, 10, 10))]
    """
    starts = []
    for s in shape_zyx:
        w = min(side, s)
        n = 1 if w == s else per_axis
        starts.append(sorted({round(i * (s - w) / max(n - 1, 1)) for i in range(n)}))
    widths = [min(side, s) for s in shape_zyx]
    return [((z, y, x), (z + widths[0], y + widths[1], x + widths[2]))
            for z in starts[0] for y in starts[1] for x in starts[2]]
