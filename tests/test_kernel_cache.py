"""The compiled kernels' disk cache: later processes load it, and no other module name can spoil it.

Each Dask worker is a process of its own; without the cache every one of them compiled the flood and
the region-graph and merge-tree kernels again (about 3.7 CPU-s per worker, more than all the other work of a small
run). A cache written while a kernel file ran under another module name (``python -m doctest``) used
to make every later load fail.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import emseg.pipeline.stitching.flood as flood
import emseg.pipeline.stitching.merge_tree as merge_tree
import emseg.pipeline.stitching.rag as rag

CALL = """
import numpy as np
from emseg.pipeline.stitching import flood, merge_tree, rag
from emseg.pipeline.stitching.agglomeration import agglomerate, fragments, region_graph, face_graph
a = np.random.default_rng(0).random((3, 12, 12, 12), dtype=np.float32)
f, n = fragments(a)
agglomerate(region_graph(f, a))
face_graph(f[-1], f[0], a[0, 0])
flood.seeded_watershed(np.zeros((1, 256, 256)), np.arange(1, 65537).reshape(1, 256, 256))  # uint64 words
print(*(sum(k.stats.cache_hits.values()) for k in (flood._pack, flood._flood, flood._unpack)),
      sum(rag._add_box.stats.cache_hits.values()), sum(rag._add_pairs.stats.cache_hits.values()),
      sum(merge_tree._merge_levels.stats.cache_hits.values()))
"""


def _python(*args: str, cwd: Path) -> str:
    done = subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_kernels_load_from_the_disk_cache_even_after_a_doctest_run(tmp_path) -> None:
    # the kernel files run as top-level modules first ("flood", "rag", "merge_tree"): they must not cache under that name
    for module in (flood, rag, merge_tree):
        _python("-m", "doctest", module.__file__, cwd=tmp_path)
    _python("-c", CALL, cwd=tmp_path)  # compiles (or loads) and caches under emseg.pipeline.stitching.*
    hits = [int(x) for x in _python("-c", CALL, cwd=tmp_path).split()]
    assert flood.DISK_CACHE and rag.DISK_CACHE and merge_tree.DISK_CACHE
    assert all(h > 0 for h in hits), f"a fresh process compiled again instead of loading the cache: {hits}"
