"""Boundary models: forest and U-Net give affinities that depend only on their context.

Small and seeded: phantom volumes of a few ten thousand voxels, random-weight U-Nets of a few
thousand parameters.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from emseg.pipeline.backends.boundary import features as feats
from emseg.pipeline.backends.boundary import forest as forest_mod
from emseg.pipeline.backends.boundary import load_model
from emseg.pipeline.backends.boundary import unet as unet_mod
from emseg.pipeline.backends.boundary.unet_training import affinity_targets, loss_fn, lsd_targets
from emseg.pipeline.errors import CheckpointError, ConfigError
from emseg.pipeline.geometry import Box
from emseg.pipeline.quality.phantom import Phantom, PhantomParams

SHAPE = (40, 56, 56)


@pytest.fixture(scope="module")
def phantom() -> tuple[np.ndarray, np.ndarray]:
    image, labels = Phantom(PhantomParams(shape_zyx=SHAPE, seed=5)).render(Box.from_shape(SHAPE))
    return image.astype(np.float32) / 255, labels


@pytest.fixture(scope="module")
def small_forest(phantom) -> forest_mod.ForestModel:
    image, labels = phantom
    target = forest_mod.boundary_target(labels)
    idx = forest_mod.sample_voxels(target, 3000, np.random.default_rng(0))
    x = feats.compute(image).reshape(-1, feats.NUM_FEATURES)[idx]
    clf = forest_mod.make_classifier("rf", 0, n_estimators=8, max_depth=8)
    clf.fit(x, target.reshape(-1)[idx])
    return forest_mod.ForestModel(clf, tile_z=16)


def _perturb_outside(image: np.ndarray, core: tuple[slice, ...], context: tuple[int, int, int]) -> np.ndarray:
    """A copy of ``image`` with random values everywhere farther than ``context`` from ``core``."""
    keep = np.zeros(image.shape, dtype=bool)
    keep[tuple(slice(max(0, s.start - c), s.stop + c) for s, c in zip(core, context))] = True
    out = image.copy()
    noise = np.random.default_rng(1).random(image.shape, dtype=np.float32)
    out[~keep] = noise[~keep]
    return out


def test_features_are_invariant_to_affine_intensity(phantom) -> None:
    image = phantom[0][:20, :30, :30]
    a = feats.compute(image)
    b = feats.compute(image * 0.7 + 0.1)
    # local contrast normalisation cancels gain and offset up to its variance floor
    assert np.abs(a - b).max() < 0.05 * np.abs(a).max()


def test_forest_trains_and_separates_boundaries(phantom, small_forest) -> None:
    image, labels = phantom
    b = small_forest.boundary(image)
    target = forest_mod.boundary_target(labels)
    assert b.shape == image.shape and b.dtype == np.float32
    assert b[target == 1].mean() > b[target == 0].mean() + 0.3


def test_forest_core_depends_only_on_context(phantom, small_forest) -> None:
    image, labels = phantom
    ctx = small_forest.context_zyx
    assert ctx == (feats.CONTEXT + 1,) * 3
    # a 4³ core on the membrane nearest the centre, where the prediction is not saturated
    boundary = np.argwhere(forest_mod.boundary_target(labels) == 1)
    z, y, x = boundary[np.argmin(np.abs(boundary - np.array(SHAPE) // 2).sum(axis=1))] - 2
    core = (slice(z, z + 4), slice(y, y + 4), slice(x, x + 4))
    a = small_forest.predict(image)
    b = small_forest.predict(_perturb_outside(image, core, ctx))
    np.testing.assert_allclose(a[(slice(None),) + core], b[(slice(None),) + core], atol=1e-6)
    # a much smaller context does change the core (trees quantise the tails of the filters away)
    c = small_forest.predict(_perturb_outside(image, core, tuple(x // 2 for x in ctx)))
    assert not np.allclose(a[(slice(None),) + core], c[(slice(None),) + core], atol=1e-6)


def test_forest_affinity_conventions(small_forest) -> None:
    image = np.random.default_rng(0).random((12, 14, 16), dtype=np.float32)
    image[5, 6, 7] = np.nan
    affs = small_forest.predict(image)
    assert affs.shape == (3, 12, 14, 16) and affs.dtype == np.float32
    assert affs[0, 0].max() == 0 and affs[1, :, 0].max() == 0 and affs[2, :, :, 0].max() == 0
    assert affs[:, 5, 6, 7].max() == 0  # the NaN voxel with its predecessors
    assert affs[0, 6, 6, 7] == 0 and affs[1, 5, 7, 7] == 0 and affs[2, 5, 6, 8] == 0  # its successors
    assert 0 <= affs.min() and affs.max() <= 1


def test_a_region_gives_the_whole_images_affinities_inside_it(phantom, small_forest) -> None:
    """Stage 1 asks only for the write box and the fragment context: inside that region the forest
    and the U-Net must give exactly what the whole image gives (the forest classifies the region
    and one plane before it; the U-Net skips tiles that miss it), and 0 outside."""
    image = phantom[0]
    region = (slice(5, 30), slice(11, 40), slice(3, 50))
    inside = (slice(None),) + region
    for model in (small_forest, _unet()):
        whole = model.predict(image, (0, 0, 0))
        part = model.predict(image, (0, 0, 0), region=region)
        np.testing.assert_array_equal(part[inside], whole[inside])
        outside = np.ones(part.shape, bool)
        outside[inside] = False
        if model is small_forest:  # (the U-Net fills whole tiles, which may reach past the region)
            assert not part[outside].any() and whole[outside].any()


def test_the_forest_tile_height_does_not_change_the_output(phantom, small_forest) -> None:
    # tiles of 3 planes (each with its own features' context) or one tile for the whole image, for
    # a forest (float32 input) and gradient boosting (float64): the same probabilities, bit for bit
    image = phantom[0][:40]
    region = (slice(4, 37), slice(2, 50), slice(0, 60))
    x = feats.compute(image[:12]).reshape(-1, feats.NUM_FEATURES)
    y = forest_mod.boundary_target(phantom[1][:12]).reshape(-1)
    hgb = forest_mod.make_classifier("hgb", 0, max_iter=5).fit(x, y)
    for clf in (small_forest.classifier, hgb):
        whole = forest_mod.ForestModel(clf, tile_z=1000).boundary(image, region)
        tiled = forest_mod.ForestModel(clf, tile_z=3).boundary(image, region)
        np.testing.assert_array_equal(tiled, whole)
        assert whole[region].min() < whole[region].max()  # not a constant: the test can tell


def test_forest_file_round_trip_and_refusals(tmp_path, small_forest) -> None:
    path = tmp_path / "f.skops"
    small_forest.save(path)
    again = load_model("forest", str(path))
    image = np.random.default_rng(2).random((8, 10, 12), dtype=np.float32)
    np.testing.assert_array_equal(again.predict(image), small_forest.predict(image))
    with pytest.raises(CheckpointError, match="no forest model"):
        load_model("forest", str(tmp_path / "missing.skops"))
    import skops.io as sio
    from sklearn.linear_model import LogisticRegression

    sio.dump({"format": "emseg-forest", "version": 1, "classifier": LogisticRegression()}, tmp_path / "bad.skops")
    with pytest.raises(CheckpointError, match="does not trust"):
        load_model("forest", str(tmp_path / "bad.skops"))
    with pytest.raises(ConfigError, match="kind 'tree'"):
        load_model("tree")


CFG = unet_mod.UNetConfig(width=3, depth=2, factors=[(1, 2, 2)], convs=1, long_range=[(-2, 0, 0)])


def _unet(config: unet_mod.UNetConfig = CFG, seed: int = 0) -> unet_mod.UNetModel:
    torch.manual_seed(seed)
    return unet_mod.UNetModel(unet_mod.build(config), tile=(24, 40, 40))


def test_unet_shapes_and_context() -> None:
    model = _unet()
    assert CFG.out_channels == 4
    net_out = model.net(torch.zeros(1, 1, 8, 16, 16))
    assert tuple(net_out.shape) == (1, 4, 8, 16, 16)
    assert model.context_zyx == tuple(r + 8 for r in unet_mod.receptive_radius(CFG))
    affs = model.predict(np.random.default_rng(0).random((13, 29, 31), dtype=np.float32))
    assert affs.shape == (3, 13, 29, 31) and affs.dtype == np.float32
    assert affs[0, 0].max() == 0 and 0 <= affs.min() and affs.max() <= 1


def test_unet_core_depends_only_on_context_and_not_on_block_cut(phantom) -> None:
    model = _unet()
    image = phantom[0]
    ctx = model.context_zyx
    whole = model.predict(image)  # tiled: 40 x 56 x 56 is larger than one tile
    # a block cut anywhere (odd offsets) gives the same core as the whole volume
    start, stop = (3, 5, 7), (37, 53, 55)
    block = image[tuple(slice(a, b) for a, b in zip(start, stop))]
    part = model.predict(block, origin_zyx=start)
    core = tuple(slice(c, s - c) for c, s in zip(ctx, block.shape))
    core_global = tuple(slice(a + c, b - c) for a, b, c in zip(start, stop, ctx))
    assert all(s.stop > s.start for s in core)
    np.testing.assert_allclose(part[(slice(None),) + core], whole[(slice(None),) + core_global], atol=1e-5)
    # changing everything outside the context leaves the core alone
    changed = model.predict(_perturb_outside(block, core, ctx), origin_zyx=start)
    np.testing.assert_allclose(changed[(slice(None),) + core], part[(slice(None),) + core], atol=1e-5)


def test_one_training_step_lowers_the_loss(phantom) -> None:
    from emseg.pipeline.backends.boundary.config import TrainConfig

    image, labels = phantom
    spec_raw = {"kind": "unet", **CFG.model_dump(mode="json")}
    config = TrainConfig.model_validate({"image": "x", "labels": "y", "output": "z", "model": spec_raw,
                                         "patch": [8, 32, 32]})
    torch.manual_seed(0)
    net = unet_mod.build(CFG)
    x = torch.from_numpy(feats.normalise(image[:8, :32, :32]))[None, None]
    t, m = affinity_targets(labels[:8, :32, :32], [(-1, 0, 0), (0, -1, 0), (0, 0, -1), (-2, 0, 0)])
    t, m = torch.from_numpy(t)[None], torch.from_numpy(m)[None]
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    before = loss_fn(net(x), t, m, None, config.model, config).item()
    for _ in range(3):
        opt.zero_grad()
        loss_fn(net(x), t, m, None, config.model, config).backward()
        opt.step()
    after = loss_fn(net(x), t, m, None, config.model, config).item()
    assert after < before


def test_lsd_targets_describe_shape_and_skip_unlabelled() -> None:
    labels = np.zeros((12, 24, 24), np.uint64)
    labels[:, 2:22, 2:5] = 1  # a thin slab along y: large variance in y, small in x
    labels[:, 2:5, 8:22] = 2  # a thin slab along x
    d = lsd_targets(labels, sigma=3.0)
    assert d.shape == (10, 12, 24, 24) and d.dtype == np.float32
    assert np.isnan(d[:, labels == 0]).all() and np.isfinite(d[:, labels != 0]).all()
    assert (d[:, labels != 0] >= 0).all() and (d[:, labels != 0] <= 1).all()
    var_y, var_x = d[4], d[5]
    one, two = (6, 12, 3), (6, 3, 15)
    assert var_y[one] > var_x[one] and var_x[two] > var_y[two]
    # mean offset points to the object's local centre: at slab 1's y=2 end it points up in y (> 0.5)
    assert d[1, 6, 2, 3] > 0.5 > d[1, 6, 21, 3]


def test_training_step_with_lsds_lowers_the_loss(phantom) -> None:
    from emseg.pipeline.backends.boundary.config import TrainConfig

    cfg = CFG.model_copy(update={"lsds": True, "lsd_sigma": 3.0})
    image, labels = phantom
    config = TrainConfig.model_validate({"image": "x", "labels": "y", "output": "z", "patch": [8, 32, 32],
                                         "model": {"kind": "unet", **cfg.model_dump(mode="json")}})
    torch.manual_seed(0)
    net = unet_mod.build(cfg)
    lab = labels[:8, :32, :32].copy()
    lab[:, :4] = 0  # an unlabelled band: no LSD target there, the loss must stay finite
    x = torch.from_numpy(feats.normalise(image[:8, :32, :32]))[None, None]
    t, m = affinity_targets(lab, [(-1, 0, 0), (0, -1, 0), (0, 0, -1), (-2, 0, 0)])
    t, m = torch.from_numpy(t)[None], torch.from_numpy(m)[None]
    lsds = torch.from_numpy(lsd_targets(lab, 3.0))[None]
    assert net(x).shape[1] == 4 + 10
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    with_lsd = loss_fn(net(x), t, m, lsds, config.model, config)
    without = loss_fn(net(x), t, m, None, config.model, config)
    assert torch.isfinite(with_lsd) and with_lsd > without
    before = with_lsd.item()
    for _ in range(3):
        opt.zero_grad()
        loss_fn(net(x), t, m, lsds, config.model, config).backward()
        opt.step()
    assert loss_fn(net(x), t, m, lsds, config.model, config).item() < before


def test_unet_checkpoint_round_trip_and_mismatch(tmp_path) -> None:
    model = _unet()
    path = tmp_path / "u.pt"
    unet_mod.save(path, model.net, {"steps": 3})
    again = load_model("unet", str(path))
    image = np.random.default_rng(3).random((10, 20, 20), dtype=np.float32)
    np.testing.assert_allclose(again.predict(image), model.predict(image), atol=1e-6)
    assert again.meta["steps"] == 3
    other = unet_mod.build(CFG.model_copy(update={"width": 4}))
    data = unet_mod.read(str(path))
    with pytest.raises(CheckpointError, match=r"wrong shape \['down.0.0.bias: \(3,\) in the checkpoint vs \(4,\)"):
        unet_mod.load_weights(other, data)
    deeper = unet_mod.build(CFG.model_copy(update={"convs": 2}))
    with pytest.raises(CheckpointError, match=r"missing \['down.0.2.bias'"):
        unet_mod.load_weights(deeper, data)
    torch.save({"weights": torch.zeros(2)}, tmp_path / "plain.pt")
    with pytest.raises(CheckpointError, match="not an U-Net checkpoint"):
        load_model("unet", str(tmp_path / "plain.pt"))
    with pytest.raises(ConfigError, match="precision 'fp8'"):
        load_model("unet", str(path), precision="fp8")


def test_bundled_forest_loads_and_finds_phantom_boundaries(phantom) -> None:
    from emseg.pipeline.io.checkpoints import BUNDLED_DIR

    assert (BUNDLED_DIR / "forest_fib25.skops").stat().st_size < 5e6
    model = load_model("forest")
    image, labels = phantom
    # a phantom of another contrast than fib25: the normalisation and augmentation must carry over
    b = model.boundary(image[:16, :40, :40] * 0.6 + 0.3)
    target = forest_mod.boundary_target(labels[:16, :40, :40])
    assert b[target == 1].mean() > b[target == 0].mean() + 0.2


def test_bundled_unet_loads_and_predicts() -> None:
    from emseg.pipeline.io.checkpoints import BUNDLED_DIR

    assert (BUNDLED_DIR / "unet_fib25.pt").stat().st_size < 5e6
    model = load_model("unet", precision="fp32")
    assert model.context_zyx == (24, 24, 24) and model.device == "cpu"
    affs = model.predict(np.random.default_rng(0).random((12, 20, 20), dtype=np.float32), origin_zyx=(3, 5, 7))
    assert affs.shape == (3, 12, 20, 20) and 0 <= affs.min() and affs.max() <= 1
