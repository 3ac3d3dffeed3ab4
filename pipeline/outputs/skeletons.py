"""Skeletons of a segmentation, block by block, joined across the seams (kimimaro, Seung lab).

Each block is skeletonized with TEASAR (:func:`kimimaro.skeletonize`) over its write box plus one
voxel on its high sides, with ``fix_borders``: kimimaro then puts a vertex at the centre of each
object's cross-section on the block's faces, and the two blocks that share a face plane (one reads
it as its last plane, the other as its first) put *identical* vertices there. Joining a segment's
pieces is then a plain union with the duplicate seam vertices merged (:func:`join`), which makes one
connected tree of an object that crosses any number of seams; kimimaro's ``postprocess`` then drops
dust, joins what is still apart, removes loops and ticks. igneous builds its skeletons the same way
(SkeletonTask with ``fix_borders``, then a merge per segment).

Coordinates: vertices are x, y, z nanometres in the segmentation's physical space, absolute voxel
index ``i`` (voxel offset included) at ``i * voxel size``, as cloud-volume and igneous write them;
radii in nanometres.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from emseg.pipeline.geometry import Box

#: TEASAR parameters: invalidation ball radius = scale * DBF + const (nm); the rest as kimimaro
DEFAULT_TEASAR: dict[str, float] = {"scale": 1.5, "const": 300.0, "pdrf_scale": 100000, "pdrf_exponent": 4}  # exponent: an int


def skeleton_box(write_box: Box, domain: Box) -> Box:
    """The box a block skeletonizes: its write box plus one voxel on the high sides, inside ``domain``.

    >>> skeleton_box(Box((0, 0, 0), (8, 8, 8)), Box((0, 0, 0), (16, 16, 8)))
    Box(start=(0, 0, 0), stop=(9, 9, 8))
    """
    grown = Box(write_box.start, tuple(e + 1 for e in write_box.stop))
    return grown & domain


def skeletonize_block(labels: np.ndarray, box_start_zyx: Sequence[int], voxel_size_nm: Sequence[float], *,
                      teasar: Mapping[str, float] | None = None, dust_voxels: int = 100) -> dict[int, Any]:
    """Skeletons of every object in ``labels`` (z, y, x voxels of the box starting at absolute voxel
    ``box_start_zyx``), as ``{id: Skeleton}`` with vertices in x, y, z nm of the whole volume.

    Objects under ``dust_voxels`` voxels *in this block* are skipped unless they touch the block's
    faces (their other parts may be large; kimimaro's own rule).
    """
    import kimimaro

    params = dict(DEFAULT_TEASAR, **(teasar or {}))
    anisotropy = tuple(float(v) for v in voxel_size_nm[::-1])  # x, y, z
    skels = kimimaro.skeletonize(
        np.asfortranarray(labels.T), teasar_params=params, anisotropy=anisotropy, dust_threshold=int(dust_voxels),
        progress=False, fix_branching=True, fix_borders=True, parallel=1, fix_avocados=False,
    )
    origin = np.array([s * v for s, v in zip(box_start_zyx[::-1], anisotropy)], np.float32)
    for skel in skels.values():
        skel.vertices = (skel.vertices + origin).astype(np.float32)
    return {int(k): v for k, v in skels.items()}


def to_arrays(skels: Mapping[int, Any]) -> dict[str, np.ndarray]:
    """Pack ``{id: Skeleton}`` into flat arrays (for scratch)."""
    ids = sorted(skels)
    parts = [skels[i] for i in ids]
    return {
        "ids": np.array(ids, np.uint64),
        "nv": np.array([len(s.vertices) for s in parts], np.int64),
        "ne": np.array([len(s.edges) for s in parts], np.int64),
        "vertices": np.concatenate([s.vertices for s in parts]).astype(np.float32) if parts else np.zeros((0, 3), np.float32),
        "edges": np.concatenate([s.edges for s in parts]).astype(np.uint32) if parts else np.zeros((0, 2), np.uint32),
        "radii": np.concatenate([s.radius for s in parts]).astype(np.float32) if parts else np.zeros(0, np.float32),
    }


def from_arrays(a: Mapping[str, np.ndarray]) -> dict[int, Any]:
    """Inverse of :func:`to_arrays`."""
    from cloudvolume import Skeleton

    out: dict[int, Any] = {}
    v_end, e_end = np.cumsum(a["nv"]), np.cumsum(a["ne"])
    for i, seg in enumerate(a["ids"].tolist()):
        v0 = int(v_end[i - 1]) if i else 0
        e0 = int(e_end[i - 1]) if i else 0
        out[int(seg)] = Skeleton(a["vertices"][v0 : int(v_end[i])], a["edges"][e0 : int(e_end[i])],
                                 radii=a["radii"][v0 : int(v_end[i])], segid=int(seg))
    return out


def join(pieces: Sequence[Any], segid: int, *, dust_nm: float = 0.0, tick_nm: float = 0.0) -> Any:
    """One skeleton from a segment's block pieces: union, the shared seam vertices merged, then
    kimimaro's postprocess (dust under ``dust_nm`` of cable dropped, components joined, loops and
    ticks under ``tick_nm`` removed)."""
    import kimimaro
    from cloudvolume import Skeleton

    skel = Skeleton.simple_merge(list(pieces)).consolidate()
    if len(skel.vertices):
        skel = kimimaro.postprocess(skel, dust_threshold=dust_nm, tick_threshold=tick_nm)
    skel.id = int(segid)
    return skel


def info(sharding: Mapping[str, Any] | None) -> dict[str, Any]:
    """The ``info`` of a precomputed skeleton directory (vertices in nm, one ``radius`` attribute)."""
    out: dict[str, Any] = {
        "@type": "neuroglancer_skeletons",
        "transform": [1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0],
        "vertex_attributes": [{"id": "radius", "data_type": "float32", "num_components": 1}],
        "spatial_index": None,
    }
    if sharding is not None:
        out["sharding"] = dict(sharding)
    return out
