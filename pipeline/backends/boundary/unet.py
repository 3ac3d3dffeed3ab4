"""A 3D U-Net that predicts affinities (the MALA recipe), with optional auxiliary targets.

Architecture (Ronneberger et al. 2015; Çiçek et al. 2016 for 3D; Funke et al. 2019, "Large scale
image segmentation with structured loss based deep learning for connectome reconstruction", TPAMI,
for affinities; Sheridan et al. 2023, Nature Methods, for local shape descriptors):

    level 0  [conv3 relu] x n ------------------------------------> concat -> [conv3 relu] x n -> 1x1 -> sigmoid
                   | max-pool by factors[0]                            ^ upsample (nearest) by factors[0]
    level 1        [conv3 relu] x n -------------------> concat -> [conv3 relu] x n
                         | max-pool by factors[1]          ^
    level 2              [conv3 relu] x n  (bottom) -------+

Per-level downsampling factors are (z, y, x) triples, so anisotropic data (e.g. (1, 2, 2) while z
is coarse) works. Convolutions are zero-padded ("same") and there is no normalisation layer (batch,
instance or group norm would make a voxel depend on the whole block's statistics), so every output
voxel depends only on the input within :func:`receptive_radius` voxels of it, given the same
pooling grid. The pooling grid is anchored to the volume, not to the block: :meth:`UNetModel.predict`
takes the block's global origin and pads the block so that its pooled cells are the volume's own;
thus a block's core is the same for any block cut.

Outputs: 3 nearest-neighbour affinities (z, y, x; see :class:`emseg.pipeline.backends.boundary.AffinityModel`),
then one channel per long-range offset (``long_range``, affinity of v with v + offset, offsets
negative), then 10 local shape descriptor channels when ``lsds`` is on. Only the first 3 are used
at inference; the others are auxiliary training targets.

The input is the local contrast normalisation of :mod:`emseg.pipeline.backends.boundary.features` (unchanged by a
brightness offset or a contrast gain), which adds its radius to the context.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from emseg.pipeline.io import checkpoints
from emseg.pipeline.backends.boundary import features as feats
from emseg.pipeline.errors import CheckpointError
from emseg.pipeline.backends import device as devices

FORMAT = "emseg-unet"
VERSION = 1
LSD_CHANNELS = 10


class UNetConfig(BaseModel):
    """Shape of the network; stored in each checkpoint."""

    model_config = ConfigDict(extra="forbid")

    width: int = Field(12, ge=1, description="feature maps at level 0")
    growth: int = Field(2, ge=1, description="feature maps multiply by this per level")
    depth: int = Field(3, ge=1, le=6, description="levels, including the bottom one")
    factors: list[tuple[int, int, int]] = Field(
        default_factory=lambda: [(2, 2, 2), (2, 2, 2)], description="(z, y, x) pooling per level, depth - 1 of them"
    )
    convs: int = Field(1, ge=1, description="3x3x3 convolutions per level and side")
    long_range: list[tuple[int, int, int]] = Field(
        default_factory=list, description="extra affinity offsets (z, y, x), each <= 0, auxiliary"
    )
    lsds: bool = Field(False, description="predict 10 local shape descriptors as an auxiliary target")
    lsd_sigma: float = Field(5.0, gt=0, description="Gaussian sigma (voxels) of the LSD targets")

    @model_validator(mode="after")
    def _check(self) -> UNetConfig:
        if len(self.factors) != self.depth - 1:
            raise ValueError(
                f"factors has {len(self.factors)} entries; a depth-{self.depth} U-Net needs {self.depth - 1} "
                "(one (z, y, x) pooling factor per level above the bottom)"
            )
        if any(f < 1 for fac in self.factors for f in fac):
            raise ValueError("pooling factors must be >= 1")
        if any(o > 0 for off in self.long_range for o in off) or any(off == (0, 0, 0) for off in self.long_range):
            raise ValueError("long_range offsets point to a predecessor: each component <= 0, not all 0")
        return self

    @property
    def out_channels(self) -> int:
        return 3 + len(self.long_range) + (LSD_CHANNELS if self.lsds else 0)

    @property
    def total_factor(self) -> tuple[int, int, int]:
        """Product of the pooling factors per axis: block origins are aligned to this grid."""
        out = [1, 1, 1]
        for fac in self.factors:
            out = [a * b for a, b in zip(out, fac)]
        return (out[0], out[1], out[2])


def receptive_radius(config: UNetConfig) -> tuple[int, int, int]:
    """Voxels (z, y, x) on each side of an output voxel that its value depends on (network only).

    Down and up convolutions of level l add ``convs * stride_l`` each, pooling and upsampling by
    f add ``(f - 1) * stride_l`` each (on a grid anchored to the volume), the bottom adds
    ``convs * stride_bottom``; the 1x1 head adds nothing. Checked against perturbations in the tests.
    """
    out = []
    for axis in range(3):
        stride, radius = 1, 0
        for fac in config.factors:
            f = fac[axis]
            radius += 2 * config.convs * stride + 2 * (f - 1) * stride
            stride *= f
        radius += config.convs * stride
        out.append(radius)
    return (out[0], out[1], out[2])


def context(config: UNetConfig) -> tuple[int, int, int]:
    """Image context of an affinity: the local contrast normalisation's radius plus the network's."""
    lcn = int(feats.LCN_TRUNCATE * feats.LCN_SIGMA + 0.5)
    r = receptive_radius(config)
    return (r[0] + lcn, r[1] + lcn, r[2] + lcn)


def build(config: UNetConfig) -> Any:
    """A new ``torch.nn.Module`` U-Net with random weights (seed it with ``torch.manual_seed``)."""
    import torch
    from torch import nn

    def block(cin: int, cout: int) -> nn.Sequential:
        layers: list[nn.Module] = []
        for i in range(config.convs):
            layers += [nn.Conv3d(cin if i == 0 else cout, cout, 3, padding=1), nn.ReLU(inplace=True)]
        return nn.Sequential(*layers)

    class UNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.config = config
            widths = [config.width * config.growth**level for level in range(config.depth)]
            self.down = nn.ModuleList(block(1 if lv == 0 else widths[lv - 1], widths[lv]) for lv in range(config.depth))
            self.up = nn.ModuleList(block(widths[lv] + widths[lv + 1], widths[lv]) for lv in range(config.depth - 1))
            self.head = nn.Conv3d(widths[0], config.out_channels, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            """(n, 1, z, y, x) normalised image -> (n, out_channels, z, y, x) logits.

            Each spatial size must be a multiple of ``config.total_factor``.
            """
            skips = []
            for lv in range(config.depth):
                x = self.down[lv](x)
                if lv < config.depth - 1:
                    skips.append(x)
                    x = nn.functional.max_pool3d(x, config.factors[lv], config.factors[lv])
            for lv in reversed(range(config.depth - 1)):
                x = nn.functional.interpolate(x, scale_factor=config.factors[lv], mode="nearest")
                x = self.up[lv](torch.cat([skips[lv], x], dim=1))
            return self.head(x)

    return UNet()


class UNetModel:
    """A U-Net ready for inference; implements :class:`emseg.pipeline.backends.boundary.AffinityModel`.

    Parameters
    ----------
    net
        The module from :func:`build` (weights loaded).
    device, precision
        Where and how to run (see :func:`emseg.pipeline.backends.boundary.load_model`).
    tile
        Largest (z, y, x) input tile in one forward pass; larger images go through overlapping tiles.
    """

    def __init__(self, net: Any, device: str = "cpu", precision: str = "auto",
                 tile: tuple[int, int, int] = (96, 160, 160), meta: dict[str, Any] | None = None) -> None:
        self.device = devices.resolve_device(device)
        self.net = net.to(self.device).eval()
        self.config: UNetConfig = net.config
        self.precision = devices.resolve_precision(precision, self.device)
        self.context_zyx = context(self.config)
        self.tile = tile
        self.meta = dict(meta or {})

    def logits(self, normalised: np.ndarray) -> np.ndarray:
        """Raw network output (C, z, y, x) of a normalised image whose shape is a multiple of the grid."""
        import torch

        x = torch.from_numpy(np.ascontiguousarray(normalised, dtype=np.float32))[None, None].to(self.device)
        with torch.inference_mode(), devices.autocast(self.device, self.precision):
            y = self.net(x)
        return y[0].float().cpu().numpy()

    def predict(self, image: np.ndarray, origin_zyx: tuple[int, int, int] = (0, 0, 0),
                region: tuple[slice, slice, slice] | None = None) -> np.ndarray:
        """(3, z, y, x) float32 affinities of a (z, y, x) image in [0, 1] (NaN = no data).

        ``origin_zyx`` is the global position of ``image[0, 0, 0]``: the pooling grid is anchored
        there so that a voxel's prediction does not depend on where its block starts. Large images
        are predicted in overlapping tiles, each cropped to its core; with ``region`` (slices of
        ``image``), tiles whose core misses it are skipped and their affinities left 0.
        """
        image = np.asarray(image, dtype=np.float32)
        if image.ndim != 3:
            raise ValueError(f"the U-Net predicts (z, y, x) images, got shape {image.shape}")
        valid = ~np.isnan(image)
        norm = feats.normalise(image)
        grid = self.config.total_factor
        radius = receptive_radius(self.config)
        # pad so that the array starts on the global pooling grid and its shape fits the grid
        front = [int(o) % g for o, g in zip(origin_zyx, grid)]
        padded_shape = [math.ceil((s + f) / g) * g for s, f, g in zip(image.shape, front, grid)]
        pad = [(f, p - s - f) for f, p, s in zip(front, padded_shape, image.shape)]
        norm = np.pad(norm, pad, mode="reflect" if min(image.shape) > 1 else "edge")
        out = np.zeros((3,) + tuple(padded_shape), dtype=np.float32)
        # tiles: cores on the grid, each read with a margin of >= radius rounded up to the grid
        margin = [math.ceil(r / g) * g for r, g in zip(radius, grid)]
        core = [max(g, (t - 2 * m) // g * g) for t, m, g in zip(self.tile, margin, grid)]
        # the region in padded coordinates (whole array when None)
        want = [(0, p) for p in padded_shape] if region is None else \
            [(f + r.indices(n)[0], f + r.indices(n)[1]) for f, r, n in zip(front, region, image.shape)]
        for z0 in range(0, padded_shape[0], core[0]):
            for y0 in range(0, padded_shape[1], core[1]):
                for x0 in range(0, padded_shape[2], core[2]):
                    starts = (z0, y0, x0)
                    stops = [min(p, s + c) for p, s, c in zip(padded_shape, starts, core)]
                    if any(e <= w0 or s >= w1 for s, e, (w0, w1) in zip(starts, stops, want)):
                        continue  # this tile's core lies outside the region
                    lo = [max(0, s - m) for s, m in zip(starts, margin)]
                    hi = [min(p, e + m) for p, e, m in zip(padded_shape, stops, margin)]
                    tile = norm[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
                    logit = self.logits(tile)[:3]
                    sl = tuple(slice(s - a, e - a) for s, e, a in zip(starts, stops, lo))
                    out[(slice(None),) + tuple(slice(s, e) for s, e in zip(starts, stops))] = logit[(slice(None),) + sl]
        out = out[(slice(None),) + tuple(slice(f, f + s) for f, s in zip(front, image.shape))]
        affs = 1.0 / (1.0 + np.exp(-out))
        affs[0, 0] = 0
        affs[1, :, 0] = 0
        affs[2, :, :, 0] = 0
        if not valid.all():
            bad = ~valid
            affs[:, bad] = 0
            affs[0, 1:][bad[:-1]] = 0
            affs[1, :, 1:][bad[:, :-1]] = 0
            affs[2, :, :, 1:][bad[:, :, :-1]] = 0
        return affs.astype(np.float32, copy=False)


def payload(net: Any, meta: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    """The checkpoint dict of a U-Net (weights as fp32 on the CPU); ``extra`` adds training state."""
    out = {
        "format": FORMAT, "version": VERSION, "model": net.config.model_dump(mode="json"),
        "state_dict": {k: v.detach().float().cpu() for k, v in net.state_dict().items()},
        "meta": checkpoints.plain_meta(meta),
    }
    out.update(extra)
    return out


def save(path: Any, net: Any, meta: dict[str, Any] | None = None, **extra: Any) -> None:
    """Write a U-Net checkpoint atomically (see :mod:`emseg.pipeline.io.checkpoints`)."""
    checkpoints.save(path, payload(net, meta, **extra))


def read(weights: str) -> dict[str, Any]:
    """A checkpoint dict (``weights_only=True``) with its ``model`` validated as a :class:`UNetConfig`."""
    data = checkpoints.load(
        weights, fmt=FORMAT, version=VERSION, bundled="unet_fib25.pt", family="unet", what="U-Net checkpoint",
        hint="train one with `emseg train` (model.kind: unet)",
    )
    try:
        data["model"] = UNetConfig.model_validate(data["model"])
    except Exception as exc:
        raise CheckpointError(f"{data['path']}: its model config is invalid ({str(exc)[:200]}); re-train it") from None
    return data


def load_weights(net: Any, data: dict[str, Any]) -> None:
    """Load a checkpoint's weights into ``net``, refusing any mismatch (see :func:`checkpoints.check_state`)."""
    checkpoints.check_state(net.state_dict(), data["state_dict"], data.get("path", "checkpoint"))
    net.load_state_dict(data["state_dict"])


def load(weights: str, device: str = "cpu", precision: str = "auto") -> UNetModel:
    """A :class:`UNetModel` from a checkpoint location (path, URL or ``bundled``)."""
    data = read(weights)
    net = build(data["model"])
    load_weights(net, data)
    return UNetModel(net, device=device, precision=precision, meta=data.get("meta"))
