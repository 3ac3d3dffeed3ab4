"""Segment meshes: marching cubes per block, joined per segment without cracks, Neuroglancer encodings.

Blocks are meshed independently (zmesh: marching cubes, then quadric simplification). A block reads
its write box plus **one voxel on its high sides**, so the marching-cubes cells of neighbouring blocks
tile space exactly and meet on a plane of voxel centres::

        block A reads [s, e+1)          block B reads [e, ...)
    ... ─┬────┬────┬────┐               ┌────┬────┬─ ...
         │    │ e-1│  e │  (voxel e      │  e │ e+1│
         ┼────┼────┼────┼   is read by   ┼────┼────┼
            A's cells   ▲   both)          B's cells
                        └ the seam: the plane through the centres of voxels e

Surfaces are left open on that plane, and the simplifier keeps open-boundary vertices where they are,
so both blocks put identical vertices on the seam; :func:`join` welds them and the segment's mesh is
closed (watertight) across every seam. Faces of the *volume* are padded with background, so meshes
close there too.

Coordinates: vertices are in absolute voxel units of the meshed scale where voxel ``i`` spans
``[i, i + 1)`` (its centre is ``i + 0.5``), z, y, x columns. The encoders convert to Neuroglancer's
x, y, z; the legacy format takes nanometres, the multi-resolution format takes these voxel units
with a scaling ``transform`` in its ``info``.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from emseg.pipeline.geometry import Box


@dataclass(frozen=True)
class Mesh:
    """A triangle mesh: ``vertices`` (n, 3) float32, z, y, x voxel units; ``faces`` (m, 3) uint32."""

    vertices: np.ndarray
    faces: np.ndarray

    @classmethod
    def empty(cls) -> Mesh:
        return cls(np.zeros((0, 3), np.float32), np.zeros((0, 3), np.uint32))

    def __len__(self) -> int:
        return len(self.faces)


def mesh_box(write_box: Box, domain: Box) -> tuple[Box, tuple[Sequence[int], Sequence[int]]]:
    """The box a block meshes (its write box plus one voxel on the high sides, clipped) and the
    background padding (low, high per axis) on the sides where it touches the volume's faces.

    >>> mesh_box(Box((0, 0, 0), (8, 8, 8)), Box((0, 0, 0), (16, 8, 16)))
    (Box(start=(0, 0, 0), stop=(9, 8, 9)), ((1, 1, 1), (0, 1, 0)))
    """
    grown = Box(write_box.start, tuple(e + 1 for e in write_box.stop)) & domain
    low = tuple(int(s == d) for s, d in zip(write_box.start, domain.start))
    high = tuple(int(e >= d) for e, d in zip(write_box.stop, domain.stop))
    return grown, (low, high)


def mesh_labels(
    labels: np.ndarray,
    origin_zyx: Sequence[int],
    pad: tuple[Sequence[int], Sequence[int]],
    *,
    reduction: int = 10,
    max_error: float = 1.0,
    lods: int = 1,
) -> dict[int, list[Mesh]]:
    """Marching cubes and simplification of every label in ``labels`` (0 is background).

    ``labels`` covers the absolute voxels starting at ``origin_zyx``; ``pad`` adds background on the
    given sides (see :func:`mesh_box`). ``reduction`` is the simplifier's target triangle reduction
    factor (0 keeps every triangle) and ``max_error`` the largest vertex displacement it may make,
    in voxels. Open boundaries (the block's seams) are never moved. With ``lods > 1`` level ``k``
    is simplified from the same marching-cubes surface with ``4**k`` times the reduction and the
    error (:func:`lod_error`), so every level closes across seams on its own. Returns ``{label: [mesh per level]}``.
    """
    import zmesh

    low, high = (tuple(int(v) for v in p) for p in pad)
    data = np.pad(np.ascontiguousarray(labels), list(zip(low, high)))
    mesher = zmesh.Mesher((1.0, 1.0, 1.0))
    mesher.mesh(data, close=False)
    shift = np.array([o - lo + 0.5 for o, lo in zip(origin_zyx, low)], np.float64)
    out: dict[int, list[Mesh]] = {}
    for label in mesher.ids():
        if label == 0:
            continue
        levels: list[Mesh] = []
        for k in range(lods):
            factor = reduction * 4**k if reduction else (4**k if k else 0)
            m = mesher.get(label, normals=False, reduction_factor=factor, max_error=lod_error(max_error, k))
            if len(m.faces) and np.isfinite(m.vertices).all():
                levels.append(Mesh((m.vertices.astype(np.float64) + shift).astype(np.float32), m.faces.astype(np.uint32)))
            elif levels:
                levels.append(levels[-1])  # the simplifier gave up on a tiny surface: keep the finer level
            else:
                raw = mesher.get(label, normals=False, reduction_factor=0)
                if len(raw.faces) == 0:
                    break
                levels.append(Mesh((raw.vertices.astype(np.float64) + shift).astype(np.float32),
                                   raw.faces.astype(np.uint32)))
        if levels:
            out[int(label)] = levels
    mesher.clear()
    return out


def lod_error(max_error: float, lod: int) -> float:
    """The simplification error (voxels) of level of detail ``lod``: 4x per level.

    >>> [lod_error(1.0, k) for k in range(3)]
    [1.0, 4.0, 16.0]
    """
    return float(max_error) * 4.0**lod


def _unique_rows(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(index of the first row of each distinct value, inverse)`` for an (n, 3) integer array,
    distinct values in lexicographic order (a lexsort: much faster than ``np.unique(axis=0)``)."""
    n = len(rows)
    if n == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    order = np.lexsort((rows[:, 2], rows[:, 1], rows[:, 0]))
    s = rows[order]
    new = np.ones(n, bool)
    new[1:] = np.any(s[1:] != s[:-1], axis=1)
    inverse = np.empty(n, np.int64)
    inverse[order] = np.cumsum(new) - 1
    return order[new], inverse


def join(parts: Iterable[Mesh]) -> Mesh:
    """One mesh from pieces: concatenate, weld vertices with identical coordinates, drop degenerate
    and duplicate triangles, and drop vertices no triangle uses.

    >>> a = Mesh(np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0]], np.float32), np.array([[0, 1, 2]], np.uint32))
    >>> b = Mesh(np.array([[1, 0, 0], [0, 1, 0], [1, 1, 0]], np.float32), np.array([[0, 2, 1]], np.uint32))
    >>> m = join([a, b])
    >>> len(m.vertices), m.faces.tolist()
    (4, [[0, 2, 1], [2, 3, 1]])
    """
    parts = [p for p in parts if len(p.faces)]
    if not parts:
        return Mesh.empty()
    vertices = np.concatenate([p.vertices for p in parts]).astype(np.float32, copy=False)
    offsets = np.cumsum([0] + [len(p.vertices) for p in parts[:-1]])
    faces = np.concatenate([p.faces.astype(np.int64) + o for p, o in zip(parts, offsets)])
    # Identical coordinates are identical bits (+0.0 only: vertices are sums with positive shifts).
    first, inverse = _unique_rows(vertices.view(np.uint32).reshape(-1, 3))
    unique = vertices[first]
    faces = inverse[faces]
    ok = (faces[:, 0] != faces[:, 1]) & (faces[:, 1] != faces[:, 2]) & (faces[:, 0] != faces[:, 2])
    faces = faces[ok]
    # The same triangle twice (same vertices, any rotation) is dropped once; opposite windings stay.
    rot = np.argmin(faces, axis=1)
    canon = np.stack([faces[np.arange(len(faces)), (rot + k) % 3] for k in range(3)], axis=1)
    keep, _ = _unique_rows(canon)
    faces = faces[np.sort(keep)]
    used, remap = np.unique(faces, return_inverse=True)
    return Mesh(unique[used], remap.reshape(-1, 3).astype(np.uint32))


def boundary_edges(mesh: Mesh) -> np.ndarray:
    """Edges not shared by exactly two triangles, as (k, 2) vertex indices; empty for a closed mesh."""
    f = mesh.faces.astype(np.int64)
    edges = np.sort(np.concatenate([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]]), axis=1)
    unique, counts = np.unique(edges, axis=0, return_counts=True)
    return unique[counts != 2]


def _xyz(mesh: Mesh) -> tuple[np.ndarray, np.ndarray]:
    """Vertices as x, y, z and faces re-wound so that outward normals stay outward (the axis swap is
    a reflection)."""
    return mesh.vertices[:, ::-1], mesh.faces[:, [0, 2, 1]]


# -- legacy single-resolution format -------------------------------------------------------------

def encode_legacy(mesh: Mesh, voxel_size_nm: Sequence[float]) -> bytes:
    """One legacy precomputed mesh fragment: uint32 vertex count, float32 x, y, z nanometres,
    uint32 triangle indices.

    >>> m = Mesh(np.array([[0, 0, 0], [0, 0, 1], [0, 1, 0]], np.float32), np.array([[0, 1, 2]], np.uint32))
    >>> blob = encode_legacy(m, (8, 4, 4))
    >>> decode_legacy(blob)[0].tolist(), len(blob)
    ([[0.0, 0.0, 0.0], [4.0, 0.0, 0.0], [0.0, 4.0, 0.0]], 52)
    """
    v, f = _xyz(mesh)
    nm = (v.astype(np.float64) * np.asarray(voxel_size_nm, np.float64)[::-1]).astype("<f4")
    return struct.pack("<I", len(nm)) + nm.tobytes() + f.astype("<u4").tobytes()


def decode_legacy(blob: bytes) -> tuple[np.ndarray, np.ndarray]:
    """``(vertices x, y, z nm, faces)`` of a legacy fragment (as Neuroglancer reads it)."""
    (n,) = struct.unpack("<I", blob[:4])
    vertices = np.frombuffer(blob, "<f4", 3 * n, 4).reshape(n, 3)
    faces = np.frombuffer(blob, "<u4", offset=4 + 12 * n).reshape(-1, 3)
    return vertices, faces


# -- multi-resolution (Draco) format -------------------------------------------------------------

QUANTIZATION_BITS = 16


def multires_info(voxel_size_nm: Sequence[float], sharding: dict | None) -> dict:
    """The ``info`` of a ``neuroglancer_multilod_draco`` mesh directory whose stored model space is
    voxels of ``voxel_size_nm`` (z, y, x)."""
    vz, vy, vx = (float(v) for v in voxel_size_nm)
    info: dict = {
        "@type": "neuroglancer_multilod_draco",
        "vertex_quantization_bits": QUANTIZATION_BITS,
        "transform": [vx, 0, 0, 0, 0, vy, 0, 0, 0, 0, vz, 0],
        "lod_scale_multiplier": 1.0,
    }
    if sharding is not None:
        info["sharding"] = sharding
    return info


def encode_multires(lods: Sequence[Mesh], lod_scales: Sequence[float] | None = None) -> tuple[bytes, bytes]:
    """``(manifest, fragment data)`` of one segment with one fragment per level of detail.

    ``lod_scales`` (voxels; default ``2**k``) tell the viewer how coarse each level is.

    Every level lies in octree node (0, 0, 0): the finest node spans the segment's bounding box
    (whole voxels), so a level-``k`` node (``2**k`` times larger) holds the whole mesh in its first
    octant and no triangle crosses the node's 2x2x2 partition, as the format requires.
    """
    import DracoPy

    xyz = [_xyz(m) for m in lods]
    allv = np.concatenate([v for v, _ in xyz])
    origin = np.floor(allv.min(axis=0))
    shape = np.maximum(np.ceil(allv.max(axis=0)) - origin, 1.0)
    top = (1 << QUANTIZATION_BITS) - 1
    blobs = []
    for lod, (v, f) in enumerate(xyz):
        q = np.rint((v - origin) / (shape * (1 << lod)) * top).astype(np.int64)
        q = np.clip(q, 0, top).astype(np.float32)
        blobs.append(DracoPy.encode(q, f.astype(np.uint32), quantization_bits=QUANTIZATION_BITS,
                                    compression_level=5, quantization_range=float(top),
                                    quantization_origin=[0.0, 0.0, 0.0]))
    n = len(lods)
    manifest = b"".join([
        np.asarray(shape, "<f4").tobytes(),
        np.asarray(origin, "<f4").tobytes(),
        struct.pack("<I", n),
        np.asarray(list(lod_scales)[:n] if lod_scales is not None else [float(1 << k) for k in range(n)],
                   "<f4").tobytes(),
        np.zeros((n, 3), "<f4").tobytes(),
        np.ones(n, "<u4").tobytes(),
        b"".join(np.zeros(3, "<u4").tobytes() + struct.pack("<I", len(b)) for b in blobs),
    ])
    return manifest, b"".join(blobs)


def decode_multires(manifest: bytes, data: bytes) -> list[tuple[np.ndarray, np.ndarray]]:
    """``[(vertices x, y, z in stored model units, faces) per level]``, as Neuroglancer reads them."""
    import DracoPy

    chunk = np.frombuffer(manifest, "<f4", 3, 0)
    origin = np.frombuffer(manifest, "<f4", 3, 12)
    (n,) = struct.unpack_from("<I", manifest, 24)
    pos = 28 + 4 * n
    offsets = np.frombuffer(manifest, "<f4", 3 * n, pos).reshape(n, 3)
    pos += 12 * n
    counts = np.frombuffer(manifest, "<u4", n, pos)
    pos += 4 * n
    top = (1 << QUANTIZATION_BITS) - 1
    out = []
    start = 0
    for lod in range(n):
        k = int(counts[lod])
        positions = np.frombuffer(manifest, "<u4", 3 * k, pos).reshape(3, k)
        sizes = np.frombuffer(manifest, "<u4", k, pos + 12 * k)
        pos += 16 * k
        for j in range(k):
            blob = data[start : start + int(sizes[j])]
            start += int(sizes[j])
            decoded = DracoPy.decode(blob)
            q = np.asarray(decoded.points, np.float64)
            v = origin + offsets[lod] + chunk * (1 << lod) * (positions[:, j] + q / top)
            out.append((v, np.asarray(decoded.faces, np.uint32).reshape(-1, 3)))
    return out


def levels_of_detail(by_lod: dict[int, list[Mesh]]) -> list[Mesh]:
    """The joined mesh of each level, keeping a coarser level only while it has clearly fewer triangles."""
    lods = [join(by_lod[0])]
    for k in sorted(by_lod)[1:]:
        coarse = join(by_lod[k])
        if len(coarse.faces) > 0.85 * len(lods[-1].faces) or len(coarse.faces) < 4:
            break
        lods.append(coarse)
    return lods
