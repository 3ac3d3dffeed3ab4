"""Object storage: input from and output to s3:// on an S3-compatible server on loopback (moto)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time

import cc3d
import pytest

from emseg.pipeline.io.volume import create_zarr, open_volume
from emseg.tasks.driver.run import segment
from tests.conftest import blobs, run_config, same_partition

KEY_ID, SECRET = "emseg-test-key-id", "emseg-test-secret-never-logged"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def s3(monkeypatch):
    pytest.importorskip("moto")
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    for name, value in {"EMSEG_S3_ENDPOINT": endpoint, "AWS_ACCESS_KEY_ID": KEY_ID,
                        "AWS_SECRET_ACCESS_KEY": SECRET, "AWS_REGION": "us-east-1"}.items():
        monkeypatch.setenv(name, value)
    import boto3

    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    for _ in range(100):
        try:
            client.create_bucket(Bucket="emseg-test")
            break
        except Exception:  # noqa: BLE001 - the server is still starting
            time.sleep(0.1)
    else:
        proc.kill()
        pytest.fail("moto server did not start")
    yield client
    proc.kill()
    proc.wait()


def test_s3_input_and_output(s3, tmp_path):
    img = blobs((40, 40, 40), sigma=2.0, seed=11)
    vol = create_zarr("s3://emseg-test/in.zarr/raw", dtype="uint8", shape_zyx=img.shape, chunk_zyx=(16, 16, 16),
                      voxel_size_nm=(4, 4, 40))
    vol.write(vol.box, img)
    cfg = run_config("zarr://s3://emseg-test/in.zarr/raw", "s3://emseg-test/runs/one", None,
                     blocks={"shape": [16, 16, 16], "halo": [1, 1, 1]}, cluster={"workers": 2})
    run = segment(cfg, progress=False)
    assert run["status"] == "complete"
    out = open_volume("precomputed://s3://emseg-test/runs/one/segmentation")
    assert out.voxel_size_nm == (4.0, 4.0, 40.0)
    assert same_partition(out.read(out.box), cc3d.connected_components(img >= 128, connectivity=26))
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket="emseg-test", Prefix="runs/one/")["Contents"]]
    assert "runs/one/run.json" in keys and "runs/one/segmentation/info" in keys
    report = s3.get_object(Bucket="emseg-test", Key="runs/one/run.json")["Body"].read().decode()
    assert json.loads(report)["segmentation"] == "precomputed://s3://emseg-test/runs/one/segmentation"
    # Credentials never reach the outputs.
    for key in keys:
        body = s3.get_object(Bucket="emseg-test", Key=key)["Body"].read()
        assert KEY_ID.encode() not in body and SECRET.encode() not in body, key
