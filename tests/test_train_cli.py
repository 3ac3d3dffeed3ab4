"""``emseg train``: both model kinds through the CLI on a tiny phantom, resume, and bad configs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
import zarr

from emseg.pipeline.backends.boundary import load_model
from emseg.pipeline.geometry import Box
from emseg.pipeline.quality.phantom import Phantom, PhantomParams
from emseg.tasks.cli import main

SHAPE = (36, 48, 48)


@pytest.fixture(scope="module")
def volume(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("train") / "ph.zarr"
    image, labels = Phantom(PhantomParams(shape_zyx=SHAPE, seed=2)).render(Box.from_shape(SHAPE))
    for name, data in (("raw", image), ("labels", labels)):
        arr = zarr.open_array(str(root / name), mode="w", shape=SHAPE, chunks=(16, 16, 16), dtype=data.dtype,
                              zarr_format=2)
        arr[:] = data
    return root


def _config(tmp_path: Path, volume: Path, model: dict, **extra) -> Path:
    cfg = {
        "image": str(volume / "raw"), "labels": str(volume / "labels"), "output": str(tmp_path / "out"),
        "train_region": {"start": [0, 0, 0], "stop": [20, 48, 48]},
        "val_region": {"start": [24, 0, 0], "stop": [36, 48, 48]},
        "model": model, "thresholds": [0.5, 0.7], **extra,
    }
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_train_forest_through_the_cli(tmp_path, volume, capsys) -> None:
    model = {"kind": "forest", "classifier": "hgb", "params": {"max_iter": 10}, "voxels_per_class": 2000,
             "augmented_copies": 1}
    cfg = _config(tmp_path, volume, model)
    assert main(["train", str(cfg), "--no-progress", "-q"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["kind"] == "forest" and summary["training_voxels"] == 4000
    assert [r["threshold"] for r in summary["validation"]] == [0.5, 0.7]
    # a forest on a clean phantom separates its objects far better than chance
    assert summary["best"]["adapted_rand_error"] < 0.5
    assert "fitted hgb" in (tmp_path / "out" / "train.log").read_text()
    forest = load_model("forest", summary["model"])
    affs = forest.predict(np.full((8, 9, 10), 0.5, np.float32))
    assert affs.shape == (3, 8, 9, 10)


def test_train_unet_resumes(tmp_path, volume, capsys) -> None:
    model = {"kind": "unet", "width": 2, "depth": 2, "factors": [[1, 2, 2]], "convs": 1}
    cfg = _config(tmp_path, volume, model, steps=2, patch=[8, 16, 16], checkpoint_every=1, val_every=2,
                  log_every=1, threads=1)
    assert main(["train", str(cfg), "--no-progress", "-q"]) == 0
    first = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert first["steps"] == 2 and (tmp_path / "out" / "unet_step2.pt").exists()
    assert main(["train", str(cfg), "--no-progress", "-q", "--resume", "--set", "steps=3"]) == 0
    second = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert second["steps"] == 3
    log = (tmp_path / "out" / "train.log").read_text()
    assert "resumed from" in log and "at step 2" in log
    assert "validation step 2" in log and "validation step 3" in log
    # the resumed run's checkpoint is a usable model
    unet = load_model("unet", str(tmp_path / "out" / "unet_last.pt"))
    assert unet.predict(np.zeros((4, 8, 8), np.float32)).shape == (3, 4, 8, 8)


@pytest.mark.parametrize("change, message", [
    ({"model": {"kind": "tree"}}, "model"),
    ({"stepz": 3}, "stepz"),
    ({"model": {"kind": "unet", "depth": 3, "factors": [[2, 2, 2]]}}, "factors has 1 entries"),
    ({"thresholds": [1.5]}, "thresholds must lie in"),
])
def test_bad_config_is_one_line_and_writes_nothing(tmp_path, volume, capsys, change, message) -> None:
    cfg = _config(tmp_path, volume, {"kind": "forest"})
    raw = yaml.safe_load(cfg.read_text())
    raw.update(change)
    cfg.write_text(yaml.safe_dump(raw))
    assert main(["train", str(cfg), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("emseg: error:") and len(err.splitlines()) == 1 and message in err
    assert not (tmp_path / "out").exists()
