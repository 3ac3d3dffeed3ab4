"""``watershed``: a classical EM baseline that needs no model weights.

The steps, on one block (axis order z, y, x)::

    image ─▶ normalise to [0, 1] ─▶ Gaussian smoothing ─▶ boundary map b in [0, 1], membranes high
                                                              │
           interior = b < interior_threshold ◀────────────────┤
                   │                                          │
                   ▼                                          ▼
    distance transform ─▶ seeds at its peaks ─▶ seeded watershed on b ─▶ size filter
                                                                              │
                         uint32 labels, 1..n ◀── agglomeration (optional) ◀───┘

The boundary map: membranes are dark in (most) EM, so ``"intensity"`` is ``1 - intensity``;
``"tophat"`` is a black top-hat (the image's grey closing minus the image), which answers to dark
structures thinner than ``tophat_size`` (membranes) and not to wide dark blobs (mitochondria, dark
cytoplasm); ``"mixed"`` averages the two, which separates membrane from non-membrane voxels best on
FIB-25 (see ``benchmarks/tune_watershed.py``). An optional background subtraction (a wide
Gaussian) evens out slow changes of brightness first.

The agglomeration merges neighbouring segments hierarchically, the weakest shared face first (the
lowest quantile ``merge_quantile`` of the boundary values along it, or their mean), until no face
is weaker than ``merge_threshold``: the seeds over-segment on purpose and this step undoes most
of it. Segments under ``min_size`` voxels then join the neighbour across their weakest face.

The steps before agglomeration are local, so a block segments like the whole volume except within
a few ``sigma``, ``tophat_size`` and ``seed_min_distance`` of its border (:attr:`Backend.min_halo`).
Agglomeration is not local: a segment cut by the block border may merge differently, which the
stitching rule (IoU in the overlap, mutual best match) tolerates.
"""

from __future__ import annotations

import heapq
from typing import Any, ClassVar, Literal

import cc3d
import fastremap
import numpy as np
from pydantic import Field, model_validator
from scipy import ndimage as ndi
from skimage.segmentation import watershed

from emseg.pipeline.backends.base import BackendParams
from emseg.pipeline.errors import ConfigError, DtypeError

_DTYPE_RANGE: dict[str, tuple[float, float]] = {
    "uint8": (0.0, 255.0),
    "uint16": (0.0, 65535.0),
    "float32": (0.0, 1.0),
}


class Params(BackendParams):
    """Config keys of the ``watershed`` backend (``backend: {name: watershed, ...}``)."""

    #: Gaussian smoothing of the image before anything else, voxels (in z, y, x units of
    #: ``voxel_size_zyx``)
    sigma: float = Field(1.0, ge=0.0)
    #: wide Gaussian whose blur is subtracted to even out slow brightness changes; 0 turns it off
    background_sigma: float = Field(0.0, ge=0.0)
    #: membranes are "dark" (most EM) or "bright" (e.g. a membrane probability map)
    membrane: Literal["dark", "bright"] = "dark"
    #: "intensity": the boundary map is the (inverted, for dark membranes) intensity;
    #: "tophat": a morphological top-hat that keeps membrane-like structures thinner than
    #: ``tophat_size`` and drops wide dark blobs (mitochondria, dark cytoplasm); "mixed": the
    #: mean of the two
    boundary: Literal["intensity", "tophat", "mixed"] = "mixed"
    #: the top-hat's structuring element (a cube), voxels; wider than a membrane, narrower
    #: than a mitochondrion
    tophat_size: int = Field(9, ge=3)
    #: top-hat depth (in normalised intensity) that maps to boundary 1
    tophat_scale: float = Field(0.2, gt=0.0)
    #: intensities mapped to 0 and 1; None means the dtype's range (uint8 0..255, uint16
    #: 0..65535) and 0..1 for float32
    value_range: tuple[float, float] | None = None
    #: boundary-map values below this are cell interior (where seeds may lie)
    interior_threshold: float = Field(0.4, gt=0.0, lt=1.0)
    #: the least distance between two seeds in thick neurites, voxels (thin ones, where the
    #: interior is shallower than this, may have seeds closer together: see :func:`seeds`)
    seed_min_distance: int = Field(8, ge=1)
    #: a seed must be at least this far inside the interior, voxels
    seed_min_depth: float = Field(1.0, ge=0.0)
    #: compact watershed weight (0 = the classical watershed)
    compactness: float = Field(0.0, ge=0.0)
    #: segments with fewer voxels are handled as ``small_segments`` says
    min_size: int = Field(500, ge=0)
    #: "merge": a small segment joins the neighbour across its weakest face; "remove": set to 0
    small_segments: Literal["merge", "remove"] = "merge"
    #: agglomeration: merge neighbouring segments, weakest shared face first, while the face's
    #: statistic (``merge_quantile``) is below this; None turns agglomeration off
    merge_threshold: float | None = Field(0.4, gt=0.0, lt=1.0)
    #: the statistic of a face's boundary values that agglomeration compares with the
    #: threshold: None for the mean, else this quantile (0.5 = median)
    merge_quantile: float | None = Field(0.25, ge=0.0, le=1.0)
    #: faces smaller than this many voxel pairs are never merged by agglomeration
    merge_min_face: int = Field(20, ge=1)
    #: physical voxel size, z, y, x (only ratios matter); None (the default) takes the input's voxel
    #: size, which the engine fills in before the run (see pipeline/backends/base.py); isotropic when
    #: the backend is used on its own
    voxel_size_zyx: tuple[float, float, float] | None = None

    @property
    def spacing(self) -> tuple[float, float, float]:
        """``voxel_size_zyx``, or isotropic when it is unset."""
        return self.voxel_size_zyx or (1.0, 1.0, 1.0)

    @model_validator(mode="after")
    def _check(self) -> Params:
        if self.value_range is not None and not self.value_range[0] < self.value_range[1]:
            raise ConfigError(
                f"watershed value_range must be (low, high) with low < high, got "
                f"{list(self.value_range)}; e.g. [0, 255] for uint8 images"
            )
        if self.voxel_size_zyx is not None and any(v <= 0 for v in self.voxel_size_zyx):
            raise ConfigError(
                f"watershed voxel_size_zyx must be positive, got {list(self.voxel_size_zyx)}; "
                f"e.g. [8, 8, 8] or [40, 8, 8] (nm, only ratios matter)"
            )
        return self


def _sigma_zyx(sigma: float, voxel_size_zyx: tuple[float, float, float]) -> tuple[float, ...]:
    """A physical-isotropic Gaussian width per axis, in voxels (``sigma`` at the finest axis)."""
    finest = min(voxel_size_zyx)
    return tuple(sigma * finest / v for v in voxel_size_zyx)


def boundary_map(image: np.ndarray, params: Params) -> np.ndarray:
    """The smoothed boundary map in [0, 1], float32, membranes high."""
    low, high = params.value_range or _DTYPE_RANGE[image.dtype.name]
    x = (image.astype(np.float32) - np.float32(low)) / np.float32(high - low)
    if params.background_sigma > 0:
        background = ndi.gaussian_filter(x, _sigma_zyx(params.background_sigma, params.spacing))
        x = x - background + np.float32(background.mean(dtype=np.float64))
    if params.sigma > 0:
        x = ndi.gaussian_filter(x, _sigma_zyx(params.sigma, params.spacing))
    if params.membrane == "dark":
        x = 1.0 - x
    if params.boundary in ("tophat", "mixed"):
        half = (params.tophat_size - 1) / 2
        size = tuple(
            2 * max(1, round(half * min(params.spacing) / v)) + 1 for v in params.spacing
        )
        tophat = (x - ndi.grey_opening(x, size=size, mode="nearest")) / np.float32(params.tophat_scale)
        x = tophat if params.boundary == "tophat" else np.float32(0.5) * (x + np.minimum(tophat, 1))
    np.clip(x, 0.0, 1.0, out=x)
    return x


def seeds(boundary: np.ndarray, params: Params) -> np.ndarray:
    """Seed labels (uint32, 0 elsewhere) at the peaks of the interior's distance transform.

    A voxel at depth ``d`` (its distance to the nearest boundary voxel) is a peak if no voxel
    within ``min(d, seed_min_distance)`` is deeper. The window grows with the depth, so a thin
    neurite next to a thick one keeps its own seed, while the long ridge of a thick one gives
    seeds at least ``seed_min_distance`` apart. Connected peaks (plateaus) are one seed.
    """
    interior = boundary < params.interior_threshold
    if not interior.any():
        return np.zeros(boundary.shape, dtype=np.uint32)
    if interior.all():
        return np.ones(boundary.shape, dtype=np.uint32)
    finest = min(params.spacing)
    depth = ndi.distance_transform_edt(interior, sampling=params.spacing) / finest
    radii = np.unique(np.round(np.geomspace(1, params.seed_min_distance, 5)).astype(int))
    peaks = np.zeros(boundary.shape, dtype=bool)
    lower = 0.0
    for i, radius in enumerate(radii.tolist()):
        # Voxels whose window is this radius: depth in [radius, next radius); the last takes all.
        upper = float(radii[i + 1]) if i + 1 < radii.size else np.inf
        band = (depth >= lower) & (depth < upper) if i else depth < upper
        lower = upper
        if not band.any():
            continue
        size = tuple(max(1, 2 * round(radius * finest / v) + 1) for v in params.spacing)
        peaks |= band & (depth >= ndi.maximum_filter(depth, size=size, mode="nearest"))
    peaks &= interior & (depth >= max(params.seed_min_depth, np.finfo(np.float32).tiny))
    return cc3d.connected_components(peaks, connectivity=26, out_dtype=np.uint32)


_BINS = 64  # histogram bins of boundary values along a face, over [0, 1]


def _faces(labels: np.ndarray, boundary: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every pair of face-adjacent labels ``(a < b)``: the pairs, their sums and histograms.

    A voxel pair across the face contributes the mean of its two boundary values. Returns
    ``pairs`` (F, 2) int64, ``sums`` (F,) float64 and ``hists`` (F, _BINS) int64.
    """
    firsts, seconds, values = [], [], []
    for axis in range(labels.ndim):
        lo = [slice(None)] * labels.ndim
        hi = [slice(None)] * labels.ndim
        lo[axis], hi[axis] = slice(None, -1), slice(1, None)
        a, b = labels[tuple(lo)], labels[tuple(hi)]
        face = (a != b) & (a != 0) & (b != 0)
        firsts.append(a[face])
        seconds.append(b[face])
        values.append(0.5 * (boundary[tuple(lo)][face] + boundary[tuple(hi)][face]))
    a = np.concatenate(firsts).astype(np.uint64)
    b = np.concatenate(seconds).astype(np.uint64)
    v = np.concatenate(values).astype(np.float64)
    lo_id, hi_id = np.minimum(a, b), np.maximum(a, b)
    keys, index = np.unique((lo_id << np.uint64(32)) | hi_id, return_inverse=True)
    sums = np.bincount(index, weights=v, minlength=keys.size)
    bins = np.minimum((v * _BINS).astype(np.int64), _BINS - 1)
    hists = np.bincount(index * _BINS + bins, minlength=keys.size * _BINS).reshape(keys.size, _BINS)
    pairs = np.stack([keys >> np.uint64(32), keys & np.uint64(0xFFFFFFFF)], axis=1).astype(np.int64)
    return pairs, sums, hists


class _Face:
    """The voxel pairs two segments share: their count, sum and histogram of boundary values."""

    __slots__ = ("n", "total", "hist")

    def __init__(self, total: float, hist: np.ndarray) -> None:
        self.total = total
        self.hist = hist
        self.n = int(hist.sum())

    def pool(self, other: _Face) -> None:
        self.total += other.total
        self.hist = self.hist + other.hist
        self.n += other.n

    def value(self, quantile: float | None) -> float:
        """The mean boundary value, or the given quantile (to a bin's width)."""
        if quantile is None:
            return self.total / self.n
        k = int(np.searchsorted(np.cumsum(self.hist), quantile * self.n))
        return (min(k, _BINS - 1) + 0.5) / _BINS


class _RegionGraph:
    """Segments and their shared faces, merged in place; faces pool on every merge.

    ``faces[a][b]`` and ``faces[b][a]`` are one :class:`_Face`.
    """

    def __init__(self, labels: np.ndarray, boundary: np.ndarray) -> None:
        n_ids = int(labels.max()) + 1
        self.size = np.bincount(labels.reshape(-1), minlength=n_ids).tolist()
        self.parent = np.arange(n_ids, dtype=labels.dtype)
        self.faces: dict[int, dict[int, _Face]] = {i: {} for i in range(1, n_ids) if self.size[i]}
        pairs, sums, hists = _faces(labels, boundary)
        for (a, b), total, hist in zip(pairs.tolist(), sums.tolist(), hists):
            self.faces[a][b] = self.faces[b][a] = _Face(total, hist)

    def merge(self, a: int, b: int) -> None:
        """Merge ``b`` into ``a``."""
        self.parent[b] = a
        self.size[a] += self.size[b]
        faces_a = self.faces[a]
        del faces_a[b]
        for c, face in self.faces.pop(b).items():
            if c == a:
                continue
            del self.faces[c][b]
            pooled = faces_a.get(c)
            if pooled is None:
                faces_a[c] = self.faces[c][a] = face
            else:
                pooled.pool(face)

    def relabel(self, labels: np.ndarray) -> np.ndarray:
        parent = self.parent
        while True:  # follow chains to the final representative
            grand = parent[parent]
            if np.array_equal(grand, parent):
                break
            parent = grand
        return parent[labels]


def _agglomerate(graph: _RegionGraph, params: Params) -> None:
    """Merge neighbours hierarchically, weakest face first, while it is weaker than ``merge_threshold``.

    A face's strength is its mean boundary value, or a quantile of its values
    (``merge_quantile``): a low quantile ignores the membrane rim that a cut across a thin
    neurite also crosses. After each merge the faces of the pair to a common neighbour are
    pooled, so a face's statistic is always over every voxel pair it has. Faces smaller than
    ``merge_min_face`` voxel pairs wait until pooling makes them large enough.
    """
    threshold, min_face, q = params.merge_threshold, params.merge_min_face, params.merge_quantile
    if threshold is None:
        return
    faces = graph.faces
    heap = []
    for a, others in faces.items():
        for b, face in others.items():
            if a < b and face.n >= min_face:
                value = face.value(q)
                if value < threshold:
                    heap.append((value, a, b))
    heapq.heapify(heap)
    while heap:
        value, a, b = heapq.heappop(heap)
        face = faces.get(a, {}).get(b)
        if face is None or face.value(q) != value:
            continue  # merged away, or pooled since it was pushed
        graph.merge(a, b)
        for c, face in faces[a].items():
            if face.n >= min_face:
                value = face.value(q)
                if value < threshold:
                    heapq.heappush(heap, (value, min(a, c), max(a, c)))


def _absorb_small(graph: _RegionGraph, params: Params) -> list[int]:
    """Merge each segment under ``min_size`` into the neighbour across its weakest face.

    Smallest first. Returns the small segments that have no neighbour (left for the caller).
    """
    if params.min_size <= 1:
        return []
    heap = [(graph.size[a], a) for a in graph.faces if graph.size[a] < params.min_size]
    heapq.heapify(heap)
    lonely = []
    while heap:
        size, a = heapq.heappop(heap)
        if a not in graph.faces or graph.size[a] != size:
            continue
        others = graph.faces[a]
        if not others:
            lonely.append(a)
            continue
        # The weakest face; among equals the largest, then the lowest id.
        b = min(others, key=lambda c: (others[c].value(None), -others[c].n, c))
        graph.merge(b, a)
        if graph.size[b] < params.min_size:
            heapq.heappush(heap, (graph.size[b], b))
    return lonely


class Backend:
    """Seeded watershed on a smoothed boundary map; see the module docstring."""

    name: ClassVar[str] = "watershed"
    input_dtypes: ClassVar[tuple[str, ...]] = ("uint8", "uint16", "float32")
    float_range: ClassVar[tuple[float, float] | None] = (0.0, 1.0)
    min_halo: ClassVar[int] = 8
    default_stitch: ClassVar[dict[str, Any]] = {"min_overlap": 64, "min_iou": 0.5, "mutual_best": True}

    def __init__(self, params: Params) -> None:
        self.params = params

    #: stage 1 passes the no-data mask (NaN voxels, filled from their nearest neighbours) as ``nodata``
    takes_nodata: ClassVar[bool] = True

    def segment(self, image: np.ndarray, nodata: np.ndarray | None = None) -> np.ndarray:
        """Label one block: ``image`` (z, y, x) in, uint32 labels of the same shape out.

        ``nodata`` (bool, same shape) marks voxels without data: they get no seed and label 0, and the
        flooding does not pass through them, so no segment joins two regions across a no-data gap.

        Raises
        ------
        DtypeError
            If the image dtype is not one of :attr:`input_dtypes`.
        """
        image = np.asarray(image)
        if image.dtype.name not in self.input_dtypes:
            raise DtypeError(
                f"the watershed backend takes {' or '.join(self.input_dtypes)} images, got "
                f"{image.dtype.name}; convert the block (e.g. .astype(np.float32) scaled to 0..1)"
            )
        if image.ndim != 3:
            raise DtypeError(
                f"the watershed backend takes 3-d (z, y, x) blocks, got shape {image.shape}; "
                f"add a z axis of length 1 for a single 2-d image"
            )
        if image.size == 0:
            return np.zeros(image.shape, dtype=np.uint32)
        params = self.params
        boundary = boundary_map(image, params)
        markers = seeds(boundary, params)
        mask = None
        if nodata is not None and nodata.any():
            mask = ~nodata
            markers[nodata] = 0
        labels = watershed(boundary, markers=markers, compactness=params.compactness, mask=mask)
        labels = labels.astype(np.uint32, copy=False)
        if labels.max() == 0:
            return labels
        graph = _RegionGraph(labels, boundary)
        _agglomerate(graph, params)
        if params.small_segments == "merge":
            _absorb_small(graph, params)
        labels = graph.relabel(labels)
        if params.small_segments == "remove" and params.min_size > 1:
            ids, counts = fastremap.unique(labels, return_counts=True)
            small = ids[counts < params.min_size]
            labels[np.isin(labels, small)] = 0
        labels, _ = fastremap.renumber(labels, in_place=True, preserve_zero=True)
        return labels.astype(np.uint32, copy=False)
