"""An EM-like synthetic volume with known 3D ground truth, rendered block by block.

The phantom is neuropil in miniature: neurites are tubes along smooth random 3D paths, of radius
``radius_min`` to ``radius_max`` (varying slowly along each path), packed densely. Every voxel goes
to the neurite whose centreline is nearest *relative to its radius* (the least distance / radius),
provided that ratio is under ``reach``; the rest is extracellular space, label 0. The image then
has dark membranes along every label boundary, a cytoplasm brightness per neurite, mitochondria
(dark tubes that follow a thick neurite's centreline inside it and belong to its label, as in
FIB-25's ground truth), a smooth texture, dark specks (vesicles), a Gaussian blur (the
microscope's point spread) and per-voxel noise.

The defaults are calibrated on the FIB-25 sample (``fib25_ts2``, FIB-SEM at 10 nm): the share of
voxels on a label boundary (0.117 in both), the grey levels across a membrane (FIB-25 98, 112,
130, 138 at 0, 1, 2, 3 voxels from the contact), the calibre of the neurites, the grain of the
cytoplasm and the darkness of mitochondria; docs/phantom.md has the table. Render it with a
voxel size of 10 nm.

The constructor builds only the global description: each neurite's centreline as points with
radii and the mitochondria's points, each indexed by a k-d tree. :meth:`Phantom.render` draws any
box from it. Every voxel is a pure function of its global coordinates, so the rendering does not
depend on the tiling::

    render(whole box) == concatenate(render(left half), render(right half))

exactly, bit for bit. The steps that look at neighbours (membranes, blur) are computed on the box
grown by their reach and cropped; noise, texture and specks come from a hash of global coordinates::

        labels on box + margin_blur + half_membrane
      ┌───────────────────────────────┐
      │  image before blur on         │
      │  box + margin_blur            │
      │   ┌───────────────────────┐   │
      │   │   box  (returned)     │   │
      │   └───────────────────────┘   │
      └───────────────────────────────┘

>>> from emseg.pipeline.geometry import Box
>>> phantom = Phantom(PhantomParams(shape_zyx=(32, 32, 32), seed=1))
>>> image, labels = phantom.render(Box((0, 0, 0), (8, 32, 32)))
>>> image.dtype.name, labels.dtype.name, image.shape
('uint8', 'uint64', (8, 32, 32))
"""

from __future__ import annotations

import math

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator
from scipy import ndimage as ndi
from scipy.spatial import cKDTree

from emseg.pipeline.errors import ConfigError, RegionError
from emseg.pipeline.geometry import Box

__all__ = ["Phantom", "PhantomParams"]

_TRUNCATE = 4.0  # Gaussian blur kernel radius in sigmas (scipy's default)
_SPECK_LEVEL = 0.2  # specks are where the speck noise (in [-1, 1]) exceeds this


class PhantomParams(BaseModel):
    """The knobs of a phantom; the defaults make the demo volume.

    Lengths are in voxels, intensities in uint8 grey levels. The defaults are calibrated on FIB-25
    at 10 nm (docs/phantom.md); before that calibration the phantom had thinner neurites (radius 3
    to 15, density 4), thinner and darker membranes (2 voxels, grey 60), brighter cytoplasm (140 to
    210), no mitochondria and no specks.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: the volume the neurites fill, (z, y, x)
    shape_zyx: tuple[int, int, int] = (128, 128, 128)
    #: one seed determines the whole phantom
    seed: int = Field(0, ge=0)
    #: neurite radii are drawn log-uniformly from [radius_min, radius_max]
    radius_min: float = Field(2.5, gt=0.0)
    radius_max: float = Field(40.0, gt=0.0)
    #: relative change of a neurite's radius along its path (0 = constant calibre)
    radius_variation: float = Field(0.25, ge=0.0, le=1.0)
    #: length over which a path forgets its direction (higher = straighter)
    persistence_length: float = Field(150.0, gt=0.0)
    #: length of each neurite's path (most leave the volume before they end)
    neurite_length: float = Field(400.0, gt=0.0)
    #: neurites are added until their reach zones would cover every voxel this many times
    #: on average (the fraction of extracellular space is about exp(-density))
    density: float = Field(3.0, gt=0.0)
    #: a voxel belongs to a neurite if distance / radius is below this (and least among neurites)
    reach: float = Field(1.6, ge=1.0)
    #: centreline points are this many radii apart
    point_spacing: float = Field(0.5, gt=0.0, le=1.0)
    #: membranes: voxels within ``membrane_thickness / 2`` of a different label
    membrane_thickness: float = Field(3.0, ge=1.0)
    membrane_intensity: float = Field(70.0, ge=0.0, le=255.0)
    #: each neurite's cytoplasm brightness is drawn uniformly from this range
    cytoplasm_intensity: tuple[float, float] = (125.0, 180.0)
    extracellular_intensity: float = Field(120.0, ge=0.0, le=255.0)
    #: amplitude (grey levels) and feature size (voxels) of a smooth texture in the cytoplasm
    texture_amplitude: float = Field(8.0, ge=0.0)
    texture_scale: float = Field(4.0, gt=0.0)
    #: dark specks in the cytoplasm (vesicles, microtubules in cross-section): the top of a second
    #: smooth noise of feature size ``speck_scale`` voxels, at most ``speck_amplitude`` grey levels deep
    speck_amplitude: float = Field(120.0, ge=0.0)
    speck_scale: float = Field(2.5, gt=0.0)
    #: mitochondria: dark tubes inside neurites at least ``mito_min_radius`` thick, starting with
    #: this probability per voxel of path (0 = none); their length (voxels), radius (fraction of
    #: the neurite's) and grey level are drawn uniformly from the ranges
    mito_per_length: float = Field(0.01, ge=0.0, le=1.0)
    mito_min_radius: float = Field(6.0, gt=0.0)
    mito_length: tuple[float, float] = (15.0, 60.0)
    mito_radius_ratio: tuple[float, float] = (0.3, 0.55)
    mito_intensity: tuple[float, float] = (70.0, 95.0)
    #: voxels of cytoplasm (at least) between a mitochondrion and its neurite's membrane
    mito_gap: float = Field(1.0, ge=0.0)
    #: Gaussian blur (voxels) and then Gaussian noise (grey levels)
    blur_sigma: float = Field(1.2, ge=0.0)
    noise_sigma: float = Field(8.0, ge=0.0)

    @model_validator(mode="after")
    def _check(self) -> PhantomParams:
        if any(s <= 0 for s in self.shape_zyx):
            raise ConfigError(f"phantom shape_zyx must be positive, got {list(self.shape_zyx)}")
        if self.radius_min > self.radius_max:
            raise ConfigError(
                f"phantom radius_min ({self.radius_min}) is above radius_max ({self.radius_max}); "
                f"swap them"
            )
        for name, limit in (("cytoplasm_intensity", 255.0), ("mito_intensity", 255.0),
                            ("mito_radius_ratio", 0.9), ("mito_length", math.inf)):
            low, high = getattr(self, name)
            if not 0 <= low <= high <= limit:
                raise ConfigError(
                    f"phantom {name} must be (low, high) with 0 <= low <= high <= {limit:g}, got {[low, high]}"
                )
        return self


# --- hashing: noise and texture as pure functions of global integer coordinates -------------------

_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _mix(h: np.ndarray) -> np.ndarray:
    """The splitmix64 finaliser, elementwise on uint64 arrays (wrapping arithmetic)."""
    h = (h ^ (h >> np.uint64(30))) * _M1
    h = (h ^ (h >> np.uint64(27))) * _M2
    return h ^ (h >> np.uint64(31))


def _hash(seed: int, stream: int, *coords: np.ndarray) -> np.ndarray:
    """A uint64 hash of broadcastable integer coordinate arrays."""
    with np.errstate(over="ignore"):
        h = _mix(np.full((1,) * len(coords), (seed * 0x100 + stream) & 0xFFFFFFFFFFFFFFFF, np.uint64))
        for c in coords:
            h = _mix(h ^ (np.asarray(c, dtype=np.int64).astype(np.uint64) * _GOLDEN))
        return h


def _axes(box: Box) -> list[np.ndarray]:
    """Global coordinates along each axis, shaped to broadcast over the box."""
    out = []
    for axis, (start, stop) in enumerate(zip(box.start, box.stop)):
        shape = [1, 1, 1]
        shape[axis] = stop - start
        out.append(np.arange(start, stop, dtype=np.int64).reshape(shape))
    return out


def _normal_noise(seed: int, box: Box) -> np.ndarray:
    """Approximately standard normal noise, one value per voxel (sum of four uniforms)."""
    h = _hash(seed, 1, *_axes(box))
    total = np.zeros(box.shape, dtype=np.float32)
    for shift in (0, 16, 32, 48):
        total += ((h >> np.uint64(shift)) & np.uint64(0xFFFF)).astype(np.float32)
    # Four uniforms on [0, 1): mean 2, variance 4/12.
    return (total / np.float32(65536.0) - np.float32(2.0)) * np.float32(math.sqrt(3.0))


def _value_noise(seed: int, box: Box, scale: float, stream: int = 2) -> np.ndarray:
    """Smooth noise in [-1, 1]: random values on a lattice of spacing ``scale``, trilinear between."""
    positions, weights, cells = [], [], []
    for start, stop in zip(box.start, box.stop):
        p = np.arange(start, stop, dtype=np.float64) / scale
        i = np.floor(p).astype(np.int64)
        positions.append(i)
        weights.append((p - i).astype(np.float32))
        cells.append((int(i.min()) if i.size else 0, int(i.max()) + 2 if i.size else 1))
    lattice_box = Box(tuple(c[0] for c in cells), tuple(c[1] for c in cells))
    lattice = _hash(seed, stream, *_axes(lattice_box))
    values = ((lattice >> np.uint64(11)).astype(np.float64) / float(1 << 53) * 2.0 - 1.0).astype(np.float32)
    # Interpolate one axis at a time; each result depends only on its global position.
    for axis in range(3):
        idx = positions[axis] - lattice_box.start[axis]
        w = weights[axis].reshape([-1 if a == axis else 1 for a in range(3)])
        lo = np.take(values, idx, axis=axis)
        hi = np.take(values, idx + 1, axis=axis)
        values = lo + (hi - lo) * w
    return values


def _nearest(
    box: Box, tree: cKDTree, centres: np.ndarray, radii: np.ndarray, owner: np.ndarray, reach: float
) -> np.ndarray:
    """For every voxel of ``box``, the owner of the point with the least distance / radius.

    Only points closer than ``reach`` radii count; voxels that no point reaches get -1. Returns
    int32 (z, y, x). Points are visited in their global order, so ties resolve the same way in
    every tiling.
    """
    best = np.full(box.shape, reach**2, dtype=np.float32)
    result = np.full(box.shape, -1, dtype=np.int32)
    start = np.array(box.start, dtype=np.float64)
    stop = np.array(box.stop, dtype=np.float64) - 1.0  # last voxel centre
    centre = (start + stop) / 2
    zone = reach * radii
    candidates = np.array(
        tree.query_ball_point(centre, float(np.linalg.norm(stop - start) / 2 + zone.max()) + 1e-6),
        dtype=np.int64,
    )
    candidates.sort()
    # Keep the points whose reach zone touches the box.
    c = centres[candidates]
    gap = np.maximum(np.maximum(start - c, c - stop), 0.0)
    candidates = candidates[np.einsum("ij,ij->i", gap, gap) < zone[candidates] ** 2]
    box_start = np.array(box.start, dtype=np.int64)
    box_stop = np.array(box.stop, dtype=np.int64)
    los = np.maximum(np.ceil(centres[candidates] - zone[candidates, None]), box_start)
    his = np.minimum(np.floor(centres[candidates] + zone[candidates, None]) + 1, box_stop)
    for k, lo, hi in zip(candidates.tolist(), los.astype(np.int64).tolist(), his.astype(np.int64).tolist()):
        if hi[0] <= lo[0] or hi[1] <= lo[1] or hi[2] <= lo[2]:
            continue
        cz, cy, cx = centres[k]
        inv_r = 1.0 / radii[k]
        # Normalised squared distances: float64 per axis, float32 over the sub-box.
        dz = (((np.arange(lo[0], hi[0]) - cz) * inv_r) ** 2).astype(np.float32)
        dy = (((np.arange(lo[1], hi[1]) - cy) * inv_r) ** 2).astype(np.float32)
        dx = (((np.arange(lo[2], hi[2]) - cx) * inv_r) ** 2).astype(np.float32)
        q = (dz[:, None] + dy[None, :])[:, :, None] + dx[None, None, :]
        sl = (slice(lo[0] - box.start[0], hi[0] - box.start[0]),
              slice(lo[1] - box.start[1], hi[1] - box.start[1]),
              slice(lo[2] - box.start[2], hi[2] - box.start[2]))  # fmt: skip
        view = best[sl]
        closer = q < view
        np.copyto(view, q, where=closer)
        np.copyto(result[sl], np.int32(owner[k]), where=closer)
    return result


def _contact_distance(labels: np.ndarray, margin: int) -> np.ndarray:
    """Distance (voxels) from each voxel to the nearest voxel on a label contact, cropped by ``margin``.

    A contact voxel has a 6-neighbour of another label. ``labels`` is the box grown by ``margin`` on
    every side, so distances up to ``margin - 1`` are exact whatever lies outside it; farther ones
    may be overestimated (``inf`` where no contact is in the box).
    """
    edge = np.zeros(labels.shape, dtype=bool)
    for axis in range(3):
        lo = [slice(None)] * 3
        hi = [slice(None)] * 3
        lo[axis], hi[axis] = slice(None, -1), slice(1, None)
        differ = labels[tuple(lo)] != labels[tuple(hi)]
        edge[tuple(lo)] |= differ
        edge[tuple(hi)] |= differ
    crop = tuple(slice(margin, n - margin) for n in labels.shape)
    if not edge.any():
        return np.full(edge[crop].shape, np.inf, dtype=np.float64)
    return ndi.distance_transform_edt(~edge)[crop]


# --- the phantom ------------------------------------------------------------------------------------


class Phantom:
    """A synthetic EM volume with ground truth; see the module docstring.

    Parameters
    ----------
    params
        The phantom's knobs. The same params always give the same phantom.

    Attributes
    ----------
    centres : numpy.ndarray
        (P, 3) float64 centreline points, z, y, x.
    radii : numpy.ndarray
        (P,) float64 radius at each point.
    owner : numpy.ndarray
        (P,) int64 neurite index of each point; neurite ``i`` has label ``i + 1``.
    """

    def __init__(self, params: PhantomParams | None = None) -> None:
        self.params = params if params is not None else PhantomParams()
        self.shape_zyx = self.params.shape_zyx
        rng = np.random.default_rng(self.params.seed)
        self.centres, self.radii, self.owner, arc, self.num_neurites = self._grow_neurites(rng)
        self.cytoplasm = rng.uniform(*self.params.cytoplasm_intensity, size=self.num_neurites)
        self._tree = cKDTree(self.centres) if len(self.centres) else None
        # Organelles from a stream of their own: the neurites do not depend on the organelle knobs.
        organelles = np.random.default_rng([self.params.seed, 1])
        self.mito_centres, self.mito_radii, self.mito_owner, self.mito_neurite, self.mito_intensity = (
            self._place_mitochondria(organelles, arc)
        )
        self._mito_tree = cKDTree(self.mito_centres) if len(self.mito_centres) else None

    # -- construction --

    @property
    def _pad(self) -> float:
        """How far outside the volume a centreline can still matter to a rendered voxel."""
        p = self.params
        return p.reach * p.radius_max + math.ceil(_TRUNCATE * p.blur_sigma) + p.membrane_thickness + 2

    def _grow_neurites(
        self, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
        """Add neurites until their reach zones cover the volume ``density`` times over.

        Paths start uniformly in the volume grown by half a neurite length (and the rendering
        margin), so every part of the volume sees the same density of neurites, edges included.
        Neurites that never come near the volume are dropped; the rest are numbered from 0 in
        the order they were drawn.
        """
        p = self.params
        shape = np.array(p.shape_zyx, dtype=np.float64)
        target = p.density * float(np.prod(shape))
        grow = p.neurite_length / 2 + self._pad
        region = (shape + 2 * grow).prod()
        parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        covered, drawn, count = 0.0, 0, 0
        mean_r2 = (p.radius_max**2 - p.radius_min**2) / (2 * math.log(p.radius_max / p.radius_min)) \
            if p.radius_max > p.radius_min else p.radius_min**2
        expected = math.pi * p.reach**2 * mean_r2 * p.neurite_length * float(np.prod(shape)) / region
        while covered < target:
            mean = covered / drawn if covered > 0 else expected
            batch = int(min(8192, max(64, math.ceil((target - covered) / mean * 1.1))))
            centres, radii, owner, arc, volume = self._walk(rng, batch, grow)
            # Keep neurites in order until the target is met, so the result is deterministic.
            cumulative = covered + np.cumsum(volume)
            keep = int(np.searchsorted(cumulative, target) + 1) if cumulative[-1] >= target else batch
            covered = float(cumulative[keep - 1])
            drawn += keep
            used = np.flatnonzero(np.bincount(owner, minlength=batch)[:keep])
            number = np.full(batch, -1, dtype=np.int64)
            number[used] = count + np.arange(used.size)
            count += used.size
            mask = owner < keep
            parts.append((centres[mask], radii[mask], number[owner[mask]], arc[mask]))
        centres = np.concatenate([c for c, _, _, _ in parts])
        radii = np.concatenate([r for _, r, _, _ in parts])
        owner = np.concatenate([o for _, _, o, _ in parts])
        arc = np.concatenate([a for _, _, _, a in parts])
        return centres, radii, owner, arc, count

    def _walk(
        self, rng: np.random.Generator, n: int, grow: float
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Draw ``n`` neurites: their points (by neurite, then along it), arc lengths and volumes.

        A neurite grows from a random start both ways, ``neurite_length / 2`` each, turning a
        little at each step (a persistent random walk); only its points near the volume are kept.
        """
        p = self.params
        shape = np.array(p.shape_zyx, dtype=np.float64)
        lo, hi = -self._pad, shape + self._pad
        start = rng.uniform(size=(n, 3)) * (shape + 2 * grow) - grow
        direction = rng.normal(size=(n, 3))
        direction /= np.linalg.norm(direction, axis=1, keepdims=True)
        base = np.exp(rng.uniform(math.log(p.radius_min), math.log(p.radius_max), size=n))
        # Radius along the path: two slow sinusoids of random wavelength and phase.
        wavelength = rng.uniform(20.0, 80.0, size=(n, 2))
        phase = rng.uniform(0.0, 2 * math.pi, size=(n, 2))
        kicks = np.random.default_rng(rng.integers(1 << 62))

        def radius(s: np.ndarray, who: np.ndarray) -> np.ndarray:
            wave = np.sin(2 * math.pi * s[:, None] / wavelength[who] + phase[who]).sum(axis=1) / 2
            return np.clip(base[who] * np.exp(p.radius_variation * wave), p.radius_min, p.radius_max)

        centres, radii, owner, arc = [], [], [], []
        for sign in (1.0, -1.0):
            who = np.arange(n)
            pos, d, s = start.copy(), sign * direction, np.zeros(n)
            while who.size:
                r = radius(s, who)
                if sign < 0:  # the start point itself was recorded going forward
                    step = p.point_spacing * r
                    pos, s = pos + d * step[:, None], s - step
                    r = radius(s, who)
                near = np.all((pos > lo) & (pos < hi), axis=1)
                centres.append(pos[near])
                radii.append(r[near])
                owner.append(who[near])
                arc.append(s[near])
                if sign > 0:
                    step = p.point_spacing * r
                    pos, s = pos + d * step[:, None], s + step
                kick = kicks.normal(size=(who.size, 3)) * np.sqrt(
                    p.point_spacing * r / p.persistence_length
                )[:, None]
                d = d + kick
                d /= np.linalg.norm(d, axis=1, keepdims=True)
                alive = np.abs(s) < p.neurite_length / 2
                who, pos, d, s = who[alive], pos[alive], d[alive], s[alive]
        centres_a = np.concatenate(centres)
        radii_a = np.concatenate(radii)
        owner_a = np.concatenate(owner)
        arc_a = np.concatenate(arc)
        order = np.lexsort((arc_a, owner_a))
        centres_a, radii_a, owner_a, arc_a = centres_a[order], radii_a[order], owner_a[order], arc_a[order]
        # Volume of the reach zones inside the volume: one slice per point.
        inside = np.all((centres_a >= 0) & (centres_a < shape), axis=1)
        zone = math.pi * (p.reach * radii_a) ** 2 * p.point_spacing * radii_a * inside
        volume = np.bincount(owner_a, weights=zone, minlength=n)
        return centres_a, radii_a, owner_a, arc_a, volume

    def _place_mitochondria(
        self, rng: np.random.Generator, arc: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Mitochondria: dark tubes that follow a neurite's centreline inside it.

        Along every neurite, where its radius is at least ``mito_min_radius``, a mitochondrion
        starts with probability ``mito_per_length`` per voxel of path; it follows the neurite's own
        centreline for ``mito_length`` voxels, shifted sideways by a fixed random offset, with a
        radius of ``mito_radius_ratio`` times the neurite's local radius. Returns its points
        (centres, radii), the mitochondrion index of each point, the neurite index of each
        mitochondrion and each one's grey level; neighbouring points get a midpoint so that the
        tube is smooth.
        """
        p = self.params
        empty = (np.zeros((0, 3)), np.zeros(0), np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0))
        if p.mito_per_length <= 0 or not len(self.centres):
            return empty
        step = np.empty_like(arc)
        step[:-1] = np.abs(np.diff(arc))
        step[-1] = 0.0
        last = np.r_[self.owner[1:] != self.owner[:-1], True]  # the last point of each neurite
        step[last] = 0.0
        eligible = self.radii >= p.mito_min_radius
        starts = np.flatnonzero(eligible & (rng.uniform(size=arc.size) < p.mito_per_length * step))
        lengths = rng.uniform(*p.mito_length, size=starts.size)
        ratios = rng.uniform(*p.mito_radius_ratio, size=starts.size)
        sideways = rng.normal(size=(starts.size, 3))
        sideways /= np.maximum(np.linalg.norm(sideways, axis=1, keepdims=True), 1e-12)
        shift = rng.uniform(0.0, 1.0, size=starts.size)
        grey = rng.uniform(*p.mito_intensity, size=starts.size)
        centres, radii, index, neurite, level = [], [], [], [], []
        for m, first in enumerate(starts.tolist()):
            who = self.owner[first]
            stop = first
            while stop + 1 < arc.size and self.owner[stop + 1] == who and abs(arc[stop + 1] - arc[first]) <= lengths[m]:
                stop += 1
            pts = self.centres[first : stop + 1]
            r = self.radii[first : stop + 1] * ratios[m]
            if len(pts) > 1:  # add midpoints
                pts = np.concatenate([pts, (pts[1:] + pts[:-1]) / 2])
                r = np.concatenate([r, (r[1:] + r[:-1]) / 2])
            # Sideways by up to the room left inside the neurite (its thinnest point here).
            room = float(self.radii[first : stop + 1].min()) * (1.0 - ratios[m]) * 0.5
            centres.append(pts + sideways[m] * shift[m] * room)
            radii.append(r)
            index.append(np.full(len(r), len(neurite), np.int64))
            neurite.append(who)
            level.append(grey[m])
        if not neurite:
            return empty
        return (np.concatenate(centres), np.concatenate(radii), np.concatenate(index),
                np.array(neurite, np.int64), np.array(level, np.float64))  # fmt: skip

    # -- rendering --

    def _check_box(self, box: Box) -> None:
        volume = Box.from_shape(self.shape_zyx)
        if not volume.contains(box) or any(a > b for a, b in zip(box.start, box.stop)):
            raise RegionError(
                f"box {box.to_json()} is not inside the phantom's volume {volume.to_json()}; "
                f"clip it with box.intersect(Box.from_shape(phantom.shape_zyx))"
            )

    def labels(self, box: Box) -> np.ndarray:
        """Ground-truth labels (uint64, 0 = extracellular) of any box, even outside the volume."""
        if box.empty or self._tree is None:
            return np.zeros(box.shape, dtype=np.uint64)
        owner = _nearest(box, self._tree, self.centres, self.radii, self.owner, self.params.reach)
        return (owner.astype(np.int64) + 1).astype(np.uint64)

    def mitochondria(self, box: Box) -> np.ndarray:
        """Which mitochondrion (int32 index, -1 = none) each voxel of ``box`` would belong to.

        Not yet clipped to its neurite: :meth:`render` keeps only the voxels whose label is the
        mitochondrion's neurite and that are not membrane.
        """
        if box.empty or self._mito_tree is None:
            return np.full(box.shape, -1, dtype=np.int32)
        return _nearest(box, self._mito_tree, self.mito_centres, self.mito_radii, self.mito_owner, 1.0)

    def _membrane_offsets(self) -> list[tuple[int, int, int]]:
        half = self.params.membrane_thickness / 2
        h = int(math.floor(half))
        return [
            (z, y, x)
            for z in range(-h, h + 1)
            for y in range(-h, h + 1)
            for x in range(-h, h + 1)
            if 0 < z * z + y * y + x * x <= half * half
        ]

    def render(self, box: Box) -> tuple[np.ndarray, np.ndarray]:
        """The image (uint8) and ground-truth labels (uint64) of ``box``, z, y, x.

        Raises
        ------
        RegionError
            If ``box`` is not inside the phantom's volume.
        """
        self._check_box(box)
        p = self.params
        if box.empty:
            return np.zeros(box.shape, np.uint8), np.zeros(box.shape, np.uint64)
        blur_margin = int(_TRUNCATE * p.blur_sigma + 0.5) if p.blur_sigma > 0 else 0
        offsets = self._membrane_offsets()
        h = max((max(abs(v) for v in o) for o in offsets), default=0)
        clear = p.membrane_thickness / 2 + p.mito_gap  # how far mitochondria keep from a contact
        if len(self.mito_neurite) and p.mito_gap > 0:
            h = max(h, math.ceil(clear) + 1)
        outer = box.grow((blur_margin + h,) * 3)
        wide = self.labels(outer)
        inner = box.grow((blur_margin,) * 3)
        core = wide[h : wide.shape[0] - h, h : wide.shape[1] - h, h : wide.shape[2] - h]
        membrane = np.zeros(inner.shape, dtype=bool)
        for dz, dy, dx in offsets:
            shifted = wide[h + dz : h + dz + inner.shape[0], h + dy : h + dy + inner.shape[1],
                           h + dx : h + dx + inner.shape[2]]  # fmt: skip
            membrane |= shifted != core

        # Intensities before blur, on the box grown by the blur's reach.
        table = np.concatenate([[p.extracellular_intensity], self.cytoplasm]).astype(np.float32)
        image = table[core.astype(np.intp)]
        if len(self.mito_neurite):
            mito = self.mitochondria(inner)
            inside = (mito >= 0) & ~membrane
            if p.mito_gap > 0:
                inside &= _contact_distance(wide, h) >= clear
            inside[inside] = core[inside] == (self.mito_neurite[mito[inside]] + 1).astype(np.uint64)
            image[inside] = self.mito_intensity[mito[inside]].astype(np.float32)
        if p.texture_amplitude > 0:
            image += np.float32(p.texture_amplitude) * _value_noise(p.seed, inner, p.texture_scale)
        if p.speck_amplitude > 0:
            top = _value_noise(p.seed, inner, p.speck_scale, stream=3) - np.float32(_SPECK_LEVEL)
            image -= np.float32(p.speck_amplitude / (1 - _SPECK_LEVEL)) * np.maximum(top, 0)
        image[membrane] = np.float32(p.membrane_intensity)
        if blur_margin:
            image = ndi.gaussian_filter(image, p.blur_sigma, truncate=_TRUNCATE, mode="nearest")
            image = image[(slice(blur_margin, -blur_margin),) * 3]
        if p.noise_sigma > 0:
            image += np.float32(p.noise_sigma) * _normal_noise(p.seed, box)
        np.clip(np.rint(image), 0, 255, out=image)
        labels = core[(slice(blur_margin, core.shape[0] - blur_margin),
                       slice(blur_margin, core.shape[1] - blur_margin),
                       slice(blur_margin, core.shape[2] - blur_margin))]  # fmt: skip
        return image.astype(np.uint8), np.ascontiguousarray(labels)
