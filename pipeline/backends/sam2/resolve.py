"""From many objects' mask logits to one label per voxel.

Every batch streams its masks, frame by frame, into a :class:`Resolver` that keeps for each voxel
the highest mask logit seen so far and the object that gave it, so overlaps are resolved by the
highest logit without holding all objects' masks at once (memory: two arrays the size of the block).
A voxel is labelled when its best logit exceeds the mask threshold.

:func:`finish` then makes every prompt point belong to its object on its prompt slice (a seed is a
positive click), drops objects under a size or a score, and numbers the rest from 1 as uint32.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from emseg.pipeline.backends.sam2.propagate import Sink


class Resolver:
    """Running per-voxel maximum of mask logits over objects, on ``device``.

    Parameters
    ----------
    shape
        ``(frames, h, w)`` of the block, the propagation axis first.
    device
        Where the two running arrays live (the compute device, or the CPU for long blocks).
    threshold
        Mask logit above which a voxel belongs to its best object.
    """

    def __init__(self, shape: tuple[int, int, int], device: Any, threshold: float = 0.0) -> None:
        import torch

        self.threshold = float(threshold)
        self.best = torch.full(shape, -torch.inf, dtype=torch.float32, device=device)
        self.owner = torch.zeros(shape, dtype=torch.int64, device=device)

    def sink(self, ids: np.ndarray) -> Sink:
        """A sink for a batch whose rows carry the object ids ``ids`` (ids from 1)."""
        import torch

        table = torch.as_tensor(np.asarray(ids, dtype=np.int64))

        def update(frame: int, rows: np.ndarray, logits: torch.Tensor, scores: torch.Tensor) -> None:
            top, arg = logits.max(dim=0)
            top = top.to(self.best.device)
            obj = table[torch.as_tensor(rows)].to(self.best.device)[arg.to(self.best.device)]
            win = top > self.best[frame]
            self.best[frame] = torch.where(win, top, self.best[frame])
            self.owner[frame] = torch.where(win, obj, self.owner[frame])

        return update

    def covered(self) -> np.ndarray:
        """Bool ``(frames, h, w)``: voxels some object holds."""
        return (self.best > self.threshold).cpu().numpy()

    def labels(self) -> np.ndarray:
        """Object id per voxel (int64), 0 where no object's logit exceeds the threshold."""
        return (self.owner * (self.best > self.threshold)).cpu().numpy()


@dataclass(frozen=True)
class ObjectTable:
    """Per-object records, indexed by object id - 1.

    Attributes
    ----------
    frames, points
        Prompt frame and prompt point (y, x) of each object.
    object_scores
        ``(objects, frames)`` object-score logits, NaN where the object was not visited.
    """

    frames: np.ndarray
    points: np.ndarray
    object_scores: np.ndarray


def object_score(object_scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Score of each object: mean sigmoid of its object-score logit over the frames it holds.

    An object that holds no voxel scores 0.
    """
    count = object_scores.shape[0]
    total = np.zeros(count + 1)
    frames = np.zeros(count + 1)
    for frame in range(labels.shape[0]):
        present = np.unique(labels[frame])
        present = present[present > 0]
        logits = np.nan_to_num(object_scores[present - 1, frame], nan=-np.inf)
        total[present] += 1.0 / (1.0 + np.exp(-logits))
        frames[present] += 1
    return np.divide(total, frames, out=np.zeros_like(total), where=frames > 0)[1:]


def finish(
    labels: np.ndarray, table: ObjectTable, *, min_size: int = 0, min_score: float = 0.0
) -> tuple[np.ndarray, np.ndarray]:
    """Final uint32 labels from the resolver's object ids, and the kept object ids.

    The kept objects are numbered from 1 in the order of their ids: ``kept[i]`` becomes ``i + 1``.

    Parameters
    ----------
    labels
        ``(frames, h, w)`` object ids from :meth:`Resolver.labels`.
    table
        The objects' prompts and scores.
    min_size
        Objects with fewer voxels are dropped.
    min_score
        Objects whose :func:`object_score` is lower are dropped.

    Examples
    --------
    >>> labels = np.zeros((2, 4, 4), np.int64); labels[:, :2, :2] = 2; labels[0, 3, 3] = 1
    >>> table = ObjectTable(np.array([0, 1]), np.array([[3, 3], [0, 0]]), np.ones((2, 2)))
    >>> out, kept = finish(labels, table, min_size=2)
    >>> out.dtype, kept.tolist(), np.unique(out).tolist(), int(out[0, 3, 3])
    (dtype('uint32'), [2], [0, 1], 0)
    """
    labels = labels.copy()
    ids = np.arange(1, len(table.frames) + 1)
    labels[table.frames, table.points[:, 0], table.points[:, 1]] = ids
    sizes = np.bincount(labels.ravel(), minlength=len(ids) + 1)[1:]
    scores = object_score(table.object_scores, labels)
    kept = ids[(sizes >= max(min_size, 1)) & (scores >= min_score)]
    # kept[i] becomes i + 1: the order of prompting is the order of the final ids
    lookup = np.zeros(len(ids) + 1, np.uint32)
    lookup[kept] = np.arange(1, len(kept) + 1, dtype=np.uint32)
    return lookup[labels], kept
