"""How much a segmentation depends on the block shape: the same volume in blocks and as one block.

The design asks every backend's block dependence to be measured (DESIGN.md, "The exactness oracle");
``benchmarks/bench_fib25.py`` and ``tests/test_fib25.py`` measure it with :func:`chunk_dependence`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from emseg.tasks.commands.evaluate import evaluate


SCORE_KEYS = ("voi_split", "voi_merge", "adapted_rand_error", "f1")


def chunk_dependence(image: str, groundtruth: str, backend: Mapping[str, Any], block: int, halo: int, work: Any,
                     address: str | None = None, roi: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Segment ``image`` in ``block``³ blocks and as one block, and score both and their difference.

    Returns ``{"chunked": {...}, "unchunked": {...}, "chunk_dependence": {voi_split, voi_merge,
    adapted_rand_error}}``, each run with ``seconds``, ``segments``, ``blocks`` and its scores against
    ``groundtruth`` for all objects (``vs_groundtruth_all``) and for objects of 1000 voxels or more
    (``vs_groundtruth_ge1000``). ``work`` is a directory (path) for the two outputs; ``address`` a Dask
    scheduler (a local cluster of 2 workers if None). How much a result depends on the block shape is
    what the design asks to measure for every backend (DESIGN.md, "The exactness oracle").
    """
    import time
    from pathlib import Path

    from emseg.pipeline.config import from_dict
    from emseg.pipeline.io.volume import open_volume
    from emseg.tasks.driver.run import segment

    work = Path(work)
    chunk = 64
    whole = [-(-s // chunk) * chunk for s in open_volume(image).shape_zyx]  # one block covers the volume
    out: dict[str, Any] = {}
    cluster = {"address": address} if address else {"workers": 2}
    for name, shape in (("chunked", [block] * 3), ("unchunked", whole)):
        cfg = from_dict({"input": image, "output": str(work / name), "backend": dict(backend),
                         "blocks": {"shape": shape, "halo": [halo] * 3}, "write": {"chunk_shape": [chunk] * 3},
                         "cluster": cluster, "roi": None if roi is None else dict(roi), "postprocess": None})
        t = time.perf_counter()
        run = segment(cfg, restart=True, progress=False)
        out[name] = {"seconds": round(time.perf_counter() - t, 2), "segments": run["segments"],
                     "blocks": run["blocks"]["total"]}
    seg = {name: f"precomputed://{work}/{name}/segmentation" for name in ("chunked", "unchunked")}
    dep = evaluate(seg["chunked"], seg["unchunked"], ignore_gt_zero=False)
    out["chunk_dependence"] = {k: dep[k] for k in ("voi_split", "voi_merge", "adapted_rand_error")}
    for name in ("chunked", "unchunked"):
        for label, min_size in (("all", 0), ("ge1000", 1000)):
            s = evaluate(seg[name], groundtruth, min_size=min_size)
            out[name][f"vs_groundtruth_{label}"] = {k: s[k] for k in SCORE_KEYS}
    return out
