"""CPU cost of the work outside the model: fragments, region graph, seams, agglomeration, relabel.

The boundary backend's stages without the model, per step, in CPU seconds (``time.process_time``)
per Mvoxel of output, on an 80 x 128 x 128 crop of FIB-25 (z 170-250, y and x 16-144) with the
bundled forest's affinities, in one process:

- ``before``: the kernels before the block-invariance and speed work (fragments cut from the write
  box alone, scikit-image's watershed);
- ``after``: today's kernels (fragments cut with ``fragment_context`` voxels of context,
  :func:`emseg.pipeline.stitching.flood.seeded_watershed`, join edges across the faces, the region
  and face graphs summed by the compiled kernels of :mod:`emseg.pipeline.stitching.rag`; ``before``
  keeps the numpy formulation they replaced, :func:`_numpy_pairs`).

Each runs the crop in 64³ blocks and as one block (128³ blocks): per block the seeds (mean
affinity, distance transform, maximum filter, connected components), the watershed, the crop to the
write box and renumbering, and the region graph (stage 1 without the model); then the face graphs
(stage 2), the agglomeration of the whole graph and the union-find (stage 3) and the relabelling
through the look-up table (stage 4). The "after" fragments are checked against
:func:`emseg.pipeline.stitching.agglomeration.block_fragments` (the pipeline's call) on every block.

    python benchmarks/bench_fragments_speed.py [--repeat 3]

Prints a table and writes ``benchmarks/results/fragments_speed.json``. The affinities are predicted
once for the crop and 16 voxels around it (z stops at the volume's end), a few minutes of forest.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("FIB25", REPO.parent / "shared" / "data" / "fib25_ts2.zarr"))
RESULTS = Path(__file__).parent / "results"
CONTEXT = 16
#: the crop (z, y, x) inside the predicted box, which starts at (154, 0, 0)
BOX = (slice(154, 250), slice(0, 160), slice(0, 160))
CROP = (slice(16, 96), slice(16, 144), slice(16, 144))
STEPS = ("seeds", "watershed", "crop + renumber", "region graph", "face graphs", "agglomeration",
         "union-find", "relabel")


def predict() -> tuple[np.ndarray, float]:
    import zarr

    from emseg.pipeline.backends.affinities import Backend, Params

    raw = np.asarray(zarr.open_group(str(DATA), mode="r")["raw"][BOX])
    backend = Backend(Params(model={"kind": "forest", "weights": "bundled"}))
    affs, _ = backend.affinities(raw, tuple(s.start for s in BOX))
    return affs, float(backend.default_threshold)


def _numpy_pairs(a: np.ndarray, b: np.ndarray, aff: np.ndarray, same_ids_differ: bool = False) -> Any:
    """The region/face graph sums as they were before the compiled kernels: sort the pair keys."""
    from emseg.pipeline.stitching.agglomeration import Graph

    a, b = np.asarray(a).ravel().astype(np.uint64), np.asarray(b).ravel().astype(np.uint64)
    keep = (a != 0) & (b != 0) & ((a != b) | same_ids_differ)
    a, b, aff = a[keep], b[keep], np.asarray(aff).ravel()[keep].astype(np.float64)
    uniq, inverse = np.unique((a << np.uint64(32)) | b, return_inverse=True)
    inverse = inverse.ravel()
    return Graph(uniq >> np.uint64(32), uniq & np.uint64(0xFFFFFFFF), np.bincount(inverse, aff),
                 np.bincount(inverse).astype(np.int64))


def _numpy_region_graph(frags: np.ndarray, affs: np.ndarray) -> Any:
    parts = []
    for axis in range(3):
        hi = tuple(slice(1, None) if d == axis else slice(None) for d in range(3))
        lo = tuple(slice(None, -1) if d == axis else slice(None) for d in range(3))
        x, y = frags[hi].ravel(), frags[lo].ravel()
        parts.append((np.minimum(x, y), np.maximum(x, y), affs[axis][hi].ravel()))
    return _numpy_pairs(*(np.concatenate(p) for p in zip(*parts)))


def run(affs: np.ndarray, block: int, variant: str, threshold: float) -> tuple[dict[str, float], np.ndarray]:
    """One pass over the crop; CPU seconds per step and the segmentation."""
    import cc3d
    import edt
    from scipy import ndimage as ndi
    from skimage.segmentation import watershed

    from emseg.pipeline.stitching.agglomeration import (
        Graph, _dense, agglomerate, block_fragments, components, face_graph, region_graph)
    from emseg.pipeline.stitching.flood import seeded_watershed

    after = variant == "after"
    t: dict[str, float] = defaultdict(float)
    full = tuple(s.stop - s.start for s in CROP)

    def tick(step: str, t0: float) -> float:
        now = time.process_time()
        t[step] += now - t0
        return now

    frags = np.zeros(full, np.uint64)
    parts, cont, cores = [], {}, []
    origins = list(itertools.product(*[range(0, n, block) for n in full]))
    for bi, idx in enumerate(origins):
        core = tuple(slice(c.start + i, c.start + min(i + block, n)) for c, i, n in zip(CROP, idx, full))
        ctx = CONTEXT if after else 0
        box = tuple(slice(max(0, c.start - ctx), min(s, c.stop + ctx)) for c, s in zip(core, affs.shape[1:]))
        a = np.ascontiguousarray(affs[(slice(None), *box)])
        t0 = time.process_time()
        mean = a.mean(axis=0)
        interior = mean > 0.7
        # "after" as fragments_watershed does it: edt on a uint8 view, uint32 seeds, the cost in place
        depth = edt.edt(interior.view(np.uint8) if after else interior, black_border=False, parallel=1)
        peaks = (depth == ndi.maximum_filter(depth, size=7, mode="nearest")) & interior
        seeds = cc3d.connected_components(peaks, connectivity=26, out_dtype=np.uint32 if after else np.uint64)
        t0 = tick("seeds", t0)
        if after:
            cut = seeded_watershed(np.subtract(1.0, mean, out=mean), seeds)
        else:
            cut = watershed(1.0 - mean, seeds).astype(np.uint64)
        t0 = tick("watershed", t0)
        inner = tuple(slice(c.start - b.start, c.stop - b.start) for c, b in zip(core, box))
        f, _ = _dense(cut[inner].copy())
        f = f.astype(np.uint32)
        if after:  # where the fragments go on across the faces (stage 1 stores them with the faces)
            for axis in range(3):
                for d in (-1, 1):
                    face = list(inner)
                    face[axis] = slice(inner[axis].start, inner[axis].start + 1) if d < 0 else \
                        slice(inner[axis].stop - 1, inner[axis].stop)
                    step = face[axis].start + d
                    if 0 <= step < cut.shape[axis]:
                        beyond = list(face)
                        beyond[axis] = slice(step, step + 1)
                        cont[(bi, axis, d)] = (cut[tuple(face)] == cut[tuple(beyond)]) & (cut[tuple(face)] > 0)
        t0 = tick("crop + renumber", t0)
        g = (region_graph if after else _numpy_region_graph)(f, a[(slice(None), *inner)])
        key = np.uint64(bi + 1) << np.uint64(32)
        parts.append(Graph(g.u.astype(np.uint64) + key, g.v.astype(np.uint64) + key, g.total, g.count))
        tick("region graph", t0)
        local = tuple(slice(c.start - s.start, c.stop - s.start) for c, s in zip(core, CROP))
        frags[local] = np.where(f > 0, f.astype(np.uint64) + key, 0)
        cores.append((core, f))
        if after:  # the pipeline's own call gives the same fragments
            ref = block_fragments(affs[(slice(None), *box)], inner, context=CONTEXT, method="watershed")
            assert np.array_equal(ref.labels, f), f"block {bi}: fragments differ from block_fragments"
    t0 = time.process_time()
    for (bi, o), (core, f) in zip(enumerate(origins), cores):
        for axis in range(3):
            nxt = list(o)
            nxt[axis] += block
            if nxt[axis] >= full[axis]:
                continue
            nb = origins.index(tuple(nxt))
            ncore, nf = cores[nb]
            last = tuple(slice(-1, None) if i == axis else slice(None) for i in range(3))
            first = tuple(slice(0, 1) if i == axis else slice(None) for i in range(3))
            a = affs[axis][tuple(slice(c.start, c.start + 1) if i == axis else c for i, c in enumerate(ncore))]
            joined = cont[(bi, axis, 1)] & cont[(nb, axis, -1)] if after else None
            # stage 2's call, block-local ids
            g = face_graph(f[last], nf[first], a, joined) if after else _numpy_pairs(f[last], nf[first], a, True)
            ka, kb = np.uint64(bi + 1) << np.uint64(32), np.uint64(nb + 1) << np.uint64(32)
            parts.append(Graph(g.u.astype(np.uint64) + ka, g.v.astype(np.uint64) + kb, g.total, g.count, join=g.join))
    t0 = tick("face graphs", t0)
    graph = Graph.concat(parts)
    score = agglomerate(graph)
    t0 = tick("agglomeration", t0)
    nodes, inv = np.unique(np.concatenate([graph.u, graph.v]), return_inverse=True)
    keep = score <= threshold
    m = len(graph)
    lut = components(len(nodes), inv.ravel()[:m][keep] + 1, inv.ravel()[m:][keep] + 1)
    t0 = tick("union-find", t0)
    idx = np.searchsorted(nodes, frags)
    seg = lut[np.where(frags > 0, idx + 1, 0)]
    tick("relabel", t0)
    return dict(t), seg


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=5, help="passes per variant; the fastest per step is kept")
    args = ap.parse_args()
    from emseg.pipeline.quality.metrics import evaluate_arrays

    t0 = time.perf_counter()
    affs, threshold = predict()
    predict_s = time.perf_counter() - t0
    mvox = float(np.prod([s.stop - s.start for s in CROP])) / 1e6
    res: dict[str, Any] = {
        "command": "python benchmarks/bench_fragments_speed.py --repeat " + str(args.repeat),
        "crop": "FIB-25 z 170-250, y 16-144, x 16-144 (80 x 128 x 128)", "mvoxel": round(float(mvox), 3), "steps_cpu_s_per_mvoxel_note": "minimum over --repeat interleaved passes, per step",
        "threshold": threshold, "context": CONTEXT, "predict_seconds": round(predict_s, 1),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "load_average_start": [round(x, 2) for x in os.getloadavg()]},
        "cpu_seconds_per_mvoxel": {},
    }
    segs = {}
    best: dict[tuple[str, int], dict[str, float]] = defaultdict(dict)
    for _ in range(args.repeat):  # variants interleaved, so that a change of load hits both alike
        for block in (64, 128):
            for variant in ("before", "after"):
                t, seg = run(affs, block, variant, threshold)
                b = best[(variant, block)]
                best[(variant, block)] = {k: min(b.get(k, np.inf), v) for k, v in t.items()}
                segs[(variant, block)] = seg
    for block in (64, 128):
        for variant in ("before", "after"):
            b = best[(variant, block)]
            per = {k: round(float(b[k]) / mvox, 4) for k in STEPS}
            per["total"] = round(float(sum(b.values())) / mvox, 4)
            per["mvoxel_per_cpu_second"] = round(float(mvox / sum(b.values())), 2)
            res["cpu_seconds_per_mvoxel"][f"{variant} {block}"] = per
            print(f"{variant:>6} {block:>3}³: {per}", flush=True)
    for variant in ("before", "after"):
        d = evaluate_arrays(segs[(variant, 64)], segs[(variant, 128)], ignore_gt_zero=False)
        res[f"{variant}: 64³ vs one block VOI"] = round(d["voi_split"] + d["voi_merge"], 4)
    res["machine"]["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    _print(res)
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / "fragments_speed.json"
    path.write_text(json.dumps(res, indent=2) + "\n")
    print(f"wrote {path}")


def _print(res: dict[str, Any]) -> None:
    rows = res["cpu_seconds_per_mvoxel"]
    cols = list(rows)
    print(f"\nCPU-s per Mvoxel ({res['crop']}), load {res['machine']['load_average_start']}")
    print(f"{'step':<18}" + "".join(f"{c:>13}" for c in cols))
    for step in (*STEPS, "total", "mvoxel_per_cpu_second"):
        print(f"{step:<18}" + "".join(f"{rows[c][step]:>13}" for c in cols))
    for k, v in res.items():
        if k.endswith("VOI"):
            print(f"{k}: {v}")


if __name__ == "__main__":
    main()
