"""Prompts from the neighbours: the checkerboard order of the graph, the prior an odd block gets, and
what a resume redoes. (The sam2 backend's use of the prior: tests/test_sam2_*.py.)"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import blobs, run_config, same_partition, write_zarr


def _ctx(tmp_path: Path, grid_voxels: tuple[int, int, int], prompts: bool):
    from emseg.tasks.driver.run import validate

    image = blobs(grid_voxels, sigma=2.0, seed=4)
    write_zarr(tmp_path / "in.zarr", image, chunks=(8, 8, 8))
    p = validate(run_config(f"zarr://{tmp_path}/in.zarr", tmp_path / "out", None,
                        blocks={"shape": [8, 8, 8], "halo": [2, 2, 2]}))
    return p, dataclasses.replace(p.ctx, neighbour_prompts=prompts)


@pytest.mark.parametrize("prompts", [False, True])
def test_every_task_comes_after_what_it_needs(tmp_path: Path, prompts: bool) -> None:
    from emseg.tasks.driver import graph
    from emseg.pipeline.stitching.resume import all_items

    _, ctx = _ctx(tmp_path, (24, 32, 40), prompts)  # 3 x 4 x 5 blocks
    grid = ctx.grid
    seen: set[tuple[str, object]] = set()
    deps_of = {}
    for task in graph.streaming_tasks(ctx, all_items(grid)):
        missing = [d for d in task.deps if d not in seen]
        assert not missing, f"{task.stage} {task.item} yielded before {missing}"
        seen.add((task.stage, task.item))
        deps_of[(task.stage, task.item)] = set(task.deps)
    assert {item for stage, item in seen if stage == "1-segment"} == set(range(grid.num_blocks))
    odd = grid.odd()
    for b in range(grid.num_blocks):
        face = {("1-segment", nb.id) for _, _, nb in grid.neighbours(grid.block(b))}
        expected = face if prompts and odd[b] else set()
        assert deps_of[("1-segment", b)] == expected
        assert all(odd[nb] != odd[b] for _, nb in face)


def test_an_odd_block_gets_its_neighbours_labels_in_the_overlaps(tmp_path: Path) -> None:
    from emseg.pipeline.io.scratch import Scratch
    from emseg.tasks.stage1_segment import face_key, neighbour_prior, segment_block

    p, ctx = _ctx(tmp_path, (24, 24, 24), prompts=True)
    from emseg.tasks.driver.run import prepare_output

    prepare_output(p, restart=True)
    grid = ctx.grid
    odd = grid.odd()
    block = grid.block(grid.block_id((1, 1, 1)))  # the centre: six even face neighbours
    assert odd[block.id]
    with pytest.raises(RuntimeError, match="no stage-1 result"):
        neighbour_prior(ctx, block)
    for b in np.flatnonzero(~odd).tolist():
        segment_block(ctx, b)
    prior = neighbour_prior(ctx, block)
    assert prior.shape == block.read_box.shape and prior.dtype == np.uint64

    store = Scratch(ctx.output)
    covered = np.zeros(prior.shape, bool)
    owners: dict[int, int] = {}
    for axis, direction, nb in grid.neighbours(block):
        overlap = (block.read_box & nb.read_box).slices(block.read_box.start)
        theirs = store.get_arrays(face_key(nb.id, axis, -direction))["labels"]
        mine = prior[overlap]
        # Where no earlier neighbour claimed the voxel, the prior is this neighbour's labels.
        free = ~covered[overlap]
        assert same_partition(np.where(free, mine, 0), np.where(free, theirs, 0).astype(np.uint64))
        for label in np.unique(mine[free & (theirs > 0)]).tolist():
            assert owners.setdefault(label, nb.id) == nb.id, "two neighbours share a prior label"
        covered[overlap] = True
    assert len(set(owners.values())) >= 3, "too few neighbours with labels in the overlap to test"
    assert not prior[~covered].any()


def test_a_redone_even_block_redoes_the_odd_blocks_it_prompted(tmp_path: Path) -> None:
    from emseg.pipeline.io.scratch import Scratch
    from emseg.pipeline.stitching.resume import todo
    from emseg.tasks.driver.run import done_markers

    p, ctx = _ctx(tmp_path, (24, 24, 24), prompts=True)
    grid = ctx.grid
    store = Scratch(ctx.output)
    for b in range(grid.num_blocks):
        store.mark_done("1-segment", b, {"n_core": 1, "n_total": 1})
    corner = grid.block_id((0, 0, 0))
    store.clear_done("1-segment", [corner])
    face = {nb.id for _, _, nb in grid.neighbours(grid.block(corner))}
    assert set(todo(done_markers(store), grid, neighbour_prompts=True)["1-segment"]) == {corner} | face
    assert todo(done_markers(store), grid, neighbour_prompts=False)["1-segment"] == [corner]
