"""Per-worker caches: each worker process opens a store or loads a model once and reuses it."""

from __future__ import annotations

import functools
import json
from typing import Any

from pipeline import backends
from pipeline.scratch import Scratch
from pipeline.volume import Volume, open_volume
from pipeline.unionfind import Mapping


@functools.lru_cache(maxsize=8)
def volume(spec_json: str, write: bool = False, run_id: str = "") -> Volume:
    """An open volume; writers pass their ``run_id`` so a restarted output is reopened."""
    return open_volume(json.loads(spec_json), write=write)


@functools.lru_cache(maxsize=4)
def backend(backend_json: str) -> Any:
    data = json.loads(backend_json)
    name = data.pop("name")
    return backends.create(name, backends.validate_params(name, data))


@functools.lru_cache(maxsize=8)
def scratch(output: str) -> Scratch:
    return Scratch(output)


@functools.lru_cache(maxsize=2)
def mapping(output: str, token: str) -> Mapping:
    """The union-find result of run ``token`` (cached: every relabel task of the run needs it)."""
    arrays = scratch(output).get_arrays("mapping")
    if str(arrays["token"].tobytes(), "ascii") != token:
        raise RuntimeError(f"the mapping in {output} belongs to another run; rerun with --restart")
    return Mapping(arrays["offsets"], arrays["keys"], arrays["final"], int(arrays["num_segments"][0]))
