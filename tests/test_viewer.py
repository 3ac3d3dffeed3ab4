"""Viewing: the state's layers and transforms, the data routes (byte ranges, CORS), `emseg link`, and
`emseg view` in a real headless Chromium that must show EM texture in the image panel, segment
colours, and load meshes, for precomputed, zarr and anisotropic (zarr, with a voxel offset) inputs.

The browser test needs Debian's ``chromium`` and ``chromium-driver`` (scripts/test.sh installs them);
it is skipped where they are missing. Its screenshots are kept in pytest's temporary directory (the
path is printed), or in ``$EMSEG_TEST_ARTIFACTS`` when that is set.
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

from emseg.pipeline.outputs import neuroglancer
from emseg.pipeline.io.volume import create_precomputed
from emseg.tasks.commands import view
from emseg.tasks.driver.run import segment
from tests.conftest import REPO, blobs, run_config

SHAPE = (40, 48, 56)


def _make_run(root: Path, address: str, fmt: str = "precomputed", voxel=(8, 8, 8), offset=None, **overrides) -> Path:
    img = blobs(SHAPE, sigma=2.5, seed=11)
    if fmt == "precomputed":
        vol = create_precomputed(str(root / "image"), layer_type="image", dtype="uint8", shape_zyx=SHAPE,
                                 voxel_size_nm=voxel, chunk_zyx=(16, 16, 16))
        vol.write(vol.box, img)
        url = f"precomputed://{root / 'image'}"
    else:  # zarr v2, the voxel size (and offset) in .zattrs as emseg reads them
        from emseg.pipeline.io.volume import create_zarr

        vol = create_zarr(str(root / "image.zarr"), dtype="uint8", shape_zyx=SHAPE, chunk_zyx=(16, 16, 16),
                          voxel_size_nm=voxel)
        vol.write(vol.box, img)
        if offset is not None:
            attrs = json.loads((root / "image.zarr" / ".zattrs").read_text())
            (root / "image.zarr" / ".zattrs").write_text(json.dumps({**attrs, "voxel_offset": list(offset)}))
        url = f"zarr://{root / 'image.zarr'}"
    cfg = run_config(url, root / "out", address,
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


@pytest.fixture(scope="module")
def zarr_output(tmp_path_factory, dask_address) -> Path:
    return _make_run(tmp_path_factory.mktemp("view_zarr"), dask_address, fmt="zarr")


@pytest.fixture(scope="module")
def anisotropic_output(tmp_path_factory, dask_address) -> Path:
    """Zarr v2 at 40 x 8 x 8 nm (z, y, x) with a voxel offset: the transform must scale and shift."""
    return _make_run(tmp_path_factory.mktemp("view_aniso"), dask_address, fmt="zarr", voxel=(40, 8, 8),
                     offset=(5, 12, 20))


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory) -> Path:
    env = os.environ.get("EMSEG_TEST_ARTIFACTS")
    return Path(env) if env else tmp_path_factory.mktemp("viewer-screenshots")


# -- the state ---------------------------------------------------------------------------------

@pytest.mark.parametrize("driver", ["zarr", "zarr3", "n5"])
def test_image_transform_names_the_arrays_own_axes(tmp_path, driver):
    """Neuroglancer names a zarr v2 array's axes d0.., zarr v3's dim_0.. (or dimension_names), n5's
    x, y, z (or axes); the transform must name those as inputDimensions, with units."""
    import tensorstore as ts

    meta = {
        "zarr": {"shape": [6, 7, 8], "chunks": [4, 4, 4], "dtype": "|u1"},
        "zarr3": {"shape": [6, 7, 8], "data_type": "uint8", "dimension_names": ["z", "y", "x"]},
        "n5": {"dimensions": [6, 7, 8], "blockSize": [4, 4, 4], "dataType": "uint8"},
    }[driver]
    path = tmp_path / f"v.{driver}"
    ts.open({"driver": driver, "kvstore": f"file://{path}/", "metadata": meta}, create=True).result()
    names, emseg = neuroglancer.native_axes(f"{driver}://{path}")
    assert names == {"zarr": ["d0", "d1", "d2"], "zarr3": ["z", "y", "x"], "n5": ["x", "y", "z"]}[driver]
    # emseg reads zarr positionally as z, y, x (zarr3 by its labels) and n5 in its own x, y, z order
    n5 = driver == "n5"
    assert emseg == (["x", "y", "z"] if n5 else ["z", "y", "x"])
    src = neuroglancer.image_source(f"{driver}://{path}", (40, 4, 5), (1, 2, 3))
    t = src["transform"]
    assert list(t["inputDimensions"]) == names and list(t["outputDimensions"]) == emseg
    assert [v[0] for v in t["inputDimensions"].values()] == pytest.approx([5e-9, 4e-9, 40e-9] if n5 else
                                                                          [40e-9, 4e-9, 5e-9])
    assert t["inputDimensions"][names[0]][1] == "m" and t["outputDimensions"]["z"] == [40e-9, "m"]
    assert t["matrix"] == ([[1, 0, 0, 3], [0, 1, 0, 2], [0, 0, 1, 1]] if n5 else
                           [[1, 0, 0, 1], [0, 1, 0, 2], [0, 0, 1, 3]])
    assert src["url"].startswith({"zarr": "zarr2", "zarr3": "zarr3", "n5": "n5"}[driver] + "://file://")


def test_one_state_in_run_json_link_and_view(anisotropic_output, capsys):
    """run.json, `emseg link` and `emseg view` show the same state: image with its transform,
    every segment coloured in 2D, the largest selected, a described seam-audit layer."""
    from emseg.tasks.cli import main

    run = json.loads((anisotropic_output / "run.json").read_text())
    stored = run["neuroglancer"]
    assert stored == view.viewer_state(str(anisotropic_output))
    assert main(["link", str(anisotropic_output)]) == 0
    assert json.loads(capsys.readouterr().out) == stored
    layers = {layer["type"]: layer for layer in stored["layers"]}
    t = layers["image"]["source"]["transform"]
    assert t["outputDimensions"] == {"z": [40e-9, "m"], "y": [8e-9, "m"], "x": [8e-9, "m"]}
    assert [row[3] for row in t["matrix"]] == [5, 12, 20]  # the voxel offset, z, y, x
    assert stored["dimensions"] == {"x": [8e-9, "m"], "y": [8e-9, "m"], "z": [40e-9, "m"]}
    seg = layers["segmentation"]
    assert seg["notSelectedAlpha"] > 0 and seg["segments"], "all segments coloured in 2D, the largest selected"
    assert "seam audit" in layers["annotation"]["name"] and "IoU" in layers["annotation"]["name"]
    # the centre of the region, in global voxels with the offset
    assert stored["position"] == [20 + SHAPE[2] / 2, 12 + SHAPE[1] / 2, 5 + SHAPE[0] / 2]


# -- the data server ---------------------------------------------------------------------------

def _get(url: str, headers: dict | None = None, method: str = "GET") -> tuple[int, dict, bytes]:
    req = urllib.request.Request(url, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(req) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), b""


def test_data_routes_ranges_and_cors(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "blob").write_bytes(bytes(range(100)))
    (tmp_path / "secret").write_text("no")
    server = view.Server("127.0.0.1", 0, {"output": str(tmp_path / "d")})
    try:
        base = server.url + view.DATA_PREFIX + "/output"
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
        assert _get(server.url + view.DATA_PREFIX + "/output/%2e%2e/secret")[0] == 404
        status, headers, _ = _get(base + "/blob", method="OPTIONS")
        assert status == 204 and "range" in headers["Access-Control-Allow-Headers"]
        status, headers, body = _get(base + "/blob", method="HEAD")
        assert status == 200 and headers["Content-Length"] == "100" and body == b""
    finally:
        server.close()
    assert ("GET", "/data/output/blob", 206) in server.requests


def test_link_state_has_every_layer(legacy_output, capsys):
    from emseg.tasks.cli import main

    assert main(["link", str(legacy_output)]) == 0
    out = capsys.readouterr()
    state = json.loads(out.out)  # the state only: no public link for local files, it could not open them
    layers = {layer["name"].split(":")[0]: layer for layer in state["layers"]}
    assert set(layers) == {"image", "segmentation", "seam audit"}
    assert layers["segmentation"]["segments"], "the largest segments are selected"
    assert layers["seam audit"]["source"].endswith("/seam_audit")
    assert "https://" not in out.out and f"emseg view {legacy_output}" in out.err


def test_link_of_a_failed_run_warns_and_fails(legacy_output, tmp_path, capsys):
    import shutil as sh

    from emseg.tasks.cli import main

    failed = tmp_path / "failed"
    sh.copytree(legacy_output, failed)
    run = json.loads((failed / "run.json").read_text())
    run.update(status="failed", failures=[{"stage": "1-segment", "block": 3, "error": "boom"}])
    (failed / "run.json").write_text(json.dumps(run))
    assert main(["link", str(failed)]) == 1
    err = capsys.readouterr().err
    assert "warning" in err and "did not complete" in err and "1 failure)" in err


def test_link_of_a_cloud_output_is_a_public_viewer_url():
    state = {"layers": [{"type": "segmentation", "source": "precomputed://gs://b/run/segmentation"}]}
    url = neuroglancer.link(state)
    assert url.startswith(neuroglancer.VIEWER + "#!") and "gs%3A%2F%2Fb%2Frun" in url
    assert not neuroglancer.is_local(state["layers"][0]["source"])
    assert neuroglancer.is_local({"url": "zarr2://file:///x.zarr/raw", "transform": {}})


def test_view_serves_local_sources(legacy_output):
    state = view.viewer_state(str(legacy_output))
    served, mounts = view.rewrite_sources(state, str(legacy_output), "http://127.0.0.1:1")
    sources = {layer["name"].split(":")[0]: layer["source"] for layer in served["layers"]}
    assert sources["segmentation"] == "precomputed://http://127.0.0.1:1/output/segmentation"
    assert sources["seam audit"] == "precomputed://http://127.0.0.1:1/output/seam_audit"
    assert sources["image"] == "precomputed://http://127.0.0.1:1/image"
    assert mounts["image"] == os.path.realpath(legacy_output.parent / "image")


def test_seam_audit_annotations(legacy_output):
    from emseg.pipeline.outputs.annotations import decode_list

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
    from emseg.pipeline.io.volume import open_volume

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


def image_texture(png: bytes) -> tuple[float, int]:
    """``(grey-level standard deviation, number of grey pixels)`` inside the image panel.

    The 4-panel layout puts the x-y cross-section at the top left; its central part shows the image
    (with segments over part of it). EM texture spreads the grey levels of the unsaturated pixels there;
    a flat grey or black square, Neuroglancer's look when it cannot place the image's chunks, does not.
    """
    from PIL import Image

    rgb = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(np.int16)
    h, w = rgb.shape[:2]
    panel = rgb[int(h * 0.15):int(h * 0.42), int(w * 0.1):int(w * 0.4)]
    grey = (panel.max(axis=2) - panel.min(axis=2)) < 24
    levels = panel.mean(axis=2)[grey]
    return (float(levels.std()) if levels.size else 0.0), int(levels.size)


def _view(output: Path, fmt: str, artifacts: Path, capsys) -> None:
    driver = _browser(output.parent / f"chromium-profile-{fmt}")  # in pytest's tmp dir
    proc = subprocess.Popen([sys.executable, "-m", "emseg.tasks.cli", "view", str(output), "--log-requests"],
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
        spread, greys = 0.0, 0
        deadline = time.time() + 90
        while time.time() < deadline:
            time.sleep(1.5)
            drain()
            png = driver.get_screenshot_as_png()
            fraction, distinct = segment_colours(png)
            spread, greys = image_texture(png)
            meshes_done = any("/segmentation/mesh/" in p and s in (200, 206) and not p.endswith("/info")
                              for s, p in requests)
            audit_seen = any("seam_audit" in p and p.endswith("/info") for s, p in requests)
            coloured = fraction > 0.03 and distinct >= 8
            textured = spread > 12 and greys > 2000
            # Wait for every expected request, not only for the picture: under load the annotation
            # layer's info can come after the segments are drawn.
            if (coloured and textured and meshes_done and audit_seen and previous is not None
                    and abs(previous - fraction) < 0.01):
                ok = True
                break
            previous = fraction
        artifacts.mkdir(parents=True, exist_ok=True)
        shot = artifacts / f"viewer-{fmt}.png"
        shot.write_bytes(png)
        with capsys.disabled():
            print(f"\nscreenshot ({fmt}): {shot}")
        drain()
        assert ok, (f"no segment colours, image texture, meshes or seam-audit layer after 90 s (colour fraction "
                    f"{fraction:.3f}, {distinct} colours, grey spread {spread:.1f} over {greys} pixels, meshes "
                    f"{meshes_done}, audit info {audit_seen}); see {shot}")
        mesh = [(s, p) for s, p in requests if "/segmentation/mesh/" in p]
        assert mesh and all(s in (200, 206) for s, p in mesh), f"mesh requests failed: {[m for m in mesh if m[0] >= 400]}"
        if fmt == "sharded":
            assert any(s == 206 and p.endswith(".shard") for s, p in mesh), "no ranged read of a mesh shard"
        else:
            assert any(s == 200 and p.endswith(":0:1") for s, p in mesh), "no mesh fragment was fetched"
        infos = [(s, p) for s, p in requests if p.endswith("/info")]
        assert all(s == 200 for s, p in infos) and any("seam_audit" in p for s, p in infos)
        seg_chunks = [(s, p) for s, p in requests if "/segmentation/8_8_" in p]
        assert seg_chunks and all(s in (200, 206) for s, p in seg_chunks)
        image_chunks = [p for s, p in requests if s in (200, 206) and p.startswith("/data/image/")
                        and not p.endswith(("info", ".zarray", ".zattrs", ".zgroup"))]
        if fmt in ("zarr", "anisotropic"):  # not the one chunk of a misplaced image
            assert len(set(image_chunks)) >= 4, f"only {len(set(image_chunks))} image chunks were read"
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


def test_view_in_headless_chromium(legacy_output, artifacts, capsys):
    _view(legacy_output, "legacy", artifacts, capsys)


def test_view_sharded_in_headless_chromium(sharded_output, artifacts, capsys):
    _view(sharded_output, "sharded", artifacts, capsys)


def test_view_zarr_in_headless_chromium(zarr_output, artifacts, capsys):
    _view(zarr_output, "zarr", artifacts, capsys)


def test_view_anisotropic_in_headless_chromium(anisotropic_output, artifacts, capsys):
    _view(anisotropic_output, "anisotropic", artifacts, capsys)


def test_view_stops_cleanly_on_ctrl_c(legacy_output):
    """Ctrl-C is how `emseg view` is stopped: exit 0, a short line, no traceback, no 'resume' advice."""
    import signal

    proc = subprocess.Popen([sys.executable, "-m", "emseg.tasks.cli", "view", str(legacy_output)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    try:
        first = proc.stdout.readline()  # type: ignore[union-attr]
        assert first.startswith("neuroglancer: http://127.0.0.1:"), first
        port = first.split(":")[3].split("/")[0]
        data = proc.stdout.readline()  # type: ignore[union-attr]
        assert f"127.0.0.1:{port}/data/output/" in data, "viewer and data share one port"
        status, _, body = _get(f"http://127.0.0.1:{port}/data/output/segmentation/info")
        assert status == 200 and json.loads(body)["type"] == "segmentation"
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "stopped" in err and "interrupted" not in err and "resume" not in err and "Traceback" not in err


def test_view_open_starts_the_browser(legacy_output, tmp_path):
    """--open hands the printed viewer URL to the user's browser ($BROWSER, as Python's webbrowser reads it)."""
    import signal

    opened = tmp_path / "opened.txt"
    browser = tmp_path / "browser.sh"
    browser.write_text(f'#!/bin/sh\necho "$1" > {opened}\n')
    browser.chmod(0o755)
    env = {**os.environ, "BROWSER": f"{browser} %s"}
    proc = subprocess.Popen([sys.executable, "-m", "emseg.tasks.cli", "view", str(legacy_output), "--open"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO, env=env)
    try:
        url = proc.stdout.readline().split(" ", 1)[1].strip()  # type: ignore[union-attr]
        deadline = time.time() + 30
        while not (opened.exists() and opened.read_text().strip()) and time.time() < deadline:
            time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert opened.exists() and opened.read_text().strip() == url
