"""Meshes: closed across block seams, the right size and orientation, readable by cloud-volume, in both
the legacy and the sharded multi-resolution format."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from emseg.pipeline.outputs import meshes
from emseg.pipeline.geometry import BlockGrid, Box
from emseg.tasks.driver.run import segment
from tests.conftest import blobs, run_config, write_zarr

SHAPE = (40, 48, 56)
BLOCK = 16


def _run(root: Path, address: str, **overrides) -> dict:
    img = blobs(SHAPE, sigma=2.5, seed=5)
    url = write_zarr(root / "in.zarr", img, chunks=(16, 16, 16))
    cfg = run_config(url, root / "out", address, blocks={"shape": [BLOCK] * 3, "halo": [1, 1, 1]}, **overrides)
    return segment(cfg, progress=False)


@pytest.fixture(scope="module")
def legacy_run(tmp_path_factory, dask_address) -> Path:
    root = tmp_path_factory.mktemp("meshes_legacy")
    run = _run(root, dask_address, postprocess={"pyramid_levels": 0, "seam_audit": False})
    assert run["postprocess"]["meshes"]["format"] == "legacy"
    return root / "out"


@pytest.fixture(scope="module")
def sharded_run(tmp_path_factory, dask_address) -> Path:
    root = tmp_path_factory.mktemp("meshes_sharded")
    run = _run(root, dask_address, write={"chunk_shape": [8, 8, 8], "sharded": True},
               postprocess={"pyramid_levels": 1, "seam_audit": False})
    assert run["postprocess"]["meshes"]["format"] == "sharded"
    return root / "out"


def _properties(out: Path) -> dict[int, dict]:
    info = json.loads((out / "segmentation/segment_properties/info").read_text())
    props = {p["id"]: p["values"] for p in info["inline"]["properties"]}
    return {int(i): {k: v[n] for k, v in props.items()} for n, i in enumerate(info["inline"]["ids"])}


def _crosses_seam(p: dict) -> bool:
    return any(p[f"{a}_min"] // BLOCK != (p[f"{a}_max"] - 1) // BLOCK for a in "xyz")


def _signed_volume(v: np.ndarray, f: np.ndarray) -> float:
    v = v.astype(np.float64)
    return float(np.einsum("ij,ij->i", v[f[:, 0]], np.cross(v[f[:, 1]], v[f[:, 2]])).sum() / 6)


def test_legacy_meshes_are_closed_across_seams(legacy_run):
    info = json.loads((legacy_run / "segmentation/info").read_text())
    assert info["mesh"] == "mesh" and info["segment_properties"] == "segment_properties"
    assert json.loads((legacy_run / "segmentation/mesh/info").read_text())["@type"] == "neuroglancer_legacy_mesh"
    props = _properties(legacy_run)
    crossing = [i for i, p in props.items() if _crosses_seam(p)]
    assert len(crossing) >= 5, "the test volume should have segments cut by block seams"
    for seg, p in props.items():
        manifest = json.loads((legacy_run / f"segmentation/mesh/{seg}:0").read_text())
        v, f = meshes.decode_legacy((legacy_run / "segmentation/mesh" / manifest["fragments"][0]).read_bytes())
        mesh = meshes.Mesh(v, f)
        assert len(meshes.boundary_edges(mesh)) == 0, f"segment {seg} has an open mesh"
        # Outward normals and the segment's volume (marching cubes cuts corners: a little less).
        ratio = _signed_volume(v, f) / (p["voxels"] * 8.0**3)
        if p["voxels"] >= 500:
            assert 0.85 < ratio < 1.05, f"segment {seg}: mesh volume / voxel volume = {ratio:.3f}"
        assert ratio > 0
        # The mesh lies on the segment's voxels: within one voxel of its bounding box.
        lo = np.array([p["x_min"], p["y_min"], p["z_min"]]) * 8.0
        hi = np.array([p["x_max"], p["y_max"], p["z_max"]]) * 8.0
        assert np.all(v.min(axis=0) >= lo - 8.0) and np.all(v.max(axis=0) <= hi + 8.0)


def test_cloudvolume_reads_legacy_meshes(legacy_run):
    from cloudvolume import CloudVolume

    cv = CloudVolume(f"file://{legacy_run}/segmentation", progress=False)
    seg = max(_properties(legacy_run).items(), key=lambda kv: kv[1]["voxels"])[0]
    got = cv.mesh.get(seg)
    manifest = json.loads((legacy_run / f"segmentation/mesh/{seg}:0").read_text())
    v, f = meshes.decode_legacy((legacy_run / "segmentation/mesh" / manifest["fragments"][0]).read_bytes())
    assert len(got.faces) == len(f)
    assert np.allclose(np.sort(got.vertices, axis=0), np.sort(v, axis=0))


def test_sharded_multires_meshes(sharded_run):
    from cloudvolume import CloudVolume

    info = json.loads((sharded_run / "segmentation/mesh/info").read_text())
    assert info["@type"] == "neuroglancer_multilod_draco" and info["sharding"]["hash"] == "identity"
    assert list((sharded_run / "segmentation/mesh").glob("*.shard"))
    props = _properties(sharded_run)
    cv = CloudVolume(f"file://{sharded_run}/segmentation", progress=False)
    checked = 0
    coarser = 0
    for seg, p in sorted(props.items(), key=lambda kv: -kv[1]["voxels"])[:8]:
        lods = []
        for lod in range(3):
            try:
                got = cv.mesh.get(seg, lod=lod)
            except Exception:  # noqa: BLE001 - cloud-volume raises when the level does not exist
                break
            got = got[seg] if isinstance(got, dict) else got
            lods.append(meshes.join([meshes.Mesh(np.asarray(got.vertices, np.float32),
                                                 np.asarray(got.faces, np.uint32).reshape(-1, 3))]))
            assert len(meshes.boundary_edges(lods[-1])) == 0, f"segment {seg}: open level-{lod} mesh"
        coarser += len(lods) > 1 and len(lods[1].faces) < len(lods[0].faces)
        mesh = lods[0]
        v = mesh.vertices.astype(np.float64)
        ratio = _signed_volume(mesh.vertices, mesh.faces) / (p["voxels"] * 8.0**3)
        assert 0.8 < ratio < 1.05, f"segment {seg}: mesh volume / voxel volume = {ratio:.3f}"
        lo = np.array([p["x_min"], p["y_min"], p["z_min"]]) * 8.0
        hi = np.array([p["x_max"], p["y_max"], p["z_max"]]) * 8.0
        assert np.all(v.min(axis=0) >= lo - 8.0) and np.all(v.max(axis=0) <= hi + 8.0)
        checked += _crosses_seam(p)
    assert checked >= 3
    assert coarser >= 3, "the larger segments should have a coarser level of detail"


def _torus(shape: tuple[int, int, int], centre: tuple[float, float, float]) -> np.ndarray:
    z, y, x = np.indices(shape, dtype=np.float64)
    cz, cy, cx = centre
    ring = np.sqrt((y - cy) ** 2 + (x - cx) ** 2) - 9.0
    return (ring**2 + (z - cz) ** 2 <= 3.5**2).astype(np.uint64) * 7


@pytest.mark.parametrize("reduction", [0, 10])
def test_blockwise_meshes_join_into_the_whole_volume_mesh(reduction):
    """A torus centred on a block corner, meshed in 8 blocks, joins into one closed genus-1 surface."""
    labels = _torus((32, 34, 30), (16, 16, 16))
    domain = Box.from_shape(labels.shape)
    parts = []
    for block in BlockGrid(domain, (16, 16, 16), (0, 0, 0)):
        box, pad = meshes.mesh_box(block.write_box, domain)
        parts.extend(m[0] for m in meshes.mesh_labels(labels[box.slices()], box.start, pad, reduction=reduction).values())
    assert len(parts) >= 4  # the torus is cut by the seams
    joined = meshes.join(parts)
    assert len(meshes.boundary_edges(joined)) == 0
    edges = np.unique(np.sort(np.concatenate([joined.faces[:, [0, 1]], joined.faces[:, [1, 2]],
                                              joined.faces[:, [2, 0]]]), axis=1), axis=0)
    euler = len(joined.vertices) - len(edges) + len(joined.faces)
    assert euler == 0  # a torus: V - E + F = 0
    whole = meshes.mesh_labels(labels, (0, 0, 0), ((1, 1, 1), (1, 1, 1)), reduction=reduction)[7][0]
    volume = _signed_volume(joined.vertices, joined.faces)
    assert abs(volume / _signed_volume(whole.vertices, whole.faces) - 1) < 0.02
    if reduction == 0:
        assert len(joined.faces) == len(whole.faces)


def test_meshes_from_a_coarser_scale(tmp_path, dask_address):
    run = _run(tmp_path, dask_address,
               postprocess={"pyramid_levels": 1, "mesh_scale": 1, "segment_properties": False, "seam_audit": False})
    post = run["postprocess"]
    assert post["failures"] == [] and post["meshes"]["scale"] == "16_16_16" and post["meshes"]["segments"] > 5
    out = tmp_path / "out" / "segmentation" / "mesh"
    manifests = [p for p in out.iterdir() if p.name.endswith(":0")]
    assert len(manifests) == post["meshes"]["segments"]
    for manifest in manifests:
        name = json.loads(manifest.read_text())["fragments"][0]
        v, f = meshes.decode_legacy((out / name).read_bytes())
        assert len(meshes.boundary_edges(meshes.Mesh(v, f))) == 0
        assert v.min() >= -16.0 and v.max() <= 56 * 8.0 + 16.0  # nanometres, inside the volume


def test_sharded_pyramid_read_by_tensorstore_and_cloudvolume(sharded_run):
    import tensorstore as ts
    from cloudvolume import CloudVolume

    info = json.loads((sharded_run / "segmentation/info").read_text())
    assert len(info["scales"]) == 2 and all("sharding" in s for s in info["scales"])
    base_ids = None
    for mip, scale in enumerate(info["scales"]):
        arr = ts.open({"driver": "neuroglancer_precomputed", "kvstore": f"file://{sharded_run}/segmentation/",
                       "scale_metadata": {"key": scale["key"]}}).result().read().result()
        # tensorstore leaves all-background chunks out of shards; readers take them as 0
        cv = CloudVolume(f"file://{sharded_run}/segmentation", mip=mip, progress=False, fill_missing=True)
        assert np.array_equal(np.asarray(cv[cv.bounds]), arr)
        ids = set(np.unique(arr).tolist())
        base_ids = ids if base_ids is None else base_ids
        assert ids <= base_ids
