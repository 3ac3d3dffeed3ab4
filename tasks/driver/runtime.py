"""Per-worker caches: each worker process opens a store or loads a model once and reuses it."""

from __future__ import annotations

import functools
import json
from typing import Any

import numpy as np

from emseg.pipeline import backends
from emseg.pipeline.io.scratch import Scratch
from emseg.pipeline.io.volume import ChannelVolume, Volume, open_channels, open_volume
from emseg.pipeline.stitching import unionfind
from emseg.pipeline.stitching.unionfind import BlockTable


@functools.lru_cache(maxsize=8)
def volume(spec_json: str, write: bool = False, run_id: str = "") -> Volume:
    """An open volume; writers pass their ``run_id`` so a restarted output is reopened."""
    return open_volume(json.loads(spec_json), write=write)


@functools.lru_cache(maxsize=2)
def channels(store: str, run_id: str = "") -> ChannelVolume:
    """An open (c, z, y, x) array of the run's output (``write.affinities``)."""
    return open_channels("zarr://" + store, write=True)


@functools.lru_cache(maxsize=4)
def backend(backend_json: str) -> Any:
    data = json.loads(backend_json)
    name = data.pop("name")
    return backends.create(name, backends.validate_params(name, data))


@functools.lru_cache(maxsize=8)
def scratch(output: str) -> Scratch:
    return Scratch(output)


@functools.lru_cache(maxsize=2)
def offsets(output: str, token: str) -> np.ndarray:
    """Per-block id offsets of run ``token`` (every relabel task of the run needs them)."""
    arrays = scratch(output).get_arrays("uf/offsets")
    if str(arrays["token"].tobytes(), "ascii") != token:
        raise RuntimeError(f"the union-find result in {output} belongs to another run; rerun with --restart")
    return arrays["offsets"]


@functools.lru_cache(maxsize=4096)
def table(output: str, token: str, block_id: int) -> BlockTable:
    """A block's merge table (``token`` keys the cache to one union-find result)."""
    arrays = scratch(output).get_arrays(f"uf/table/{block_id}")
    return BlockTable(arrays["locals"], arrays["finals"], block_id)


def final_ids(output: str, token: str, block_id: int, local_ids: np.ndarray, n_core: int | None = None) -> np.ndarray:
    """Final segment ids of block ``block_id``'s local labels (0 where a label got none)."""
    if n_core is None:
        n_core = int(scratch(output).get_arrays(f"labels/{block_id}")["n"][0])
    return unionfind.final_ids(table(output, token, block_id), n_core, offsets(output, token),
                               lambda other: table(output, token, other), local_ids)
