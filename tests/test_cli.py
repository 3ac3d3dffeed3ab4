"""The command line: the demo config, stage by stage runs, evaluate and link."""

from __future__ import annotations

import json

import numpy as np

from emseg.pipeline.quality.metrics import evaluate_arrays
from emseg.tasks.cli import main
from tests.conftest import REPO, blobs, read_output, write_zarr


def test_demo_config_on_a_small_phantom(tmp_path, capsys, dask_address):
    rc = main([
        "segment", str(REPO / "configs" / "demo.yaml"), "--no-progress", "-q",
        "--set", f"input=precomputed://{tmp_path}/data/image",
        "--set", f"evaluate.groundtruth=precomputed://{tmp_path}/data/groundtruth",
        "--set", f"output={tmp_path}/run",
        "--set", "phantom.shape=[48,64,64]",
        "--set", "blocks.shape=[64,64,64]",
        "--set", "postprocess=null",
        "--cluster", dask_address,
    ])
    out = capsys.readouterr().out
    assert rc == 0
    assert "segments" in out and "evaluation:" in out and "1 block:" in out
    # local layers: the summary gives the command whose URL works, not a public link that cannot
    assert f"emseg view {tmp_path}/run" in out and "https://" not in out
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["status"] == "complete" and run["blocks"]["total"] == 1
    assert run["evaluation"]["voi_split"] >= 0 and 0 <= run["evaluation"]["adapted_rand_error"] <= 1
    # the phantom was written where the config said, with its ground truth
    assert (tmp_path / "data" / "image" / "info").exists() and (tmp_path / "data" / "groundtruth" / "info").exists()


def test_stages_one_by_one_equal_a_full_run(tmp_path, capsys, dask_address):
    img = blobs((40, 40, 40), sigma=2.0, seed=21)
    url = write_zarr(tmp_path / "in.zarr", img)
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(json.dumps({
        "input": url, "output": str(tmp_path / "staged"), "backend": {"name": "threshold-cc"},
        "blocks": {"shape": [16, 16, 16], "halo": [1, 1, 1]}, "write": {"chunk_shape": [16, 16, 16]},
        "cluster": {"address": dask_address}, "postprocess": None,
    }))
    assert main(["stage", "2-seams", str(cfg), "--no-progress", "-q"]) == 2
    assert "needs stage 1-segment to be complete first" in capsys.readouterr().err
    for stage in ("1-segment", "2-seams", "3-unionfind", "4-relabel"):
        assert main(["stage", stage, str(cfg), "--no-progress", "-q"]) == 0, stage
    staged = read_output(tmp_path / "staged")
    assert main(["segment", str(cfg), "--no-progress", "-q", "--set", f"output={tmp_path}/full"]) == 0
    np.testing.assert_array_equal(staged, read_output(tmp_path / "full"))
    capsys.readouterr()
    assert main(["link", str(tmp_path / "full")]) == 0
    printed = capsys.readouterr().out
    state = json.loads(printed)
    assert [layer["type"] for layer in state["layers"]][:2] == ["image", "segmentation"]
    assert "inputDimensions" in state["layers"][0]["source"]["transform"]  # a zarr input


def test_evaluate_prints_one_json_object(tmp_path, capsys):
    rng = np.random.default_rng(0)
    gt = rng.integers(0, 6, (20, 24, 28)).astype(np.uint64)
    seg = gt.copy()
    seg[:10] += 10  # split every object in two along z
    seg[gt == 0] = 0
    seg_url = write_zarr(tmp_path / "seg.zarr", seg, chunks=(8, 8, 8))
    gt_url = write_zarr(tmp_path / "gt.zarr", gt, chunks=(8, 8, 8))
    assert main(["evaluate", "--segmentation", seg_url, "--groundtruth", gt_url, "--iou-threshold", "0.3"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1
    result = json.loads(lines[0])
    expected = evaluate_arrays(seg, gt, iou_threshold=0.3)
    for k in ("voi_split", "voi_merge", "adapted_rand_error", "precision", "recall", "f1", "mean_iou"):
        assert abs(result[k] - expected[k]) < 1e-9, k
    assert result["voi_split"] > 0.5 and result["voi_merge"] < 1e-9
    assert result["iou_threshold"] == 0.3 and result["ignore_gt_zero"] is True


def test_every_argument_has_help_and_defaults_are_shown(capsys):
    """CLI conventions: --version, help text for every argument of every command, defaults in help."""
    import argparse

    import pytest

    from emseg.tasks.cli import plural, build_parser

    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0 and capsys.readouterr().out.startswith("emseg ")
    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    for name, sub in commands.items():
        for action in sub._actions:
            assert action.help, f"emseg {name}: {action.option_strings or action.dest} has no help"
        text = sub.format_help()
        text = text[text.index("options:"):]
        for action in sub._actions:
            if action.option_strings and action.default not in (None, False, [], argparse.SUPPRESS):
                flag = action.option_strings[-1]
                block = text[text.index(flag):]
                block = block[: block.index("\n  -", 1) if "\n  -" in block[1:] else len(block)]
                assert "default" in block, f"emseg {name} {flag}: the help does not show its default"
    assert plural(1, "segment") == "1 segment" and plural(2, "segment") == "2 segments"


def test_dask_logs_only_with_verbose(tmp_path):
    """A local cluster's own log lines (workers starting, comms closing) show only with --verbose."""
    import subprocess
    import sys

    url = write_zarr(tmp_path / "in.zarr", blobs((16, 16, 16), sigma=2.0, seed=3), chunks=(16, 16, 16))
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(json.dumps({
        "input": url, "output": str(tmp_path / "out"), "backend": {"name": "threshold-cc"},
        "blocks": {"shape": [16, 16, 16], "halo": [1, 1, 1]}, "write": {"chunk_shape": [16, 16, 16]},
        "cluster": {"workers": 1}, "postprocess": None,
    }))
    runs = {}
    for flag in ("default", "-v"):
        extra = [] if flag == "default" else [flag]
        got = subprocess.run([sys.executable, "-m", "emseg.tasks.cli", "segment", str(cfg), "--no-progress", "--restart", *extra],
                             capture_output=True, text=True, cwd=REPO, timeout=600)
        assert got.returncode == 0, got.stderr
        runs[flag] = got.stderr
    assert "distributed." not in runs["default"], runs["default"]
    assert "distributed." in runs["-v"], "--verbose shows Dask's own logs"
