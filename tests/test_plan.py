"""``emseg plan``: block counts, linear scaling to hypothetical volumes, and no trace in the real output."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import blobs, write_zarr

SHAPE = (48, 64, 64)  # 3 x 4 x 4 blocks of 16³


def _config_file(tmp_path: Path) -> tuple[Path, Path]:
    url = write_zarr(tmp_path / "image.zarr", blobs(SHAPE, sigma=2.0, seed=7), chunks=(16, 16, 16))
    output = tmp_path / "out"
    data = {
        "input": url,
        "output": str(output),
        "backend": {"name": "threshold-cc", "threshold": 128},
        "blocks": {"shape": [16, 16, 16], "halo": [1, 1, 1]},
        "write": {"chunk_shape": [8, 8, 8]},
        "cluster": {"workers": 2},
    }
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(data))
    return path, output


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_plan_command_counts_blocks_and_leaves_the_output_alone(tmp_path: Path, capsys: Any) -> None:
    from emseg.pipeline.geometry import Box, BlockGrid
    from emseg.tasks.cli import main

    config, output = _config_file(tmp_path)
    output.mkdir()
    (output / "keep.txt").write_text("a previous run's file")
    before = _tree(output)
    caldir = tmp_path / "calibration"
    caldir.mkdir()
    report = tmp_path / "plan.json"

    rc = main(["plan", str(config), "--calibrate", "3", "--workers", "4", "--gpus", "2", "--cost-per-hour", "1.5",
               "--json", str(report), "--calibration-dir", str(caldir)])

    assert rc == 0
    assert _tree(output) == before, "emseg plan must not write into the configured output"
    assert list(caldir.iterdir()) == [], "the temporary calibration output must be removed"
    est = json.loads(report.read_text())
    assert est["blocks"]["count"] == 48 and est["blocks"]["grid_zyx"] == [3, 4, 4]
    assert len(set(est["calibration"]["blocks"])) == 3
    grid = BlockGrid(Box((0, 0, 0), SHAPE), (16, 16, 16), (1, 1, 1))
    assert est["read"]["voxels"] == sum(b.read_box.size for b in grid)
    assert est["volume"]["voxels"] == 48 * 64 * 64 and not est["volume"]["hypothetical"]
    for name in ("labels", "faces", "edges"):
        assert est["scratch_bytes"][name] > 0
    assert est["output_bytes"] > 0 and est["seconds_per_block"]["segment"]["mean"] > 0
    runs = {r["unit"]: r for r in est["runs"]}
    assert runs["workers"]["count"] == 4 and runs["gpus"]["count"] == 2
    assert runs["gpus"]["wall_seconds"] > runs["workers"]["wall_seconds"]
    assert runs["workers"]["cost_usd"] == pytest.approx(4 * runs["workers"]["wall_seconds"] / 3600 * 1.5)
    table = capsys.readouterr().out
    assert "48 = 3 x 4 x 4 of 16 x 16 x 16" in table and "wall, 4 workers" in table and "wall, 2 GPUs" in table
    assert "affinities_bytes" not in est["read"] and not any("hood" in item for item in est["not_estimated"])


def test_estimates_scale_linearly_with_the_volume_shape(tmp_path: Path) -> None:
    from emseg.pipeline import config as config_mod
    from emseg.tasks.commands.estimate import calibrate, estimate
    from emseg.tasks.driver.run import validate

    config, output = _config_file(tmp_path)
    p = validate(config_mod.load(config))
    cal = calibrate(p, 2, workdir=str(tmp_path))
    assert not output.exists()

    sample = estimate(p, cal)
    assert sample["blocks"]["count"] == 48
    base = estimate(p, cal, volume_shape=(1024, 1024, 1024), workers=8)
    assert base["volume"]["hypothetical"] and base["blocks"]["count"] == 64**3
    for factor, shape in ((2, (2048, 1024, 1024)), (4, (2048, 2048, 1024)), (8, (2048, 2048, 2048))):
        big = estimate(p, cal, volume_shape=shape, workers=8)
        assert big["blocks"]["count"] == factor * base["blocks"]["count"]
        assert big["volume"]["voxels"] == factor * base["volume"]["voxels"]
        assert big["seconds_per_block"] == base["seconds_per_block"]  # same blocks, same calibration
        for path in (("read", "voxels"), ("scratch_bytes", "total"), ("output_bytes",), ("task_seconds", "total"),
                     ("candidate_edges",)):
            a, b = base, big
            for k in path:
                a, b = a[k], b[k]
            # only the halo at the volume's outer faces keeps this from being exact
            assert b / a == pytest.approx(factor, rel=0.01), path
        wall = [r["wall_seconds"] - big["startup_seconds"] for r in (base["runs"][0], big["runs"][0])]
        assert wall[1] / wall[0] == pytest.approx(factor, rel=0.01)


@pytest.mark.parametrize("args, message", [
    (["--calibrate", "0"], "--calibrate must be at least 1"),
    (["--volume-shape", "0", "64", "64"], "--volume-shape needs three positive sizes"),
    (["--workers", "0"], "--workers must be at least 1"),
])
def test_bad_plan_arguments_fail_with_one_line(tmp_path: Path, capsys: Any, args: list[str], message: str) -> None:
    from emseg.tasks.cli import main

    config, output = _config_file(tmp_path)
    assert main(["plan", str(config), "--calibrate", "1", *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("emseg: error: ") and message in err[-1]
    assert not output.exists()


def test_plan_with_write_affinities_leaves_the_output_alone(tmp_path: Path) -> None:
    """The calibration stores the blocks' affinities (write.affinities) in its temporary output only."""
    from emseg.tasks.cli import main

    config, output = _config_file(tmp_path)
    data = yaml.safe_load(config.read_text())
    data["backend"] = {"name": "affinities", "model": {"kind": "labels"}}
    data["write"]["affinities"] = "uint8"
    config.write_text(yaml.safe_dump(data))
    caldir = tmp_path / "calibration"
    caldir.mkdir()
    report = tmp_path / "plan.json"
    assert main(["plan", str(config), "--calibrate", "2", "--calibration-dir", str(caldir), "--json", str(report)]) == 0
    assert not output.exists(), "emseg plan must not write the configured output's affinities"
    assert list(caldir.iterdir()) == []
    est = json.loads(report.read_text())
    # 3 bytes per voxel (uint8, c = 3) before compression; the blob volume's affinities compress well
    assert 0 < est["affinities_bytes"] < 3 * est["volume"]["voxels"]
    # stage 1 reads them back: 48 x 64 x 64 in 16³ blocks and chunks with 16 voxels of fragment
    # context, so each block reads its 3 x 3 x 3 chunks, clipped: 32 + 48 + 32 along z, 32 + 48 + 48 + 32
    # along y and x
    back = est["read"]["affinities_read_back"]
    assert back["voxels"] == 112 * 160 * 160
    assert back["bytes"] == pytest.approx(back["voxels"] * est["affinities_bytes"] / est["volume"]["voxels"])


def test_plan_lets_the_model_wait_for_the_workers_holding_model_resources(tmp_path: Path, capsys: Any) -> None:
    """With cluster.model_resources only --model-workers of the workers run the model's tasks (stage
    1 here: no write.affinities), so the wall time is at least their seconds over those workers."""
    from emseg.pipeline.config import load
    from emseg.tasks.cli import main
    from emseg.tasks.commands.estimate import calibrate, estimate
    from emseg.tasks.driver.run import validate

    config, _ = _config_file(tmp_path)
    data = yaml.safe_load(config.read_text())
    data["backend"] = {"name": "affinities", "model": {"kind": "forest"}}
    data["blocks"] = {"shape": [16, 32, 32], "halo": [23, 23, 23]}
    data["cluster"] = {"workers": 4, "model_resources": {"GPU": 1}}
    config.write_text(yaml.safe_dump(data))
    p = validate(load(config))
    cal = calibrate(p, 2)
    assert all(0 < x.model_task_seconds == x.segment_seconds for x in cal.samples)  # stage 1 runs the model
    one, all_four = estimate(p, cal, gpus=2), estimate(p, cal, model_workers=4)
    ts_ = one["task_seconds"]
    assert ts_["model_tasks"] == pytest.approx(ts_["segment"]) and 0 < ts_["model_tasks"] < ts_["total"]
    workers, gpus = one["runs"]
    assert workers["model_workers"] == 1 and "model_workers" not in gpus  # each GPU's worker holds them
    # 12 blocks: the model's worker alone takes longer than all work spread over 4 workers
    assert workers["wall_seconds"] == pytest.approx(one["startup_seconds"] + ts_["model_tasks"])
    assert all_four["runs"][0]["wall_seconds"] == pytest.approx(one["startup_seconds"] + ts_["total"] / 4)
    assert gpus["wall_seconds"] == pytest.approx(one["startup_seconds"] + ts_["total"] / 2)
    assert any("--model-workers" in item for item in one["not_estimated"])
    report = tmp_path / "plan.json"
    assert main(["plan", str(config), "--calibrate", "1", "--model-workers", "2", "--json", str(report)]) == 0
    assert json.loads(report.read_text())["runs"][0]["model_workers"] == 2
    assert "calibration ran the model on cpu" in capsys.readouterr().err  # a CPU calibration for GPU workers
    data["write"]["affinities"] = "float32"  # 1-predict runs the model, stage 1 then reads it back
    config.write_text(yaml.safe_dump(data))
    assert all(0 < x.model_task_seconds < x.segment_seconds for x in calibrate(validate(load(config)), 1).samples)


@pytest.mark.parametrize("cluster, message", [
    ({"workers": 2}, "--model-workers counts the workers holding cluster.model_resources"),
    ({"workers": 2, "model_resources": {"GPU": 1}}, "--model-workers 3 exceeds the workers they are among (2"),
])
def test_model_workers_need_model_resources_and_enough_workers(tmp_path: Path, capsys: Any, cluster: dict,
                                                               message: str) -> None:
    from emseg.tasks.cli import main

    config, output = _config_file(tmp_path)
    data = yaml.safe_load(config.read_text())
    data["backend"] = {"name": "affinities", "model": {"kind": "forest"}}
    data["blocks"] = {"shape": [16, 32, 32], "halo": [23, 23, 23]}
    data["cluster"] = cluster
    config.write_text(yaml.safe_dump(data))
    assert main(["plan", str(config), "--model-workers", "3"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("emseg: error: ") and message in err[-1]
    assert not output.exists()


def test_plan_counts_the_reads_of_stored_affinities(tmp_path: Path, capsys: Any) -> None:
    """A ``model.kind: stored`` run reads 3 channels of stored affinities besides the image: the plan
    says how many bytes at most (float32: 12 per voxel read); with blockwise scope it says that it
    leaves out stage 2's agglomeration."""
    import numpy as np
    import tensorstore as ts

    from emseg.pipeline.stitching.agglomeration import affinities_from_labels
    from emseg.tasks.cli import main

    config, output = _config_file(tmp_path)
    affs = affinities_from_labels((blobs(SHAPE, sigma=2.0, seed=7) > 128).astype(np.uint32)).astype(np.float32)
    ts.open({"driver": "zarr", "kvstore": {"driver": "file", "path": str(tmp_path / "affs.zarr")}, "create": True,
             "metadata": {"shape": list(affs.shape), "chunks": [3, 16, 16, 16], "dtype": "<f4"}}).result().write(affs).result()
    data = yaml.safe_load(config.read_text())
    data["backend"] = {"name": "affinities", "model": {"kind": "stored", "affinities": f"zarr://{tmp_path / 'affs.zarr'}"}}
    data["agglomeration"] = {"scope": "blockwise"}
    data["cluster"] = {"model_resources": {"GPU": 1}}  # ignored: stored affinities run no model
    config.write_text(yaml.safe_dump(data))
    report = tmp_path / "plan.json"
    assert main(["plan", str(config), "--calibrate", "1", "--json", str(report)]) == 0
    est = json.loads(report.read_text())
    assert est["read"]["affinities_bytes"] == 3 * 4 * est["read"]["voxels"]
    assert any("hood" in item for item in est["not_estimated"])  # blockwise stage 2's agglomeration
    assert not any("model_resources" in item for item in est["not_estimated"])
    assert "of stored affinities" in capsys.readouterr().out
    assert not output.exists()
