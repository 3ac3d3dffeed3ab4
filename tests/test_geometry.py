"""Boxes, the block grid and shard geometry."""

from __future__ import annotations

import dataclasses

import itertools

import numpy as np
import pytest

from emseg.pipeline.geometry import Box, BlockGrid
from emseg.pipeline.io.sharding import choose_bits, shard_chunks, shard_shape
from emseg.pipeline.io.volume import create_precomputed, sharding_spec


@pytest.mark.parametrize("shape,block,halo", [((50, 61, 47), (16, 16, 16), (2, 2, 2)), ((8, 9, 10), (8, 4, 3), (0, 1, 5))])
def test_write_boxes_tile_the_roi_exactly(shape, block, halo):
    roi = Box((3, 1, 2), tuple(s + o for s, o in zip(shape, (3, 1, 2))))
    grid = BlockGrid(roi, block, halo)
    cover = np.zeros(shape, np.int32)
    for b in grid:
        cover[b.write_box.slices(roi.start)] += 1
        assert roi.contains(b.read_box) and b.read_box.contains(b.write_box)
        assert b.read_box == b.write_box.grow(halo) & roi
        assert grid.block(b.id) == b and grid.block_id(b.index) == b.id
    assert (cover == 1).all()
    assert [b.id for b in grid] == list(range(grid.num_blocks))


def test_forward_neighbours_cover_every_face_once():
    grid = BlockGrid(Box((0, 0, 0), (30, 30, 30)), (10, 10, 10), (1, 1, 1))
    pairs = {(b.id, n.id) for b in grid for _, n in grid.forward_neighbours(b)}
    assert len(pairs) == 3 * 3 * 3 * 3 - 3 * 9  # 3 axes x (2 faces x 9) = 54
    every = {tuple(sorted((b.id, n.id))) for b in grid for _, _, n in grid.neighbours(b)}
    assert every == pairs


def test_box_is_immutable_and_half_open():
    b = Box((0, 0, 0), (2, 3, 4))
    assert b.shape == (2, 3, 4) and b.size == 24
    with pytest.raises(dataclasses.FrozenInstanceError):
        b.start = (1, 1, 1)  # type: ignore[misc]
    assert (b & Box((2, 0, 0), (3, 3, 4))).empty


@pytest.mark.parametrize("grid_chunks,block_chunks", [((8, 8, 8), (2, 2, 2)), ((4, 8, 16), (2, 4, 4)), ((3, 5, 7), (2, 2, 2))])
def test_shard_shape_matches_tensorstore(tmp_path, grid_chunks, block_chunks):
    chunk = (8, 8, 8)
    shape = tuple(g * c for g, c in zip(grid_chunks, chunk))
    bits = choose_bits(grid_chunks, block_chunks)
    ours = shard_shape(grid_chunks, chunk, bits[0], bits[1])
    vol = create_precomputed(str(tmp_path / "s"), layer_type="segmentation", dtype="uint64", shape_zyx=shape,
                             voxel_size_nm=(1, 1, 1), chunk_zyx=chunk, sharding=sharding_spec(*bits))
    # tensorstore's write chunk of a sharded precomputed volume is the shard (x, y, z, channel order).
    theirs = tuple(vol.array.schema.chunk_layout.write_chunk.shape)
    assert ours == theirs
    assert all(b * c % s == 0 for b, c, s in zip(block_chunks, chunk, ours))


def test_choose_bits_prefers_the_largest_aligned_shard():
    assert choose_bits((8, 8, 8), (4, 4, 4)) == (3, 3, 3)  # 64 chunks per shard = one block
    for grid, block in itertools.product([(8, 8, 8), (2, 16, 16)], [(2, 2, 2), (1, 4, 4)]):
        pre, mini, _ = choose_bits(grid, block)
        fits = [b % s == 0 or b >= g for b, s, g in zip(block, shard_chunks(grid, pre + mini), grid)]
        assert all(fits)  # the shard lies inside one block ...
        bigger = shard_chunks(grid, pre + mini + 1)
        assert not all(b % s == 0 or b >= g for b, s, g in zip(block, bigger, grid))  # ... and is the largest


def test_a_redone_block_redoes_the_seam_tasks_that_read_it() -> None:
    """Resume planning: a boundary seam task reads its face neighbours (global agglomeration) or its
    whole hood (blockwise: BlockGrid.hood), so a redone stage-1 block redoes exactly those."""
    from emseg.pipeline import stages
    from emseg.pipeline.stitching.resume import todo

    grid = BlockGrid(Box((0, 0, 0), (6, 6, 6)), (2, 2, 2), (1, 1, 1))
    everything = {str(i) for i in range(grid.num_blocks)}
    done = {stages.SEGMENT: everything - {"13"}, stages.SEAMS: everything, stages.UNIONFIND: set(),
            stages.RELABEL: everything}  # block 13 is the centre of the 3 x 3 x 3 grid
    faces = todo(done, grid, boundary=True, global_agglomeration=True)[stages.SEAMS]
    assert faces == [4, 10, 12, 13, 14, 16, 22]
    hood = todo(done, grid, boundary=True, global_agglomeration=False)[stages.SEAMS]
    assert hood == list(range(27))
    assert [b.id for b in grid.neighbourhood(grid.block(0))] == [0, 1, 3, 4, 9, 10, 12, 13]
    assert sorted(int(i) for i in grid.offset_ids((1, 0, -1)) if i >= 0) == [9, 10, 12, 13, 15, 16, 18, 19, 21, 22, 24, 25]
