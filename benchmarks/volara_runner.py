"""Run volara's blockwise fragments + agglomeration + relabel on an affinity zarr (volara's own venv).

This script runs in a separate virtual environment that holds volara (PyPI) and its stack (daisy,
mwatershed, funlib.persistence); emseg's venv never imports volara. ``bench_volara.py`` calls it as a
subprocess with one JSON argument and reads the JSON it writes::

    .venv-volara/bin/python benchmarks/volara_runner.py '{"work": ..., "affs": ..., ...}'

Input (keys of the JSON argument):

- ``work``: a scratch directory (volara's logs, block-done markers, the fragment graph, LUTs and
  outputs go there);
- ``affs``: a ``.npy`` file of float32 affinities ``(3, z, y, x)`` in emseg's (and waterz's)
  convention: channel ``d`` at voxel ``v`` is the affinity of ``v`` with ``v - e_d``. volara takes
  any neighbourhood, so these are described to it as the offsets ``(-1,0,0), (0,-1,0), (0,0,-1)``
  (gunpowder's convention) and used unchanged;
- ``voxel_size``: nm per voxel (z, y, x); ``block``: the block shape in voxels (z, y, x);
- ``workers``: daisy workers (processes);
- ``frag_bias`` (``ExtractFrags.bias``, one per offset), ``context`` (voxels of context for
  ``ExtractFrags`` and ``AffAgglom``), ``remove_debris``: fragment parameters;
- ``graph_biases``: the ``GraphMWS`` biases to make segmentations for; the first is the timed run.

The pipeline is the one volara's tutorial and CREMI example use: ``ExtractFrags`` (mutex watershed per
block, fragments stored in a zarr and as nodes of an SQLite graph) -> ``AffAgglom`` (mean affinity
between touching fragments, an edge attribute) -> ``GraphMWS`` (mutex watershed on the fragment
graph with edge weight ``mean affinity + bias``; a look-up table) -> ``Relabel`` (fragments through
the look-up table, blockwise). Wall time is measured around each task's ``run_blockwise``; volara's
own benchmark logger records per-operation times inside the workers (summed over blocks), which
gives the time spent reading the affinities.

Output: ``<work>/volara.json`` with the timings, fragment and edge counts, and per graph bias the
path of the segmentation zarr array.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing as mp
import os
import sqlite3
import sys
import time
from collections.abc import Iterator
from pathlib import Path


def main(args: dict) -> dict:
    mp.set_start_method("fork", force=True)  # as volara's examples do; workers inherit the logger patch
    import numpy as np
    from funlib.geometry import Coordinate, Roi
    from funlib.persistence import prepare_ds

    import volara
    from volara.blockwise import AffAgglom, ExtractFrags, GraphMWS, Relabel
    from volara.blockwise.blockwise import BlockwiseTask
    from volara.datasets import Affs, Labels
    from volara.dbs import SQLite
    from volara.logging import set_log_basedir
    from volara.lut import LUT

    work = Path(args["work"])
    work.mkdir(parents=True, exist_ok=True)
    set_log_basedir(work / "volara_logs")
    ops_dir = work / "ops"
    ops_dir.mkdir(exist_ok=True)

    # volara's tasks time their operations through ``get_benchmark_logger().trace(name)``; its own
    # logger commits each record to one SQLite file, which under two workers on a loaded machine
    # costs more than some of the operations. This one appends a line per operation to a file per
    # worker process instead (the same names, the same placement in volara's code).
    class Trace:
        def __init__(self, task: str) -> None:
            self.task = task

        @contextlib.contextmanager
        def trace(self, operation: str) -> Iterator[None]:
            t0 = time.perf_counter()
            try:
                yield
            finally:
                dt = time.perf_counter() - t0
                with open(ops_dir / f"{os.getpid()}.tsv", "a") as f:
                    f.write(f"{self.task}\t{operation}\t{dt}\n")

    def logger(self: BlockwiseTask) -> Trace:
        return Trace(self.task_name)

    BlockwiseTask.get_benchmark_logger = logger  # type: ignore[method-assign]

    voxel_size = Coordinate(args["voxel_size"])
    block = Coordinate(args["block"])
    context = Coordinate(args["context"])
    neighborhood = [Coordinate(-1, 0, 0), Coordinate(0, -1, 0), Coordinate(0, 0, -1)]
    container = work / "volara.zarr"

    # the affinities, once, with the metadata volara reads (not timed: this is the model's output)
    t = time.perf_counter()
    affs_np = np.load(args["affs"], mmap_mode="r")
    affs_arr = prepare_ds(
        container / "affs", affs_np.shape, offset=(0, 0, 0), voxel_size=voxel_size,
        axis_names=["offset^", "z", "y", "x"], units=["nm", "nm", "nm"],
        chunk_shape=(3, *block), dtype=np.float32, mode="w",
    )
    affs_arr[:] = np.asarray(affs_np, np.float32)
    affs_arr._source_data.attrs["neighborhood"] = [list(o) for o in neighborhood]
    write_affs = time.perf_counter() - t
    shape = affs_np.shape[1:]
    del affs_np

    db = SQLite(path=str(work / "fragments.db"), edge_attrs={"zyx_aff": "float"})
    affs = Affs(store=container / "affs", neighborhood=neighborhood)
    frags = Labels(store=container / "fragments")
    workers = int(args["workers"])
    extract = ExtractFrags(
        db=db, affs_data=affs, frags_data=frags, block_size=block, context=context,
        bias=list(args["frag_bias"]), remove_debris=int(args["remove_debris"]), num_workers=workers,
    )
    agglom = AffAgglom(
        db=db, affs_data=affs, frags_data=frags, block_size=block, context=context,
        scores={"zyx_aff": neighborhood}, num_workers=workers,
    )
    total_roi = Roi((0, 0, 0), Coordinate(shape) * voxel_size)

    def graph_and_relabel(bias: float, tag: str) -> tuple[Labels, LUT, GraphMWS, Relabel]:
        lut = LUT(path=str(work / f"lut_{tag}.npz"))
        segs = Labels(store=container / f"segments_{tag}")
        mws = GraphMWS(db=db, lut=lut, weights={"zyx_aff": (1.0, float(bias))}, roi=total_roi)
        relabel = Relabel(lut=lut, frags_data=frags, seg_data=segs, block_size=block, num_workers=workers)
        return segs, lut, mws, relabel

    seconds: dict[str, float] = {}

    def timed(name: str, task: BlockwiseTask) -> None:
        t0 = time.perf_counter()
        task.run_blockwise(multiprocessing=True)
        seconds[name] = time.perf_counter() - t0

    timed("extract_frags", extract)
    timed("aff_agglom", agglom)
    segmentations = {}
    for i, bias in enumerate(args["graph_biases"]):
        tag = f"{i}"
        segs, _, mws, relabel = graph_and_relabel(bias, tag)
        if i == 0:
            timed("graph_mws", mws)
            timed("relabel", relabel)
        else:
            mws.run_blockwise(multiprocessing=True)
            relabel.run_blockwise(multiprocessing=True)
        segmentations[str(bias)] = str(container / f"segments_{tag}")

    sums: dict[str, float] = {}
    for path in ops_dir.glob("*.tsv"):
        for line in path.read_text().splitlines():
            task, op, dt = line.split("\t")
            sums[f"{task} / {op}"] = sums.get(f"{task} / {op}", 0.0) + float(dt)
    ops = {k: round(v, 3) for k, v in sorted(sums.items())}
    graph = sqlite3.connect(work / "fragments.db")
    n_nodes = graph.execute("SELECT COUNT(*) FROM nodes").fetchone()[0]
    n_edges = graph.execute("SELECT COUNT(*) FROM edges").fetchone()[0]
    # seconds summed over blocks: ExtractFrags reads the affinities alone; AffAgglom's read step
    # also reads the block's fragments and its part of the graph
    read_affs = sum(v for k, v in ops.items() if k.endswith("extract-frags / Read Affs"))
    read_agglom = sum(v for k, v in ops.items() if k.endswith("aff-agglom / Read data in block"))
    result = {
        "volara": volara.__version__ if hasattr(volara, "__version__") else _version("volara"),
        "versions": {p: _version(p) for p in ("volara", "daisy", "mwatershed", "funlib.persistence", "zarr")},
        "shape_zyx": list(shape),
        "block_zyx": list(block),
        "workers": workers,
        "write_affs_seconds": round(write_affs, 3),
        "task_wall_seconds": {k: round(v, 3) for k, v in seconds.items()},
        "operation_seconds": ops,
        "read_affs_seconds": round(read_affs, 3),
        "read_affs_frags_graph_seconds": round(read_agglom, 3),
        "fragments": int(n_nodes),
        "edges": int(n_edges),
        "segmentations": segmentations,
    }
    (work / "volara.json").write_text(json.dumps(result, indent=2))
    return result


def _version(name: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return "?"


if __name__ == "__main__":
    main(json.loads(sys.argv[1]))
