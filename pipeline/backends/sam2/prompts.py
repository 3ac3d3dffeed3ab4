"""Automatic prompts: seed points at the centres of an interior estimate, slice by slice.

The interior estimate is a labelling of the block by a cheap backend (``watershed`` by default,
``threshold-cc`` as an alternative). On one slice, a segment's interior is the part of it that
touches no other label and no background (4-neighbourhood); the seed of the segment is the peak of
the Euclidean distance transform of that interior, the point farthest from every boundary. One
positive click per segment.

Prompting goes in rounds. Each round picks a slice, seeds every segment there whose *uncovered*
interior (not yet claimed by a propagated object) is large enough, and the seeds are propagated
through the block. The first rounds use the key slices (evenly spaced); later rounds pick the slice
with the most uncovered interior, so that objects which enter the block after the key slices (or
were lost on the way) get their own prompt, up to a bound on rounds and on objects.

    slice 0  ░░▓▓▓▓░░░░   ▓ covered by propagated objects
    slice 4  ░▓▓▓▓▓░●░░   ● new seed: a segment still uncovered on slice 4
    slice 8  ░░▓▓▓▓░░░░   ░ interior not covered yet
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage


@dataclass(frozen=True)
class Seeds:
    """Seed points on one slice.

    Attributes
    ----------
    frame
        Index of the slice along the propagation axis.
    points
        ``(n, 2)`` int (y, x) positions on the slice.
    segments
        ``(n,)`` the interior-estimate label each seed came from.
    """

    frame: int
    points: np.ndarray
    segments: np.ndarray

    def __len__(self) -> int:
        return len(self.points)

    def take(self, count: int) -> Seeds:
        """The first ``count`` seeds."""
        return Seeds(self.frame, self.points[:count], self.segments[:count])


def interior(labels: np.ndarray) -> np.ndarray:
    """Pixels of a 2D labelling whose 4-neighbours all carry the same non-zero label.

    >>> interior(np.array([[1, 1, 1, 2], [1, 1, 1, 2], [1, 1, 1, 2]])).astype(int)
    array([[0, 0, 0, 0],
           [0, 1, 0, 0],
           [0, 0, 0, 0]])
    """
    inner = labels != 0
    inner[0, :] = inner[-1, :] = False
    inner[:, 0] = inner[:, -1] = False
    inner[1:, :] &= labels[1:, :] == labels[:-1, :]
    inner[:-1, :] &= labels[:-1, :] == labels[1:, :]
    inner[:, 1:] &= labels[:, 1:] == labels[:, :-1]
    inner[:, :-1] &= labels[:, :-1] == labels[:, 1:]
    return inner


def key_slices(num_frames: int, count: int) -> list[int]:
    """``count`` evenly spaced slices, each at the centre of its share of the block.

    >>> key_slices(8, 1), key_slices(8, 2), key_slices(3, 5)
    ([4], [2, 6], [0, 1, 2])
    """
    count = max(1, min(count, num_frames))
    return sorted({(2 * i + 1) * num_frames // (2 * count) for i in range(count)})


def _candidates(
    labels: np.ndarray, covered: np.ndarray, min_area: int
) -> tuple[np.ndarray, np.ndarray]:
    """Free interior mask of one slice and the segments with at least ``min_area`` of it."""
    free = interior(labels) & ~covered
    ids, counts = np.unique(labels[free], return_counts=True)
    return free, ids[counts >= min_area]


def seeds_on_slice(
    labels: np.ndarray,
    covered: np.ndarray,
    frame: int,
    *,
    min_area: int = 16,
    min_distance: float = 2.0,
) -> Seeds:
    """One seed per segment of ``labels`` whose uncovered interior is large enough.

    Parameters
    ----------
    labels
        ``(h, w)`` interior-estimate labels of the slice.
    covered
        ``(h, w)`` bool, pixels already claimed by propagated objects.
    frame
        The slice's index (stored in the result).
    min_area
        Smallest uncovered interior (pixels) that earns a seed.
    min_distance
        Smallest distance (pixels) from the seed to the interior's edge; thinner parts get none.

    Examples
    --------
    >>> labels = np.zeros((9, 9), int); labels[1:8, 1:8] = 5
    >>> seeds = seeds_on_slice(labels, np.zeros_like(labels, bool), 0, min_area=4)
    >>> seeds.points.tolist(), seeds.segments.tolist()
    ([[4, 4]], [5])
    """
    free, ids = _candidates(labels, covered, min_area)
    if len(ids) == 0:
        return Seeds(frame, np.zeros((0, 2), np.int64), np.zeros(0, labels.dtype))
    distance = ndimage.distance_transform_edt(free)
    peaks = ndimage.maximum_position(distance, labels=np.where(free, labels, 0), index=ids)
    points = np.array(peaks, dtype=np.int64).reshape(-1, 2)
    keep = distance[points[:, 0], points[:, 1]] >= min_distance
    return Seeds(frame, points[keep], ids[keep])


def best_uncovered_slice(
    labels: np.ndarray,
    covered: np.ndarray,
    *,
    min_area: int = 16,
    min_distance: float = 2.0,
    exclude: set[int] | frozenset[int] = frozenset(),
) -> Seeds | None:
    """Seeds on the slice with the most uncovered interior, or None when no slice earns one.

    Slices are ranked by their uncovered interior in segments of at least ``min_area`` pixels; the
    distance test runs on the best one first, and on the next ones only if it yields no seed.
    ``exclude`` lists slices not to prompt again.
    """
    scores = []
    for frame in range(labels.shape[0]):
        if frame in exclude:
            continue
        free, ids = _candidates(labels[frame], covered[frame], min_area)
        if len(ids):
            scores.append((-int(np.isin(labels[frame][free], ids).sum()), frame))
    for _, frame in sorted(scores):
        seeds = seeds_on_slice(
            labels[frame], covered[frame], frame, min_area=min_area, min_distance=min_distance
        )
        if len(seeds):
            return seeds
    return None


def prior_prompts(prior: np.ndarray) -> list[tuple[Seeds, np.ndarray]]:
    """Prompts from labels already known in part of the block (a neighbour's, in the overlap).

    Each known label is prompted once, on the slice where it is largest: a click at the peak of
    its distance transform there, and its mask on that slice as a dense prompt. Labels are grouped
    by slice, one group per slice.

    Parameters
    ----------
    prior
        ``(frames, h, w)`` labels, 0 where nothing is known.

    Returns
    -------
    list of (Seeds, masks)
        ``masks`` is ``(n, h, w)`` bool, one per seed.

    Examples
    --------
    >>> prior = np.zeros((3, 8, 8), np.uint64); prior[1, 2:7, 2:7] = 9; prior[2, 3:5, 3:5] = 9
    >>> [(s.frame, s.points.tolist(), s.segments.tolist(), m.shape) for s, m in prior_prompts(prior)]
    [(1, [[4, 4]], [9], (1, 8, 8))]
    """
    ids = np.unique(prior)
    ids = ids[ids != 0]
    if len(ids) == 0:
        return []
    area = np.stack([ndimage.sum_labels(np.ones(prior.shape[1:]), f, ids) for f in prior])
    best_frame = np.argmax(area, axis=0)
    groups = []
    for frame in np.unique(best_frame):
        chosen = ids[best_frame == frame]
        masks = prior[frame][None] == chosen[:, None, None]
        # the distance to the slice's edge counts too: pad with background
        peaks = [ndimage.distance_transform_edt(np.pad(m, 1))[1:-1, 1:-1] for m in masks]
        points = np.array(
            [np.unravel_index(np.argmax(d), d.shape) for d in peaks], dtype=np.int64
        ).reshape(-1, 2)
        groups.append((Seeds(int(frame), points, chosen), masks))
    return groups
