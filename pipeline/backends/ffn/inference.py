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


class _BlockFlood:
    """The state of one block's flood fill (padded coordinates throughout) and its steps."""

    def __init__(self, image: np.ndarray, seeds: np.ndarray, predictor: Predictor, settings: FloodSettings) -> None:
        self.shape = image.shape
        self.r = settings.radius
        self.settings = settings
        self.predictor = predictor
        pshape = tuple(s + 2 * ri for s, ri in zip(self.shape, self.r))
        self.pimage = _pad_image(image.astype(np.float32, copy=False), self.r)
        self.claimed = np.zeros(pshape, dtype=bool)
        self.tried = np.zeros(pshape, dtype=bool)  # voxels of objects too small to keep: no new seeds there
        self.labels = np.zeros(pshape, dtype=np.uint32)
        self.move_logit = _logit(settings.move_threshold)
        self.seg_logit = _logit(settings.segment_threshold)
        n_canvas = max(1, settings.batch_size)
        self.canvases = [np.full(pshape, settings.init_logit, dtype=np.float32) for _ in range(n_canvas)]
        self.free = list(range(n_canvas))
        self.stats = FloodStats()
        self.counter = 0  # ties in the move queues break by insertion order: deterministic
        self.seed_iter = iter(np.asarray(seeds, dtype=np.int64).reshape(-1, 3))
        self.deferred: list[Vec3] = []  # seeds inside an object still being flooded
        self.active: list[_Flood] = []
        self.seeds_left = True
        self.next_id = 1

    # -- seeds ----------------------------------------------------------------------------------
    def inner(self, c: Vec3) -> bool:
        return all(ri <= ci < ri + s for ci, ri, s in zip(c, self.r, self.shape))

    def covered(self, c: Vec3) -> bool:
        return any(self.canvases[f.canvas][c] >= self.seg_logit for f in self.active)

    def next_seed(self) -> Vec3 | None:
        """The next seed no object has claimed or tried; one covered by an active flood waits."""
        r = self.r
        for s in self.seed_iter:
            c = (int(s[0]) + r[0], int(s[1]) + r[1], int(s[2]) + r[2])
            if not self.inner(c) or self.claimed[c] or self.tried[c]:
                continue
            if self.covered(c):
                self.deferred.append(c)  # an object being flooded covers it: retry once that one is done
                continue
            return c
        i = 0
        while i < len(self.deferred):
            c = self.deferred[i]
            if self.claimed[c] or self.tried[c]:
                self.deferred.pop(i)
            elif self.covered(c):
                i += 1
            else:
                return self.deferred.pop(i)
        self.seeds_left = bool(self.deferred)
        return None

    def start_floods(self) -> None:
        """Give every free canvas a new seed."""
        while self.seeds_left and self.free:
            c = self.next_seed()
            if c is None:
                break
            f = _Flood(seed=c, canvas=self.free.pop(0))
            self.canvases[f.canvas][c] = self.settings.seed_logit
            heapq.heappush(f.heap, (-math.inf, self.counter, c))
            self.counter += 1
            self.stats.seeds_tried += 1
            self.active.append(f)

    # -- one round: a FOV per active flood ------------------------------------------------------
    def pick_batch(self) -> list[tuple[_Flood, Vec3]]:
        """The next unvisited FOV centre of every active flood; floods with none left are finalised."""
        batch: list[tuple[_Flood, Vec3]] = []
        for f in self.active:
            if self.claimed[f.seed]:
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
        for f in self.active:
            if f.done:
                self.finalise(f)
            else:
                still.append(f)
        self.active = still
        return batch

    def predict(self, batch: list[tuple[_Flood, Vec3]]) -> None:
        """Run the predictor on the batch's FOVs, write the logits, queue the moves they allow."""
        r, settings = self.r, self.settings
        boxes = [tuple(slice(ci - ri, ci + ri + 1) for ci, ri in zip(c, r)) for _, c in batch]
        img = np.stack([self.pimage[b] for b in boxes])
        pom = np.stack([np.where(self.claimed[b], settings.init_logit, self.canvases[f.canvas][b])
                        for (f, _), b in zip(batch, boxes)])
        centres = np.array([[ci - ri for ci, ri in zip(c, r)] for _, c in batch], dtype=np.int64)
        out = np.asarray(self.predictor(img, pom, centres), dtype=np.float32)
        self.stats.fovs += len(batch)
        for (f, c), b, logits in zip(batch, boxes, out):
            self.canvases[f.canvas][b] = logits
            f.fovs += 1
            f.lo = [bb.start for bb in b] if not f.lo else [min(a, bb.start) for a, bb in zip(f.lo, b)]
            f.hi = [bb.stop for bb in b] if not f.hi else [max(a, bb.stop) for a, bb in zip(f.hi, b)]
            if f.fovs >= settings.max_fovs_per_object or self.canvases[f.canvas][f.seed] < self.seg_logit:
                f.heap.clear()  # capped, or the seed fell out of its own object: stop
                continue
            self.queue_moves(f, c, b, logits)

    def queue_moves(self, f: _Flood, c: Vec3, b: tuple[slice, ...], logits: np.ndarray) -> None:
        """Queue the FOV one step away through each face whose plane reaches ``move_threshold``."""
        r, step = self.r, self.settings.step
        free_here = ~self.claimed[b]
        for axis in range(3):
            for sign in (-1, 1):
                nc = list(c)
                nc[axis] += sign * step[axis]
                ncv: Vec3 = (nc[0], nc[1], nc[2])
                if not self.inner(ncv) or ncv in f.visited:
                    continue
                plane = [slice(None)] * 3
                plane[axis] = r[axis] + sign * step[axis]
                values = logits[tuple(plane)][free_here[tuple(plane)]]
                if values.size == 0:
                    continue
                best = float(values.max())
                if best >= self.move_logit:
                    heapq.heappush(f.heap, (-best, self.counter, ncv))
                    self.counter += 1

    # -- the end of one object ------------------------------------------------------------------
    def finalise(self, f: _Flood) -> None:
        """Keep the seed's connected component of the canvas (minus claimed voxels) if large enough."""
        r, settings, stats = self.r, self.settings, self.stats
        canvas = self.canvases[f.canvas]
        if f.fovs:
            lo = [max(a, ri) for a, ri in zip(f.lo, r)]
            hi = [min(b, ri + s) for b, ri, s in zip(f.hi, r, self.shape)]
            box = tuple(slice(a, b) for a, b in zip(lo, hi))
            local_seed = tuple(c - a for c, a in zip(f.seed, lo))
            mask = (canvas[box] >= self.seg_logit) & ~self.claimed[box]
            if self.claimed[f.seed]:
                stats.rejected_duplicate += 1
            elif not mask[local_seed]:
                stats.rejected_seed_lost += 1
            else:
                import cc3d

                components = cc3d.connected_components(mask, connectivity=6)
                obj = components == components[local_seed]
                if int(obj.sum()) >= settings.min_size:
                    self.labels[box][obj] = self.next_id
                    self.claimed[box] |= obj
                    self.next_id += 1
                    stats.objects += 1
                else:
                    self.tried[box] |= obj
                    stats.rejected_small += 1
            canvas[tuple(slice(a, b) for a, b in zip(f.lo, f.hi))] = settings.init_logit
        else:
            canvas[f.seed] = settings.init_logit
        self.free.append(f.canvas)

    def core_labels(self) -> np.ndarray:
        return self.labels[tuple(slice(ri, ri + s) for ri, s in zip(self.r, self.shape))].copy()


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
    run = _BlockFlood(image, seeds, predictor, settings)
    while True:
        run.start_floods()
        if not run.active:
            break
        batch = run.pick_batch()
        if batch:
            run.predict(batch)
    run.stats.seconds = time.monotonic() - start
    return run.core_labels(), run.stats
