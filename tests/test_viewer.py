"""Viewing: the data server (byte ranges, CORS), `emseg link`, and `emseg view` in a real headless
Chromium that must show segment colours and load meshes.

The browser test needs Debian's ``chromium`` and ``chromium-driver`` (scripts/test.sh installs them);
it is skipped where they are missing. Its screenshots are kept in ``runs/test-artifacts/`` (or
``$EMSEG_TEST_ARTIFACTS``).
"""

from __future__ import annotations

import io
import json
import os
import queue
import shutil
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from pipeline.volume import create_precomputed
from tasks import view
from tasks.run import segment
from tests.conftest import REPO, blobs, run_config

ARTIFACTS = Path(os.environ.get("EMSEG_TEST_ARTIFACTS", REPO / "runs" / "test-artifacts"))
SHAPE = (40, 48, 56)


def _make_run(root: Path, address: str, **overrides) -> Path:
    img = blobs(SHAPE, sigma=2.5, seed=11)
    vol = create_precomputed(str(root / "image"), layer_type="image", dtype="uint8", shape_zyx=SHAPE,
                             voxel_size_nm=(8, 8, 8), chunk_zyx=(16, 16, 16))
    vol.write(vol.box, img)
    cfg = run_config(f"precomputed://{root / 'image'}", root / "out", address,
                     blocks={"shape": [16, 16, 16], "halo": [1, 1, 1]}, postprocess={}, **overrides)
    run = segment(cfg, progress=False)
    assert run["status"] == "complete" and run["postprocess"]["failures"] == []
    return root / "out"


@pytest.fixture(scope="module")
def legacy_output(tmp_path_factory, dask_address) -> Path:
    return _make_run(tmp_path_factory.mktemp("view_legacy"), dask_address)


@pytest.fixture(scope="module")
def sharded_output(tmp_path_factory, dask_address) -> Path:
    return _make_run(tmp_path_factory.mktemp("view_sharded"), dask_address,
                     write={"chunk_shape": [8, 8, 8], "sharded": True})


# -- the data server ---------------------------------------------------------------------------

def _get(url: str, headers: dict | None = None, method: str = "GET") -> tuple[int, dict, bytes]:
    req = urllib.request.Request(url, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(req) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), b""


def test_data_server_ranges_and_cors(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "blob").write_bytes(bytes(range(100)))
    (tmp_path / "secret").write_text("no")
    server = view.DataServer("127.0.0.1", 0, {"output": str(tmp_path / "d")}).start()
    try:
        base = server.url + "/output"
        status, headers, body = _get(base + "/blob")
        assert status == 200 and body == bytes(range(100))
        assert headers["Access-Control-Allow-Origin"] == "*" and headers["Accept-Ranges"] == "bytes"
        status, headers, body = _get(base + "/blob", {"Range": "bytes=10-19"})
        assert status == 206 and body == bytes(range(10, 20)) and headers["Content-Range"] == "bytes 10-19/100"
        assert "content-range" in headers["Access-Control-Expose-Headers"]
        status, _, body = _get(base + "/blob", {"Range": "bytes=-5"})
        assert status == 206 and body == bytes(range(95, 100))
        assert _get(base + "/blob", {"Range": "bytes=200-"})[0] == 416
        assert _get(base + "/missing")[0] == 404
        assert _get(base + "/../secret")[0] == 404
        assert _get(server.url + "/output/%2e%2e/secret")[0] == 404
        status, headers, _ = _get(base + "/blob", method="OPTIONS")
        assert status == 204 and "range" in headers["Access-Control-Allow-Headers"]
        status, headers, body = _get(base + "/blob", method="HEAD")
        assert status == 200 and headers["Content-Length"] == "100" and body == b""
    finally:
        server.shutdown()
        server.server_close()
    assert ("GET", "/output/blob", 206) in server.requests


def test_link_state_has_every_layer(legacy_output, capsys):
    from tasks.cli import main

    assert main(["link", str(legacy_output)]) == 0
    out = capsys.readouterr()
    text, url = out.out.rsplit("\n", 2)[0], out.out.strip().splitlines()[-1]
    state = json.loads(text)
    layers = {layer["name"]: layer for layer in state["layers"]}
    assert set(layers) == {"image", "segmentation", "seam audit"}
    assert layers["segmentation"]["segments"], "the largest segments are selected"
    assert layers["seam audit"]["source"].endswith("/seam_audit")
    assert url.startswith("https://") and "#!" in url
    assert "emseg view" in out.err  # local layers: the link alone cannot open them


def test_view_serves_local_sources(legacy_output):
    state = view.viewer_state(str(legacy_output))
    served, mounts = view.rewrite_sources(state, str(legacy_output), "http://127.0.0.1:1")
    sources = {layer["name"]: layer["source"] for layer in served["layers"]}
    assert sources["segmentation"] == "precomputed://http://127.0.0.1:1/output/segmentation"
    assert sources["seam audit"] == "precomputed://http://127.0.0.1:1/output/seam_audit"
    assert sources["image"] == "precomputed://http://127.0.0.1:1/image"
    assert mounts["image"] == os.path.realpath(legacy_output.parent / "image")


def test_seam_audit_annotations(legacy_output):
    from pipeline.annotations import decode_list

    audit = legacy_output / "seam_audit"
    info = json.loads((audit / "info").read_text())
    assert info["annotation_type"] == "point" and [p["id"] for p in info["properties"]] == ["iou", "overlap", "merged"]
    ids, positions, values = decode_list((audit / "spatial0" / "0_0_0").read_bytes(), info)
    assert len(ids) > 0
    assert np.all(positions >= np.array(info["lower_bound"])) and np.all(positions <= np.array(info["upper_bound"]))
    assert np.all(values["iou"] <= 0.15 + 1e-6)  # threshold-cc merges at IoU >= 0: audit = IoU within 0.15
    run = json.loads((legacy_output / "run.json").read_text())
    assert run["postprocess"]["seam_audit"]["points"] == len(ids)
    related = [p.name for p in (audit / "segments").iterdir()]
    assert related and all(name.isdigit() for name in related)
    # Each point lies on one of its two segments (the voxel under it belongs to a related segment).
    from pipeline.volume import open_volume

    seg = open_volume(f"precomputed://{legacy_output}/segmentation")
    labels = seg.read(seg.box)
    for i in ids[:20]:
        blob = (audit / "by_id" / str(int(i))).read_bytes()
        x, y, z = np.frombuffer(blob[:12], "<f4")
        size = -(-(12 + 4 + 4 + 1) // 4) * 4
        (n,) = np.frombuffer(blob[size : size + 4], "<u4")
        segs = set(np.frombuffer(blob[size + 4 : size + 4 + 8 * int(n)], "<u8").tolist())
        neighbourhood = labels[max(int(z) - 1, 0):int(z) + 2, max(int(y) - 1, 0):int(y) + 2, max(int(x) - 1, 0):int(x) + 2]
        assert segs & set(np.unique(neighbourhood).tolist()), f"audit point {i} is not on its segments {segs}"


# -- the browser -------------------------------------------------------------------------------

def _browser(profile: Path):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if chromium is None or driver is None:
        pytest.skip("needs Debian's chromium and chromium-driver (scripts/test.sh installs them)")
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--use-angle=swiftshader",
                "--enable-unsafe-swiftshader", "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--no-first-run", "--disable-dev-shm-usage", "--window-size=1000,800",
                f"--user-data-dir={profile}"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(driver), options=options)


def segment_colours(png: bytes) -> tuple[float, int]:
    """``(fraction of saturated pixels, number of distinct saturated colours)`` of a screenshot.

    Neuroglancer draws segments in many saturated colours; a blank or error screen has few.
    """
    from PIL import Image

    rgb = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(np.int16)
    sat = (rgb.max(axis=2) - rgb.min(axis=2) > 60) & (rgb.max(axis=2) > 90)
    colours = (rgb[sat] // 24).astype(np.int64)
    keys, counts = np.unique(colours[:, 0] * 10000 + colours[:, 1] * 100 + colours[:, 2], return_counts=True)
    return float(sat.mean()), int((counts >= 40).sum())


def _view(output: Path, fmt: str) -> None:
    driver = _browser(output.parent / f"chromium-profile-{fmt}")  # in pytest's tmp dir
    proc = subprocess.Popen([sys.executable, "-m", "tasks.cli", "view", str(output), "--log-requests"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO)
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], daemon=True).start()  # type: ignore[union-attr]
    requests: list[tuple[int, str]] = []

    def drain() -> None:
        while not lines.empty():
            line = lines.get().strip()
            parts = line.split()
            if line.startswith("emseg view:") and len(parts) == 5:
                requests.append((int(parts[2]), parts[4]))

    try:
        url = None
        deadline = time.time() + 60
        while url is None and time.time() < deadline:
            try:
                line = lines.get(timeout=1)
            except queue.Empty:
                assert proc.poll() is None, "emseg view exited"
                continue
            if line.startswith("neuroglancer: "):
                url = line.split(" ", 1)[1].strip()
        assert url and "/v/" in url, "emseg view printed no viewer URL"
        driver.get(url)
        png, ok, previous = b"", False, None
        deadline = time.time() + 90
        while time.time() < deadline:
            time.sleep(1.5)
            drain()
            png = driver.get_screenshot_as_png()
            fraction, distinct = segment_colours(png)
            meshes_done = any("/segmentation/mesh/" in p and s in (200, 206) and not p.endswith("/info")
                              for s, p in requests)
            audit_seen = any("seam_audit" in p and p.endswith("/info") for s, p in requests)
            coloured = fraction > 0.03 and distinct >= 8
            # Wait for every expected request, not only for the picture: under load the annotation
            # layer's info can come after the segments are drawn.
            if coloured and meshes_done and audit_seen and previous is not None and abs(previous - fraction) < 0.01:
                ok = True
                break
            previous = fraction
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        shot = ARTIFACTS / f"viewer-{fmt}.png"
        shot.write_bytes(png)
        drain()
        assert ok, (f"no segment colours, meshes or seam-audit layer after 90 s (fraction {fraction:.3f}, "
                    f"{distinct} colours, meshes {meshes_done}, audit info {audit_seen}); see {shot}")
        mesh = [(s, p) for s, p in requests if "/segmentation/mesh/" in p]
        assert mesh and all(s in (200, 206) for s, p in mesh), f"mesh requests failed: {[m for m in mesh if m[0] >= 400]}"
        if fmt == "legacy":
            assert any(s == 200 and p.endswith(":0:1") for s, p in mesh), "no mesh fragment was fetched"
        else:
            assert any(s == 206 and p.endswith(".shard") for s, p in mesh), "no ranged read of a mesh shard"
        infos = [(s, p) for s, p in requests if p.endswith("/info")]
        assert all(s == 200 for s, p in infos) and any("seam_audit" in p for s, p in infos)
        seg_chunks = [(s, p) for s, p in requests if "/segmentation/8_8_8/" in p]
        assert seg_chunks and all(s in (200, 206) for s, p in seg_chunks)
        errors = [e["message"] for e in driver.get_log("browser")
                  if e["level"] == "SEVERE" and "favicon" not in e["message"]]
        assert not errors, f"browser errors: {errors[:3]}"
    finally:
        driver.quit()
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_view_in_headless_chromium(legacy_output):
    _view(legacy_output, "legacy")


def test_view_sharded_in_headless_chromium(sharded_output):
    _view(sharded_output, "sharded")
