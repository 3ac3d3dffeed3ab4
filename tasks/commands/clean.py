"""``emseg clean OUTPUT``: remove an output's scratch area whole.

A complete run already prunes its scratch to what a later step needs (``pipeline/io/scratch.py``);
``clean`` removes the rest too: done-markers, scored edges, core labels and the union-find result.
The segmentation, the image copy, the seam audit and ``run.json`` stay. A later run into the same
output then starts over (no done-markers, so nothing is skipped), and a new merge threshold can no
longer be applied without segmenting again. The output's lock is held while it runs, so a run in
progress is never cleaned under its feet.
"""

from __future__ import annotations

import logging
from typing import Any


from emseg.pipeline.io import urls
from emseg.pipeline.errors import VolumeNotFoundError
from emseg.pipeline.io.lock import OutputLock
from emseg.pipeline.io.scratch import Scratch
from emseg.tasks.driver import report

log = logging.getLogger("emseg")


def clean(output: str) -> dict[str, Any]:
    """Remove ``<output>/scratch``; returns ``{"removed_bytes": n or None, "objects": k}``.

    Raises :class:`~emseg.pipeline.errors.VolumeNotFoundError` when ``output`` holds no emseg output
    (no ``run.json`` and no scratch area), so a mistyped path deletes nothing.
    """
    out = urls.store_url(output)
    scratch = Scratch(out)
    keys = scratch.list_keys()
    run = report.read(out)
    if run is None and not keys:
        raise VolumeNotFoundError(f"no emseg output at {output} (no run.json, no scratch/); check the path")
    with OutputLock(out):
        sizes = scratch.local_bytes()
        scratch.clear()
        if run is not None:
            run["scratch"] = {"cleaned": True, "url": scratch.url}
            report.write(out, run)
    return {"removed_bytes": None if sizes is None else sizes["total"], "objects": len(keys)}


def add_arguments(p: Any) -> None:
    p.add_argument("output", help="the run's output directory or URL")


def run(args: Any) -> int:
    from emseg.tasks.commands.estimate_table import human_bytes

    got = clean(args.output)
    size = "" if got["removed_bytes"] is None else f" ({human_bytes(got['removed_bytes'])})"
    print(f"emseg clean: removed {got['objects']} scratch objects{size} from {args.output}")
    return 0
