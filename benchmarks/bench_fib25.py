"""Real data: FIB-25 (250³) segmented chunked and unchunked; chunk dependence and accuracy.

Segments ``../shared/data/fib25_ts2.zarr/raw`` with a backend (default ``watershed``) twice through the
real pipeline — in blocks (default 128³, halo 16) and as a single block — then reports, from
``emseg evaluate``'s code:

- chunk dependence: VOI split/merge and adapted Rand error of the chunked result against the unchunked;
- accuracy: VOI split/merge, adapted Rand error and matched-object F1 of each against the ground truth
  (label 0 ignored), for all bodies and for bodies of at least 1000 voxels.

    python benchmarks/bench_fib25.py [--backend watershed] [--block 128] [--halo 16]

Prints a table and writes ``benchmarks/results/fib25_<backend>.json``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

from emseg.tasks.commands.chunk_dependence import chunk_dependence

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "fib25_ts2.zarr"
RESULTS = Path(__file__).parent / "results"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--backend", default="watershed")
    ap.add_argument("--block", type=int, default=128)
    ap.add_argument("--halo", type=int, default=16)
    args = ap.parse_args()
    if not DATA.exists():
        raise SystemExit(f"needs {DATA}")
    work = Path(tempfile.mkdtemp(prefix="emseg-fib25-"))
    res = chunk_dependence(f"zarr://{DATA}/raw", f"zarr://{DATA}/labels", {"name": args.backend}, args.block,
                           args.halo, work)
    print(f"\nFIB-25 250³, backend {args.backend}, blocks {args.block}³ halo {args.halo}")
    print(f"{'result':<34} {'VOI split':>9} {'VOI merge':>9} {'VOI sum':>8} {'ARand':>7} {'F1':>6}")
    d = res["chunk_dependence"]
    print(f"{'chunked vs unchunked':<34} {d['voi_split']:9.3f} {d['voi_merge']:9.3f} "
          f"{d['voi_split'] + d['voi_merge']:8.3f} {d['adapted_rand_error']:7.3f} {'':>6}")
    for name in ("chunked", "unchunked"):
        for label in ("all", "ge1000"):
            s = res[name][f"vs_groundtruth_{label}"]
            print(f"{name + ' vs ground truth (' + label + ')':<34} {s['voi_split']:9.3f} {s['voi_merge']:9.3f} "
                  f"{s['voi_split'] + s['voi_merge']:8.3f} {s['adapted_rand_error']:7.3f} {s['f1']:6.3f}")
    print("reference: Google's FFN on this sample: VOI split 0.92, merge 0.91 (1.83), adapted Rand 0.158")
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"fib25_{args.backend}.json"
    path.write_text(json.dumps({"backend": args.backend, "block": args.block, "halo": args.halo, **res}, indent=2) + "\n")
    print(f"wrote {path}")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
