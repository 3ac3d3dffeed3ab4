"""Multiscale filter features for the boundary forest (the ilastik pixel-classification recipe).

For each voxel, a fixed list of local filter responses at several scales, computed with
``scipy.ndimage`` (separable Gaussian smoothing) and numpy (finite differences, the closed-form
eigenvalues of a symmetric 3x3 matrix). The feature families follow ilastik's "Pixel
Classification" defaults (Sommer et al. 2011, ISBI; Berg et al. 2019, Nature Methods): Gaussian
smoothing, gradient magnitude, Laplacian of Gaussian and Hessian eigenvalues, each at several
sigmas.

Intensity normalisation (why a forest trained on one FIB-SEM volume works on another):
the image is first locally contrast normalised,

    n(v) = (I(v) - G_s * I (v)) / sqrt(G_s * I^2 (v) - (G_s * I (v))^2 + eps),

with a fixed Gaussian ``G_s`` (sigma ``LCN_SIGMA``, truncated at ``LCN_TRUNCATE`` sigma). ``n`` is
unchanged by any brightness offset and contrast gain of the input (up to ``eps``), so the features
never depend on a volume's global intensity range; the training script adds gamma and noise
augmentation for what an affine map does not cover. Nothing is computed from the whole block (no
min/max or percentile): every output voxel depends only on the image within :data:`CONTEXT` voxels
of it, which is what makes blockwise prediction independent of where the blocks are cut::

        |<-- LCN radius -->|<-- feature radius + 1 -->|
    image ---------------- n --------------------------- features(v)

Derivatives are central finite differences of the Gaussian-smoothed image (one smoothing per sigma
instead of the ten of exact Gaussian derivatives); for sigma >= 0.7 they differ from the exact
derivative-of-Gaussian responses by a smooth per-sigma factor, which the classifier does not see.

Speed on this repository's machine (AMD EPYC, one core busy): see docs/boundary.md.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage as ndi

#: sigmas (voxels) of the feature scales
SIGMAS: tuple[float, ...] = (0.7, 1.0, 1.6, 2.5, 4.0)
#: Gaussian truncation (in sigmas) of the feature filters
TRUNCATE = 3.0
#: sigma (voxels) and truncation of the local contrast normalisation
LCN_SIGMA = 4.0
LCN_TRUNCATE = 2.0
#: added to the local variance (intensities in [0, 1]) so flat regions do not blow up
LCN_EPS = 1e-4
#: value written into NaN (no data) voxels before filtering: mid-grey
NAN_FILL = 0.5
#: names of the features, in column order
PER_SIGMA = ("smooth", "gradient", "log", "hessian_0", "hessian_1", "hessian_2")
NAMES: tuple[str, ...] = ("lcn",) + tuple(f"{name}_s{s:g}" for s in SIGMAS for name in PER_SIGMA)
NUM_FEATURES = len(NAMES)


def _radius(sigma: float, truncate: float) -> int:
    """The half-width scipy uses for a Gaussian of ``sigma`` truncated at ``truncate`` sigmas."""
    return int(truncate * float(sigma) + 0.5)


#: voxels on each side of a voxel whose image values its features depend on (z, y, x)
CONTEXT: int = _radius(LCN_SIGMA, LCN_TRUNCATE) + _radius(max(SIGMAS), TRUNCATE) + 1


def normalise(image: np.ndarray) -> np.ndarray:
    """Local contrast normalisation of a (z, y, x) image; NaN voxels are first set to mid-grey.

    Returns float32 of the same shape, roughly zero-mean and unit-variance in every neighbourhood of
    ``LCN_SIGMA`` voxels. Depends on the image within ``_radius(LCN_SIGMA, LCN_TRUNCATE)`` voxels.
    """
    image = np.asarray(image, dtype=np.float32)
    if np.isnan(image).any():
        image = np.where(np.isnan(image), np.float32(NAN_FILL), image)
    mean = ndi.gaussian_filter(image, LCN_SIGMA, truncate=LCN_TRUNCATE, mode="reflect")
    square = ndi.gaussian_filter(image * image, LCN_SIGMA, truncate=LCN_TRUNCATE, mode="reflect")
    var = np.maximum(square - mean * mean, 0.0)
    out = image - mean
    out /= np.sqrt(var + np.float32(LCN_EPS))
    return out


def _shift_diff(a: np.ndarray, axis: int) -> np.ndarray:
    """Central difference ``(a[i+1] - a[i-1]) / 2`` along ``axis``, one-sided zero at the ends."""
    out = np.zeros_like(a)
    lo = [slice(None)] * 3
    hi = [slice(None)] * 3
    mid = [slice(None)] * 3
    lo[axis], hi[axis], mid[axis] = slice(None, -2), slice(2, None), slice(1, -1)
    np.subtract(a[tuple(hi)], a[tuple(lo)], out=out[tuple(mid)])
    out *= np.float32(0.5)
    return out


def _second_diff(a: np.ndarray, axis: int) -> np.ndarray:
    """``a[i+1] - 2 a[i] + a[i-1]`` along ``axis``, zero at the ends."""
    out = np.zeros_like(a)
    lo = [slice(None)] * 3
    hi = [slice(None)] * 3
    mid = [slice(None)] * 3
    lo[axis], hi[axis], mid[axis] = slice(None, -2), slice(2, None), slice(1, -1)
    out[tuple(mid)] = a[tuple(hi)] + a[tuple(lo)] - 2 * a[tuple(mid)]
    return out


def symmetric_eigenvalues(
    a11: np.ndarray, a22: np.ndarray, a33: np.ndarray, a12: np.ndarray, a13: np.ndarray, a23: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Eigenvalues of symmetric 3x3 matrices given elementwise, largest first.

    The closed form of Smith (1961), "Eigenvalues of a symmetric 3 x 3 matrix", Commun. ACM 4(4):168,
    vectorised; about ten times faster than ``numpy.linalg.eigvalsh`` on stacked matrices.

    >>> e = symmetric_eigenvalues(*(np.array([v], dtype=np.float32) for v in (2, 3, 4, 0, 0, 0)))
    >>> [round(float(x[0]), 4) for x in e]
    [4.0, 3.0, 2.0]
    """
    q = (a11 + a22 + a33) / 3
    b11, b22, b33 = a11 - q, a22 - q, a33 - q
    p1 = a12 * a12 + a13 * a13 + a23 * a23
    p2 = b11 * b11 + b22 * b22 + b33 * b33 + 2 * p1
    p = np.sqrt(p2 / 6)
    det = b11 * (b22 * b33 - a23 * a23) - a12 * (a12 * b33 - a23 * a13) + a13 * (a12 * a23 - b22 * a13)
    safe = np.where(p > 1e-12, p, 1)
    r = np.clip(det / (2 * safe * safe * safe), -1, 1)
    r = np.where(p > 1e-12, r, 0)
    phi = np.arccos(r) / 3
    e1 = q + 2 * p * np.cos(phi)
    e3 = q + 2 * p * np.cos(phi + np.float32(2 * math.pi / 3))
    e2 = 3 * q - e1 - e3
    return e1, e2, e3


def compute(image: np.ndarray, *, normalised: bool = False) -> np.ndarray:
    """The feature stack of a (z, y, x) image.

    Parameters
    ----------
    image
        (z, y, x) intensities in [0, 1] (NaN = no data), or the output of :func:`normalise` when
        ``normalised`` is true.

    Returns
    -------
    numpy.ndarray
        (z, y, x, NUM_FEATURES) float32, columns named by :data:`NAMES`. The value at a voxel depends
        on the image within :data:`CONTEXT` voxels of it only (scipy's ``reflect`` mode fills the
        array's outside, so the outer ``CONTEXT`` voxels differ from a larger array's).
    """
    image = np.asarray(image, dtype=np.float32)
    if image.ndim != 3:
        raise ValueError(f"features need a (z, y, x) image, got shape {image.shape}")
    n = image if normalised else normalise(image)
    out = np.empty(n.shape + (NUM_FEATURES,), dtype=np.float32)
    out[..., 0] = n
    col = 1
    for sigma in SIGMAS:
        g = ndi.gaussian_filter(n, sigma, truncate=TRUNCATE, mode="reflect")
        dz, dy, dx = (_shift_diff(g, axis) for axis in range(3))
        out[..., col] = g
        out[..., col + 1] = np.sqrt(dz * dz + dy * dy + dx * dx)
        hzz, hyy, hxx = (_second_diff(g, axis) for axis in range(3))
        hzy, hzx = _shift_diff(dz, 1), _shift_diff(dz, 2)
        hyx = _shift_diff(dy, 2)
        del dz, dy, dx, g
        out[..., col + 2] = hzz + hyy + hxx
        e1, e2, e3 = symmetric_eigenvalues(hzz, hyy, hxx, hzy, hzx, hyx)
        out[..., col + 3], out[..., col + 4], out[..., col + 5] = e1, e2, e3
        col += len(PER_SIGMA)
    return out
