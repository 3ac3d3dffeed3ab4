"""Training examples for the FFN: patches centred on interiors or boundaries of labelled objects.

A training example is a *patch* a little larger than the FOV, so that the FOV can move inside it::

    ┌──────────── patch = fov + 2 · moves · step ────────────┐
    │        ┌──────── fov ────────┐                          │
    │        │          ·          │   · = patch centre: the  │
    │        │     (first FOV)     │       seed, a voxel of   │
    │        └─────────────────────┘       the target object  │
    └─────────────────────────────────────────────────────────┘

The target is the object under the centre voxel (``labels == labels[centre]``), everywhere in the
patch; voxels labelled 0 (unlabelled) get weight 0. Centres are drawn from object interiors with
probability ``interior_fraction`` and from boundary voxels (a 6-neighbour carries another label)
otherwise, so that the network sees both easy and hard seeds.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from emseg.pipeline.errors import ConfigError

Vec3 = tuple[int, int, int]


def boundary_mask(labels: np.ndarray) -> np.ndarray:
    """Voxels with a 6-neighbour of a different label.

    >>> lab = np.zeros((1, 1, 4), np.uint64); lab[..., 2:] = 7
    >>> boundary_mask(lab)[0, 0].tolist()
    [False, True, True, False]
    """
    out = np.zeros(labels.shape, dtype=bool)
    for axis in range(labels.ndim):
        lo = [slice(None)] * labels.ndim
        hi = [slice(None)] * labels.ndim
        lo[axis] = slice(0, -1)
        hi[axis] = slice(1, None)
        differ = labels[tuple(lo)] != labels[tuple(hi)]
        out[tuple(lo)] |= differ
        out[tuple(hi)] |= differ
    return out


@dataclass
class Batch:
    """A batch of patches: ``image`` normalised float32, ``target`` 0/1 and ``weight`` 0/1, all
    ``(B, z, y, x)`` float32."""

    image: np.ndarray
    target: np.ndarray
    weight: np.ndarray


class PatchSampler:
    """Draws balanced, augmented training patches from one labelled region.

    Parameters
    ----------
    image
        Normalised float32 image of the region, z, y, x.
    labels
        Instance labels of the region, same shape; 0 is unlabelled.
    patch_size
        Patch shape, odd on every axis.
    interior_fraction
        Probability that a centre is drawn from object interiors rather than boundaries.
    augment
        Random flips on every axis, and random axis permutations among axes of equal patch size.
    rng
        The random generator (seeded by the caller).
    """

    def __init__(
        self,
        image: np.ndarray,
        labels: np.ndarray,
        patch_size: Vec3,
        interior_fraction: float,
        augment: bool,
        rng: np.random.Generator,
    ) -> None:
        if image.shape != labels.shape:
            raise ConfigError(f"image shape {image.shape} and labels shape {labels.shape} differ")
        radius = [p // 2 for p in patch_size]
        if any(2 * r + 1 > s for r, s in zip(radius, image.shape)):
            raise ConfigError(
                f"the training region {list(image.shape)} is smaller than a patch {list(patch_size)} "
                "(fov_size + 2 * moves * step); enlarge the region or shrink the FOV"
            )
        self.image = image
        self.labels = labels
        self.patch_size = tuple(patch_size)
        self.radius = radius
        self.interior_fraction = interior_fraction
        self.augment = augment
        self.rng = rng
        valid = np.zeros(labels.shape, dtype=bool)
        valid[tuple(slice(r, s - r) for r, s in zip(radius, labels.shape))] = True
        valid &= labels != 0
        edge = boundary_mask(labels)
        self.interior = np.flatnonzero(valid & ~edge)
        self.boundary = np.flatnonzero(valid & edge)
        if self.interior.size == 0 and self.boundary.size == 0:
            raise ConfigError("the training region has no labelled voxels far enough from its edges")

    def _centre(self) -> Vec3:
        pools = [p for p in (self.interior, self.boundary) if p.size]
        if len(pools) == 2:
            pool = self.interior if self.rng.random() < self.interior_fraction else self.boundary
        else:
            pool = pools[0]
        flat = pool[self.rng.integers(pool.size)]
        return tuple(int(c) for c in np.unravel_index(flat, self.labels.shape))  # type: ignore[return-value]

    def sample(self, batch_size: int) -> Batch:
        """Draw ``batch_size`` patches."""
        shape = (batch_size, *self.patch_size)
        image = np.empty(shape, np.float32)
        target = np.empty(shape, np.float32)
        weight = np.empty(shape, np.float32)
        for i in range(batch_size):
            c = self._centre()
            box = tuple(slice(ci - r, ci + r + 1) for ci, r in zip(c, self.radius))
            img, lab = self.image[box], self.labels[box]
            if self.augment:
                img, lab = self._augment(img, lab)
            centre_label = lab[tuple(self.radius)]
            image[i] = img
            target[i] = lab == centre_label
            weight[i] = lab != 0
        return Batch(image=image, target=target, weight=weight)

    def _augment(self, img: np.ndarray, lab: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        flips = [axis for axis in range(3) if self.rng.random() < 0.5]
        if flips:
            img, lab = np.flip(img, flips), np.flip(lab, flips)
        # Permute only among axes of equal size so that the patch shape (and the centre) stays.
        order = list(range(3))
        for size in set(self.patch_size):
            axes = [a for a in range(3) if self.patch_size[a] == size]
            if len(axes) > 1:
                shuffled = list(self.rng.permutation(axes))
                for a, b in zip(axes, shuffled):
                    order[a] = b
        if order != [0, 1, 2]:
            img, lab = img.transpose(order), lab.transpose(order)
        return img, lab
