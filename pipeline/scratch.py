"""The scratch area of an output: intermediate data between stages, owned by this module alone.

Layout under ``<output>/scratch/`` (any kvstore: local, gs://, s3://)::

    run.json                  the fingerprint of the config the scratch data belongs to
    labels/<block>            stage 1: the block's core labels (uint32, local ids, core-first)
    faces/<block>             stage 1: its labels on the overlap with each face neighbour (boundary
                              backends: its first/last fragment planes, and the affinities across)
    tree/<block>              stage 1, boundary backends: the fragments' merge tree with scores
    edges/<block>             stage 2: scored candidate edges to its forward neighbours
    mapping                   stage 3: the union-find result (offsets + non-root table)
    done/<stage>/<block>      done-markers (JSON with small per-task facts), written last

Blobs are a JSON header plus blosc-lz4 compressed arrays. Every object is written whole (the file
kvstore renames a temporary file into place), and a task's done-marker is written only after all of
its objects, so a killed task leaves either nothing or something a rerun overwrites.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterable
from typing import Any

import numpy as np
import tensorstore as ts
from numcodecs import Blosc

from pipeline import urls

STAGES = ("1-segment", "2-seams", "3-unionfind", "4-relabel")
_CODEC = Blosc(cname="lz4", clevel=3, shuffle=Blosc.SHUFFLE)
_MAGIC = b"EMSG"


def encode_arrays(arrays: dict[str, np.ndarray]) -> bytes:
    """Pack named arrays into one blob.

    >>> blob = encode_arrays({"a": np.arange(6, dtype=np.uint32).reshape(2, 3)})
    >>> decode_arrays(blob)["a"].tolist()
    [[0, 1, 2], [3, 4, 5]]
    """
    header: list[dict[str, Any]] = []
    parts: list[bytes] = []
    for name, arr in arrays.items():
        arr = np.ascontiguousarray(arr)
        data = _CODEC.encode(arr) if arr.size else b""
        header.append({"name": name, "dtype": arr.dtype.str, "shape": list(arr.shape), "nbytes": len(data)})
        parts.append(bytes(data))
    head = json.dumps(header).encode()
    return _MAGIC + struct.pack("<I", len(head)) + head + b"".join(parts)


def decode_arrays(blob: bytes) -> dict[str, np.ndarray]:
    if blob[:4] != _MAGIC:
        raise ValueError("not an emseg scratch blob (bad magic); the scratch area is corrupt — rerun with --restart")
    (n,) = struct.unpack("<I", blob[4:8])
    header = json.loads(blob[8 : 8 + n])
    pos = 8 + n
    out: dict[str, np.ndarray] = {}
    for item in header:
        data = blob[pos : pos + item["nbytes"]]
        pos += item["nbytes"]
        dtype = np.dtype(item["dtype"])
        if data:
            arr = np.frombuffer(_CODEC.decode(data), dtype=dtype)
        else:
            arr = np.zeros(0, dtype)
        out[item["name"]] = arr.reshape(item["shape"])
    return out


class Scratch:
    """Access to ``<output>/scratch`` through a tensorstore kvstore."""

    def __init__(self, output: str) -> None:
        self.url = urls.join(urls.store_url(output), "scratch") + "/"
        self._kv: ts.KvStore | None = None

    @property
    def kv(self) -> ts.KvStore:
        if self._kv is None:
            self._kv = urls.open_kvstore(self.url)
        return self._kv

    def __getstate__(self) -> dict[str, Any]:
        return {"url": self.url, "_kv": None}

    # blobs -------------------------------------------------------------------------------------
    def write(self, key: str, data: bytes) -> None:
        self.kv.write(key, data).result()

    def read(self, key: str) -> bytes | None:
        got = self.kv.read(key).result()
        return bytes(got.value) if got.state == "value" else None

    def put_arrays(self, key: str, arrays: dict[str, np.ndarray]) -> None:
        self.write(key, encode_arrays(arrays))

    def get_arrays(self, key: str) -> dict[str, np.ndarray]:
        blob = self.read(key)
        if blob is None:
            raise FileNotFoundError(
                f"scratch object {self.url}{key} is missing although its producer is marked done; "
                "rerun with --restart"
            )
        return decode_arrays(blob)

    # done-markers ------------------------------------------------------------------------------
    def mark_done(self, stage: str, item: int | str, info: dict[str, Any]) -> None:
        self.write(f"done/{stage}/{item}", json.dumps(info).encode())

    def done_items(self, stage: str) -> set[str]:
        prefix = f"done/{stage}/"
        keys = self.kv.list(ts.KvStore.KeyRange(prefix, prefix[:-1] + "0")).result()
        return {k.decode()[len(prefix) :] for k in keys}

    def done_info(self, stage: str, item: int | str) -> dict[str, Any] | None:
        blob = self.read(f"done/{stage}/{item}")
        return None if blob is None else json.loads(blob)

    def clear_done(self, stage: str, items: Iterable[int | str] | None = None) -> None:
        if items is None:
            prefix = f"done/{stage}/"
            self.kv.delete_range(ts.KvStore.KeyRange(prefix, prefix[:-1] + "0")).result()
            return
        for item in items:
            self.kv.delete_range(ts.KvStore.KeyRange(f"done/{stage}/{item}", f"done/{stage}/{item}\x00")).result()

    def clear(self) -> None:
        self.kv.delete_range(ts.KvStore.KeyRange()).result()

    # fingerprint -------------------------------------------------------------------------------
    def fingerprint(self) -> dict[str, Any] | None:
        blob = self.read("run.json")
        return None if blob is None else json.loads(blob)

    def set_fingerprint(self, value: dict[str, Any]) -> None:
        self.write("run.json", json.dumps(value, sort_keys=True).encode())
