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


def test_looks_like_neuropil() -> None:
    params = PhantomParams(shape_zyx=(64, 64, 64), seed=0)
    phantom = Phantom(params)
    image, labels = phantom.render(Box.from_shape(params.shape_zyx))
    ids, sizes = np.unique(labels, return_counts=True)
    objects = sizes[ids != 0]
    # Densely packed: little extracellular space, many neurites of varied calibre.
    assert np.mean(labels == 0) < 0.05
    assert objects.size >= 30
    assert phantom.radii.min() >= params.radius_min and phantom.radii.max() <= params.radius_max
    assert phantom.radii.max() > 3 * phantom.radii.min()
    # Dark membranes at label boundaries, brighter cytoplasm.
    boundary = np.zeros(labels.shape, bool)
    for axis in range(3):
        differ = np.diff(labels, axis=axis) != 0
        boundary[(slice(None),) * axis + (slice(1, None),)] |= differ
        boundary[(slice(None),) * axis + (slice(None, -1),)] |= differ
    inside = ~boundary & (labels != 0)
    # Calibre: how deep the thickest point of each big object lies inside it.
    depth = ndi.distance_transform_edt(inside)
    big = ids[1:][objects > 500]
    thickness = np.asarray(ndi.maximum(depth, labels, big))
    assert np.percentile(thickness, 90) > 2 * np.percentile(thickness, 10)
    assert image[inside].mean() - image[boundary].mean() > 40
    # Cytoplasm brightness varies from object to object; there is noise and texture.
    means = np.array([image[(labels == i) & inside].mean() for i in ids[1:][objects > 2000]])
    assert means.std() > 8
    assert 4 < image[inside].std() < 60
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


def test_renders_a_128_cube_quickly() -> None:
    phantom = Phantom(PhantomParams())
    start = time.process_time()
    image, labels = phantom.render(Box((0, 0, 0), (128, 128, 128)))
    cpu = time.process_time() - start
    assert image.shape == (128, 128, 128)
    # About 1 s of CPU here; wall time depends on how busy the machine is.
    assert cpu < 4.0
