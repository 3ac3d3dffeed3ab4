"""``run.json``: what a run did — config, versions, per-stage timings, block counts, failures."""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import json
import platform
from typing import TYPE_CHECKING, Any


from emseg.pipeline.outputs import neuroglancer

from emseg.pipeline.io import urls
from emseg.pipeline import stages
from emseg.pipeline.io import kvstore

if TYPE_CHECKING:
    from emseg.tasks.driver.context import ValidatedRun

PACKAGES = ("emseg", "numpy", "scipy", "dask", "distributed", "tensorstore", "zarr", "cloud-volume",
            "connected-components-3d", "scikit-image", "torch", "sam2")


def local_versions() -> dict[str, str]:
    """Python and the packages of :data:`PACKAGES` installed in this process's environment."""
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return out


def versions(client: Any = None) -> dict[str, Any]:
    """The driver's versions, and the workers' where they differ (the workers are what computed).

    With a client, every worker reports its own :func:`local_versions`; ``workers`` records how many
    answered and, per worker address, the packages whose versions differ from the driver's.
    """
    out: dict[str, Any] = local_versions()
    if client is None:
        return out
    try:
        answers = client.run(local_versions)
    except Exception as exc:  # noqa: BLE001 - a report without the workers' versions beats no report
        out["workers"] = {"error": f"{type(exc).__name__}: {exc}"}
        return out
    differing = {}
    for address, theirs in sorted(answers.items()):
        diff = {k: v for k, v in theirs.items() if out.get(k) != v}
        diff.update({k: None for k in out if k not in theirs})
        if diff:
            differing[address] = diff
    out["workers"] = {"count": len(answers), "differing": differing}
    return out


def build(
    p: ValidatedRun,
    todo: dict[str, list[Any]],
    totals: dict[str, int],
    results: dict[str, Any],
    failures: list[dict[str, Any]],
    *,
    started: float,
    versions: dict[str, Any],
    post: dict[str, Any] | None = None,
) -> dict[str, Any]:
    finished = dt.datetime.now(dt.timezone.utc).timestamp()
    per_stage: dict[str, dict[str, Any]] = {}
    stats, wall = results["stats"], results["wall"]
    for stage in ((stages.PREDICT,) if stages.PREDICT in todo else ()) + stages.SEGMENTATION:
        ran, secs, _, cpu = stats.get(stage, [0, 0.0, 0, 0.0])
        first, last = wall.get(stage, [0.0, 0.0])
        per_stage[stage] = {
            "tasks": totals[stage],
            "skipped_done": totals[stage] - len(todo[stage]),
            "ran": int(ran),
            "failed": sum(1 for f in failures if f["stage"] == stage),
            "task_seconds": round(secs, 3),
            "task_cpu_seconds": round(cpu, 3),
            "wall_seconds": round(last - first, 3),
            "workers": dict(sorted(results.get("workers", {}).get(stage, {}).items())),  # tasks each worker ran
        }
    uf = results["finish"]
    status = "failed" if failures else "complete"
    grid = p.ctx.grid
    run = {
        "status": status,
        "started": dt.datetime.fromtimestamp(started, dt.timezone.utc).isoformat(),
        "finished": dt.datetime.fromtimestamp(finished, dt.timezone.utc).isoformat(),
        "wall_seconds": round(finished - started, 3),
        "config": p.config.to_json(),
        "versions": versions,
        "input": {"shape_zyx": list(p.input.shape_zyx), "dtype": p.input.dtype.name,
                  "voxel_size_nm": list(p.input.voxel_size_nm), "offset_zyx": list(p.input.offset_zyx)},
        "roi": p.ctx.roi.to_json(),
        "blocks": {"total": grid.num_blocks, "grid_zyx": list(grid.grid_shape), "shape_zyx": list(grid.block_shape),
                   "halo_zyx": list(grid.halo)},
        "stages": per_stage,
        "segments": uf.get("num_segments"),
        "merged_labels": uf.get("merged_labels"),
        # boundary backends: edges the enclosed and small rules merged beyond the threshold
        **({"rule_merges": uf["rule_merges"]} if "rule_merges" in uf else {}),
        "failures": failures,
        "segmentation": "precomputed://" + p.ctx.segmentation,
    }
    if p.ctx.boundary:  # the agglomeration threshold used (the config's, or the model's when null)
        run["threshold"] = p.ctx.threshold
    if p.ctx.affinities is not None:  # write.affinities: what model.kind stored reads back
        run["affinities"] = "zarr://" + p.ctx.affinities
    if post is not None:
        run["postprocess"] = post
    run["neuroglancer"] = neuroglancer.run_state(run)  # after postprocess: it selects the largest segments
    return run


def record_rerun(output: str, run: dict[str, Any], *, started: float) -> dict[str, Any]:
    """Add a rerun that found nothing to do to a finished run's report (kept whole) and write it.

    Returns the rerun's own view: the finished run's report with every stage skipped (``ran`` 0) and
    the post-processing marked ``skipped_done``; ``run.json`` keeps the finished run's numbers.
    """
    now = dt.datetime.now(dt.timezone.utc)
    entry = {
        "started": dt.datetime.fromtimestamp(started, dt.timezone.utc).isoformat(),
        "finished": now.isoformat(),
        "wall_seconds": round(now.timestamp() - started, 3),
        "ran": 0,
        "note": "every task was done already; nothing was recomputed",
    }
    run = dict(run)
    run["reruns"] = list(run.get("reruns", [])) + [entry]
    write(output, run)
    # What this invocation did (nothing), over the finished run's facts: its segments, output, state.
    view = dict(run, wall_seconds=entry["wall_seconds"])
    view["stages"] = {stage: dict(s, skipped_done=s.get("tasks", 0), ran=0, failed=0, task_seconds=0.0, task_cpu_seconds=0.0,
                                  wall_seconds=0.0, workers={}) for stage, s in (run.get("stages") or {}).items()}
    if isinstance(run.get("postprocess"), dict):
        view["postprocess"] = dict(run["postprocess"], skipped_done=True)
    return view


def write(output: str, run: dict[str, Any]) -> None:
    kv = urls.open_kvstore(output)
    kv.write("run.json", json.dumps(run, indent=2).encode()).result()


def remove(output: str) -> None:
    kv = urls.open_kvstore(output)
    kvstore.delete_keys(kv, ["run.json"])


def read(output: str) -> dict[str, Any] | None:
    kv = urls.open_kvstore(output)
    got = kv.read("run.json").result()
    return json.loads(got.value) if got.state == "value" else None
