"""The FFN seed policy: where new objects start.

Seeds are tried in order, and a seed already inside a finished object is skipped:

1. peaks of the Euclidean distance transform of an *interior estimate* (voxels of the smoothed,
   normalised image above a threshold; in EM, membranes are dark), deepest first, so that big,
   easy objects are segmented before small ones;
2. then a regular *fallback grid*, which catches objects the interior estimate missed.

>>> grid_seeds((4, 4, 4), (2, 2, 2)).tolist()[:3]
[[1, 1, 1], [1, 1, 3], [1, 3, 1]]
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

Vec3 = tuple[int, int, int]


def interior_estimate(image: np.ndarray, sigma: float, threshold: float) -> np.ndarray:
    """Voxels likely inside a cell: ``gaussian(image, sigma) > threshold`` (normalised image)."""
    smooth = ndi.gaussian_filter(image.astype(np.float32, copy=False), sigma) if sigma > 0 else image
    return np.asarray(smooth > threshold)


def peak_seeds(interior: np.ndarray, min_distance: int, min_depth: float) -> np.ndarray:
    """Local maxima of the distance transform of ``interior``, deepest first.

    Parameters
    ----------
    interior
        Boolean interior estimate, z, y, x.
    min_distance
        Peaks closer than this (voxels, Chebyshev) to a deeper one are dropped.
    min_depth
        Peaks shallower than this (voxels from the nearest non-interior voxel) are dropped.

    Returns
    -------
    np.ndarray
        ``(N, 3)`` int64 voxel coordinates.
    """
    from skimage.feature import peak_local_max

    if not interior.any():
        return np.zeros((0, 3), np.int64)
    depth = ndi.distance_transform_edt(interior)
    peaks = peak_local_max(
        depth, min_distance=max(1, int(min_distance)), threshold_abs=min_depth, exclude_border=False
    )
    if len(peaks) == 0:
        return np.zeros((0, 3), np.int64)
    # peak_local_max sorts by value; make ties deterministic (C order) with a stable sort.
    order = np.argsort(-depth[tuple(peaks.T)], kind="stable")
    return peaks[order].astype(np.int64)


def grid_seeds(shape: Vec3, spacing: Vec3) -> np.ndarray:
    """A regular grid of points, ``spacing`` apart, half a spacing in from the low faces."""
    axes = [np.arange(max(0, sp // 2), s, max(1, sp)) for s, sp in zip(shape, spacing)]
    if any(a.size == 0 for a in axes):
        return np.zeros((0, 3), np.int64)
    return np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3).astype(np.int64)


def seed_points(
    image: np.ndarray,
    sigma: float,
    threshold: float,
    min_distance: int,
    min_depth: float,
    grid_spacing: Vec3,
) -> np.ndarray:
    """All seeds of a block, in the order they are tried: peaks, then the fallback grid."""
    interior = interior_estimate(image, sigma, threshold)
    peaks = peak_seeds(interior, min_distance, min_depth)
    grid = grid_seeds(image.shape, grid_spacing)  # type: ignore[arg-type]
    return np.concatenate([peaks, grid], axis=0)
