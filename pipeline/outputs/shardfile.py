"""Writing whole shard files of Neuroglancer's ``neuroglancer_uint64_sharded_v1`` format.

A shard file is a fixed-size *shard index* (one ``[start, end)`` pair of uint64 per minishard),
then the chunk data, then one *minishard index* per minishard: three delta-encoded uint64 rows
(ids, start offsets relative to the end of the previous chunk, sizes). Offsets count from the end
of the shard index. Multi-resolution meshes store each segment's fragment data *immediately before*
its manifest, outside the index: :func:`encode_shard` takes that as a per-entry ``preamble``.

Only the ``identity`` hash is written here (ids are mapped to shards by their own bits), which keeps
consecutive segment ids together: emseg's final ids are numbered block by block, so one shard holds
the segments of a few neighbouring blocks.
"""

from __future__ import annotations

import gzip
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from emseg.pipeline.errors import ConfigError


@dataclass(frozen=True)
class ShardSpec:
    """Sharding parameters (the ``sharding`` member of an ``info``), identity hash only."""

    preshift_bits: int
    minishard_bits: int
    shard_bits: int
    minishard_index_encoding: str = "gzip"
    data_encoding: str = "raw"

    @classmethod
    def from_json(cls, spec: Mapping[str, Any]) -> ShardSpec:
        if spec.get("hash", "identity") != "identity":
            raise ConfigError(f"only the identity hash is supported for writing shards, got {spec.get('hash')!r}")
        return cls(int(spec["preshift_bits"]), int(spec["minishard_bits"]), int(spec["shard_bits"]),
                   spec.get("minishard_index_encoding", "raw"), spec.get("data_encoding", "raw"))

    def to_json(self) -> dict[str, Any]:
        return {
            "@type": "neuroglancer_uint64_sharded_v1",
            "preshift_bits": self.preshift_bits,
            "hash": "identity",
            "minishard_bits": self.minishard_bits,
            "shard_bits": self.shard_bits,
            "minishard_index_encoding": self.minishard_index_encoding,
            "data_encoding": self.data_encoding,
        }

    def shard_of(self, ids: np.ndarray | int) -> np.ndarray | int:
        hashed = np.asarray(ids, np.uint64) >> np.uint64(self.preshift_bits)
        out = (hashed >> np.uint64(self.minishard_bits)) & np.uint64((1 << self.shard_bits) - 1)
        return int(out) if np.ndim(out) == 0 else out

    def minishard_of(self, ids: np.ndarray) -> np.ndarray:
        hashed = np.asarray(ids, np.uint64) >> np.uint64(self.preshift_bits)
        return hashed & np.uint64((1 << self.minishard_bits) - 1)

    def shard_name(self, shard: int) -> str:
        """``<shard>.shard``, lowercase hex zero-padded to ``ceil(shard_bits / 4)`` digits.

        >>> ShardSpec(0, 2, 9).shard_name(10)
        '00a.shard'
        """
        digits = math.ceil(self.shard_bits / 4)
        return f"{shard:0{digits}x}.shard"


def spec_for_ids(max_id: int, ids_per_shard: int, minishard_bits: int = 3) -> ShardSpec:
    """Sharding for ids ``1..max_id`` where each shard holds a run of about ``ids_per_shard``
    consecutive ids (a power of two) split over ``2**minishard_bits`` minishards.

    >>> spec_for_ids(1000, 100)
    ShardSpec(preshift_bits=4, minishard_bits=3, shard_bits=3, minishard_index_encoding='gzip', data_encoding='raw')
    """
    per = max(1, int(ids_per_shard))
    low = max(0, math.ceil(math.log2(per)))
    minishard = min(minishard_bits, low)
    total = max(1, int(max_id).bit_length())
    return ShardSpec(low - minishard, minishard, max(0, total - low))


def encode_shard(entries: Sequence[tuple[int, bytes, bytes]], spec: ShardSpec) -> bytes:
    """One shard file from ``(id, value, preamble)`` entries (all in this shard).

    ``value`` is what the index points at (encoded with ``data_encoding``); ``preamble`` is stored
    raw right before it and is not indexed (use ``b""`` for none).
    """
    n_mini = 1 << spec.minishard_bits
    ids = np.array([e[0] for e in entries], np.uint64)
    order = np.lexsort((ids, spec.minishard_of(ids))) if len(ids) else np.zeros(0, np.int64)
    minis = spec.minishard_of(ids)[order] if len(ids) else np.zeros(0, np.uint64)
    data_parts: list[bytes] = []
    pos = 0
    rows: dict[int, list[tuple[int, int, int]]] = {}
    for i, mini in zip(order, minis):
        key, value, preamble = entries[int(i)]
        if spec.data_encoding == "gzip":
            value = gzip.compress(value, mtime=0)
        data_parts.append(preamble)
        pos += len(preamble)
        rows.setdefault(int(mini), []).append((int(key), pos, len(value)))
        data_parts.append(value)
        pos += len(value)
    index = np.zeros((n_mini, 2), "<u8")
    tail: list[bytes] = []
    for mini in range(n_mini):
        items = rows.get(mini)
        if not items:
            index[mini] = (pos, pos)
            continue
        arr = np.array(items, np.uint64).T.copy()  # ids, starts, sizes
        starts = arr[1].copy()
        ends = starts + arr[2]
        arr[0, 1:] = np.diff(arr[0])
        arr[1, 1:] = starts[1:] - ends[:-1]
        raw = arr.astype("<u8").tobytes()
        if spec.minishard_index_encoding == "gzip":
            raw = gzip.compress(raw, mtime=0)
        index[mini] = (pos, pos + len(raw))
        tail.append(raw)
        pos += len(raw)
    return index.tobytes() + b"".join(data_parts) + b"".join(tail)


def plan_groups(num_segments: int, num_blocks: int, fmt: str) -> tuple[int, dict[str, Any] | None]:
    """``(shift, sharding)``: groups of about ``num_segments / num_blocks`` consecutive ids (at least
    64), as powers of two; for ``sharded``, the sharding whose shards are exactly those groups.

    >>> plan_groups(1000, 8, "legacy")
    (7, None)
    >>> shift, sharding = plan_groups(1000, 8, "sharded")
    >>> shift, sharding["preshift_bits"] + sharding["minishard_bits"], sharding["shard_bits"]
    (7, 7, 3)
    """
    per = max(64, math.ceil(max(num_segments, 1) / max(num_blocks, 1)))
    spec = spec_for_ids(max(num_segments, 1), per)
    shift = spec.preshift_bits + spec.minishard_bits
    return shift, (spec.to_json() if fmt == "sharded" else None)
