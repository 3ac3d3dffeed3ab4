"""Bad input: a one-line error that names the fix, a non-zero exit, and no output that claims to be complete."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from emseg.tasks.cli import main
from tests.conftest import write_zarr


@pytest.fixture()
def volume(tmp_path: Path) -> str:
    return write_zarr(tmp_path / "in.zarr", np.zeros((40, 40, 40), np.uint8))


def _run(tmp_path: Path, capsys: pytest.CaptureFixture[str], config: dict, *extra: str) -> tuple[int, str]:
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(config))
    rc = main(["segment", str(path), "--no-progress", "-q", *extra])
    err = capsys.readouterr().err.strip()
    return rc, err


def _base(volume: str, tmp_path: Path) -> dict:
    return {
        "input": volume,
        "output": str(tmp_path / "out"),
        "backend": {"name": "threshold-cc"},
        "blocks": {"shape": [16, 16, 16], "halo": [1, 1, 1]},
        "write": {"chunk_shape": [8, 8, 8]},
        "postprocess": None,
    }


CASES = {
    "missing volume": (lambda c, t: c.update(input=f"zarr://{t}/nothing.zarr/raw"), "no volume at", "check the"),
    "unknown scheme": (lambda c, t: c.update(input="ftp://host/em"), "unknown URL scheme 'ftp://'", "use one of"),
    "unknown key": (lambda c, t: c["blocks"].update(shpe=[1, 1, 1]), "unknown config key 'blocks.shpe'", "remove it"),
    "unknown backend key": (lambda c, t: c["backend"].update(treshold=3), "unknown config key 'backend.treshold'",
                            "check its spelling"),
    "misaligned blocks": (lambda c, t: c["blocks"].update(shape=[16, 16, 12]), "not a multiple of the output chunk",
                          "use blocks.shape = [16, 16, 16]"),
    "misaligned shards": (lambda c, t: (c["blocks"].update(shape=[8, 8, 8]),
                                        c["write"].update(sharded=True, sharding_bits=[0, 3, 3])),
                          "not a multiple of the output shard shape [16, 16, 16]", "use blocks.shape ="),
    "roi outside": (lambda c, t: c.update(roi={"start": [0, 0, 0], "stop": [50, 40, 40]}), "lies outside the input",
                    "shrink the roi"),
    "no halo": (lambda c, t: c["blocks"].update(halo=[0, 1, 1]), "halo [0, 1, 1] is too small along z",
                "at least 1"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input(case, volume, tmp_path, capsys):
    edit, message, fix = CASES[case]
    config = _base(volume, tmp_path)
    edit(config, tmp_path)
    rc, err = _run(tmp_path, capsys, config)
    assert rc == 2
    assert err.startswith("emseg: error:") and "\n" not in err, err
    assert message in err and fix in err, err
    assert not (tmp_path / "out").exists()  # nothing written, nothing that claims completeness


def test_wrong_dtype(tmp_path, capsys):
    url = write_zarr(tmp_path / "in.zarr", np.zeros((16, 16, 16), np.int64))
    config = _base(url, tmp_path)
    rc, err = _run(tmp_path, capsys, config)
    assert rc == 2 and "\n" not in err
    assert "backend 'threshold-cc' takes uint8 or uint16 or float32 or float64 images, but the input is int64" in err
    assert "convert the volume or choose another backend" in err
    assert not (tmp_path / "out").exists()


def test_missing_config_file(tmp_path, capsys):
    rc = main(["segment", str(tmp_path / "nope.yaml")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "does not exist" in err and "\n" not in err


def test_other_run_in_the_same_output(volume, tmp_path, capsys, dask_address):
    config = _base(volume, tmp_path)
    config["cluster"] = {"address": dask_address}
    assert _run(tmp_path, capsys, config)[0] == 0
    config["backend"]["threshold"] = 7
    rc, err = _run(tmp_path, capsys, config)
    assert rc == 2 and "holds a run with a different config (changed: backend)" in err
    assert "--restart" in err
    assert _run(tmp_path, capsys, config, "--restart")[0] == 0
