"""The synthetic EM phantom: deterministic, tiling-independent, EM-like, fast enough to tile."""

from __future__ import annotations

import time

import numpy as np
import pytest
from pydantic import ValidationError
from scipy import ndimage as ndi

from emseg.pipeline.errors import RegionError
from emseg.pipeline.geometry import Box, BlockGrid
from emseg.pipeline.quality.phantom import Phantom, PhantomParams

SMALL = PhantomParams(shape_zyx=(40, 48, 44), seed=3)


@pytest.fixture(scope="module")
def small() -> Phantom:
    return Phantom(SMALL)


@pytest.fixture(scope="module")
def whole(small: Phantom) -> tuple[np.ndarray, np.ndarray]:
    return small.render(Box.from_shape(SMALL.shape_zyx))


def test_types_and_shapes(whole: tuple[np.ndarray, np.ndarray]) -> None:
    image, labels = whole
    assert image.dtype == np.uint8 and labels.dtype == np.uint64
    assert image.shape == labels.shape == SMALL.shape_zyx
    assert image.flags.c_contiguous and labels.flags.c_contiguous


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_halves_concatenate_to_the_whole(small: Phantom, whole: tuple[np.ndarray, np.ndarray], axis: int) -> None:
    cut = [17, 23, 29][axis]  # off any internal grid
    stop = list(SMALL.shape_zyx)
    stop[axis] = cut
    start = [0, 0, 0]
    start[axis] = cut
    first = small.render(Box((0, 0, 0), stop))
    second = small.render(Box(start, SMALL.shape_zyx))
    for got, expected in zip(
        (np.concatenate([first[0], second[0]], axis), np.concatenate([first[1], second[1]], axis)), whole
    ):
        np.testing.assert_array_equal(got, expected)


def test_any_tiling_gives_the_same_volume(small: Phantom, whole: tuple[np.ndarray, np.ndarray]) -> None:
    grid = BlockGrid(Box.from_shape(SMALL.shape_zyx), (13, 19, 30), (0, 0, 0))
    image = np.zeros(SMALL.shape_zyx, np.uint8)
    labels = np.zeros(SMALL.shape_zyx, np.uint64)
    for block in grid:
        image[block.write_box.slices()], labels[block.write_box.slices()] = small.render(block.write_box)
    np.testing.assert_array_equal(image, whole[0])
    np.testing.assert_array_equal(labels, whole[1])
    # An interior box, not touching the volume's faces.
    box = Box((5, 7, 9), (31, 40, 30))
    inner = small.render(box)
    np.testing.assert_array_equal(inner[0], whole[0][box.slices()])
    np.testing.assert_array_equal(inner[1], whole[1][box.slices()])


def test_deterministic_per_seed(whole: tuple[np.ndarray, np.ndarray]) -> None:
    again = Phantom(SMALL).render(Box.from_shape(SMALL.shape_zyx))
    np.testing.assert_array_equal(again[0], whole[0])
    np.testing.assert_array_equal(again[1], whole[1])
    other = Phantom(SMALL.model_copy(update={"seed": 4})).render(Box.from_shape(SMALL.shape_zyx))
    assert not np.array_equal(other[1], whole[1])
    assert np.mean(other[0] != whole[0]) > 0.5


def test_looks_like_fib_sem() -> None:
    """The defaults are calibrated on FIB-25 (fib25_ts2, 10 nm voxels); its numbers are in the comments."""
    params = PhantomParams(shape_zyx=(96, 96, 96), seed=0)
    phantom = Phantom(params)
    box = Box.from_shape(params.shape_zyx)
    image, labels = phantom.render(box)
    ids, sizes = np.unique(labels, return_counts=True)
    objects, object_ids = sizes[ids != 0], ids[ids != 0]
    # Densely packed neurites of varied calibre, almost no extracellular space (FIB-25: none).
    assert np.mean(labels == 0) < 0.05
    assert objects.size >= 12
    assert phantom.radii.min() >= params.radius_min and phantom.radii.max() <= params.radius_max
    boundary = np.zeros(labels.shape, bool)
    for axis in range(3):
        differ = np.diff(labels, axis=axis) != 0
        boundary[(slice(None),) * axis + (slice(1, None),)] |= differ
        boundary[(slice(None),) * axis + (slice(None, -1),)] |= differ
    assert 0.05 < boundary.mean() < 0.2  # share of voxels touching another label; FIB-25 0.117
    # Calibre: how deep the thickest point of each object lies inside it (FIB-25: 4.0 and 22 voxels
    # at the 10th and 90th percentiles).
    depth = ndi.distance_transform_edt(~boundary & (labels != 0))
    thickness = np.asarray(ndi.maximum(depth, labels, object_ids[objects > 500]))
    assert np.percentile(thickness, 90) > 3 * np.percentile(thickness, 10)
    # Dark membranes: FIB-25 has grey level 98 where labels meet and 138 three voxels away.
    distance = ndi.distance_transform_edt(~boundary)
    image_f = image.astype(np.float32)
    assert image_f[boundary].mean() < 105
    assert image_f[(distance >= 2.5) & (distance < 3.5)].mean() - image_f[boundary].mean() > 30
    # Mitochondria: dark, inside their own neurite only (the voxels of a mitochondrion's tube that
    # belong to another neurite are that neurite's cytoplasm).
    mito = phantom.mitochondria(box)
    assert len(phantom.mito_neurite) > 0 and (mito >= 0).any()
    own = np.zeros(labels.shape, bool)
    own[mito >= 0] = labels[mito >= 0] == phantom.mito_neurite[mito[mito >= 0]] + 1
    far = distance >= 3
    deep = own & (ndi.distance_transform_edt(own) >= 2) & far
    cytoplasm = (mito < 0) & far & (labels != 0)
    assert image_f[deep].mean() < 100 < 120 < image_f[cytoplasm].mean()
    assert image_f[(mito >= 0) & ~own & far].mean() > 120
    # Grain in the cytoplasm (specks and noise): FIB-25's high-pass standard deviation is 11.8.
    bright = cytoplasm & (distance >= 4) & (ndi.gaussian_filter(image_f, 4) > 130)
    grain = (image_f - ndi.gaussian_filter(image_f, 3))[bright].std()
    assert 7 < grain < 16
    # Cytoplasm brightness varies from object to object.
    inside = (distance >= 4) & (labels != 0) & (mito < 0)
    means = [image_f[(labels == i) & inside].mean() for i in object_ids[objects > 2000]
             if ((labels == i) & inside).any()]
    assert np.std(means) > 6
    assert image.min() < 60 < 180 < image.max()


def test_bad_boxes_and_params(small: Phantom) -> None:
    with pytest.raises(RegionError, match="intersect"):
        small.render(Box((0, 0, 0), (41, 10, 10)))
    with pytest.raises(RegionError):
        small.render(Box((-1, 0, 0), (5, 5, 5)))
    image, labels = small.render(Box((3, 3, 3), (3, 9, 9)))
    assert image.shape == labels.shape == (0, 6, 6)
    with pytest.raises(ValidationError):
        PhantomParams(shape_zyx=(8, 8, 8), colour="blue")
    with pytest.raises(ValidationError, match="radius_min"):
        PhantomParams(radius_min=9, radius_max=4)
    with pytest.raises(ValidationError, match="mito_radius_ratio"):
        PhantomParams(mito_radius_ratio=(0.6, 0.3))


def test_renders_a_128_cube_quickly() -> None:
    phantom = Phantom(PhantomParams())
    start = time.process_time()
    image, labels = phantom.render(Box((0, 0, 0), (128, 128, 128)))
    cpu = time.process_time() - start
    assert image.shape == (128, 128, 128)
    # About 1 s of CPU here; wall time depends on how busy the machine is.
    assert cpu < 4.0
