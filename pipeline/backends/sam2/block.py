"""Segment one block with SAM2: prompt rounds, batched propagation, resolution.

The block arrives with the propagation axis first, ``(frames, h, w)``, together with an interior
estimate (labels of a cheap backend) of the same shape. The steps:

1. the image encoder runs once per frame (:class:`~emseg.pipeline.backends.sam2.frames.FrameFeatures`);
2. optional round 0: the neighbours' labels in the overlap, as click + mask prompts;
3. one round per key slice: seeds in the still-uncovered interior of that slice;
4. up to ``reprompt_slices`` rounds on the slice with the most uncovered interior left;
5. each round's seeds propagate forward and backward in batches of ``batch_size`` objects, their
   masks streaming into a per-voxel winner-by-logit;
6. prompt points are kept by their objects, small and low-score objects dropped, ids renumbered.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from emseg.pipeline.backends.sam2.prompts import Seeds, best_uncovered_slice, key_slices, prior_prompts, seeds_on_slice

if TYPE_CHECKING:  # pragma: no cover
    from emseg.pipeline.backends.sam2.propagate import Track
    from emseg.pipeline.backends.sam2.resolve import ObjectTable


@dataclass
class BlockResult:
    """A segmented block and how it was made.

    Attributes
    ----------
    labels
        ``(frames, h, w)`` uint32, the propagation axis first.
    table
        Prompts and object scores of every prompted object (ids before renumbering).
    kept
        Ids (before renumbering) of the objects that survived the filters.
    tracks
        One :class:`~emseg.pipeline.backends.sam2.propagate.Track` per propagated batch, with its object ids.
    prompt_frames
        The frame of each prompt round, in order.
    encoded_frames
        How many frames the image encoder saw (once per frame).
    """

    labels: np.ndarray
    table: ObjectTable
    kept: np.ndarray
    tracks: list[tuple[np.ndarray, Track]] = field(default_factory=list)
    prompt_frames: list[int] = field(default_factory=list)
    encoded_frames: int = 0


class BlockSettings(Protocol):
    """What :func:`segment_block` reads from its settings: the ``sam2`` backend's ``Params`` has these
    fields (the kernel does not import the backend; the backend imports the kernel)."""

    batch_size: int | None
    encoder_batch: int
    memory_frames: int
    max_pointers: int
    end_after_absent: int | None
    key_slices: int
    reprompt_slices: int
    max_objects: int
    min_seed_area: int
    min_seed_distance: float
    neighbour_prompts: bool
    mask_threshold: float
    min_size: int
    min_score: float


def segment_block(
    predictor: Any,
    slices: np.ndarray,
    interior_labels: np.ndarray,
    params: BlockSettings,
    *,
    prior: np.ndarray | None = None,
    offload: bool = False,
) -> BlockResult:
    """Label one block (the propagation axis first); see the module docstring for the steps.

    Parameters
    ----------
    predictor
        A ``SAM2VideoPredictor`` in eval mode; call under ``torch.inference_mode`` and autocast.
    slices
        ``(frames, h, w)`` image.
    interior_labels
        ``(frames, h, w)`` labels of the interior estimate (seed source).
    params
        The backend's parameters.
    prior
        ``(frames, h, w)`` labels known from the neighbours, 0 elsewhere; used when given.
    offload
        Keep image features and the resolver in CPU memory.
    """
    import torch

    from emseg.pipeline.backends.sam2.frames import FrameFeatures
    from emseg.pipeline.backends.sam2.propagate import default_batch_size, propagate_batch
    from emseg.pipeline.backends.sam2.resolve import ObjectTable, Resolver, finish

    features = FrameFeatures(predictor, slices, offload=offload, encoder_batch=params.encoder_batch)
    resolver = Resolver(slices.shape, features.storage, params.mask_threshold)
    frames: list[np.ndarray] = []
    points: list[np.ndarray] = []
    scores: list[np.ndarray] = []
    result_tracks: list[tuple[np.ndarray, Track]] = []
    prompted: list[int] = []
    batch_size = params.batch_size or default_batch_size(features.device.type)

    def run(seeds: Seeds, masks: np.ndarray | None = None) -> None:
        prompted.append(seeds.frame)
        for start in range(0, len(seeds), batch_size):
            stop = min(start + batch_size, len(seeds))
            first = sum(len(p) for p in points) + 1
            ids = np.arange(first, first + stop - start)
            track = propagate_batch(
                predictor, features, seeds.frame, seeds.points[start:stop], resolver.sink(ids),
                masks=None if masks is None else masks[start:stop],
                memory_frames=params.memory_frames, max_pointers=params.max_pointers,
                end_after=params.end_after_absent,
            )
            frames.append(np.full(stop - start, seeds.frame))
            points.append(seeds.points[start:stop])
            scores.append(track.object_scores)
            result_tracks.append((ids, track))

    def budget() -> int:
        return params.max_objects - sum(len(p) for p in points)

    if prior is not None and params.neighbour_prompts:
        for seeds, masks in prior_prompts(prior):
            if budget() > 0:
                run(seeds.take(budget()), masks[: budget()])
    for frame in key_slices(len(slices), params.key_slices):
        if budget() <= 0:
            break
        covered = resolver.covered()[frame]
        seeds = seeds_on_slice(
            interior_labels[frame], covered, frame,
            min_area=params.min_seed_area, min_distance=params.min_seed_distance,
        )
        if len(seeds):
            run(seeds.take(budget()))
    for _ in range(params.reprompt_slices):
        if budget() <= 0:
            break
        seeds = best_uncovered_slice(
            interior_labels, resolver.covered(), min_area=params.min_seed_area,
            min_distance=params.min_seed_distance, exclude=set(prompted),
        )
        if seeds is None:
            break
        run(seeds.take(budget()))

    table = ObjectTable(
        frames=np.concatenate(frames) if frames else np.zeros(0, np.int64),
        points=np.concatenate(points) if points else np.zeros((0, 2), np.int64),
        object_scores=(
            np.concatenate(scores) if scores else np.zeros((0, len(slices)), np.float32)
        ),
    )
    labels, kept = finish(
        resolver.labels(), table, min_size=params.min_size, min_score=params.min_score
    )
    encoded = features.encoded
    del features, resolver
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return BlockResult(labels, table, kept, result_tracks, prompted, encoded_frames=encoded)
