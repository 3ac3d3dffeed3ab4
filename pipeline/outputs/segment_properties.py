"""Per-segment statistics (voxel count, bounding box) and Neuroglancer's ``segment_properties``.

Statistics are gathered per block (:func:`block_stats`) and reduced (:func:`reduce_stats`), so
memory grows with the number of segments, never with voxels. The result is written as inline
segment properties, which the viewer lists, sorts and filters (``#sort voxels``, ``voxels>1000``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage


@dataclass(frozen=True)
class SegmentStats:
    """Segment ``ids`` (uint64, sorted) with voxel ``counts`` and bounding boxes ``lo``/``hi``
    ((n, 3) int64, z, y, x absolute voxels, half-open)."""

    ids: np.ndarray
    counts: np.ndarray
    lo: np.ndarray
    hi: np.ndarray

    def __len__(self) -> int:
        return len(self.ids)

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {"ids": self.ids, "counts": self.counts, "lo": self.lo, "hi": self.hi}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> SegmentStats:
        return cls(arrays["ids"], arrays["counts"], arrays["lo"].reshape(-1, 3), arrays["hi"].reshape(-1, 3))

    @classmethod
    def empty(cls) -> SegmentStats:
        z = np.zeros((0, 3), np.int64)
        return cls(np.zeros(0, np.uint64), np.zeros(0, np.int64), z, z.copy())


def block_stats(labels: np.ndarray, origin_zyx: Sequence[int]) -> SegmentStats:
    """Voxel counts and bounding boxes of the non-zero labels of one block at ``origin_zyx``.

    >>> a = np.zeros((2, 3, 4), np.uint64); a[0, 1:3, 1] = 7; a[1, 0, 3] = 9
    >>> s = block_stats(a, (10, 0, 0))
    >>> s.ids.tolist(), s.counts.tolist(), s.lo.tolist(), s.hi.tolist()
    ([7, 9], [2, 1], [[10, 1, 1], [11, 0, 3]], [[11, 3, 2], [12, 1, 4]])
    """
    import fastremap

    dense, remap = fastremap.renumber(np.ascontiguousarray(labels), preserve_zero=True, in_place=False)
    remap.pop(0, None)
    if not remap:
        return SegmentStats.empty()
    ids = np.zeros(len(remap), np.uint64)
    ids[np.fromiter(remap.values(), np.int64) - 1] = np.fromiter(remap.keys(), np.uint64)
    counts = np.bincount(dense.ravel(), minlength=len(ids) + 1)[1:].astype(np.int64)
    slices = ndimage.find_objects(dense, max_label=len(ids))
    order = np.argsort(ids)
    origin = np.asarray(origin_zyx, np.int64)
    lo = np.array([[s.start for s in sl] for sl in slices], np.int64) + origin
    hi = np.array([[s.stop for s in sl] for sl in slices], np.int64) + origin
    return SegmentStats(ids[order], counts[order], lo[order], hi[order])


def reduce_stats(parts: Sequence[SegmentStats]) -> SegmentStats:
    """Combine per-block statistics: counts add up, boxes take their union.

    >>> a = SegmentStats(np.array([1, 2], np.uint64), np.array([3, 4]), np.array([[0, 0, 0]] * 2), np.array([[1, 1, 1]] * 2))
    >>> b = SegmentStats(np.array([2], np.uint64), np.array([5]), np.array([[4, 0, 0]]), np.array([[6, 2, 1]]))
    >>> r = reduce_stats([a, b])
    >>> r.ids.tolist(), r.counts.tolist(), r.lo.tolist(), r.hi.tolist()
    ([1, 2], [3, 9], [[0, 0, 0], [0, 0, 0]], [[1, 1, 1], [6, 2, 1]])
    """
    parts = [p for p in parts if len(p)]
    if not parts:
        return SegmentStats.empty()
    ids = np.concatenate([p.ids for p in parts])
    unique, inverse = np.unique(ids, return_inverse=True)
    counts = np.bincount(inverse, weights=np.concatenate([p.counts for p in parts]).astype(np.float64),
                         minlength=len(unique))
    lo = np.full((len(unique), 3), np.iinfo(np.int64).max, np.int64)
    hi = np.full((len(unique), 3), np.iinfo(np.int64).min, np.int64)
    np.minimum.at(lo, inverse, np.concatenate([p.lo for p in parts]))
    np.maximum.at(hi, inverse, np.concatenate([p.hi for p in parts]))
    return SegmentStats(unique.astype(np.uint64), np.rint(counts).astype(np.int64), lo, hi)


def properties_info(stats: SegmentStats, voxel_size_nm: Sequence[float]) -> dict[str, Any]:
    """The ``segment_properties/info`` JSON: voxel count, volume and bounding box per segment.

    Counts are ``uint32`` while they fit and ``float32`` beyond; bounding boxes are in voxels,
    x, y, z, as Neuroglancer shows coordinates.
    """
    n = len(stats)
    counts = stats.counts
    fits = n == 0 or int(counts.max()) < 2**32
    voxel_um3 = float(np.prod(np.asarray(voxel_size_nm, np.float64))) * 1e-9
    lo_xyz = stats.lo[:, ::-1]
    hi_xyz = stats.hi[:, ::-1]
    props: list[dict[str, Any]] = [
        {"id": "voxels", "type": "number", "data_type": "uint32" if fits else "float32",
         "description": "voxels in the segment", "values": [int(c) for c in counts]},
        {"id": "volume_um3", "type": "number", "data_type": "float32",
         "description": "volume in cubic micrometres", "values": [round(float(c) * voxel_um3, 6) for c in counts]},
    ]
    for axis, name in enumerate("xyz"):
        props.append({"id": f"{name}_min", "type": "number", "data_type": "int32",
                      "description": f"bounding box start along {name} (voxels)",
                      "values": [int(v) for v in lo_xyz[:, axis]]})
        props.append({"id": f"{name}_max", "type": "number", "data_type": "int32",
                      "description": f"bounding box end along {name} (voxels, exclusive)",
                      "values": [int(v) for v in hi_xyz[:, axis]]})
    props.append({"id": "description", "type": "description", "values": [
        f"{int(c)} voxels, box x {a[0]}..{b[0]}, y {a[1]}..{b[1]}, z {a[2]}..{b[2]}"
        for c, a, b in zip(counts, lo_xyz.tolist(), hi_xyz.tolist())
    ]})
    return {
        "@type": "neuroglancer_segment_properties",
        "inline": {"ids": [str(int(i)) for i in stats.ids], "properties": props},
    }


def largest(stats: SegmentStats, k: int) -> list[int]:
    """The ids of the ``k`` largest segments, largest first (ties: smaller id first)."""
    if len(stats) == 0 or k <= 0:
        return []
    order = np.lexsort((stats.ids, -stats.counts))[:k]
    return [int(i) for i in stats.ids[order]]
