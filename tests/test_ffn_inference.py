"""Flood-fill mechanics with an injected ideal model: seeds, movement, claimed voxels, minimum size.

The ideal model returns the true object map inside each FOV (the ground-truth object under the
voxels its object map already holds), so flood filling must reproduce the ground truth exactly.
No torch is needed here.
"""

from __future__ import annotations

import cc3d
import numpy as np
import pytest
from scipy import ndimage as ndi

from emseg.pipeline.backends.ffn.inference import FloodSettings, flood_fill
from emseg.pipeline.backends.ffn.seeds import grid_seeds, peak_seeds, seed_points

FOV = (9, 9, 9)
STEP = (2, 2, 2)


def cells_volume(shape: tuple[int, int, int], n_cells: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Voronoi cells separated by one-voxel dark membranes (label 0): an EM-like toy volume.

    Returns the image (uint8: bright cells, dark membranes, noise) and the labels (uint32, each
    label one 6-connected component).
    """
    rng = np.random.default_rng(seed)
    points = rng.uniform(0, shape, size=(n_cells, 3))
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), axis=-1)
    dist = ((grid[..., None, :] - points) ** 2).sum(-1)
    cells = dist.argmin(-1) + 1
    membrane = np.zeros(shape, bool)
    for axis in range(3):
        differ = np.diff(cells, axis=axis) != 0
        sl = [slice(None)] * 3
        sl[axis] = slice(1, None)
        membrane[tuple(sl)] |= differ
    labels = cc3d.connected_components(np.where(membrane, 0, cells), connectivity=6).astype(np.uint32)
    image = np.where(labels > 0, 200.0, 60.0) + rng.normal(0, 8, shape)
    return np.clip(image, 0, 255).astype(np.uint8), labels


class IdealModel:
    """Returns +8 where the true object is, -8 elsewhere.

    The object is the ground-truth label most common under the voxels the object map already holds.
    With ``grow``, the model is greedy: it spills ``grow`` voxels into the neighbours, and it follows
    the object of the last seed it saw (only for ``batch_size=1``) so that the spill cannot make it
    switch objects.
    """

    def __init__(self, labels: np.ndarray, radius: tuple[int, int, int], grow: int = 0) -> None:
        self.labels = np.pad(labels, [(r, r) for r in radius])
        self.radius = radius
        self.fov = tuple(2 * r + 1 for r in radius)
        self.grow = grow
        self.current = 0
        self.calls = 0

    def __call__(self, image: np.ndarray, pom: np.ndarray, centers: np.ndarray) -> np.ndarray:
        out = np.full(pom.shape, -8.0, np.float32)
        for i, c in enumerate(centers):
            self.calls += 1
            # centre c in block voxels sits at c + r in the padded labels, so the FOV starts at c
            gt = self.labels[tuple(slice(ci, ci + f) for ci, f in zip(c, self.fov))]
            held = pom[i] > 0
            if self.grow and held.sum() == 1 and held[self.radius]:
                self.current = gt[self.radius]  # a new seed
            if self.grow:
                label = self.current
            else:
                under = gt[held & (gt > 0)]
                label = np.bincount(under).argmax() if under.size else 0
            if label == 0:
                continue
            obj = gt == label
            if self.grow:
                obj = ndi.binary_dilation(obj, iterations=self.grow)
            out[i][obj] = 8.0
        return out


def settings(**kw: object) -> FloodSettings:
    base = dict(fov_size=FOV, step=STEP, init_logit=-2.944, seed_logit=2.944, min_size=1)
    base.update(kw)
    return FloodSettings(**base)  # type: ignore[arg-type]


def drop_small(labels: np.ndarray, min_size: int) -> np.ndarray:
    ids, counts = np.unique(labels, return_counts=True)
    small = ids[(counts < min_size) & (ids != 0)]
    return np.where(np.isin(labels, small), 0, labels)


def same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """Equal up to a renaming of the nonzero ids (0 must match 0)."""
    if not np.array_equal(a == 0, b == 0):
        return False
    pairs = np.unique(np.stack([a[a > 0], b[b > 0]]), axis=1)
    return len(np.unique(pairs[0])) == pairs.shape[1] == len(np.unique(pairs[1]))


@pytest.fixture(scope="module")
def volume() -> tuple[np.ndarray, np.ndarray]:
    return cells_volume((24, 40, 40), n_cells=14, seed=3)


def normalise(image: np.ndarray) -> np.ndarray:
    return (image.astype(np.float32) - 128.0) / 64.0


def test_grid_and_peak_seeds() -> None:
    assert grid_seeds((5, 5, 5), (5, 5, 5)).tolist() == [[2, 2, 2]]
    interior = np.zeros((1, 9, 20), bool)
    interior[0, 1:8, 1:8] = True  # deeper blob
    interior[0, 3:6, 12:15] = True  # shallower blob
    peaks = peak_seeds(interior, min_distance=2, min_depth=1)
    assert peaks[0].tolist() == [0, 4, 4]
    assert peaks[1].tolist() == [0, 4, 13]


def test_ideal_model_reproduces_ground_truth(volume: tuple[np.ndarray, np.ndarray]) -> None:
    image, gt = volume
    seeds = seed_points(normalise(image), 1.0, 0.0, 2, 1.0, (3, 3, 3))
    model = IdealModel(gt, (4, 4, 4))
    labels, stats = flood_fill(normalise(image), seeds, model, settings(min_size=1))
    assert labels.dtype == np.uint32 and labels.shape == gt.shape
    assert same_partition(labels, gt)
    assert stats.objects == len(np.unique(gt)) - 1
    assert 0 < stats.fovs < (gt > 0).sum()


def test_batched_objects_give_the_same_result(volume: tuple[np.ndarray, np.ndarray]) -> None:
    image, gt = volume
    seeds = seed_points(normalise(image), 1.0, 0.0, 2, 1.0, (3, 3, 3))
    labels, _ = flood_fill(normalise(image), seeds, IdealModel(gt, (4, 4, 4)), settings(batch_size=6))
    assert same_partition(labels, gt)


def test_min_size_drops_small_objects(volume: tuple[np.ndarray, np.ndarray]) -> None:
    image, gt = volume
    sizes = np.bincount(gt.ravel())[1:]
    min_size = int(np.median(sizes))
    seeds = seed_points(normalise(image), 1.0, 0.0, 2, 1.0, (3, 3, 3))
    labels, stats = flood_fill(normalise(image), seeds, IdealModel(gt, (4, 4, 4)), settings(min_size=min_size))
    assert same_partition(labels, drop_small(gt, min_size))
    assert stats.rejected_small > 0


def test_only_seeded_objects_and_the_fallback_grid(volume: tuple[np.ndarray, np.ndarray]) -> None:
    image, gt = volume
    # one seed: exactly the object under it, although it is far larger than one FOV (movement)
    big = np.bincount(gt.ravel())[1:].argmax() + 1
    extent = np.ptp(np.argwhere(gt == big), axis=0) + 1
    assert (extent > np.array(FOV)).all()
    seed = np.argwhere(gt == big)[0]
    labels, stats = flood_fill(normalise(image), seed[None], IdealModel(gt, (4, 4, 4)), settings())
    assert np.array_equal(labels, np.where(gt == big, 1, 0).astype(np.uint32))
    assert stats.seeds_tried == 1 and stats.fovs > 1
    # the grid alone (no peaks) finds every object too, when it is fine enough
    grid = grid_seeds(gt.shape, (2, 2, 2))  # type: ignore[arg-type]
    labels, _ = flood_fill(normalise(image), grid, IdealModel(gt, (4, 4, 4)), settings())
    assert same_partition(labels, gt)


def test_claimed_voxels_are_kept(volume: tuple[np.ndarray, np.ndarray]) -> None:
    image, gt = volume
    img = normalise(image)
    # a greedy model spills two voxels into the neighbours
    greedy = lambda: IdealModel(gt, (4, 4, 4), grow=2)  # noqa: E731
    seeds = seed_points(img, 1.0, 0.0, 2, 1.0, (3, 3, 3))
    full, _ = flood_fill(img, seeds, greedy(), settings())
    first, _ = flood_fill(img, seeds[:1], greedy(), settings())
    # the first object is the same whether or not other objects follow it...
    assert np.array_equal(full == 1, first == 1)
    assert ((gt == gt[tuple(seeds[0])]) <= (first == 1)).all()
    # ...although a later object, flooded alone, would take some of its voxels
    spilled = False
    for s in seeds[1:]:
        if full[tuple(s)] in (0, 1):
            continue
        alone, _ = flood_fill(img, s[None], greedy(), settings())
        if ((alone == 1) & (full == 1)).any():
            spilled = True
            assert not ((full == full[tuple(s)]) & (first == 1)).any()
            break
    assert spilled


def test_max_fovs_per_object_caps_the_flood(volume: tuple[np.ndarray, np.ndarray]) -> None:
    image, gt = volume
    seed = np.argwhere(gt == np.bincount(gt.ravel())[1:].argmax() + 1)[len(gt) // 2]
    model = IdealModel(gt, (4, 4, 4))
    flood_fill(normalise(image), seed[None], model, settings(max_fovs_per_object=3))
    assert model.calls == 3
