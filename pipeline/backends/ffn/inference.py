"""Flood-fill inference: segment every object of one block, one seed at a time.

The block is padded by the FOV radius (mirrored image) so that a FOV may sit at any voxel of the
block. For each seed (:mod:`emseg.pipeline.backends.ffn.seeds`) that no finished object has claimed:

1. an object map (the *canvas*, logits) starts at ``init_logit`` everywhere and ``seed_logit`` at
   the seed; the first FOV is centred on the seed;
2. the predictor reads the image and the canvas in the FOV and returns new logits, which overwrite
   the canvas there; voxels claimed by earlier objects are shown to it as unexplored;
3. movement: for each of the six faces, the plane ``step`` voxels from the centre is checked; if the
   object probability somewhere on it (claimed voxels excluded) reaches ``move_threshold``, the FOV
   centre one step that way is queued, strongest first, unless already visited or outside the block::

           step
          ├────┤
       ┌─────────────┐
       │    ┆  ·  ┆  │  ┆ = the planes checked along x (likewise along z and y)
       │    ┆  c  ┆──┼──▶ next centre c + step · x̂, if the plane at c + step passes
       │    ┆  ·  ┆  │
       └─────────────┘
             fov

4. when the queue is empty (or ``max_fovs_per_object`` is reached), the object is the connected
   component containing the seed of ``canvas >= logit(segment_threshold)`` minus claimed voxels; it is
   kept if it has at least ``min_size`` voxels, and its voxels are claimed for good. A flood whose
   seed falls below ``segment_threshold`` stops at once (its object could not contain the seed). The
   voxels of an object too small to keep are marked as tried: no later seed starts there, though a
   later object may still take them.

With ``batch_size > 1``, that many objects are flooded at once (one FOV of each per predictor call),
which keeps a GPU busy. A seed inside an object still being flooded waits until that object is
done; an object whose seed was claimed by another object that finished first stops and is dropped as
a duplicate. Results are deterministic for a given batch size.

The predictor is any callable of the :class:`Predictor` protocol, so that tests can inject an ideal
model; :class:`emseg.pipeline.backends.ffn.model.TorchPredictor` wraps the network.
"""

from __future__ import annotations

import heapq
import math
import time
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

Vec3 = tuple[int, int, int]


class Predictor(Protocol):
    """Updates object maps for a batch of FOVs."""

    def __call__(self, image: np.ndarray, pom_logits: np.ndarray, centers: np.ndarray) -> np.ndarray:
        """``(B, z, y, x)`` normalised image and logits, ``(B, 3)`` FOV centres in block voxels;
        returns ``(B, z, y, x)`` float32 new logits."""
        ...


@dataclass(frozen=True)
class FloodSettings:
    """Geometry and policies of one flood-fill run (see the module docstring)."""

    fov_size: Vec3
    step: Vec3
    init_logit: float
    seed_logit: float
    move_threshold: float = 0.9
    segment_threshold: float = 0.6
    min_size: int = 100
    max_fovs_per_object: int = 2000
    batch_size: int = 1

    @property
    def radius(self) -> Vec3:
        return tuple(f // 2 for f in self.fov_size)  # type: ignore[return-value]


@dataclass
class FloodStats:
    """What a flood-fill run did."""

    objects: int = 0
    fovs: int = 0
    seeds_tried: int = 0
    rejected_small: int = 0
    rejected_seed_lost: int = 0
    rejected_duplicate: int = 0
    seconds: float = 0.0


@dataclass
class _Flood:
    seed: Vec3  # padded coordinates
    canvas: int
    heap: list[tuple[float, int, Vec3]] = field(default_factory=list)
    visited: set[Vec3] = field(default_factory=set)
    fovs: int = 0
    lo: list[int] = field(default_factory=list)
    hi: list[int] = field(default_factory=list)
    done: bool = False


def _logit(p: float) -> float:
    return math.log(p / (1.0 - p))


def _pad_image(image: np.ndarray, radius: Vec3) -> np.ndarray:
    return np.pad(image, [(r, r) for r in radius], mode="symmetric")


def flood_fill(
    image: np.ndarray,
    seeds: np.ndarray,
    predictor: Predictor,
    settings: FloodSettings,
) -> tuple[np.ndarray, FloodStats]:
    """Segment all objects of a block.

    Parameters
    ----------
    image
        Normalised float32 image of the block, z, y, x.
    seeds
        ``(N, 3)`` voxel coordinates in the order to try them.
    predictor
        The network (or a stand-in), see :class:`Predictor`.
    settings
        FOV, step, thresholds, minimum size, batch size.

    Returns
    -------
    labels, stats
        uint32 labels of the block's shape (0 = no object) and counts of what was done.
    """
    start = time.monotonic()
    shape = image.shape
    r = settings.radius
    step = settings.step
    pshape = tuple(s + 2 * ri for s, ri in zip(shape, r))
    pimage = _pad_image(image.astype(np.float32, copy=False), r)
    claimed = np.zeros(pshape, dtype=bool)
    tried = np.zeros(pshape, dtype=bool)  # voxels of objects too small to keep: no new seeds there
    labels = np.zeros(pshape, dtype=np.uint32)
    move_logit = _logit(settings.move_threshold)
    seg_logit = _logit(settings.segment_threshold)
    n_canvas = max(1, settings.batch_size)
    canvases = [np.full(pshape, settings.init_logit, dtype=np.float32) for _ in range(n_canvas)]
    free = list(range(n_canvas))
    stats = FloodStats()
    counter = 0
    seed_iter = iter(np.asarray(seeds, dtype=np.int64).reshape(-1, 3))
    active: list[_Flood] = []
    seeds_left = True

    def inner(c: Vec3) -> bool:
        return all(ri <= ci < ri + s for ci, ri, s in zip(c, r, shape))

    deferred: list[Vec3] = []

    def covered(c: Vec3) -> bool:
        return any(canvases[f.canvas][c] >= seg_logit for f in active)

    def next_seed() -> Vec3 | None:
        nonlocal seeds_left
        for s in seed_iter:
            c = (int(s[0]) + r[0], int(s[1]) + r[1], int(s[2]) + r[2])
            if not inner(c) or claimed[c] or tried[c]:
                continue
            if covered(c):
                deferred.append(c)  # an object being flooded covers it: retry once that one is done
                continue
            return c
        i = 0
        while i < len(deferred):
            c = deferred[i]
            if claimed[c] or tried[c]:
                deferred.pop(i)
            elif covered(c):
                i += 1
            else:
                return deferred.pop(i)
        seeds_left = bool(deferred)
        return None

    def finalise(f: _Flood) -> None:
        nonlocal next_id
        canvas = canvases[f.canvas]
        if f.fovs:
            lo = [max(a, ri) for a, ri in zip(f.lo, r)]
            hi = [min(b, ri + s) for b, ri, s in zip(f.hi, r, shape)]
            box = tuple(slice(a, b) for a, b in zip(lo, hi))
            local_seed = tuple(c - a for c, a in zip(f.seed, lo))
            mask = (canvas[box] >= seg_logit) & ~claimed[box]
            if claimed[f.seed]:
                stats.rejected_duplicate += 1
            elif not mask[local_seed]:
                stats.rejected_seed_lost += 1
            else:
                import cc3d

                components = cc3d.connected_components(mask, connectivity=6)
                obj = components == components[local_seed]
                if int(obj.sum()) >= settings.min_size:
                    labels[box][obj] = next_id
                    claimed[box] |= obj
                    next_id += 1
                    stats.objects += 1
                else:
                    tried[box] |= obj
                    stats.rejected_small += 1
            canvas[tuple(slice(a, b) for a, b in zip(f.lo, f.hi))] = settings.init_logit
        else:
            canvas[f.seed] = settings.init_logit
        free.append(f.canvas)

    def canvas_seed_lost(f: _Flood) -> bool:
        return bool(canvases[f.canvas][f.seed] < seg_logit)

    next_id = 1
    while True:
        while seeds_left and free:
            c = next_seed()
            if c is None:
                break
            f = _Flood(seed=c, canvas=free.pop(0))
            canvases[f.canvas][c] = settings.seed_logit
            heapq.heappush(f.heap, (-math.inf, counter, c))
            counter += 1
            stats.seeds_tried += 1
            active.append(f)
        if not active:
            break
        batch: list[tuple[_Flood, Vec3]] = []
        for f in active:
            if claimed[f.seed]:
                f.done = True  # an object that finished meanwhile took the seed: a duplicate, stop
            while f.heap and not f.done:
                _, _, c = heapq.heappop(f.heap)
                if c not in f.visited:
                    f.visited.add(c)
                    batch.append((f, c))
                    break
            else:
                f.done = True
        still: list[_Flood] = []
        for f in active:
            if f.done:
                finalise(f)
            else:
                still.append(f)
        active = still
        if not batch:
            continue
        boxes = [tuple(slice(ci - ri, ci + ri + 1) for ci, ri in zip(c, r)) for _, c in batch]
        img = np.stack([pimage[b] for b in boxes])
        pom = np.stack(
            [np.where(claimed[b], settings.init_logit, canvases[f.canvas][b]) for (f, _), b in zip(batch, boxes)]
        )
        centres = np.array([[ci - ri for ci, ri in zip(c, r)] for _, c in batch], dtype=np.int64)
        out = np.asarray(predictor(img, pom, centres), dtype=np.float32)
        stats.fovs += len(batch)
        for (f, c), b, logits in zip(batch, boxes, out):
            canvases[f.canvas][b] = logits
            f.fovs += 1
            f.lo = [bb.start for bb in b] if not f.lo else [min(a, bb.start) for a, bb in zip(f.lo, b)]
            f.hi = [bb.stop for bb in b] if not f.hi else [max(a, bb.stop) for a, bb in zip(f.hi, b)]
            if f.fovs >= settings.max_fovs_per_object or canvas_seed_lost(f):
                f.heap.clear()  # capped, or the seed fell out of its own object: stop
                continue
            free_here = ~claimed[b]
            for axis in range(3):
                for sign in (-1, 1):
                    nc = list(c)
                    nc[axis] += sign * step[axis]
                    ncv: Vec3 = (nc[0], nc[1], nc[2])
                    if not inner(ncv) or ncv in f.visited:
                        continue
                    plane = [slice(None)] * 3
                    plane[axis] = r[axis] + sign * step[axis]
                    values = logits[tuple(plane)][free_here[tuple(plane)]]
                    if values.size == 0:
                        continue
                    best = float(values.max())
                    if best >= move_logit:
                        heapq.heappush(f.heap, (-best, counter, ncv))
                        counter += 1
    stats.seconds = time.monotonic() - start
    core = tuple(slice(ri, ri + s) for ri, s in zip(r, shape))
    return labels[core].copy(), stats
