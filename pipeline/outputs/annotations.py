"""Point annotations in Neuroglancer's precomputed annotation format (``neuroglancer_annotations_v1``).

:func:`point_annotations` returns the files of one annotation collection as ``{relative path: bytes}``
so that any key-value store can take them: the ``info``, the annotation-id index (``by_id/<id>``),
one related-object index per relationship (``<key>/<segment id>``) and a single-level spatial index
(``spatial0/0_0_0``). Positions are in voxels of the coordinate space given by ``voxel_size_nm``;
inputs are z, y, x like the rest of emseg and are written x, y, z.

One annotation is encoded as its position (3 float32), then its property values grouped by width
(4-byte types, then 2-byte, then 1-byte, each in the order of ``properties``), padding to a multiple
of 4 bytes; in the id index the related ids of each relationship follow (uint32 count, uint64 ids).
A list of annotations is a uint64 count, the encoded annotations, then their uint64 ids.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from emseg.pipeline.errors import ConfigError

_WIDTH = {"float32": 4, "uint32": 4, "int32": 4, "uint16": 2, "int16": 2, "uint8": 1, "int8": 1}


@dataclass(frozen=True)
class Property:
    """One annotation property: ``id`` matches ``[a-z][a-zA-Z0-9_]*``; ``type`` a numeric type."""

    id: str
    type: str
    description: str = ""
    enum: Mapping[int, str] | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id, "type": self.type}
        if self.description:
            out["description"] = self.description
        if self.enum:
            out["enum_values"] = [int(k) for k in self.enum]
            out["enum_labels"] = [str(v) for v in self.enum.values()]
        return out


def _ordered(properties: Sequence[Property]) -> list[Property]:
    for p in properties:
        if p.type not in _WIDTH:
            raise ConfigError(f"annotation property {p.id!r} has type {p.type!r}; use one of {sorted(_WIDTH)}")
    return sorted(properties, key=lambda p: -_WIDTH[p.type])  # stable: keeps the order within a width


def _records(positions_xyz: np.ndarray, values: Mapping[str, np.ndarray], props: list[Property]) -> np.ndarray:
    """Fixed-size binary records (geometry + properties + padding), one row of bytes per annotation."""
    fields = [("position", "<f4", (3,))] + [(p.id, np.dtype(p.type).newbyteorder("<")) for p in props]
    size = 12 + sum(_WIDTH[p.type] for p in props)
    dtype = np.dtype(fields)
    padded = np.dtype({"names": dtype.names, "formats": [dtype.fields[n][0] for n in dtype.names],
                       "offsets": [dtype.fields[n][1] for n in dtype.names], "itemsize": -(-size // 4) * 4})
    rec = np.zeros(len(positions_xyz), padded)
    rec["position"] = positions_xyz
    for p in props:
        rec[p.id] = values[p.id]
    return rec.view(np.uint8).reshape(len(positions_xyz), padded.itemsize)


def _encode_list(records: np.ndarray, ids: np.ndarray) -> bytes:
    return struct.pack("<Q", len(ids)) + records.tobytes() + np.asarray(ids, "<u8").tobytes()


def point_annotations(
    positions_zyx: np.ndarray,
    *,
    voxel_size_nm: Sequence[float],
    properties: Sequence[Property] = (),
    values: Mapping[str, np.ndarray] | None = None,
    relationships: Mapping[str, Sequence[Sequence[int]]] | None = None,
    bounds_zyx: tuple[Sequence[float], Sequence[float]] | None = None,
    seed: int = 0,
) -> dict[str, bytes]:
    """The files of a point-annotation collection; annotation ids are ``0 .. n-1``.

    ``relationships`` maps a relationship name (also its directory) to one list of related segment
    ids per annotation. ``bounds_zyx`` (lower, upper) defaults to the points' bounding box.

    >>> files = point_annotations(np.array([[1.0, 2.0, 3.0]]), voxel_size_nm=(8, 8, 8),
    ...     properties=[Property("score", "float32")], values={"score": np.array([0.5])},
    ...     relationships={"segments": [[4, 9]]})
    >>> sorted(files)
    ['by_id/0', 'info', 'segments/4', 'segments/9', 'spatial0/0_0_0']
    >>> np.frombuffer(files["by_id/0"][:16], "<f4").tolist()   # x, y, z, then the score
    [3.0, 2.0, 1.0, 0.5]
    """
    pos = np.asarray(positions_zyx, np.float64).reshape(-1, 3)
    n = len(pos)
    props = _ordered(properties)
    values = values or {}
    rels = relationships or {}
    for name, related in rels.items():
        if len(related) != n:
            raise ValueError(f"relationship {name!r} has {len(related)} entries for {n} annotations")
    xyz = pos[:, ::-1].astype(np.float32)
    records = _records(xyz, values, props)
    if bounds_zyx is None:
        lower = xyz.min(axis=0) if n else np.zeros(3)
        upper = xyz.max(axis=0) + 1 if n else np.ones(3)
    else:
        lower = np.asarray(bounds_zyx[0], np.float64)[::-1]
        upper = np.asarray(bounds_zyx[1], np.float64)[::-1]
    vz, vy, vx = (float(v) * 1e-9 for v in voxel_size_nm)
    info = {
        "@type": "neuroglancer_annotations_v1",
        "dimensions": {"x": [vx, "m"], "y": [vy, "m"], "z": [vz, "m"]},
        "lower_bound": [float(v) for v in lower],
        "upper_bound": [float(v) for v in upper],
        "annotation_type": "point",
        "properties": [p.to_json() for p in props],
        "relationships": [{"id": name, "key": name} for name in rels],
        "by_id": {"key": "by_id"},
        "spatial": [{
            "key": "spatial0",
            "grid_shape": [1, 1, 1],
            "chunk_size": [max(float(u - lo), 1.0) for lo, u in zip(lower, upper)],
            "limit": max(n, 1),
        }],
    }
    ids = np.arange(n, dtype=np.uint64)
    files: dict[str, bytes] = {"info": json.dumps(info).encode()}
    order = np.random.default_rng(seed).permutation(n)
    files["spatial0/0_0_0"] = _encode_list(records[order], ids[order])
    by_segment: dict[str, dict[int, list[int]]] = {name: {} for name in rels}
    for i in range(n):
        tail = b""
        for name, related in rels.items():
            segs = [int(s) for s in related[i]]
            tail += struct.pack("<I", len(segs)) + np.asarray(segs, "<u8").tobytes()
            for s in set(segs):
                by_segment[name].setdefault(s, []).append(i)
        files[f"by_id/{i}"] = records[i].tobytes() + tail
    for name, index in by_segment.items():
        for seg, members in index.items():
            m = np.asarray(members, np.int64)
            files[f"{name}/{seg}"] = _encode_list(records[m], ids[m])
    return files


def decode_list(blob: bytes, info: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """``(ids, positions x, y, z, property values)`` of an encoded annotation list (spatial or
    related-object index), as a reader of the format sees it."""
    (n,) = struct.unpack_from("<Q", blob, 0)
    props = [Property(p["id"], p["type"]) for p in info.get("properties", [])]
    size = -(-(12 + sum(_WIDTH[p.type] for p in props)) // 4) * 4
    body = np.frombuffer(blob, np.uint8, n * size, 8).reshape(n, size)
    positions = body[:, :12].copy().view("<f4").reshape(n, 3)
    offset = 12
    out: dict[str, np.ndarray] = {}
    for p in props:
        w = _WIDTH[p.type]
        out[p.id] = body[:, offset : offset + w].copy().view(np.dtype(p.type).newbyteorder("<")).reshape(n)
        offset += w
    ids = np.frombuffer(blob, "<u8", n, 8 + n * size)
    return ids, positions, out
